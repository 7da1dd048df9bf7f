"""After the API's first 401 the client sends nothing more to it (issue 9)."""

from __future__ import annotations

import anyio
import httpx
import pytest

from kling_batch.errors import AuthError, KeyRefused

pytestmark = pytest.mark.anyio

SUBMIT = "/v1/videos/generations"


async def attempt(results: list[object], call) -> None:
    """Run one client call; keep its result or its AuthError."""
    try:
        results.append(await call())
    except AuthError as exc:
        results.append(exc)


async def test_after_the_first_401_nothing_more_is_sent(
    api, make_client, error_response, tmp_path, clock
):
    """A 403 refuses only its own request. After the first 401, requests waiting behind the
    rate limiter never go out: each raises the same AuthError at once, as later ones do."""
    image = tmp_path / "a.png"
    image.write_bytes(b"png")
    refusals = (
        error_response(403, "Not allowed.", "forbidden"),
        error_response(401, "Bad key.", "invalid_api_key"),
    )
    api.on("POST", SUBMIT, *refusals)
    api.default = lambda request: httpx.Response(200, json={"job_id": "j", "status": "queued"})
    results: list[object] = []
    async with make_client(rpm=6) as client:
        with pytest.raises(AuthError):
            await client.submit({"prompt": "forbidden"})
        assert (await client.get_job("j")).raw_status == "queued"  # a 403 stops nothing else
        start = clock.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(attempt, results, lambda: client.submit({"prompt": "p"}))
            await anyio.lowlevel.checkpoint()
            tg.start_soon(attempt, results, lambda: client.submit({"prompt": "q"}))
            tg.start_soon(attempt, results, lambda: client.get_job("j"))
            tg.start_soon(attempt, results, lambda: client.upload(image))
            tg.start_soon(attempt, results, client.list_jobs)
        await attempt(results, lambda: client.get_job("j"))
    assert [seen.request.url.path for seen in api.seen] == [SUBMIT, "/v1/jobs/j", SUBMIT]
    assert len(results) == 6 and all(isinstance(r, AuthError) for r in results)
    assert {(r.status, r.code, r.message) for r in results} == {  # type: ignore[attr-defined]
        (401, "invalid_api_key", "Bad key.")
    }
    assert sum(isinstance(r, KeyRefused) for r in results) == 5
    assert clock.monotonic() - start < 3 * 10.2  # refused at once, not each at its turn
