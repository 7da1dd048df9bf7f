"""Pacing of API requests: the shared rate limiter, retry backoff and `Retry-After`.

`RateLimiter` is one fair requests-per-minute budget for every API call of a client: requests
evenly spaced, with a burst of two.

Why: the account limit is counted over 60-second windows whose alignment we do not know,
so the schedule must keep *every* 60-second window at or under `rpm` from the first
request on. Spacing requests `interval` apart with a tolerance of one interval (a GCRA
allowing a burst of two) does so when `interval = 60 / (rpm - 1)`: any two of them, the
first and the n-th, are at least `(n - 2) * interval` apart, so a half-open window
`[t, t + 60)` holds at most `2 + (rpm - 2) = rpm`. The burst is what a run needs: the list
read that notices a job's end is followed at once by the submission of the render waiting
for its slot, which with a burst of one waited a whole interval (1.2 s at 50 rpm, about
1% of a batch's makespan; issue 13); the price is one request a minute of sustained rate.
Below 3 rpm there is no burst (`interval = 60 / rpm`). Network jitter between our send
and the server's count is not covered; pass an `rpm` a little under the account limit if
that matters, and let 429 handling (`pause_for`) absorb the rest.

Waiters are served first come, first served. `pause_for` delays everyone (a 429 with
`Retry-After` should slow the whole client, not just the caller that saw it).

`RetryPolicy` waits `max(full-jitter backoff, Retry-After)` before the next attempt: the
server's `Retry-After` is a floor we never undercut, and the jitter still spreads callers
when it is absent (the limiter spreads them when it is present).

All durations here are model seconds on the client's clock (see `kling_batch.clock`).
"""

from __future__ import annotations

import math
import random as _random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Literal

import anyio

from kling_batch.clock import Clock, SystemClock, model_seconds

__all__ = ["RateLimiter", "RetryPolicy", "retry_after_seconds"]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait before retrying a retryable failure.

    `max_attempts` counts the first try. The n-th retry waits a uniform random time in
    `[0, min(cap, base * 2**(n-1))]` ("full jitter"), or `Retry-After` if that is longer
    (capped at `retry_after_cap`, model seconds). `retry_after_unit` says how to read a
    delta-seconds `Retry-After`: "real" (default; HTTP's meaning, and what the bundled
    emulator sends: real seconds, converted with the clock's scale) or "model" (for a server
    that sends model seconds). `retry-after-ms` is always real milliseconds and an HTTP-date
    always an absolute real time. `ambiguous_submit_statuses` are gateway timeouts that, on a
    submit, mean the origin had the request and may have created the job.
    """

    max_attempts: int = 6
    base: float = 1.0
    cap: float = 60.0
    retry_after_cap: float = 600.0
    retry_after_unit: Literal["model", "real"] = "real"
    ambiguous_submit_statuses: frozenset[int] = frozenset({504, 524})
    random: Callable[[], float] = field(default=_random.random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def backoff(self, retry: int) -> float:
        """Full-jitter wait before retry number `retry` (1 for the first retry)."""
        return self.random() * min(self.cap, self.base * 2.0 ** (retry - 1))

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """The wait before retry number `retry`: the backoff, or Retry-After if longer."""
        wait = self.backoff(retry)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.retry_after_cap))
        return wait


def retry_after_seconds(
    headers: Mapping[str, str], *, clock: Clock, unit: Literal["model", "real"] = "real"
) -> float | None:
    """How long the server asked us to wait, in model seconds, or None if it did not say.

    `retry-after-ms` (real milliseconds, exact; sent by OpenAI-style servers and the bundled
    emulator) wins over `Retry-After`, whose delta seconds are read per `unit` and whose
    HTTP-date is an absolute real time.
    """
    millis = _number(headers.get("retry-after-ms"))
    if millis is not None:
        return max(0.0, model_seconds(clock, millis / 1000))
    text = (headers.get("retry-after") or "").strip()
    if not text:
        return None
    seconds = _number(text)
    if seconds is None:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = model_seconds(clock, (when - clock.now()).total_seconds())
    elif unit == "real":
        seconds = model_seconds(clock, seconds)
    return max(0.0, seconds)


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


class RateLimiter:
    """At most `rpm` acquisitions in any `period` model seconds: evenly spaced, two at once
    after a pause (see the module docstring), FIFO."""

    def __init__(
        self, rpm: float | None, *, clock: Clock | None = None, period: float = 60.0
    ) -> None:
        if rpm is not None and rpm < 0:
            raise ValueError(f"rpm must be >= 0 or None, got {rpm!r}")
        self._clock: Clock = clock if clock is not None else SystemClock()
        whole = math.floor(rpm) if rpm else 0
        if whole >= 3:  # a burst of two: one interval of tolerance
            self._interval = period / (whole - 1)
            self._tolerance = self._interval
        else:
            self._interval = period / rpm if rpm else 0.0
            self._tolerance = 0.0
        self._rpm = rpm or None
        self._next = float("-inf")
        self._paused_until = float("-inf")
        self._queue: deque[anyio.Event] = deque()

    def __repr__(self) -> str:
        return f"RateLimiter(rpm={self._rpm!r}, interval={self._interval!r})"

    @property
    def rpm(self) -> float | None:
        """Requests per period, or None when unlimited."""
        return self._rpm

    @property
    def interval(self) -> float:
        """Model seconds per acquisition at the sustained rate (0 when unlimited)."""
        return self._interval

    @property
    def paused_until(self) -> float:
        """Monotonic model time before which no acquisition succeeds."""
        return self._paused_until

    def pause_for(self, seconds: float) -> None:
        """Hold every caller, waiting or future, for `seconds` model seconds from now.

        A pause only ever moves the deadline later, and the head of the queue re-reads the
        deadline after each sleep, so nobody can slip through early.
        """
        self._paused_until = max(self._paused_until, self._clock.monotonic() + seconds)

    async def acquire(self) -> None:
        """Wait for this caller's turn; returns when one request may be sent."""
        if not self._interval and self._paused_until <= self._clock.monotonic():
            return
        me = anyio.Event()
        self._queue.append(me)
        try:
            if self._queue[0] is not me:
                await me.wait()
            while True:
                now = self._clock.monotonic()
                due = max(self._next - self._tolerance, self._paused_until)
                if now >= due:
                    break
                await self._clock.sleep(due - now)
        except BaseException:
            was_head = self._queue[0] is me
            self._queue.remove(me)
            if was_head and self._queue:
                self._queue[0].set()
            raise
        self._queue.popleft()
        self._next = max(self._next, now) + self._interval
        if self._queue:
            self._queue[0].set()
