"""Emulator switches for account operations: cancel route, bills of cancelled and failed jobs,
drifted schema, rate-limit headers."""

from __future__ import annotations

import json
from decimal import Decimal

from kling_batch.emulator import Latency
from kling_batch.emulator.faults import Fault
from kling_batch.model_data import model_json_text
from tests.emulator.conftest import error_of


def test_cancel_releases_the_credit_hold(make_api):
    """Cancelling a processing job gives its held estimate back to the balance."""
    api = make_api(latency=Latency.realistic(), credits=Decimal(10))
    job_id = api.submit_ok(duration=5, model_tier="pro")["job_id"]
    assert api.emu.ledger.available == Decimal(10) - Decimal("0.28") * 5
    response = api.client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.json()["status"] == "cancelled"
    assert api.emu.ledger.available == Decimal(10)
    assert api.emu.ledger.held == 0


def test_bill_cancelled_charges_a_cancelled_job_and_says_so(make_api):
    """`bill_cancelled=True` charges a cancelled job its price, and the cancel answer carries the
    bill as a completed job's does."""
    api = make_api(latency=Latency.realistic(), bill_cancelled=True)
    job_id = api.submit_ok(duration=5, model_tier="pro")["job_id"]
    answer = api.client.post(f"/v1/jobs/{job_id}/cancel").json()
    assert answer["status"] == "cancelled"
    assert answer["billing"]["amount_usd"] == 1.4
    assert api.emu.ledger.total == Decimal("1.4") and api.emu.ledger.held == 0


def test_bill_failed_charges_a_failed_job_and_says_so(make_api):
    """`bill_failed=True` charges a failed job its price, and its answers carry the bill."""
    api = make_api(latency=Latency.realistic(), bill_failed=True, faults=(Fault("fail"),))
    job = api.finish(api.submit_ok(duration=5, model_tier="pro")["job_id"])
    assert job["status"] == "failed"
    assert job["billing"]["amount_usd"] == 1.4
    assert api.emu.ledger.total == Decimal("1.4")


def test_without_the_cancel_route_cancelling_is_an_unknown_route(make_api):
    """`cancel_route=False` answers 404 `not_found`, as an API that has no such route; the job
    goes on."""
    api = make_api(latency=Latency.realistic(), cancel_route=False)
    job_id = api.submit_ok()["job_id"]
    response = api.client.post(f"/v1/jobs/{job_id}/cancel")
    assert (response.status_code, error_of(response)["code"]) == (404, "not_found")
    assert api.job(job_id)["status"] in {"queued", "processing"}


def test_drifted_schema_differs_from_the_bundled_one(make_api):
    """`drifted_schema=True` serves a description whose parameters and prices moved."""
    bundled = json.loads(model_json_text())
    drifted = make_api(drifted_schema=True).client.get("/v1/models/kling-o3").json()
    assert drifted != bundled
    names = {p["name"] for p in drifted["supported_parameters"]}
    assert "seed" in names and "image_end" not in names
    rows = {r["label"]: r["price"] for r in drifted["pricing_rows"]}
    assert rows["Pro T2V/I2V Sound"] != 0.28
    assert make_api().client.get("/v1/models/kling-o3").json() == bundled


def test_rate_limit_headers_count_down(make_api):
    """`rate_limit_headers=True` sends the limit and what is left of it on each answer."""
    api = make_api(rpm=5, rate_limit_headers=True)
    first = api.client.get("/v1/models/kling-o3").headers
    second = api.client.get("/v1/models/kling-o3").headers
    assert first["x-ratelimit-limit-requests"] == "5"
    assert int(first["x-ratelimit-remaining-requests"]) == 4
    assert int(second["x-ratelimit-remaining-requests"]) == 3
    assert "x-ratelimit-limit-requests" not in make_api(rpm=5).client.get("/livez").headers
