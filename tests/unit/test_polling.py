"""`polling.poll_job` and its deadline: every job ends, in time the virtual clock measures."""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace
from typing import Any, cast

import anyio
import pytest

from kling_batch.clock import VirtualClock
from kling_batch.errors import ConnectionFailed
from kling_batch.lockfile import Entry
from kling_batch.pacing import JobWatch, PollPacing, job_deadline
from kling_batch.payloads import JobState
from kling_batch.polling import JobReader, Lost, poll_job

ENTRY = cast(Entry, SimpleNamespace(job_id="job_1", poll_url=None, submitted_at=None))


class Endless:
    """A job that answers the same pending status word forever."""

    def __init__(self, word: str) -> None:
        self.word = word
        self.polls = 0

    async def get_job(self, job_id: str, poll_url: str | None = None) -> JobState:
        self.polls += 1
        return JobState(job_id, "pending", self.word, progress=0.5)


def follow(reader: JobReader, clock: VirtualClock, **watch: Any) -> JobState | Lost:
    options: dict[str, Any] = {"tier": "standard", "seconds": Decimal(4), "patience": 1800.0}
    job_watch = JobWatch(clock, PollPacing(), **{**options, **watch})

    async def main() -> JobState | Lost:
        return await poll_job(reader, ENTRY, job_watch, lambda _: None)

    return anyio.run(main)


@pytest.mark.parametrize(
    ("word", "said"),
    [
        ("processing", "is still 'processing'"),
        ("rendering", "answers 'rendering', a status kling-batch does not know"),
    ],
)
def test_a_job_that_never_ends_is_given_up_at_its_deadline(word: str, said: str) -> None:
    """Polling stops exactly at the deadline, saying how the job last answered."""
    clock = VirtualClock()
    lost = follow(Endless(word), clock, deadline=300.0)
    assert isinstance(lost, Lost) and not lost.forgotten
    assert said in lost.detail and "deadline of 300 s" in lost.detail
    assert clock.monotonic() == 300.0


def test_a_job_resumed_past_its_deadline_is_asked_once() -> None:
    """A job older than its deadline still gets one poll before it is given up."""
    reader = Endless("processing")
    lost = follow(reader, VirtualClock(), deadline=300.0, age=5000.0)
    assert isinstance(lost, Lost)
    assert reader.polls == 1


def test_deadlines_grow_with_tier_and_video_seconds() -> None:
    """A longer video or a slower tier is given longer before polling stops."""
    assert job_deadline("standard", Decimal(5)) < job_deadline("standard", Decimal(10))
    assert job_deadline("standard", Decimal(5)) < job_deadline("pro", Decimal(5))
    assert job_deadline("pro", Decimal(5)) < job_deadline("4k", Decimal(5))
    assert job_deadline("standard", Decimal(5)) == 600.0  # 10 × (20 s queue + 8 s/s × 5 s)


class Unreachable:
    """A job that cannot be asked twice, then answers completed."""

    def __init__(self) -> None:
        self.polls = 0

    async def get_job(self, job_id: str, poll_url: str | None = None) -> JobState:
        self.polls += 1
        if self.polls <= 2:
            raise ConnectionFailed("unreachable")
        return JobState(job_id, "succeeded", "completed", progress=1.0)


def test_polls_past_the_deadline_that_go_unanswered_keep_their_pace() -> None:
    """An unreachable job past its deadline is asked again later, not in a tight loop."""
    clock = VirtualClock()
    reader = Unreachable()
    job = follow(reader, clock, deadline=10.0, age=5000.0)
    assert isinstance(job, JobState) and job.status == "succeeded"
    assert min(clock.sleeps) >= PollPacing().min_delay
