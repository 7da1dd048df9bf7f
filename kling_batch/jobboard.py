"""The job board: every job in flight followed through the API's job list, one request
for all of them (issue 13).

Polling each job with its own `GET /v1/jobs/{id}` costs a request per job per poll, out of
a budget that submits and uploads share (50 a minute by default). Where the API lists
jobs (`GET /v1/jobs`, newest first), one page reports every job in flight at once: its
status, progress and, once done, its result. So a job due for a poll joins the board's
next round instead of asking alone; a round waits for other jobs predicted to end soon
after (the jobs waiting share `window` model seconds: see `_gather`), then reads the
first page of the list once, and hands each job followed its line. A job due while a read
is under way (often still waiting its turn in the request budget) waits for that read
first. Every job followed takes its line at once: one that says it ended wakes it,
whenever it meant to ask next (the round that was due for one job often finds several
done), and one with its progress plans its next ask afresh.

The list is probed by the first round of the run. When the API does not offer it (404 or
405, or 403: the key may not list jobs) the board is closed for the run and every job is
polled on its own, as before. A job the page does not show (too many newer jobs) is polled
on its own for that poll, and so is every job while the list answers with errors; after
`_FAILURES` rounds in a row that fail, the board closes for the run. A list line that
cannot stand for the job's own answer (`polling._Lines`: finished without its result URL,
an unknown status word, the same line again and again) is checked with the job's own GET.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

import anyio

from kling_batch.clock import Clock
from kling_batch.errors import ApiError, AuthError, RunFatal
from kling_batch.joblist import JobPage, NextPage
from kling_batch.payloads import JobState

log = logging.getLogger(__name__)

_PAGE = 100  # the most the API reference lets one page hold
_FAILURES = 3


class JobListReader(Protocol):
    """What the board needs of the API client."""

    @property
    def clock(self) -> Clock: ...

    async def list_jobs_page(
        self, *, status: str | None = None, limit: int = 100, page: NextPage | None = None
    ) -> JobPage | None: ...


@dataclass
class Line:
    """What one round of the list said of a job, and when (monotonic model seconds)."""

    job: JobState
    at: float


@dataclass
class Seat:
    """A job's seat on the board: the lines rounds read of it since it last looked, and an
    event set when a round reads one."""

    job_id: str
    lines: list[Line] = field(default_factory=list)
    news: anyio.Event = field(default_factory=anyio.Event)
    # When the job means to ask next (monotonic), and whether that is its predicted end
    # (measured from its progress) rather than a first look.
    due: float | None = None
    predicted: bool = False

    def take(self) -> list[Line]:
        """The lines read since the last call (and a fresh `news` event)."""
        lines, self.lines = self.lines, []
        if self.news.is_set():
            self.news = anyio.Event()
        return lines


@dataclass
class _Round:
    """One read of the list, shared by every job that asked for it."""

    done: anyio.Event = field(default_factory=anyio.Event)
    jobs: dict[str, JobState] = field(default_factory=dict)
    read: bool = False  # a page was read (not failed, refused or absent)
    full: bool = False  # …and it was full: older jobs may be on pages after it


class JobBoard:
    """Follows jobs through the API's job list (see the module docstring)."""

    def __init__(self, client: JobListReader, *, window: float) -> None:
        self.client = client
        self.clock = client.clock
        self.window = window
        self.offered: bool | None = None  # None until the first round tells
        self.rounds = 0
        self._followers: dict[str, Seat] = {}
        self._next: _Round | None = None  # the round gathering jobs, not yet read
        self._reading: _Round | None = None  # the round whose read is under way
        self._failures = 0

    @property
    def open(self) -> bool:
        """False once the run polls every job on its own."""
        return self.offered is not False

    def follow(self, job_id: str) -> Seat:
        """Start following a job (`leave` when it is no longer polled)."""
        follower = self._followers.setdefault(job_id, Seat(job_id))
        return follower

    def leave(self, job_id: str) -> None:
        """Stop following a job."""
        self._followers.pop(job_id, None)

    async def ask(self, job_id: str) -> JobState | None:
        """The job as the next round of the list shows it; None when the list does not
        (the job is not on its first page, the list failed, or the API offers none). A
        read already under way answers first when it shows the job."""
        reading = self._reading
        if reading is not None:
            # A read is under way (often still waiting for its turn in the request budget):
            # it may well show this job ended, and a round started now would cost a request
            # only to say the same. Only a page that does not show the job and is not full
            # (so it was read before the job was submitted) sends it to the next round.
            await reading.done.wait()
            if job_id in reading.jobs or not reading.read or reading.full:
                return reading.jobs.get(job_id)
        if not self.open:
            return None
        pending = self._next
        if pending is not None:
            await pending.done.wait()
            return pending.jobs.get(job_id)
        pending = self._next = _Round()
        try:
            await self.clock.sleep(self._gather(job_id))  # let a job due soon join
            if self.offered is not None:  # the first read probes the list: all wait for it
                self._next = None  # whoever asks from now on waits for this read, then
                self._reading = pending  # starts the next round if it did not show them
            await self._read(pending)
        finally:
            self._next = None if self._next is pending else self._next
            self._reading = None if self._reading is pending else self._reading
            pending.done.set()  # also when cancelled: nobody waits for a round never read
        return pending.jobs.get(job_id)

    def _gather(self, starter: str) -> float:
        """How long a round started by job `starter` (due now) waits for the predicted ends
        of other jobs followed, so one read finds them all ended.

        The jobs already waiting share `window`: the round waits for the next end if it
        falls within `window / n` of the last one, `n` the jobs that would wait for it, and
        so on. A lone end waits up to `window` for a partner; a round that several jobs
        already wait for is read soon, since each second costs every one of them; ends
        close together share a read. In `benchmarks/run_efficiency.py` (--jobs 16, time scale
        0.04) this noticed ends 2.7 s after them on average at 0.48 list reads per render,
        where pairing them (wait for the next end within 15 s, then read) took 3.6-3.8 s at
        0.47-0.49 reads."""
        now = self.clock.monotonic()
        ends = sorted(
            f.due
            for f in self._followers.values()
            if f.predicted and f.job_id != starter and f.due is not None and now <= f.due
        )
        until, waiting = now, 1
        for end in ends:
            if end - until > self.window / waiting:
                break
            until, waiting = end, waiting + 1
        return until - now

    async def _read(self, pending: _Round) -> None:
        """Read the first page of the list into `pending` and every follower's lines."""
        try:
            page = await self.client.list_jobs_page(limit=_PAGE)
        except AuthError as exc:
            if exc.status == 401:
                raise  # the key is refused: the run stops (`EmpirioClient`)
            log.info("job list refused (%s); polling each job on its own", exc)
            self.offered = False  # 403: this key may read jobs, not list them
            return
        except RunFatal:
            raise
        except ApiError as exc:
            self._failures += 1
            if self._failures >= _FAILURES:
                log.info("job list failing (%s); polling each job on its own", exc)
                self.offered = False
            return
        self.rounds += 1
        self._failures = 0
        if page is None:
            self.offered = False  # the API has no list: each job is polled on its own
            return
        self.offered = True
        pending.read, pending.full = True, len(page.jobs) >= _PAGE
        now = self.clock.monotonic()
        for job in page.jobs:
            pending.jobs[job.job_id] = job
            follower = self._followers.get(job.job_id)
            if follower is not None:
                follower.lines.append(Line(job, now))
                follower.news.set()
