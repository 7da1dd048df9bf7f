"""Submitting a render: every success shape, and never re-sending a submit that may have landed."""

from __future__ import annotations

import json

import anyio
import anyio.lowlevel
import httpx
import pytest

from kling_batch.client import RetryPolicy
from kling_batch.errors import (
    AmbiguousSubmit,
    AnsweredWithError,
    ConnectionFailed,
    RateLimited,
    SubmitWithdrawn,
)

pytestmark = pytest.mark.anyio

GEN = "/v1/videos/generations"
BODY = {"model": "kling-o3", "prompt": "a fox runs through snow", "duration": 5}


@pytest.mark.parametrize("status", [200, 201, 202])
async def test_any_2xx_with_a_job_id_is_a_submission(api, make_client, status):
    """200, 201 and 202 all count as created when the body names a job."""
    api.on("POST", GEN, httpx.Response(status, json={"job_id": "job_1", "status": "queued"}))
    async with make_client() as client:
        sub = await client.submit(BODY)
    assert (sub.job_id, sub.status) == ("job_1", "queued")


@pytest.mark.parametrize(
    "payload",
    [
        {"job_id": "job_9"},
        {"id": "job_9"},
        {"data": {"job_id": "job_9"}},
        {"data": {"id": "job_9"}},
    ],
    ids=["job_id", "id", "data.job_id", "data.id"],
)
async def test_job_id_is_found_under_every_known_key(api, make_client, payload):
    """The job id may be `job_id`, `id`, or either of those nested under `data`."""
    api.on("POST", GEN, payload)
    async with make_client() as client:
        assert (await client.submit(BODY)).job_id == "job_9"


async def test_a_job_id_key_wins_over_an_id_of_the_envelope(api, make_client):
    """`job_id` names the job wherever it sits; a top-level `id` beside a nested `job_id`
    is the envelope's own (a request id): taking it would poll a job that does not exist
    until the real one is forgotten, and its render paid again."""
    api.on("POST", GEN, {"id": "req_1", "object": "response", "data": {"job_id": "job_9"}})
    async with make_client() as client:
        assert (await client.submit(BODY)).job_id == "job_9"


@pytest.mark.parametrize("status", [201, 202])
@pytest.mark.parametrize(
    "location",
    ["/v1/jobs/job_123", "https://api.empiriolabs.ai/v1/jobs/job_123", "v1/jobs/job_123"],
    ids=["path", "absolute", "relative"],
)
@pytest.mark.parametrize(
    "reply", [{"content": b""}, {"json": {"status": "queued"}}], ids=["no-body", "no-job-id"]
)
async def test_a_job_named_by_location_alone_is_a_submission(
    api, make_client, status, location, reply
):
    """A 201 or 202 whose body lacks the job id but whose Location names the job is that
    job: recorded and polled, not left uncertain for a look at the job list."""
    api.on("POST", GEN, httpx.Response(status, headers={"Location": location}, **reply))
    async with make_client() as client:
        sub = await client.submit(BODY)
    assert (sub.job_id, sub.poll_url) == ("job_123", "https://api.empiriolabs.ai/v1/jobs/job_123")
    assert len(api.seen) == 1


async def test_only_a_job_path_on_the_api_is_read_from_location(api, make_client):
    """A Location that is not `/v1/jobs/{id}` on the API's origin (another host, another
    route, a job's sub-path, a 200's Location) names no job: the submit stays uncertain."""
    unrelated = [
        httpx.Response(201, headers={"Location": "https://evil.example/v1/jobs/job_1"}),
        httpx.Response(201, headers={"Location": "http://api.empiriolabs.ai/v1/jobs/job_1"}),
        httpx.Response(201, headers={"Location": "/v1/jobs/job_1/cancel"}),
        httpx.Response(201, headers={"Location": "/v1/jobs/"}),
        httpx.Response(201, headers={"Location": "/v1/videos/generations/job_1"}),
        httpx.Response(201, headers={"Location": "/v1/jobs/job%2F1"}),
        httpx.Response(200, headers={"Location": "/v1/jobs/job_1"}),
    ]
    api.on("POST", GEN, *unrelated)
    api.on("POST", GEN, httpx.Response(201, headers={"Location": "/v1/jobs/job_2"}))
    async with make_client() as client:
        for _ in unrelated:
            with pytest.raises(AmbiguousSubmit):
                await client.submit(BODY)
        assert (await client.submit(BODY)).job_id == "job_2"


async def test_an_undecodable_host_in_location_or_poll_url_keeps_the_job(api, make_client):
    """A Location or poll URL whose host is not valid IDNA (`xn--`) names no URL on the
    API: the job the body names is still recorded, polled at its fallback URL, not lost
    to a crash of the answer's reading."""
    broken = "https://xn--/v1/jobs/job_1"
    api.on("POST", GEN, httpx.Response(201, headers={"Location": broken}, json={"job_id": "j1"}))
    api.on("POST", GEN, {"job_id": "j2", "poll_url": broken})
    async with make_client() as client:
        first, second = await client.submit(BODY), await client.submit(BODY)
    assert (first.job_id, first.poll_url) == ("j1", "https://api.empiriolabs.ai/v1/jobs/j1")
    assert (second.job_id, second.poll_url) == ("j2", "https://api.empiriolabs.ai/v1/jobs/j2")


async def test_location_under_a_base_path_prefix_names_the_job(api, make_client):
    """Behind a base URL with a path prefix, Location may give the job's path with or
    without the prefix, as a poll URL may."""
    gen = "/proxy/v1/videos/generations"
    api.on("POST", gen, httpx.Response(201, headers={"Location": "/proxy/v1/jobs/a"}))
    api.on("POST", gen, httpx.Response(201, headers={"Location": "/v1/jobs/b"}))
    async with make_client(base_url="https://gw.example/proxy/") as client:
        first, second = await client.submit(BODY), await client.submit(BODY)
    assert (first.job_id, first.poll_url) == ("a", "https://gw.example/proxy/v1/jobs/a")
    assert (second.job_id, second.poll_url) == ("b", "https://gw.example/proxy/v1/jobs/b")


async def test_a_body_and_location_naming_two_jobs_is_ambiguous(api, make_client):
    """When the body and Location name different jobs, either may be wrong: polling the
    wrong one would lose the paid one, so the submit is uncertain (the job list settles it)."""
    reply = httpx.Response(201, headers={"Location": "/v1/jobs/job_2"}, json={"id": "job_1"})
    api.on("POST", GEN, reply)
    async with make_client() as client:
        with pytest.raises(AmbiguousSubmit) as info:
            await client.submit(BODY)
    assert "job_2" in str(info.value)
    assert len(api.seen) == 1


async def test_body_is_sent_as_json_with_the_bearer_key(api, make_client, key):
    """The request body is the given mapping as JSON, authorised with the bearer key."""
    api.on("POST", GEN, {"job_id": "j"})
    async with make_client() as client:
        await client.submit(BODY)
    request = api.seen[0].request
    assert json.loads(request.content) == BODY
    assert request.headers["authorization"] == f"Bearer {key}"
    assert request.headers["content-type"] == "application/json"


async def test_extra_headers_are_passed_through(api, make_client):
    """Caller headers such as the fingerprint reach the API unchanged."""
    api.on("POST", GEN, {"job_id": "j"})
    async with make_client() as client:
        await client.submit(BODY, headers={"x-kling-batch-fingerprint": "sha256:abc"})
    assert api.seen[0].request.headers["x-kling-batch-fingerprint"] == "sha256:abc"


async def test_extra_headers_cannot_replace_the_authorization(api, make_client, key):
    """A caller-supplied Authorization header is dropped in favour of the client's key."""
    api.on("POST", GEN, {"job_id": "j"})
    async with make_client() as client:
        await client.submit(BODY, headers={"Authorization": "Bearer other"})
    assert api.seen[0].request.headers.get_list("authorization") == [f"Bearer {key}"]


@pytest.mark.parametrize(
    ("poll_url", "expected"),
    [
        ("https://api.empiriolabs.ai/v1/jobs/job_1", "https://api.empiriolabs.ai/v1/jobs/job_1"),
        ("/v1/jobs/job_1", "https://api.empiriolabs.ai/v1/jobs/job_1"),
        ("v1/jobs/job_1", "https://api.empiriolabs.ai/v1/jobs/job_1"),
        (None, "https://api.empiriolabs.ai/v1/jobs/job_1"),
        ("https://evil.example/v1/jobs/job_1", "https://api.empiriolabs.ai/v1/jobs/job_1"),
    ],
    ids=["absolute", "relative-slash", "relative", "absent", "foreign-host"],
)
async def test_poll_url_is_resolved_on_the_api_origin(api, make_client, poll_url, expected):
    """Absolute and relative poll URLs resolve on the API host; absent or foreign ones fall back."""
    api.on("POST", GEN, {"job_id": "job_1", "poll_url": poll_url})
    async with make_client() as client:
        assert (await client.submit(BODY)).poll_url == expected


async def test_relative_poll_url_keeps_a_base_path_prefix(api, make_client):
    """A base URL with a path prefix keeps it for relative poll URLs, given with or without it."""
    api.on("POST", "/proxy/v1/videos/generations", {"job_id": "a", "poll_url": "/proxy/v1/jobs/a"})
    api.on("POST", "/proxy/v1/videos/generations", {"job_id": "b", "poll_url": "/v1/jobs/b"})
    async with make_client(base_url="https://gw.example/proxy/") as client:
        first, second = await client.submit(BODY), await client.submit(BODY)
    assert first.poll_url == "https://gw.example/proxy/v1/jobs/a"
    assert second.poll_url == "https://gw.example/proxy/v1/jobs/b"


async def test_job_id_with_slashes_is_escaped_in_the_fallback_poll_url(api, make_client):
    """A job id cannot smuggle extra path segments into the fallback poll URL."""
    api.on("POST", GEN, {"job_id": "../../admin"})
    async with make_client() as client:
        sub = await client.submit(BODY)
    assert sub.poll_url == "https://api.empiriolabs.ai/v1/jobs/..%2F..%2Fadmin"


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (429, None),
        (500, "internal_error"),
        (502, "upstream_error"),
        (503, None),
    ],
)
async def test_definite_refusal_is_retried(api, make_client, error_response, status, code):
    """A 429, a 503, or the API's own 5xx refusal (its error envelope, with a code) means
    no job was created, so the submit is sent again."""
    api.on("POST", GEN, error_response(status, "busy", code), {"job_id": "j"})
    async with make_client() as client:
        assert (await client.submit(BODY)).job_id == "j"
    assert len(api.seen) == 2


@pytest.mark.parametrize(
    "exc",
    [httpx.ConnectError("refused"), httpx.ConnectTimeout("slow"), httpx.PoolTimeout("full")],
    ids=["ConnectError", "ConnectTimeout", "PoolTimeout"],
)
async def test_failure_before_sending_is_retried(api, make_client, exc):
    """Errors raised before any byte left (connect, pool) are safe to retry on a submit."""
    api.on("POST", GEN, exc, {"job_id": "j"})
    async with make_client() as client:
        assert (await client.submit(BODY)).job_id == "j"
    assert len(api.seen) == 2


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ReadTimeout("no answer"),
        httpx.WriteTimeout("stuck"),
        httpx.ReadError("reset"),
        httpx.WriteError("broken pipe"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
    ],
    ids=["ReadTimeout", "WriteTimeout", "ReadError", "WriteError", "RemoteProtocolError"],
)
async def test_failure_after_sending_is_ambiguous_and_sent_once(api, make_client, exc):
    """Once the request may have reached the server, the submit is reported, never re-sent."""
    api.on("POST", GEN, exc, {"job_id": "never"})
    async with make_client() as client:
        with pytest.raises(AmbiguousSubmit) as info:
            await client.submit(BODY)
    assert len(api.seen) == 1
    assert info.value.__cause__ is exc


async def test_connection_dropped_mid_body_is_ambiguous(api, make_client):
    """Headers arrived but the body was cut off: the job may exist, so it is ambiguous."""

    async def broken():
        yield b'{"job_id": "j'
        raise httpx.ReadError("connection reset")

    api.on("POST", GEN, httpx.Response(200, content=broken()))
    async with make_client() as client:
        with pytest.raises(AmbiguousSubmit):
            await client.submit(BODY)
    assert len(api.seen) == 1


@pytest.mark.parametrize(
    "reply",
    [
        httpx.Response(200, text="<html>ok</html>"),
        httpx.Response(200, json={"status": "queued"}),
        httpx.Response(202),
        httpx.Response(200, json=["job_1"]),
    ],
    ids=["not-json", "no-job-id", "empty", "not-an-object"],
)
async def test_unusable_2xx_is_ambiguous(api, make_client, reply):
    """A success status without a readable job id may still have created a job."""
    api.on("POST", GEN, reply)
    async with make_client() as client:
        with pytest.raises(AmbiguousSubmit) as info:
            await client.submit(BODY)
    assert info.value.status == reply.status_code
    assert len(api.seen) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"error": {"code": "upstream_error", "message": "the provider failed"}},
        {"type": "error", "error": {"type": "api_error", "message": "the provider failed"}},
        {"error": "the provider failed"},
    ],
    ids=["openai", "anthropic", "text"],
)
async def test_a_2xx_reporting_an_error_and_no_job_is_answered_with_error(api, make_client, body):
    """A 200 carrying an error envelope and no job id is `AnsweredWithError` (uncertain, and
    the run stops submitting), in the API's words; it is sent once."""
    api.on("POST", GEN, body, {"job_id": "second"})
    async with make_client() as client:
        with pytest.raises(AnsweredWithError) as info:
            await client.submit(BODY)
    assert "the provider failed" in str(info.value)
    assert len(api.seen) == 1


async def test_the_id_of_an_error_envelope_is_not_taken_for_a_job(api, make_client):
    """A 200 error envelope with its own `id` (a request id) names no job: taken for one, it
    would be polled (404) until thought forgotten, and the render paid for again. A
    `job_id` beside an error does name the job (polling tells how it ended)."""
    envelope = {"id": "req_1", "error": {"code": "upstream_error", "message": "provider failed"}}
    named = {"job_id": "job_1", "status": "failed", "error": {"message": "moderated"}}
    api.on("POST", GEN, envelope, named)
    async with make_client() as client:
        with pytest.raises(AnsweredWithError):
            await client.submit(BODY)
        assert (await client.submit(BODY)).job_id == "job_1"


@pytest.mark.parametrize(
    "body",
    [
        {"error": {"message": "internal error", "type": "api_error", "code": None}},
        {"error": "upstream request failed"},
        {"detail": "Internal Server Error"},
    ],
    ids=["envelope-without-code", "error-as-text", "no-envelope"],
)
@pytest.mark.parametrize("status", [500, 502])
async def test_a_5xx_without_the_apis_error_code_on_submit_is_ambiguous(
    api, make_client, body, status
):
    """A 5xx whose body does not carry the API's error code may come after the job was
    made (the API or a proxy failed on the way back): not sent again, which could pay twice."""
    api.on("POST", GEN, httpx.Response(status, json=body), {"job_id": "second"})
    async with make_client() as client:
        with pytest.raises(AmbiguousSubmit) as info:
            await client.submit(BODY)
    assert info.value.status == status
    assert len(api.seen) == 1


@pytest.mark.parametrize("status", [504, 524])
async def test_gateway_timeout_on_submit_is_ambiguous(api, make_client, error_response, status):
    """A gateway timeout means the origin had the request and may have acted on it."""
    api.on("POST", GEN, error_response(status, "upstream timed out"))
    async with make_client() as client:
        with pytest.raises(AmbiguousSubmit) as info:
            await client.submit(BODY)
    assert info.value.status == status
    assert len(api.seen) == 1


async def test_see_other_on_submit_is_ambiguous_and_sent_once(api, make_client):
    """303 See Other answers a POST that was acted on (RFC 9110 15.4.4): the job may exist
    and be billed, so it is uncertain, never a refusal that a rerun would pay again."""
    api.on(
        "POST",
        GEN,
        httpx.Response(303, headers={"Location": "/v1/jobs/job_1"}),
        {"job_id": "second"},
    )
    async with make_client() as client:
        with pytest.raises(AmbiguousSubmit) as info:
            await client.submit(BODY)
    assert info.value.status == 303
    assert len(api.seen) == 1


async def test_gateway_timeout_can_be_configured_as_retryable(api, make_client, error_response):
    """With no ambiguous statuses configured, a 504 on submit is retried like any 5xx."""
    api.on("POST", GEN, error_response(504, "timed out", "upstream_timeout"), {"job_id": "j"})
    retry = RetryPolicy(random=lambda: 1.0, ambiguous_submit_statuses=frozenset())
    async with make_client(retry=retry) as client:
        assert (await client.submit(BODY)).job_id == "j"


async def test_connect_retry_then_ambiguity_is_still_ambiguous(api, make_client):
    """A safe connect failure followed by a read timeout ends ambiguous after two sends."""
    api.on("POST", GEN, httpx.ConnectError("refused"), httpx.ReadTimeout("silence"))
    async with make_client() as client:
        with pytest.raises(AmbiguousSubmit) as info:
            await client.submit(BODY)
    assert info.value.attempts == 2


async def test_retryable_failures_are_raised_after_the_last_attempt(
    api, make_client, error_response
):
    """After `max_attempts` definite refusals the last error is raised, still retryable."""
    api.on("POST", GEN, *[error_response(429, "slow down") for _ in range(3)])
    async with make_client(retry=RetryPolicy(max_attempts=3, random=lambda: 1.0)) as client:
        with pytest.raises(RateLimited) as info:
            await client.submit(BODY)
    assert (info.value.retryable, info.value.attempts, len(api.seen)) == (True, 3, 3)


async def test_connect_failures_exhausted_raise_connection_failed(api, make_client):
    """A submit that never got through raises ConnectionFailed: nothing was created."""
    api.on("POST", GEN, *[httpx.ConnectError("refused") for _ in range(2)])
    async with make_client(retry=RetryPolicy(max_attempts=2, random=lambda: 1.0)) as client:
        with pytest.raises(ConnectionFailed):
            await client.submit(BODY)


async def test_decimal_values_in_the_body_are_sent_as_numbers(api, make_client):
    """Decimals from the price data serialise as JSON numbers, integral ones as integers."""
    from decimal import Decimal

    api.on("POST", GEN, {"job_id": "j"})
    async with make_client() as client:
        await client.submit({"duration": Decimal("5"), "x": Decimal("0.5")})
    assert api.seen[0].request.content == b'{"duration": 5, "x": 0.5}'


@pytest.mark.parametrize("status", [500, 502])
async def test_proxy_error_page_on_submit_is_ambiguous(api, make_client, status):
    """A 5xx without the API's JSON envelope came from a proxy: the job may exist; no retry."""
    page = httpx.Response(
        status, content=b"<html>Bad Gateway</html>", headers={"content-type": "text/html"}
    )
    api.on("POST", GEN, page, {"job_id": "j"})
    async with make_client() as client:
        with pytest.raises(AmbiguousSubmit):
            await client.submit(BODY)
    assert len(api.seen) == 1


async def test_a_stop_during_the_backoff_after_a_refusal_sends_no_retry(
    api, make_client, error_response, clock
):
    """A submit refused with 429 waits to try again; the run stops meanwhile (Ctrl-C): the
    retry, which would create a paid job, never goes out, and the wait ends at once."""
    refused = error_response(429, "Slow down.", "rate_limited")
    refused.headers["retry-after-ms"] = "300000"
    api.on("POST", GEN, refused, {"job_id": "job_1"})
    halt = anyio.Event()
    raised: list[BaseException] = []

    async def submit() -> None:
        try:
            await client.submit(BODY, halt=halt)
        except SubmitWithdrawn as exc:
            raised.append(exc)

    async with make_client() as client, anyio.create_task_group() as group:
        group.start_soon(submit)
        while not api.seen:
            await anyio.lowlevel.checkpoint()
        halt.set()
    assert api.paths() == [GEN] and len(raised) == 1
    assert clock.monotonic() < 300


async def test_a_submit_waiting_for_its_turn_is_not_sent_once_stopped(api, make_client, clock):
    """Submits queued behind the rate limiter when the run stops are never sent."""
    api.default = lambda request: httpx.Response(200, json={"job_id": "j"})
    halt = anyio.Event()
    outcomes: list[str] = []

    async def submit() -> None:
        try:
            await client.submit(BODY, halt=halt)
            outcomes.append("sent")
        except SubmitWithdrawn:
            outcomes.append("withdrawn")

    async with make_client(rpm=1) as client, anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(submit)
        while not api.seen:
            await anyio.lowlevel.checkpoint()
        halt.set()
    assert api.paths() == [GEN]
    assert sorted(outcomes) == ["sent", "withdrawn", "withdrawn"]
    assert clock.monotonic() < 60
