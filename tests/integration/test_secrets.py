"""The API key stays a secret: not in the emulator's journal, not in any error the client raises."""

from __future__ import annotations

import json
import traceback
from decimal import Decimal

import httpx
import pytest

from kling_batch.client import RetryPolicy, Timeouts
from kling_batch.errors import (
    AmbiguousSubmit,
    ApiError,
    AuthError,
    ConnectionFailed,
    CreditsError,
    RateLimited,
    ResultExpired,
    ShotRejected,
    TruncatedDownload,
)

pytestmark = pytest.mark.anyio

KEY = "sk-empiriolabs-INTEGRATION-SECRET-7f3a9c1e"
WRONG = "sk-empiriolabs-WRONG-SECRET-0b8d2e64"
BODY = {"model": "kling-o3", "prompt": "a fox runs through snow"}
ONCE = RetryPolicy(max_attempts=1)


def leaks(exc: BaseException, *secrets: str) -> list[str]:
    """Every secret found in the exception's text, repr, attributes or traceback chain."""
    text = "".join(traceback.format_exception(exc)) + repr(exc) + repr(vars(exc))
    return [s for s in secrets if s in text]


async def test_journal_never_records_the_key(serve, connect, render, shoe_png, tmp_path):
    """After submits, polls, an upload, a download, a list, a cancel and errors, no journal
    entry (in memory or as served) contains the key."""
    served = serve(api_key=KEY)
    async with connect(served) as client:
        upload = await client.upload(shoe_png)
        state = await render(client, image=upload.path)
        await client.download(state.video_url, tmp_path / "out.mp4")
        await client.list_jobs()
        await client.cancel_job(state.job_id)
        with pytest.raises(ShotRejected):
            await client.submit({**BODY, "duration": 20})
    async with connect(served, api_key=WRONG) as client:
        with pytest.raises(AuthError):
            await client.get_model()
    async with httpx.AsyncClient() as plain:
        served_json = (await plain.get(f"{served.base_url}/_emulator/journal")).text
    entries = served.emulator.journal.entries()
    recorded = json.dumps([e.to_json() for e in entries]) + repr(entries) + served_json
    assert len(entries) >= 8
    assert KEY not in recorded
    assert WRONG not in recorded


async def test_auth_error_text_has_neither_key(serve, connect):
    """An AuthError names neither the key that was sent nor the account's real key."""
    served = serve(api_key=KEY)
    async with connect(served, api_key=WRONG) as client:
        with pytest.raises(AuthError) as info:
            await client.submit(BODY)
    assert leaks(info.value, KEY, WRONG) == []


async def _rejected(serve, connect, tmp_path):
    async with connect(serve(api_key=KEY)) as client:
        await client.submit({**BODY, "duration": 20})


async def _no_credits(serve, connect, tmp_path):
    async with connect(serve(api_key=KEY, credits=Decimal("0.50"))) as client:
        await client.submit(BODY)


async def _rate_limited(serve, connect, tmp_path):
    async with connect(serve(api_key=KEY, faults=("storm=1000",)), retry=ONCE) as client:
        await client.get_model()


async def _connection_failed(serve, connect, tmp_path):
    served = serve(api_key=KEY, faults=("drop=1.0,on=models",))
    async with connect(served, retry=RetryPolicy(max_attempts=2, random=lambda: 0.0)) as client:
        await client.get_model()


async def _timed_out(serve, connect, tmp_path):
    served = serve(api_key=KEY, faults=("slow=1.0,on=models,delay=300",), time_scale=0.001)
    async with connect(served, retry=ONCE, timeouts=Timeouts(poll=0.1)) as client:
        await client.get_model()


async def _ambiguous(serve, connect, tmp_path):
    async with connect(serve(api_key=KEY, faults=("ambiguous=first1",))) as client:
        await client.submit(BODY)


async def _truncated(serve, connect, tmp_path):
    async with connect(serve(api_key=KEY, faults=("truncate=1.0",)), retry=ONCE) as client:
        state = await client.get_job((await client.submit(BODY)).job_id)
        await client.download(state.video_url, tmp_path / "out.mp4")


async def _expired(serve, connect, tmp_path):
    served = serve(api_key=KEY)
    async with connect(served) as client:
        state = await client.get_job((await client.submit(BODY)).job_id)
        served.emulator.advance(8 * 24 * 3600)
        await client.download(state.video_url, tmp_path / "out.mp4")


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        (_rejected, ShotRejected),
        (_no_credits, CreditsError),
        (_rate_limited, RateLimited),
        (_connection_failed, ConnectionFailed),
        (_timed_out, ConnectionFailed),
        (_ambiguous, AmbiguousSubmit),
        (_truncated, TruncatedDownload),
        (_expired, ResultExpired),
    ],
    ids=lambda v: getattr(v, "__name__", "").lstrip("_"),
)
async def test_no_error_text_contains_the_key(serve, connect, tmp_path, scenario, expected):
    """Each kind of failure the emulator can cause is raised without the key anywhere in it."""
    with pytest.raises(ApiError) as info:
        await scenario(serve, connect, tmp_path)
    assert type(info.value) is expected
    assert leaks(info.value, KEY) == []
