"""Jobs: the job model, its latency timeline, and the table that settles jobs lazily.

A job's state is a pure function of the clock and a few timestamps fixed at submit time, so
no task runs per job. Settlement (charging completed jobs, dropping expired ones) happens
on the next read, through heaps ordered by time: each job costs O(log n) once.
"""

from __future__ import annotations

import heapq
import math
import random
import threading
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from kling_batch.emulator.billing import Ledger, LedgerEntry, PriceRow, price_row_for
from kling_batch.emulator.clock import Clock
from kling_batch.emulator.config import EmulatorConfig
from kling_batch.emulator.errors import ApiError
from kling_batch.emulator.faults import FaultPlan
from kling_batch.emulator.validation import Submission
from kling_batch.model_data import MODEL_ID

STATUSES = ("queued", "processing", "completed", "failed", "cancelled")
_FAIL_POINT = 0.4  # a doomed job fails this far into its render
_ERROR_MESSAGES = {
    "content_moderation": "The request was rejected by content moderation.",
}


@dataclass(frozen=True)
class JobView:
    """A job's state at one instant."""

    status: str
    progress: float
    ended: float | None


@dataclass
class Job:
    """One submitted render. Times are real monotonic seconds from the emulator's clock."""

    id: str
    seq: int
    submission: Submission
    row: PriceRow
    amount: Decimal
    created: float
    started: float
    render_end: float
    fails_with: str | None
    cancelled_at: float | None = None
    stalls: bool = False  # a `stall` fault: never ends
    status_word: str | None = None  # a `status-word` fault: the status every answer shows

    model = MODEL_ID

    @property
    def finishes(self) -> float:
        """When the job reaches `completed` or `failed` (unless cancelled first)."""
        if self.stalls:
            return math.inf
        if self.fails_with is None:
            return self.render_end
        return self.started + (self.render_end - self.started) * _FAIL_POINT

    def view(self, now: float) -> JobView:
        """Status, progress and end time as of `now`."""
        if self.cancelled_at is not None:
            return JobView("cancelled", self._progress(self.cancelled_at), self.cancelled_at)
        if now >= self.finishes:
            if self.fails_with is not None:
                return JobView("failed", self._progress(self.finishes), self.finishes)
            return JobView("completed", 1.0, self.finishes)
        if now >= self.started:
            return JobView("processing", self._progress(now), None)
        return JobView("queued", 0.0, None)

    def _progress(self, at: float) -> float:
        span = self.render_end - self.started
        if at <= self.started:
            return 0.0
        if span <= 0:
            return 1.0
        return round(min(0.99, (at - self.started) / span), 3)

    def error(self) -> dict[str, str] | None:
        """The failed job's `error` object."""
        if self.fails_with is None:
            return None
        message = _ERROR_MESSAGES.get(self.fails_with, "The render failed.")
        return {"code": self.fails_with, "message": message}


@dataclass(frozen=True)
class Output:
    """A completed job's result file, kept until its URL expires."""

    job_id: str
    aspect: str
    seconds: Decimal
    expires_wall: float


class JobTable:
    """Every job the emulator accepted, with billing and retention applied on read."""

    def __init__(
        self, config: EmulatorConfig, clock: Clock, ledger: Ledger, faults: FaultPlan
    ) -> None:
        self._config = config
        self._clock = clock
        self._ledger = ledger
        self._faults = faults
        self._jobs: dict[str, Job] = {}
        self._outputs: dict[str, Output] = {}
        self._to_settle: list[tuple[float, int, str]] = []
        self._to_drop: list[tuple[float, int, str]] = []
        self._to_expire: list[tuple[float, str]] = []
        self._seq = 0
        self._lock = threading.RLock()
        self._accepted: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self._jobs)

    def requests(self) -> list[dict[str, Any]]:
        """The body of every job ever accepted, oldest first (kept past job retention)."""
        with self._lock:
            return [dict(request) for request in self._accepted]

    def create(self, submission: Submission, now: float) -> Job:
        """Accept a job, or refuse it with 402 when its estimate exceeds the credits left."""
        row = price_row_for(
            submission.tier, video_input=submission.video_input, sound=submission.sound
        )
        amount = row.rate * submission.seconds
        with self._lock:
            self.settle(now)
            available = self._ledger.available_now()
            if available is not None and amount > available:
                raise ApiError(
                    402,
                    "insufficient_credits",
                    f"This render costs ${amount:.3f}; ${max(available, Decimal(0)):.3f} of "
                    "credits are left. Top up before calling.",
                )
            self._seq += 1
            queue, render = self._timeline(self._seq, submission)
            failure = self._faults.job_failure()
            stall = self._faults.job_stall()
            word = self._faults.job_status_word()
            job = Job(
                id=f"job_{uuid.uuid4().hex[:24]}",
                seq=self._seq,
                submission=submission,
                row=row,
                amount=amount,
                created=now,
                started=now + queue,
                render_end=now + queue + render,
                fails_with=failure.code if failure is not None else None,
                stalls=stall is not None,
                status_word=word.word if word is not None else None,
            )
            self._jobs[job.id] = job
            self._accepted.append(dict(submission.request))
            self._ledger.hold(job.id, amount)
            heapq.heappush(self._to_settle, (job.finishes, job.seq, job.id))
            self.settle(now)
            return job

    def _timeline(self, seq: int, submission: Submission) -> tuple[float, float]:
        """Real seconds of queue wait and render for job number `seq` (seeded jitter)."""
        latency = self._config.latency
        rng = random.Random(f"{self._config.seed}:{seq}")
        low, high = latency.queue_seconds
        queue = rng.uniform(low, high)
        factor = latency.render_factor.get(submission.tier, 0.0)
        render = float(submission.seconds) * factor
        render *= 1 + rng.uniform(-latency.jitter, latency.jitter)
        return self._config.scaled(queue), self._config.scaled(max(render, 0.0))

    def get(self, job_id: str, now: float) -> Job | None:
        """The job, or None if it never existed or was dropped after its retention."""
        with self._lock:
            self.settle(now)
            return self._jobs.get(job_id)

    def cancel(self, job_id: str, now: float) -> Job | None:
        """Cancel a queued or processing job (charged only with `bill_cancelled`); a finished
        job is left unchanged."""
        with self._lock:
            self.settle(now)
            job = self._jobs.get(job_id)
            if job is None or job.view(now).ended is not None:
                return job
            job.cancelled_at = now
            if self._config.bill_cancelled:
                self._charge(job, now)
            else:
                self._ledger.release(job.id)
            drop_at = now + self._config.scaled(self._config.job_retention_seconds)
            heapq.heappush(self._to_drop, (drop_at, job.seq, job.id))
            return job

    def recent(
        self, now: float, *, status: str | None, limit: int, after: str | None = None
    ) -> tuple[list[Job], bool] | None:
        """Newest jobs first, optionally of one status, starting after the job `after` (a
        cursor); and whether more would match. None when `after` is no job on the list."""
        found: list[Job] = []
        with self._lock:
            self.settle(now)
            if after is not None and after not in self._jobs:
                return None
            skipping = after is not None
            for job in reversed(self._jobs.values()):
                if skipping:
                    skipping = job.id != after
                    continue
                if status is None or job.view(now).status == status:
                    if len(found) == limit:
                        return found, True
                    found.append(job)
        return found, False

    def expires_wall(self, job: Job) -> float:
        """Unix time when a completed job's result URL stops working."""
        return self._clock.wall(job.finishes) + self._config.scaled(self._config.url_ttl_seconds)

    def output(self, job_id: str) -> Output | None:
        """The result file of a completed job whose URL has not yet expired."""
        with self._lock:
            self.settle()
            return self._outputs.get(job_id)

    def settle(self, now: float | None = None) -> None:
        """Charge jobs that completed, release (or charge) failed ones, drop and expire old ones."""
        if now is None:
            now = self._clock.now()
        with self._lock:
            retention = self._config.scaled(self._config.job_retention_seconds)
            while self._to_settle and self._to_settle[0][0] <= now:
                finishes, seq, job_id = heapq.heappop(self._to_settle)
                job = self._jobs.get(job_id)
                if job is None or job.cancelled_at is not None:
                    continue
                if job.fails_with is None:
                    self._complete(job)
                elif self._config.bill_failed:
                    self._charge(job, job.finishes)
                else:
                    self._ledger.release(job_id)
                heapq.heappush(self._to_drop, (finishes + retention, seq, job_id))
            while self._to_drop and self._to_drop[0][0] <= now:
                _, _, job_id = heapq.heappop(self._to_drop)
                self._jobs.pop(job_id, None)
            wall = self._clock.wall(now)
            while self._to_expire and self._to_expire[0][0] <= wall:
                _, job_id = heapq.heappop(self._to_expire)
                self._outputs.pop(job_id, None)

    def billed(self, job: Job, now: float) -> bool:
        """Whether the job has been charged as of `now` (its answers then carry the bill)."""
        status = job.view(now).status
        if status == "cancelled":
            return self._config.bill_cancelled
        return status == "completed" or (status == "failed" and self._config.bill_failed)

    def _charge(self, job: Job, ended: float) -> None:
        """Turn the job's hold into a charge of its price, dated `ended`."""
        self._ledger.charge(
            LedgerEntry(
                job_id=job.id,
                label=job.row.label,
                seconds=job.submission.seconds,
                rate=job.row.rate,
                amount=job.amount,
                wall=self._clock.wall(ended),
            )
        )

    def _complete(self, job: Job) -> None:
        self._charge(job, job.finishes)
        expires = self.expires_wall(job)
        self._outputs[job.id] = Output(
            job_id=job.id,
            aspect=job.submission.aspect,
            seconds=job.submission.seconds,
            expires_wall=expires,
        )
        heapq.heappush(self._to_expire, (expires, job.id))
