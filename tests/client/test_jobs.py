"""Reading jobs: status words, result URLs, expiry, errors and cost in every plausible shape."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import httpx
import pytest

from kling_batch.errors import ConnectionFailed, JobNotFound

pytestmark = pytest.mark.anyio

JOB = "/v1/jobs/job_1"
URL = "https://cdn.example/out.mp4?token=t"


async def read(api, make_client, payload):
    api.on("GET", JOB, payload)
    async with make_client() as client:
        return await client.get_job("job_1")


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("completed", "succeeded"),
        ("succeeded", "succeeded"),
        ("failed", "failed"),
        ("error", "failed"),
        ("cancelled", "failed"),
        ("canceled", "failed"),
        ("queued", "pending"),
        ("processing", "pending"),
        ("pending", "pending"),
        ("something_new", "pending"),
        ("COMPLETED", "succeeded"),
    ],
)
async def test_status_word_is_normalised(api, make_client, raw, status):
    """Success and failure words map to succeeded/failed; anything else is still pending."""
    job = await read(api, make_client, {"job_id": "job_1", "status": raw})
    assert (job.status, job.raw_status) == (status, raw)


async def test_missing_status_reads_as_pending(api, make_client):
    """A job object without a status is treated as still running."""
    job = await read(api, make_client, {"job_id": "job_1"})
    assert (job.status, job.raw_status) == ("pending", "")


async def test_job_wrapped_in_data_is_unwrapped(api, make_client):
    """A job object nested under `data` is read like a top-level one."""
    job = await read(api, make_client, {"data": {"status": "completed", "video_url": URL}})
    assert (job.status, job.video_url) == ("succeeded", URL)


@pytest.mark.parametrize(
    "payload",
    [
        {"result": {"video_url": URL}},
        {"result": {"url": URL}},
        {"result": {"output_video": URL}},
        {"result": {"data": [{"url": URL, "content_type": "video/mp4"}]}},
        {"result": {"videos": [{"url": URL}]}},
        {"result": {"thumbnail_url": "https://cdn.example/t.jpg", "video": {"url": URL}}},
        {"output": {"video_url": URL}},
        {"output": [URL]},
        {"data": [{"url": URL}]},
        {"videos": [{"url": URL}], "data": {"video_url": URL}},
        {"video_url": URL},
    ],
    ids=[
        "result.video_url",
        "result.url",
        "result.*video*",
        "result.data[].url",
        "result.videos[].url",
        "skips-thumbnail",
        "output.video_url",
        "output[]",
        "data[].url",
        "data.video_url",
        "top-level",
    ],
)
async def test_video_url_is_found_wherever_the_api_puts_it(api, make_client, payload):
    """The video URL is found under result, output or data, as object keys or in lists."""
    job = await read(api, make_client, {"job_id": "job_1", "status": "completed", **payload})
    assert job.video_url == URL


@pytest.mark.parametrize("kind", ["content_type", "mime_type", "type"])
async def test_a_listed_file_that_says_it_is_an_image_is_not_the_video(api, make_client, kind):
    """`data[]` may list a poster frame before the video (OpenAI-style files, each saying
    what it is): the video is the file that says so, never the first URL. A poster taken
    for the video fails every download check, and the paid video is never collected."""
    files = [
        {"url": "https://cdn.example/poster.jpg", kind: "image/jpeg"},
        {"url": URL, kind: "video/mp4"},
    ]
    job = await read(api, make_client, {"status": "completed", "result": {"data": files}})
    assert job.video_url == URL


async def test_non_http_strings_are_not_video_urls(api, make_client):
    """Only http(s) strings count as a video URL."""
    job = await read(api, make_client, {"status": "completed", "result": {"video_url": "pending"}})
    assert job.video_url is None


@pytest.mark.parametrize(
    "payload",
    [
        {"result": {"video_url": URL, "expires_at": "2026-07-08T12:03:10Z"}},
        {"result": {"video_url": URL, "expires_at": 1783512190}},
        {"result": {"video_url": "https://cdn.example/v.mp4?expires=1783512190&sig=x"}},
        {"result": {"video_url": "https://cdn.example/v.mp4?Expires=2026-07-08T12:03:10Z"}},
    ],
    ids=["iso", "unix", "url-unix", "url-iso"],
)
async def test_expiry_is_read_from_the_result_or_the_url(api, make_client, payload):
    """`expires_at` (ISO or unix) or the URL's `expires=` query gives an aware UTC expiry."""
    job = await read(api, make_client, {"status": "completed", **payload})
    assert job.expires_at == datetime(2026, 7, 8, 12, 3, 10, tzinfo=UTC)


async def test_expiry_is_none_when_absent(api, make_client):
    """No expiry anywhere gives None rather than a guess."""
    job = await read(api, make_client, {"status": "completed", "result": {"video_url": URL}})
    assert job.expires_at is None


@pytest.mark.parametrize(
    ("payload", "message", "code"),
    [
        ({"error": {"code": "upstream_error", "message": "boom"}}, "boom", "upstream_error"),
        ({"error": "moderation blocked"}, "moderation blocked", None),
        ({"error": None, "message": "ran out of time"}, "ran out of time", None),
        ({}, "job failed without an error message", None),
    ],
    ids=["object", "string", "top-level-message", "none"],
)
async def test_error_of_a_failed_job_is_read_in_every_shape(
    api, make_client, payload, message, code
):
    """A failed job's error is an object, a string or a top-level message; never missing."""
    job = await read(api, make_client, {"status": "failed", **payload})
    assert job.error is not None
    assert (job.error.message, job.error.code) == (message, code)


@pytest.mark.parametrize("raw", ["processing", "completed", "rendering", None])
async def test_an_error_object_fails_the_job_whatever_its_status_word(api, make_client, raw):
    """An `error` object with a message or code is a failure, even beside a running word."""
    error = {"code": "upstream_error", "message": "the worker crashed"}
    job = await read(api, make_client, {"status": raw, "error": error})
    assert job.status == "failed"
    assert job.error is not None
    assert (job.error.message, job.error.code) == ("the worker crashed", "upstream_error")


async def test_a_completed_job_offering_its_video_is_no_failure_despite_an_error(api, make_client):
    """A job the API calls completed, with its video, was paid for: an `error` object
    beside it (a warning) must not fail it, or its video is never downloaded and the
    next run pays for the render again."""
    error = {"code": "audio_failed", "message": "sound could not be generated"}
    job = await read(
        api, make_client, {"status": "completed", "result": {"video_url": URL}, "error": error}
    )
    assert (job.status, job.video_url) == ("succeeded", URL)


@pytest.mark.parametrize("error", [None, {}, {"code": None, "message": ""}])
async def test_an_empty_error_object_is_no_failure(api, make_client, error):
    """A null or empty `error` beside a running status leaves the job pending."""
    job = await read(api, make_client, {"status": "processing", "error": error})
    assert (job.status, job.error) == ("pending", None)


async def test_pending_job_has_no_error(api, make_client):
    """A running job with a null error reports none."""
    job = await read(api, make_client, {"status": "processing", "error": None, "message": "hi"})
    assert job.error is None


@pytest.mark.parametrize(
    "payload",
    [
        {"billing": {"amount_usd": 1.4}},
        {"cost": "1.40"},
        {"cost": {"amount_usd": "1.4"}},
        {"usage": {"cost_usd": 1.4}},
        {"cost_usd": "$1.40"},
    ],
    ids=["billing.amount_usd", "cost-string", "cost.amount_usd", "usage.cost_usd", "dollar"],
)
async def test_billed_cost_is_read_as_a_decimal(api, make_client, payload):
    """Reported cost becomes an exact Decimal from any of the plausible keys."""
    job = await read(api, make_client, {"status": "completed", **payload})
    assert job.billed_usd == Decimal("1.4")


async def test_a_per_second_price_is_not_read_as_the_bill(api, make_client):
    """`price` is what the API calls a rate per unit (`pricing_rows[].price`, per
    video-second): a job echoing its row's price was billed for every second, so reading
    it as the bill under-reports the cost five times over for a 5 s render."""
    billing = {"label": "Pro T2V/I2V Sound", "unit": "video-second", "price": 0.28}
    job = await read(api, make_client, {"status": "completed", "billing": billing})
    assert job.billed_usd is None  # unknown: the estimate stands


async def test_billed_cost_is_none_when_absent_or_garbage(api, make_client):
    """A missing or unparseable cost is None, not zero."""
    job = await read(api, make_client, {"status": "completed", "cost": "free"})
    assert job.billed_usd is None


@pytest.mark.parametrize(("raw", "progress"), [(0.25, 0.25), (40, 0.4), ("0.5", 0.5), (None, None)])
async def test_progress_is_a_fraction(api, make_client, raw, progress):
    """Progress is a 0..1 fraction; a value above 1 is read as a percentage."""
    job = await read(api, make_client, {"status": "processing", "progress": raw})
    assert job.progress == progress


async def test_raw_payload_is_kept(api, make_client):
    """The untouched job object is available for fields the client does not model."""
    payload = {"status": "processing", "created_at": "2026-07-01T12:00:00Z"}
    job = await read(api, make_client, payload)
    assert job.raw == payload


async def test_poll_url_from_submission_is_used(api, make_client):
    """A poll URL on the API host is requested as given, with the key."""
    api.on("GET", "/v1/jobs/job_1/status", {"status": "queued"})
    async with make_client() as client:
        await client.get_job("job_1", "https://api.empiriolabs.ai/v1/jobs/job_1/status")
    assert api.paths() == ["/v1/jobs/job_1/status"]


async def test_foreign_poll_url_is_replaced_by_the_api_path(api, make_client):
    """A poll URL on another host is never called; the API's own job path is used."""
    api.on("GET", JOB, {"status": "queued"})
    async with make_client() as client:
        await client.get_job("job_1", "https://tracker.example/v1/jobs/job_1")
    assert [s.request.url.host for s in api.seen] == ["api.empiriolabs.ai"]


async def test_unknown_job_raises_job_not_found(api, make_client, error_response):
    """A 404 on a job (unknown, or state dropped an hour after completion) is JobNotFound."""
    api.on("GET", JOB, error_response(404, "job not found", code="not_found"))
    async with make_client() as client:
        with pytest.raises(JobNotFound) as info:
            await client.get_job("job_1")
    assert (info.value.status, info.value.retryable) == (404, False)


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ReadTimeout("slow"),
        httpx.ReadError("reset"),
        httpx.RemoteProtocolError("dropped"),
        httpx.WriteTimeout("stuck"),
    ],
    ids=["ReadTimeout", "ReadError", "RemoteProtocolError", "WriteTimeout"],
)
async def test_read_failures_on_a_poll_are_retried(api, make_client, exc):
    """A GET is safe to repeat, so any transport failure is retried."""
    api.on("GET", JOB, exc, {"status": "completed", "video_url": URL})
    async with make_client() as client:
        assert (await client.get_job("job_1")).status == "succeeded"
    assert len(api.seen) == 2


async def test_poll_failures_exhausted_raise_connection_failed(api, make_client):
    """A poll that keeps failing raises the retryable ConnectionFailed for the caller to resume."""
    api.on("GET", JOB, *[httpx.ReadTimeout("slow") for _ in range(6)])
    async with make_client() as client:
        with pytest.raises(ConnectionFailed) as info:
            await client.get_job("job_1")
    assert (info.value.retryable, info.value.attempts) == (True, 6)


async def test_unreadable_poll_body_is_retried(api, make_client):
    """An HTML page with a 200 on a poll is a glitch: the GET is repeated."""
    api.on("GET", JOB, httpx.Response(200, text="<html>"), {"status": "queued"})
    async with make_client() as client:
        assert (await client.get_job("job_1")).raw_status == "queued"


@pytest.mark.parametrize(
    "payload",
    [
        {"data": [{"job_id": "a", "status": "completed"}, {"id": "b", "status": "processing"}]},
        {"jobs": [{"job_id": "a", "status": "completed"}, {"id": "b", "status": "processing"}]},
        [{"job_id": "a", "status": "completed"}, {"id": "b", "status": "processing"}],
    ],
    ids=["data", "jobs", "bare-list"],
)
async def test_list_jobs_reads_every_list_shape(api, make_client, payload):
    """The job list may be under `data`, under `jobs`, or the body itself."""
    api.on("GET", "/v1/jobs", httpx.Response(200, json=payload))
    async with make_client() as client:
        jobs = await client.list_jobs(status="completed", limit=10)
    assert jobs is not None
    assert [(j.job_id, j.status) for j in jobs] == [("a", "succeeded"), ("b", "pending")]
    assert dict(api.seen[0].request.url.params) == {"status": "completed", "limit": "10"}


@pytest.mark.parametrize("status", [404, 405])
async def test_list_jobs_not_offered_is_none(api, make_client, error_response, status):
    """A 404 or 405 on the provisional list path means the API does not offer it."""
    api.on("GET", "/v1/jobs", error_response(status, "no such route"))
    async with make_client() as client:
        assert await client.list_jobs() is None


async def test_cancel_returns_the_job_state(api, make_client):
    """Cancelling posts to the provisional cancel path and returns the job as reported."""
    api.on("POST", "/v1/jobs/job_1/cancel", {"job_id": "job_1", "status": "cancelled"})
    async with make_client() as client:
        job = await client.cancel_job("job_1")
    assert job is not None
    assert job.status == "failed"


@pytest.mark.parametrize("status", [404, 405])
async def test_cancel_not_offered_is_none(api, make_client, error_response, status):
    """A 404 or 405 on the provisional cancel path gives None."""
    api.on("POST", "/v1/jobs/job_1/cancel", error_response(status, "nope"))
    async with make_client() as client:
        assert await client.cancel_job("job_1") is None


async def test_get_model_returns_the_description(api, make_client):
    """The model description is returned as parsed JSON."""
    api.on("GET", "/v1/models/kling-o3", {"id": "kling-o3", "pricing_rows": []})
    async with make_client() as client:
        assert (await client.get_model())["id"] == "kling-o3"
