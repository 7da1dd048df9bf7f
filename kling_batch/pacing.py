"""Pacing: which renders start first, and when to ask about a job next (from its progress
and what similar jobs took)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING

from kling_batch.clock import Clock

if TYPE_CHECKING:
    from kling_batch.plan import PlanItem

# What a job is expected to take, in model seconds: the longest queue wait plus render time
# per video second by tier. These are the emulator's realistic latency model
# (`emulator.config.Latency`: queue 5-20 s, render 8 / 14 / 36 s per video second, ±20%),
# copied rather than imported because the emulator is an optional extra.
QUEUE_SECONDS = 20.0
RENDER_SECONDS_PER_SECOND = {"standard": 8.0, "pro": 14.0, "4k": 36.0}
# A job still unfinished after this many times its expected duration gets no more polls in
# this run. Generous on purpose: the real API's queue grows under load well past the
# model, and giving up costs little (the job stays recorded, the next run asks again, and
# nothing is paid twice), while giving up early still makes the run exit 1. Ten times
# covers a queue ten times the model's longest and a render ten times its typical length;
# a 5 s standard render waits 10 minutes, a 15 s 4K one over an hour and a half.
DEADLINE_MULTIPLE = 10.0


def expected_job_seconds(tier: str, seconds: Decimal) -> float:
    """Model seconds a job of `tier` and `seconds` of video is expected to take in all."""
    per_second = RENDER_SECONDS_PER_SECOND.get(tier, max(RENDER_SECONDS_PER_SECOND.values()))
    return QUEUE_SECONDS + per_second * float(seconds)


def job_deadline(tier: str, seconds: Decimal) -> float:
    """Model seconds after submission past which a job gets no more polls in a run."""
    return DEADLINE_MULTIPLE * expected_job_seconds(tier, seconds)


class PollPacing:
    """When to poll a job next: paced by its progress and elapsed time, not a fixed loop.

    Every poll is a request against the account's shared per-minute budget (50 by default),
    so the aim is to ask about when the job ends, and not much after. In model seconds
    since submission (`elapsed`), with the job's `(elapsed, progress)` readings so far:

    1. Two readings with rising progress give the job's rendering speed; it should end
       at `(1 - p) / speed` after the last one. Kling reports progress rising steadily
       while rendering, so this lands within a poll of the end.
    2. One reading `p > 0`: the rest takes `(1 - p)` of the typical rendering time of
       similar jobs (same tier, per video second), learnt from the speeds of jobs
       already measured; before anything is learnt, `elapsed × (1 - p) / p` bounds it.
    3. No progress yet (queued, or not polled yet): wait until a little before the
       typical total duration of similar finished jobs, else `first_delay`.

    A job past its predicted end is polled at a growing interval (a quarter of how
    overdue it is), so a slow or stalled job does not eat the request budget. Waits are
    clamped to [`min_delay`, `max_delay`]. With the emulator's realistic latency this
    takes about two polls per render.
    """

    def __init__(
        self,
        *,
        first_delay: float = 30.0,
        min_delay: float = 1.0,
        max_delay: float = 120.0,
        early: float = 0.85,
        margin: float = 0.2,
        list_window: float = 8.0,
    ) -> None:
        self.first_delay = first_delay
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.early = early
        self.margin = margin
        # The wait, in model seconds, that a round of the job list shares among the jobs
        # it would keep waiting for the next job predicted to end, to read their ends at
        # once (`JobBoard._gather`). Measured in `benchmarks/run_efficiency.py` (500
        # renders, --jobs 16): 6 and 7 s take about 0.48 list reads per render, 8 s 0.44,
        # 11 s 0.38, each end noticed later the fewer the reads.
        self.list_window = list_window
        self._total: dict[str, list[float]] = {}
        self._render: dict[str, list[float]] = {}

    def learn(self, tier: str, seconds: Decimal, elapsed: float) -> None:
        """Record how long a finished job took in all (model seconds from submission)."""
        if seconds > 0:
            self._total.setdefault(tier, []).append(elapsed / float(seconds))

    def learn_speed(self, tier: str, seconds: Decimal, speed: float) -> None:
        """Record a measured rendering speed (progress per second) of a job."""
        if seconds > 0 and speed > 0:
            self._render.setdefault(tier, []).append(1 / speed / float(seconds))

    def typical(self, tier: str, seconds: Decimal) -> float | None:
        """The median total duration of similar finished jobs, if any finished yet."""
        return _median_per_second(self._total.get(tier), seconds)

    def next_delay(
        self,
        tier: str,
        seconds: Decimal,
        elapsed: float,
        readings: Sequence[tuple[float, float]],
    ) -> float:
        """Seconds to wait before the next poll, given `(elapsed, progress)` readings."""
        rising = [(t, p) for t, p in readings if p > 0]
        speed = measured_speed(readings)
        if speed is not None:
            t1, p1 = rising[-1]
            end = t1 + (1 - p1) / speed
            wait = end + self.margin - elapsed
            if len(rising) > 2 and wait < self.min_delay:
                # Polled at the predicted end and not done yet: back off with how late it is.
                wait = (elapsed - end) / 4
        elif rising:
            # Aim early: if the job renders slower than typical, the next reading measures
            # its own speed, and the poll after that is on time.
            t1, p1 = rising[-1]
            rendering = _median_per_second(self._render.get(tier), seconds)
            rest = (1 - p1) * rendering if rendering is not None else t1 * (1 - p1) / p1
            wait = t1 + rest * self.early - elapsed
        else:
            typical = self.typical(tier, seconds)
            if typical is not None:
                wait = typical * self.early - elapsed
                if wait < self.min_delay:  # queued for longer than usual
                    wait = (elapsed - typical * self.early) / 4
            else:
                wait = self.first_delay if not readings else self.first_delay / 2
        return min(max(wait, self.min_delay), self.max_delay)


def measured_speed(readings: Sequence[tuple[float, float]]) -> float | None:
    """Progress per second between the first and last rising readings, if there are two."""
    rising = [(t, p) for t, p in readings if p > 0]
    if len(rising) < 2 or rising[-1][1] <= rising[0][1] or rising[-1][0] <= rising[0][0]:
        return None
    (t0, p0), (t1, p1) = rising[0], rising[-1]
    return (p1 - p0) / (t1 - t0)


def _median_per_second(samples: list[float] | None, seconds: Decimal) -> float | None:
    if not samples:
        return None
    return statistics.median(samples[-50:]) * float(seconds)


class JobWatch:
    """One job's polling so far: its age in model seconds, its progress readings, and how
    long it has been unreachable. Ages count from submission, so a resumed job is paced
    as far along as it is, and its `deadline` (model seconds after submission, if any)
    too: a job resumed past it is still asked about once."""

    def __init__(
        self,
        clock: Clock,
        pacer: PollPacing,
        *,
        tier: str,
        seconds: Decimal,
        age: float = 0.0,
        patience: float,
        deadline: float | None = None,
    ) -> None:
        self.clock = clock
        self.pacer = pacer
        self.tier = tier
        self.seconds = seconds
        self.patience = patience
        self.deadline = deadline
        self.readings: list[tuple[float, float]] = []
        self._started = clock.monotonic() - age
        self._unreachable_since: float | None = None

    @property
    def elapsed(self) -> float:
        """Model seconds since the job was submitted."""
        return self.clock.monotonic() - self._started

    async def wait(self) -> None:
        """Sleep until the job is worth asking about again (no later than its deadline,
        if that is still ahead: the last poll lands on it)."""
        await self.clock.sleep(self.delay())

    def delay(self) -> float:
        """Model seconds until the job is worth asking about again (see `wait`)."""
        delay = self.pacer.next_delay(self.tier, self.seconds, self.elapsed, self.readings)
        if self.deadline is not None and self.elapsed < self.deadline:
            delay = min(delay, self.deadline - self.elapsed)
        return delay

    @property
    def overdue(self) -> bool:
        """True once the job's deadline has passed."""
        return self.deadline is not None and self.elapsed >= self.deadline

    def answered(self, progress: float | None, at: float | None = None) -> None:
        """The job answered, with its progress if it reported one; `at` is when (the
        clock's monotonic time), if not now (a line of the job list read earlier)."""
        self._unreachable_since = None
        if progress is not None:
            elapsed = self.elapsed if at is None else at - self._started
            self.readings.append((elapsed, progress))

    def unreachable(self) -> bool:
        """The job could not be asked; True once that has lasted past `patience`."""
        now = self.clock.monotonic()
        if self._unreachable_since is None:
            self._unreachable_since = now
        return now - self._unreachable_since > self.patience

    def finished(self) -> None:
        """The job ended: learn how long it took and how fast it rendered."""
        self.pacer.learn(self.tier, self.seconds, self.elapsed)
        speed = measured_speed(self.readings)
        if speed is not None:
            self.pacer.learn_speed(self.tier, self.seconds, speed)


def longest_first(items: Sequence[PlanItem]) -> list[PlanItem]:
    """Jobs already in flight first, then new renders by expected duration, longest first.

    Slots are taken in this order (the limiter is first come, first served). Starting the
    longest renders first keeps a few 4K jobs from trailing alone at the end of a batch
    (the longest-processing-time rule); price per render is the proxy for duration, as
    both grow with tier and seconds.
    """
    in_flight = [item for item in items if item.action in {"resume", "uncertain", "restore"}]
    rest = [item for item in items if item.action not in {"resume", "uncertain", "restore"}]
    rest.sort(key=lambda item: item.render.cost, reverse=True)  # stable: manifest order ties
    return in_flight + rest
