"""Account limits: the RPM sliding window with Retry-After, and credits with 402."""

from __future__ import annotations

from decimal import Decimal

import httpx

from kling_batch.emulator import Latency
from kling_batch.emulator.gateway import retry_after


def test_request_over_rpm_is_429_with_retry_after(make_api):
    """The request after `rpm` in one window answers 429 `rate_limit_exceeded` + Retry-After."""
    api = make_api(rpm=3)
    for _ in range(3):
        assert api.client.get("/v1/models").status_code == 200
    response = api.client.get("/v1/models")
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(response.headers["Retry-After"]) <= 60


def test_polls_count_toward_rpm(make_api):
    """Submits and polls share the one per-account budget."""
    api = make_api(rpm=2)
    job_id = api.submit_ok()["job_id"]
    assert api.client.get(f"/v1/jobs/{job_id}").status_code == 200
    assert api.client.get(f"/v1/jobs/{job_id}").status_code == 429


def test_window_slides_and_refused_requests_do_not_count(make_api):
    """Once the modelled minute passed, a request is admitted again despite earlier 429s."""
    api = make_api(rpm=1)
    api.client.get("/v1/models")
    for _ in range(3):
        assert api.client.get("/v1/models").status_code == 429
    api.emu.advance(61)
    assert api.client.get("/v1/models").status_code == 200


def test_retry_after_rounds_real_seconds_up_to_at_least_one():
    """Sub-second real waits (small time scales) say Retry-After 1 and the exact retry-after-ms."""
    assert retry_after(0.3) == {"Retry-After": "1", "retry-after-ms": "300"}
    assert retry_after(59.2)["Retry-After"] == "60"


def test_rate_window_is_scaled_by_time_scale(make_api):
    """At time_scale 0.5 the minute is 30 real seconds, and Retry-After says so."""
    api = make_api(rpm=1, time_scale=0.5)
    api.client.get("/v1/models")
    assert 1 <= int(api.client.get("/v1/models").headers["Retry-After"]) <= 30
    api.emu.clock.advance(31)
    assert api.client.get("/v1/models").status_code == 200


def test_downloads_do_not_count_toward_rpm(make_api):
    """Result downloads are outside /v1 and never use the request budget."""
    api = make_api(rpm=2)
    url = api.render()["result"]["video_url"]
    for _ in range(3):
        assert httpx.get(url).status_code == 200


def test_unauthenticated_requests_do_not_count(make_api):
    """A 401 does not use the account's budget."""
    api = make_api(rpm=1)
    for _ in range(3):
        httpx.get(f"{api.served.base_url}/v1/models")
    assert api.client.get("/v1/models").status_code == 200


def test_rpm_zero_disables_the_limit(make_api):
    """`rpm=0` lets any number of requests through."""
    api = make_api(rpm=0)
    statuses = {api.client.get("/v1/models").status_code for _ in range(60)}
    assert statuses == {200}


def test_submit_over_credits_is_402(make_api):
    """A submit whose estimate exceeds the credits left answers 402 `insufficient_credits`."""
    api = make_api(credits=Decimal("2.00"))
    api.render()
    response = api.submit()
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "insufficient_credits"


def test_submit_equal_to_credits_is_accepted(make_api):
    """An estimate exactly equal to the balance is accepted."""
    api = make_api(credits=Decimal("1.40"))
    assert api.submit().status_code == 200


def test_jobs_in_flight_hold_their_estimate(make_api):
    """A job still rendering holds its cost, so a second one cannot overspend."""
    api = make_api(credits=Decimal("2.00"), latency=Latency.realistic())
    api.submit_ok()
    assert api.submit().status_code == 402


def test_cancelling_releases_the_hold(make_api):
    """Cancelling an in-flight job frees its estimate for new submits."""
    api = make_api(credits=Decimal("2.00"), latency=Latency.realistic())
    job_id = api.submit_ok()["job_id"]
    api.client.post(f"/v1/jobs/{job_id}/cancel")
    assert api.submit().status_code == 200
