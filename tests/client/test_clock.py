"""Clocks: virtual time for tests, scaled time for emulator runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest

from kling_batch import clock as clock_module
from kling_batch.clock import ScaledClock, SystemClock, VirtualClock, model_seconds
from kling_batch.ratelimit import RetryPolicy

pytestmark = pytest.mark.anyio


async def test_virtual_sleepers_wake_in_deadline_order(clock):
    """Concurrent sleepers wake in order of their deadlines, at those virtual times."""
    woke: list[tuple[str, float]] = []

    async def nap(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.monotonic()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(nap, "slow", 30)
        tg.start_soon(nap, "fast", 5)
        tg.start_soon(nap, "mid", 10)
    assert woke == [("fast", 5.0), ("mid", 10.0), ("slow", 30.0)]


async def test_virtual_time_waits_for_busy_tasks(clock):
    """Time does not jump while another task still has work before its next sleep."""
    seen: list[float] = []

    async def busy() -> None:
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        seen.append(clock.monotonic())

    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.sleep, 100)
        tg.start_soon(busy)
    assert seen == [0.0]


async def test_virtual_sleep_chains_add_up(clock):
    """Sleeping after waking continues from the new time."""
    await clock.sleep(2)
    await clock.sleep(3)
    assert (clock.monotonic(), clock.sleeps) == (5.0, [2, 3])


async def test_virtual_wall_clock_follows_virtual_time(clock):
    """`now()` advances with the virtual monotonic time."""
    start = clock.now()
    await clock.sleep(90)
    assert clock.now() - start == timedelta(seconds=90)


async def test_cancelled_virtual_sleeper_lets_others_run(clock):
    """A sleeper cancelled mid-sleep does not block later sleepers."""
    with anyio.move_on_after(0):
        await clock.sleep(50)
    await clock.sleep(1)
    assert clock.monotonic() == 1.0


async def test_scaled_clock_sleeps_scaled_real_time(monkeypatch):
    """ScaledClock(0.01).sleep(10) asks for 0.1 real seconds."""
    asked: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        asked.append(seconds)

    monkeypatch.setattr(clock_module.anyio, "sleep", fake_sleep)
    await ScaledClock(0.01).sleep(10)
    assert asked == [pytest.approx(0.1)]


def test_scaled_clock_runs_monotonic_faster(monkeypatch):
    """One real second reads as 1/time_scale model seconds."""
    real = iter([100.0, 101.0])
    monkeypatch.setattr(clock_module.time, "monotonic", lambda: next(real))
    scaled = ScaledClock(0.01)
    assert scaled.monotonic() - 10_000.0 == 0.0
    assert scaled.monotonic() == pytest.approx(10_100.0)


def test_scaled_clock_wall_time_is_real():
    """Absolute time is never scaled: now() is the real UTC time."""
    now = ScaledClock(0.01).now()
    assert now.tzinfo is UTC
    assert abs(now - datetime.now(UTC)) < timedelta(minutes=1)


def test_model_seconds_converts_real_durations():
    """A real second is 100 model seconds at a 0.01 time scale."""
    assert model_seconds(ScaledClock(0.01), 1.0) == pytest.approx(100.0)
    assert model_seconds(SystemClock(), 1.0) == 1.0


@pytest.mark.parametrize("scale", [0, -1])
def test_scale_must_be_positive(scale):
    """A zero or negative time scale is refused."""
    with pytest.raises(ValueError, match="time_scale"):
        ScaledClock(scale)


def test_retry_policy_needs_an_attempt():
    """max_attempts below 1 is refused."""
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


def test_virtual_clock_is_a_clock():
    """VirtualClock has the Clock shape the client takes."""
    clock: clock_module.Clock = VirtualClock()
    assert clock.time_scale == 1.0
