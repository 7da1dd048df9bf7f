"""The shared request budget: never more than rpm in any 60-second window, evenly spaced
with a burst of two, fair."""

from __future__ import annotations

import itertools

import anyio
import httpx
import pytest

from kling_batch.client import RATE_HEADROOM
from kling_batch.clock import VirtualClock
from kling_batch.ratelimit import RateLimiter

pytestmark = pytest.mark.anyio


def busiest_window(times: list[float], width: float = 60.0) -> int:
    """The most timestamps any half-open window [t, t + width) holds."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - width:
            start += 1
        best = max(best, end - start + 1)
    return best


@pytest.fixture
def always_queued(api) -> None:
    api.default = lambda request: httpx.Response(200, json={"status": "queued"})


async def hammer(client, callers: int, total: int) -> None:
    """`callers` concurrent tasks share `total` polls."""
    counter = iter(range(total))

    async def worker() -> None:
        for n in counter:
            await client.get_job(f"job_{n}")

    async with anyio.create_task_group() as tg:
        for _ in range(callers):
            tg.start_soon(worker)


async def test_no_window_holds_more_than_rpm(api, make_client, always_queued):
    """50 callers making 300 requests at rpm=60 never put more than 60 in any 60-s window."""
    async with make_client(rpm=60) as client:
        await hammer(client, callers=50, total=300)
    times = [s.at for s in api.seen]
    assert len(times) == 300
    # The client keeps 2% headroom, so a full window holds 59, never 61.
    assert busiest_window(times) == 59


async def test_requests_go_two_at_once_then_evenly_spaced(api, make_client, always_queued):
    """The first two requests go out at once, the others one interval apart: 60 / (rpm - 1)
    seconds, plus 2% headroom (so a full window holds rpm, the burst included)."""
    interval = 60.0 * RATE_HEADROOM / 59
    async with make_client(rpm=60) as client:
        await hammer(client, callers=50, total=120)
    times = [s.at for s in api.seen]
    assert times[:2] == [0.0, 0.0]
    assert min(b - a for a, b in itertools.pairwise(times[1:])) == pytest.approx(interval)
    assert times[-1] == pytest.approx(118 * interval)


@pytest.mark.parametrize("gaps", [(0, 0, 0, 0, 0, 0), (0, 30, 0, 31, 0, 59, 0), (13, 0, 47, 0, 12)])
async def test_no_window_holds_more_than_rpm_whatever_the_pauses(clock, gaps):
    """Requests asked in twos after idle spells of any length (each spell lets a burst of
    two go again): still at most rpm in any 60-second window."""
    limiter = RateLimiter(5, clock=clock)
    times: list[float] = []
    for gap in gaps * 4:
        await clock.sleep(gap)
        for _ in range(2):
            await limiter.acquire()
            times.append(clock.monotonic())
    assert busiest_window(times) <= 5
    assert busiest_window(times) == 5  # and the budget is used: the limit is reached


async def test_default_rate_is_fifty_per_minute(api, make_client, always_queued):
    """The default budget of 50 rpm: two at once, then 60/49 s (plus 2%) apart; no
    60-second window holds more than 50."""
    async with make_client(rpm=50) as client:
        await hammer(client, callers=10, total=101)
    times = [s.at for s in api.seen]
    assert busiest_window(times) == 50
    assert times[-1] == pytest.approx(99 * 60.0 * RATE_HEADROOM / 49)


async def test_every_api_operation_shares_one_budget(api, make_client, tmp_path, always_queued):
    """Submits, polls, uploads, lists and model reads all draw from the same budget."""
    image = tmp_path / "a.png"
    image.write_bytes(b"png")
    api.on("POST", "/v1/videos/generations", {"job_id": "j"})
    api.on("POST", "/v1/files/upload", {"path": "bunny://a"})
    api.on("GET", "/v1/jobs", {"data": []})
    api.on("GET", "/v1/models/kling-o3", {"id": "kling-o3"})
    async with make_client(rpm=6) as client, anyio.create_task_group() as tg:
        tg.start_soon(client.submit, {"prompt": "p"})
        tg.start_soon(client.get_job, "j")
        tg.start_soon(client.upload, image)
        tg.start_soon(client.list_jobs)
        tg.start_soon(client.get_model)
    interval = 60.0 * RATE_HEADROOM / 5  # rpm 6: two at once, then 60 / 5 s apart
    assert sorted(s.at for s in api.seen) == pytest.approx(
        [0, 0, interval, 2 * interval, 3 * interval]
    )


@pytest.mark.parametrize("rpm", [None, 0])
async def test_no_rpm_means_no_waiting(api, make_client, always_queued, rpm):
    """rpm None or 0 disables the limiter."""
    async with make_client(rpm=rpm) as client:
        await hammer(client, callers=20, total=100)
    assert {s.at for s in api.seen} == {0.0}


async def test_callers_are_served_first_come_first_served(clock):
    """Waiters acquire in the order they asked."""
    limiter = RateLimiter(60, clock=clock)
    order: list[int] = []

    async def take(n: int) -> None:
        await limiter.acquire()
        order.append(n)

    async with anyio.create_task_group() as tg:
        for n in range(20):
            tg.start_soon(take, n)
            await anyio.lowlevel.checkpoint()
    assert order == list(range(20))


async def test_cancelled_waiter_does_not_stall_the_queue(clock):
    """A waiter cancelled while queued leaves; the others keep their pace."""
    limiter = RateLimiter(60, clock=clock)
    await limiter.acquire()  # the first of the burst of two: "a" takes the second
    got: list[tuple[str, float]] = []

    async def take(name: str) -> None:
        await limiter.acquire()
        got.append((name, clock.monotonic()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(take, "a")
        await anyio.lowlevel.checkpoint()
        with anyio.CancelScope() as doomed:
            doomed.cancel()
            await take("cancelled")
        tg.start_soon(take, "b")
        tg.start_soon(take, "c")
    assert got == [("a", 0.0), ("b", pytest.approx(60 / 59)), ("c", pytest.approx(120 / 59))]


async def test_cancelled_head_leaves_no_stale_turn(clock):
    """A caller cancelled while sleeping for its slot leaves no stale turn behind."""
    limiter = RateLimiter(60, clock=clock)
    await limiter.acquire()
    await limiter.acquire()  # the burst of two, used up
    got: list[float] = []

    async def take() -> None:
        await limiter.acquire()
        got.append(clock.monotonic())

    async with anyio.create_task_group() as tg:
        with anyio.move_on_after(0) as scope:  # cancelled at its first wait
            await take()
        assert scope.cancelled_caught
        tg.start_soon(take)
    assert got == [pytest.approx(60 / 59)]


async def test_a_429_pauses_every_caller(api, make_client, error_response, clock):
    """After one 429 with Retry-After: 10, no caller sends anything for those 10 seconds."""
    limited = error_response(429, "slow down")
    limited.headers["Retry-After"] = "10"
    first = [True]

    def reply(request: httpx.Request) -> httpx.Response:
        if first[0]:
            first[0] = False
            return limited
        return httpx.Response(200, json={"status": "queued"})

    api.default = reply
    async with make_client(rpm=600) as client:
        await hammer(client, callers=5, total=20)
    times = [s.at for s in api.seen]
    assert times[0] == 0.0
    assert all(t >= 10.0 for t in times[1:])
    assert busiest_window(times[1:], width=60.0) <= 600


async def test_pause_applies_even_without_a_rate(clock):
    """An unlimited limiter still honours a pause."""
    limiter = RateLimiter(None, clock=clock)
    limiter.pause_for(5)
    await limiter.acquire()
    assert clock.monotonic() == 5.0


async def test_a_longer_pause_during_a_wait_is_respected(clock):
    """A pause set while a caller sleeps for its slot pushes that caller back."""
    limiter = RateLimiter(60, clock=clock)
    await limiter.acquire()
    await limiter.acquire()  # the burst of two, used up
    times: list[float] = []

    async def take() -> None:
        await limiter.acquire()
        times.append(clock.monotonic())

    async def pause_soon() -> None:
        await clock.sleep(0.5)
        limiter.pause_for(30)

    async with anyio.create_task_group() as tg:
        tg.start_soon(take)
        tg.start_soon(pause_soon)
    assert times == [30.5]


def test_interval_follows_the_rate(clock: VirtualClock):
    """The spacing between requests is the period divided by rpm - 1 (the burst of two
    takes the other), or by rpm below 3 (no burst)."""
    assert RateLimiter(50, clock=clock).interval == pytest.approx(60 / 49)
    assert RateLimiter(2, clock=clock).interval == pytest.approx(30.0)
    assert RateLimiter(None, clock=clock).interval == 0.0


def test_negative_rate_is_refused(clock: VirtualClock):
    """A negative rpm is a programming error."""
    with pytest.raises(ValueError, match="rpm"):
        RateLimiter(-1, clock=clock)


async def test_a_shared_limiter_spans_clients(api, make_client, always_queued, clock):
    """Two clients given the same limiter share one budget."""
    shared = RateLimiter(60, clock=clock)
    one, two = make_client(limiter=shared), make_client(limiter=shared)
    async with one, two, anyio.create_task_group() as tg:
        for client in (one, two, one, two):
            tg.start_soon(client.get_job, "j")
    assert sorted(s.at for s in api.seen) == pytest.approx([0, 0, 60 / 59, 120 / 59])
