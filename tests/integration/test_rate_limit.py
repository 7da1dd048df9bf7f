"""The client's request budget, measured where it matters: on the emulator's side of the socket."""

from __future__ import annotations

import bisect

import anyio
import pytest

from kling_batch.client import EmpirioClient

pytestmark = pytest.mark.anyio

BODY = {"model": "kling-o3", "prompt": "a fox runs through snow"}
WINDOW = 60.0  # model seconds
SCALE = 0.01


async def hammer(client: EmpirioClient, *, callers: int, requests: int) -> int:
    """`callers` tasks share `requests` API calls (submit, then polls, model reads, lists)."""
    job = (await client.submit(BODY)).job_id
    left = requests - 1
    done = 1

    async def caller() -> None:
        nonlocal left, done
        while left > 0:
            left -= 1
            kind = left % 3
            if kind == 0:
                await client.get_job(job)
            elif kind == 1:
                await client.get_model()
            else:
                await client.list_jobs(limit=5)
            done += 1

    async with anyio.create_task_group() as tg:
        for _ in range(callers):
            tg.start_soon(caller)
    return done


def busiest_window(model_times: list[float], window: float) -> int:
    """The most requests any half-open `[t, t + window)` holds (windows start at a request)."""
    times = sorted(model_times)
    return max(bisect.bisect_left(times, t + window) - i for i, t in enumerate(times))


async def test_no_model_minute_holds_more_than_rpm_requests(serve, connect):
    """40 callers making 150 requests at rpm=60: no 60-model-second window holds more than 60."""
    served = serve(rpm=0, time_scale=SCALE)
    async with connect(served, rpm=60) as client:
        done = await hammer(client, callers=40, requests=150)
    counted = [e for e in served.emulator.journal.entries() if e.counted]
    assert done == len(counted) == 150
    assert busiest_window([e.mono / SCALE for e in counted], WINDOW) <= 60


async def test_client_at_the_account_rpm_never_meets_a_429(serve, connect):
    """A client at rpm=50 against an account limit of 50 per model minute gets no 429."""
    served = serve(rpm=50, time_scale=SCALE)
    async with connect(served, rpm=50) as client:
        done = await hammer(client, callers=20, requests=120)
    assert done == 120
    assert 429 not in {e.status for e in served.emulator.journal.entries()}


async def test_client_over_the_account_budget_still_completes_every_request(serve, connect):
    """A client at rpm=120 against an account limit of 30 meets 429s yet finishes all 90 calls."""
    served = serve(rpm=30, time_scale=SCALE)
    async with connect(served, rpm=120) as client:
        done = await hammer(client, callers=20, requests=90)
    codes = [e.status for e in served.emulator.journal.entries()]
    assert done == codes.count(200) == 90
    assert 429 in codes
