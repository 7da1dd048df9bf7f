"""Billing: each of the seven price rows, charged on completion into the ledger."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from kling_batch.emulator import Latency

VIDEO = "https://example.com/source.mp4"

# Amounts worked out by hand from the model card's rates.
ROWS = [
    pytest.param(
        {"model_tier": "standard", "sound": False, "duration": 10},
        "Standard T2V/I2V",
        "10",
        "0.168",
        "1.680",
        id="standard",
    ),
    pytest.param(
        {"model_tier": "standard", "prompt": "3s: a | 4s: b"},
        "Standard T2V/I2V Sound",
        "7",
        "0.224",
        "1.568",
        id="standard-sound",
    ),
    pytest.param(
        {"model_tier": "standard", "reference_videos": VIDEO, "prompt": "4s: a | 6s: b"},
        "Standard Video Input",
        "10",
        "0.252",
        "2.520",
        id="standard-video-input",
    ),
    pytest.param(
        {"model_tier": "pro", "sound": False, "duration": 8},
        "Pro T2V/I2V",
        "8",
        "0.224",
        "1.792",
        id="pro",
    ),
    pytest.param(
        {"model_tier": "pro", "duration": 10},
        "Pro T2V/I2V Sound",
        "10",
        "0.280",
        "2.800",
        id="pro-sound",
    ),
    pytest.param(
        {"model_tier": "pro", "video": VIDEO, "duration": 7, "sound": False},
        "Pro Video Input",
        "7",
        "0.336",
        "2.352",
        id="pro-video-input",
    ),
    pytest.param(
        {"model_tier": "4k", "sound": False, "duration": 6},
        "4K T2V/I2V/Ref",
        "6",
        "0.525",
        "3.150",
        id="4k",
    ),
    pytest.param(
        {"model_tier": "4k", "duration": 6},
        "4K T2V/I2V/Ref",
        "6",
        "0.525",
        "3.150",
        id="4k-sound-same-rate",
    ),
]


@pytest.mark.parametrize(("fields", "label", "seconds", "rate", "amount"), ROWS)
def test_completed_job_is_charged_by_its_price_row(api, fields, label, seconds, rate, amount):
    """A completed job adds one ledger entry with the row, seconds, rate and amount."""
    job = api.render(**fields)
    (entry,) = api.emu.ledger.entries()
    assert (entry.job_id, entry.label) == (job["job_id"], label)
    assert (entry.seconds, entry.rate, entry.amount) == (
        Decimal(seconds),
        Decimal(rate),
        Decimal(amount),
    )
    assert job["billing"]["amount_usd"] == float(amount)
    assert job["billing"]["seconds"] == float(seconds)


def test_defaults_cost_one_forty(api):
    """Pro tier, sound on, 5 s: the documented default costs $1.40."""
    api.render()
    assert api.emu.ledger.total == Decimal("1.400")


def test_ledger_total_sums_entries(api):
    """The ledger total is the exact sum of its entries."""
    api.render(duration=10)
    api.render(model_tier="standard", sound=False, duration=3)
    assert api.emu.ledger.total == Decimal("2.800") + Decimal("0.504")


def test_uploaded_video_edit_bills_the_clip_capped_at_ten_seconds(api, clip):
    """video_edit on an uploaded 12 s clip bills 10 s at the video-input rate."""
    path = api.upload_ok("long.mp4", clip("12"), "video/mp4")["path"]
    api.render(video=path, model_tier="standard", duration=3)
    (entry,) = api.emu.ledger.entries()
    assert (entry.seconds, entry.amount) == (Decimal(10), Decimal("2.520"))


def test_nothing_is_charged_before_completion(make_api):
    """A job still rendering holds its estimate but is not in the ledger."""
    api = make_api(latency=Latency.realistic())
    api.submit_ok(duration=10)
    assert api.emu.ledger.entries() == []
    assert api.emu.ledger.held == Decimal("2.800")


def test_ledger_endpoint_reports_entries_and_total(api):
    """`GET /_emulator/ledger` lists charges and the total as JSON numbers."""
    job = api.render(duration=10)
    body = httpx.get(f"{api.served.base_url}/_emulator/ledger").json()
    assert body["total_usd"] == 2.8
    assert body["entries"][0]["job_id"] == job["job_id"]
    assert body["entries"][0]["label"] == "Pro T2V/I2V Sound"
    assert body["credits_usd"] is None
