"""Classification of API failures, error envelopes, and retry timing on the virtual clock."""

from __future__ import annotations

from datetime import timedelta
from email.utils import format_datetime

import httpx
import pytest

from kling_batch.client import RetryPolicy
from kling_batch.clock import VirtualClock
from kling_batch.errors import (
    ApiError,
    AuthError,
    CreditsError,
    RateLimited,
    RunError,
    RunFatal,
    ServerError,
    ShotRejected,
)

pytestmark = pytest.mark.anyio

GEN = "/v1/videos/generations"
JOB = "/v1/jobs/job_1"
BODY = {"model": "kling-o3", "prompt": "p"}


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504, 408])
async def test_transient_status_on_a_poll_is_retried(api, make_client, error_response, status):
    """429, 5xx and 408 on a GET are retried until the API answers."""
    api.on("GET", JOB, error_response(status, "later"), {"status": "queued"})
    async with make_client() as client:
        assert (await client.get_job("job_1")).raw_status == "queued"
    assert len(api.seen) == 2


async def test_a_poll_answered_with_an_error_and_no_status_is_asked_again(api, make_client):
    """A 200 to a poll carrying only an error envelope says nothing of the job: it is asked
    again, never read as the job's failure (recorded failed, the render would be paid
    again while the job renders)."""
    trouble = {"error": {"code": "internal_error", "message": "try again later"}}
    api.on("GET", JOB, trouble, {"status": "processing", "progress": 0.5})
    async with make_client() as client:
        job = await client.get_job("job_1")
    assert (job.status, job.raw_status, len(api.seen)) == ("pending", "processing", 2)


async def test_a_job_answered_failed_with_its_error_is_failed(api, make_client):
    """A job that says it failed, with its error, is failed at the first answer."""
    api.on("GET", JOB, {"status": "failed", "error": {"code": "upstream_error", "message": "x"}})
    async with make_client() as client:
        job = await client.get_job("job_1")
    assert (job.status, len(api.seen)) == ("failed", 1)


@pytest.mark.parametrize(
    ("status", "cls"), [(401, AuthError), (403, AuthError), (402, CreditsError)]
)
async def test_account_failures_are_fatal_for_the_run(
    api, make_client, error_response, status, cls
):
    """401/403 and 402 stop the run at once, without a retry."""
    api.on("POST", GEN, error_response(status, "no", code="invalid_api_key"))
    async with make_client() as client:
        with pytest.raises(cls) as info:
            await client.submit(BODY)
    assert isinstance(info.value, RunFatal)
    assert (info.value.status, info.value.code, len(api.seen)) == (status, "invalid_api_key", 1)


@pytest.mark.parametrize("status", [400, 404, 409, 413, 422])
async def test_request_refusals_reject_the_shot_with_the_api_details(
    api, make_client, error_response, status
):
    """A 4xx on submit fails only that shot, carrying the API's message, code and param."""
    api.on("POST", GEN, error_response(status, "duration out of range", "invalid", "duration"))
    async with make_client() as client:
        with pytest.raises(ShotRejected) as info:
            await client.submit(BODY)
    err = info.value
    assert (err.status, err.message, err.code, err.param) == (
        status,
        "duration out of range",
        "invalid",
        "duration",
    )
    assert len(api.seen) == 1


def test_error_text_names_status_code_and_param():
    """An ApiError's text is the message followed by status, code and param."""
    err = ShotRejected("bad prompt", status=400, code="invalid", param="prompt")
    assert str(err) == "bad prompt (HTTP 400, code invalid, param prompt)"


def test_api_errors_are_run_errors_with_exit_code_1():
    """Every API error is a RunError, so the CLI exits 1."""
    assert issubclass(ApiError, RunError)
    assert ApiError("x").exit_code == 1


@pytest.mark.parametrize(
    ("reply", "message", "code", "type_"),
    [
        (
            httpx.Response(
                400, json={"type": "error", "error": {"type": "invalid", "message": "m"}}
            ),
            "m",
            None,
            "invalid",
        ),
        (httpx.Response(400, json={"error": "plain words"}), "plain words", None, None),
        (httpx.Response(400, json="just a string"), "just a string", None, None),
        (httpx.Response(400, text="Bad things happened"), "Bad things happened", None, None),
        (httpx.Response(400, json={"detail": "fastapi"}), "fastapi", None, None),
        (httpx.Response(400, json={"message": "m", "code": "c"}), "m", "c", None),
        (httpx.Response(400), "HTTP 400 Bad Request", None, None),
    ],
    ids=["anthropic", "error-string", "json-string", "text", "detail", "flat", "empty"],
)
async def test_every_error_envelope_is_read(api, make_client, reply, message, code, type_):
    """Anthropic-style, string, plain-text and flat error bodies all yield a message."""
    api.on("POST", GEN, reply)
    async with make_client() as client:
        with pytest.raises(ShotRejected) as info:
            await client.submit(BODY)
    assert (info.value.message, info.value.code, info.value.type) == (message, code, type_)


async def test_backoff_grows_exponentially_up_to_the_cap(api, make_client, error_response, clock):
    """Without Retry-After, waits follow base * 2**n, capped, scaled by the jitter draw."""
    api.on("GET", JOB, *[error_response(503, "down") for _ in range(5)], {"status": "queued"})
    retry = RetryPolicy(max_attempts=6, base=2.0, cap=10.0, random=lambda: 0.5)
    async with make_client(retry=retry) as client:
        await client.get_job("job_1")
    assert clock.sleeps == [1.0, 2.0, 4.0, 5.0, 5.0]


async def test_full_jitter_draws_below_the_step(api, make_client, error_response, clock):
    """The jitter draw scales the whole step, so a draw of 0 retries immediately."""
    api.on("GET", JOB, error_response(503, "down"), {"status": "queued"})
    async with make_client(retry=RetryPolicy(random=lambda: 0.0)) as client:
        await client.get_job("job_1")
    assert clock.sleeps == [0.0]


async def test_retry_after_seconds_is_honoured(api, make_client, error_response, clock):
    """A Retry-After of 7 seconds makes the retry wait 7 model seconds."""
    limited = error_response(429, "slow down")
    limited.headers["Retry-After"] = "7"
    api.on("GET", JOB, limited, {"status": "queued"})
    async with make_client(retry=RetryPolicy(random=lambda: 0.0)) as client:
        await client.get_job("job_1")
    assert clock.sleeps == [7.0]
    assert api.seen[1].at == 7.0


async def test_retry_after_http_date_is_honoured(api, make_client, error_response, clock):
    """A Retry-After HTTP-date 30 s ahead of the clock's wall time makes the retry wait 30 s."""
    limited = error_response(503, "maintenance")
    limited.headers["Retry-After"] = format_datetime(clock.now() + timedelta(seconds=30), True)
    api.on("GET", JOB, limited, {"status": "queued"})
    async with make_client(retry=RetryPolicy(random=lambda: 0.0)) as client:
        await client.get_job("job_1")
    assert clock.sleeps == [30.0]


async def test_longer_backoff_wins_over_a_short_retry_after(
    api, make_client, error_response, clock
):
    """The wait is the larger of the jittered backoff and Retry-After."""
    limited = error_response(429, "slow down")
    limited.headers["Retry-After"] = "1"
    api.on("GET", JOB, limited, {"status": "queued"})
    async with make_client(retry=RetryPolicy(base=4.0, random=lambda: 1.0)) as client:
        await client.get_job("job_1")
    assert clock.sleeps == [4.0]


async def test_retry_after_is_capped(api, make_client, error_response, clock):
    """An absurd Retry-After is cut to `retry_after_cap`."""
    limited = error_response(429, "slow down")
    limited.headers["Retry-After"] = "86400"
    api.on("GET", JOB, limited, {"status": "queued"})
    retry = RetryPolicy(random=lambda: 0.0, retry_after_cap=120.0)
    async with make_client(retry=retry) as client:
        await client.get_job("job_1")
    assert clock.sleeps == [120.0]


@pytest.mark.parametrize("value", ["soon", "", "-5", "nan"])
async def test_unparseable_retry_after_falls_back_to_backoff(
    api, make_client, error_response, clock, value
):
    """A Retry-After that is not a number or date is ignored (negative means now)."""
    limited = error_response(429, "slow down")
    limited.headers["Retry-After"] = value
    api.on("GET", JOB, limited, {"status": "queued"})
    async with make_client(retry=RetryPolicy(base=3.0, random=lambda: 1.0)) as client:
        await client.get_job("job_1")
    assert clock.sleeps == [3.0]


@pytest.fixture
def scaled(api) -> VirtualClock:
    """A virtual clock where one model second lasts 0.01 real seconds (time scale 0.01)."""
    api.clock = VirtualClock(time_scale=0.01)
    return api.clock


async def test_retry_after_is_real_seconds_by_default(api, make_client, error_response, scaled):
    """At time scale 0.01, Retry-After: 1 (one real second) is a 100 model-second wait."""
    limited = error_response(429, "slow down")
    limited.headers["Retry-After"] = "1"
    api.on("GET", JOB, limited, {"status": "queued"})
    async with make_client(clock=scaled, retry=RetryPolicy(random=lambda: 0.0)) as client:
        await client.get_job("job_1")
    assert scaled.sleeps == [pytest.approx(100.0)]


async def test_retry_after_ms_wins_and_is_exact(api, make_client, error_response, scaled):
    """`retry-after-ms` (real milliseconds) beats the rounded-up Retry-After seconds."""
    limited = error_response(429, "slow down")
    limited.headers["Retry-After"] = "1"
    limited.headers["retry-after-ms"] = "120"
    api.on("GET", JOB, limited, {"status": "queued"})
    async with make_client(clock=scaled, retry=RetryPolicy(random=lambda: 0.0)) as client:
        await client.get_job("job_1")
    assert scaled.sleeps == [pytest.approx(12.0)]


async def test_retry_after_can_be_read_as_model_seconds(api, make_client, error_response, scaled):
    """With unit "model", Retry-After: 7 is seven model seconds whatever the scale."""
    limited = error_response(429, "slow down")
    limited.headers["Retry-After"] = "7"
    api.on("GET", JOB, limited, {"status": "queued"})
    retry = RetryPolicy(random=lambda: 0.0, retry_after_unit="model")
    async with make_client(clock=scaled, retry=retry) as client:
        await client.get_job("job_1")
    assert scaled.sleeps == [7.0]


async def test_rate_limited_error_keeps_retry_after(api, make_client, error_response):
    """When retries run out, the raised RateLimited still says how long the server asked for."""
    limited = error_response(429, "slow down")
    limited.headers["Retry-After"] = "12"
    api.on("GET", JOB, limited)
    async with make_client(retry=RetryPolicy(max_attempts=1)) as client:
        with pytest.raises(RateLimited) as info:
            await client.get_job("job_1")
    assert info.value.retry_after == 12.0


async def test_server_errors_exhausted_raise_server_error(api, make_client, error_response):
    """Persistent 5xx ends as ServerError with the last status."""
    api.on("GET", JOB, error_response(500, "a"), error_response(502, "b"))
    async with make_client(retry=RetryPolicy(max_attempts=2, random=lambda: 0.0)) as client:
        with pytest.raises(ServerError) as info:
            await client.get_job("job_1")
    assert (info.value.status, info.value.message) == (502, "b")


async def test_unsupported_scheme_is_fatal(make_client):
    """A request that cannot be sent at all (bad scheme) stops the run instead of retrying."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.UnsupportedProtocol("Request URL has an unsupported protocol 'ftp://'.")

    async with make_client(transport=httpx.MockTransport(refuse)) as client:
        with pytest.raises(RunFatal):
            await client.get_model()


async def test_redirect_on_the_api_is_not_followed(api, make_client):
    """The API client never follows a redirect (it could carry the key elsewhere)."""
    api.on("GET", JOB, httpx.Response(302, headers={"Location": "https://elsewhere.example/"}))
    async with make_client() as client:
        with pytest.raises(ShotRejected) as info:
            await client.get_job("job_1")
    assert info.value.status == 302
    assert len(api.seen) == 1
