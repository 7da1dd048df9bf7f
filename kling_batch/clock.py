"""Time for the client and executor: real, scaled (for emulator runs) and virtual (for tests).

Two kinds of time, kept apart on purpose:

- *Model seconds*: every duration the client reasons about (rate-limit windows, backoff,
  poll pacing, server-requested waits once converted) is in model seconds, read from
  `monotonic()` and waited with `sleep()`. With the real API a model second is a real second.
- *Real time*: what crosses the wire. `now()` is an aware UTC wall-clock datetime for
  absolute timestamps a server sent (`expires_at`, an HTTP-date `Retry-After`); these are
  never scaled. Durations in headers (`Retry-After`, `retry-after-ms`) are real seconds and
  enter the client through `model_seconds(clock, real)`. Network timeouts stay real.

`time_scale` is real seconds per model second: `ScaledClock(0.01)` sleeps 0.01 s for every
model second, so a run against `kling-batch emulator --time-scale 0.01` keeps its logic in
the emulator's model seconds (its RPM window is scaled too, so `rpm` means per model minute).
"""

from __future__ import annotations

import heapq
import itertools
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import anyio
import anyio.lowlevel

__all__ = ["Clock", "ScaledClock", "SystemClock", "VirtualClock", "model_seconds"]


class Clock(Protocol):
    """What the client needs from time: wall clock, a monotonic clock and sleep."""

    @property
    def time_scale(self) -> float:
        """Real seconds per model second (1.0 for the real API)."""
        ...

    def now(self) -> datetime:
        """Real wall-clock time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """A monotonic reading in model seconds (origin arbitrary)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` model seconds."""
        ...


def model_seconds(clock: Clock, real_seconds: float) -> float:
    """Convert a duration in real seconds to the clock's model seconds."""
    return real_seconds / clock.time_scale


class ScaledClock:
    """Real time where one model second lasts `time_scale` real seconds."""

    def __init__(self, time_scale: float = 1.0) -> None:
        if not time_scale > 0:
            raise ValueError(f"time_scale must be positive, got {time_scale!r}")
        self._scale = float(time_scale)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(time_scale={self._scale!r})"

    @property
    def time_scale(self) -> float:
        """Real seconds per model second."""
        return self._scale

    def now(self) -> datetime:
        """Real wall-clock time, timezone-aware UTC."""
        return datetime.now(UTC)

    def monotonic(self) -> float:
        """Model seconds: real monotonic time divided by the scale."""
        return time.monotonic() / self._scale

    async def sleep(self, seconds: float) -> None:
        """Sleep `seconds * time_scale` real seconds."""
        await anyio.sleep(max(0.0, seconds) * self._scale)


class SystemClock(ScaledClock):
    """The real clock: one model second is one real second."""

    def __init__(self) -> None:
        super().__init__(1.0)

    def __repr__(self) -> str:
        return "SystemClock()"


@dataclass(eq=False)
class _Sleeper:
    deadline: float
    seq: int
    wake: anyio.Event = field(default_factory=anyio.Event)

    def __lt__(self, other: _Sleeper) -> bool:
        return (self.deadline, self.seq) < (other.deadline, other.seq)


class VirtualClock:
    """Virtual time for tests: sleeping jumps time forward as soon as every task is waiting.

    Sleepers wake in deadline order (ties in call order), and time only moves when the
    earliest sleeper has let the event loop settle, so a test of minutes of rate limiting
    runs in milliseconds and is deterministic. `sleeps` records every requested duration.
    Tasks must wait only on this clock or on each other (no real I/O) for time to be exact.
    """

    #: Event-loop turns the earliest sleeper yields before it moves time forward.
    settle_turns = 16

    def __init__(
        self,
        *,
        start: float = 0.0,
        wall: datetime = datetime(2026, 1, 1, tzinfo=UTC),
        time_scale: float = 1.0,
    ) -> None:
        self._now = start
        self._start = start
        self._wall = wall
        self._scale = time_scale
        self._heap: list[_Sleeper] = []
        self._seq = itertools.count()
        self._epoch = 0
        self.sleeps: list[float] = []

    def __repr__(self) -> str:
        return f"VirtualClock(monotonic={self._now!r})"

    @property
    def time_scale(self) -> float:
        """Real seconds per model second (only used for unit conversions)."""
        return self._scale

    def now(self) -> datetime:
        """The starting wall time plus the virtual time elapsed."""
        return self._wall + timedelta(seconds=self._now - self._start)

    def monotonic(self) -> float:
        """Virtual seconds."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by hand (sleepers still wake only through `sleep`)."""
        self._now += max(0.0, seconds)

    async def sleep(self, seconds: float) -> None:
        """Return once virtual time reaches now + `seconds` and earlier sleepers have woken."""
        self.sleeps.append(seconds)
        me = _Sleeper(self._now + max(0.0, seconds), next(self._seq))
        heapq.heappush(self._heap, me)
        self._epoch += 1
        try:
            while True:
                if self._heap[0] is not me:
                    me.wake = anyio.Event()
                    await me.wake.wait()
                    continue
                # Move time only after a full settle in which no one else slept or woke.
                epoch = self._epoch
                await self._settle()
                if self._heap[0] is me and self._epoch == epoch:
                    break
        except BaseException:
            self._discard(me)
            raise
        heapq.heappop(self._heap)
        self._epoch += 1
        self._now = max(self._now, me.deadline)
        if self._heap:
            self._heap[0].wake.set()

    async def _settle(self) -> None:
        """Yield until the event loop has nothing else to run (or enough turns passed)."""
        for _ in range(self.settle_turns):
            await anyio.lowlevel.checkpoint()

    def _discard(self, me: _Sleeper) -> None:
        was_head = bool(self._heap) and self._heap[0] is me
        if me in self._heap:
            self._heap.remove(me)
            heapq.heapify(self._heap)
            self._epoch += 1
        if was_head and self._heap:
            self._heap[0].wake.set()
