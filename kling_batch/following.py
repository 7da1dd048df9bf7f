"""Following a job to its video: polled (paced by `pacing`), its end recorded, its result
downloaded into place (`downloads`) and recorded. The executor hands a render here once its
job is known: just submitted, resumed from an earlier run, or adopted from another record.

Every step is recorded before the next (`record`): a crash leaves `submitted` (resumed,
never re-paid), `completed` with its result URL, or `done`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any, Protocol

import anyio

from kling_batch.adoption import Resubmit
from kling_batch.clock import Clock
from kling_batch.downloads import RESULT_RETENTION, Downloads, ResultClient
from kling_batch.jobboard import JobBoard
from kling_batch.lockfile import Entry, LockWriter
from kling_batch.outcomes import Events, Outcome, OutcomeState, RunReport
from kling_batch.pacing import JobWatch, PollPacing, job_deadline
from kling_batch.payloads import JobState
from kling_batch.plan import PlanItem, PlannedRender
from kling_batch.polling import Lost, follow_job, may_be_forgotten, model_age
from kling_batch.urls import KnownUrl

_NO_URL: dict[str, Any] = {"result_url": None, "result_expires_at": None}


@dataclass(frozen=True)
class RunOptions:
    """How a run behaves; all durations in model seconds."""

    jobs: int = 4
    fail_fast: bool = False
    resubmit_uncertain: Resubmit = "off"
    pacer: PollPacing = field(default_factory=lambda: PollPacing())
    # Give up polling a job that stays unreachable this long; it stays `submitted`.
    poll_patience: float = 1800.0
    # Stop polling a job this long after its submission; it stays `submitted`. None: a
    # multiple of its expected duration (`pacing.job_deadline`).
    job_timeout: float | None = None
    download_attempts: int = 3


class JobClient(ResultClient, Protocol):
    """What following a job needs of the API client."""

    @property
    def clock(self) -> Clock: ...


class Follower:
    """Follows jobs for one run: the shared writer, events, report, job slots and the
    job board every poll goes through."""

    def __init__(
        self,
        client: JobClient,
        writer: LockWriter,
        *,
        events: Events,
        report: RunReport,
        options: RunOptions,
        downloads: Downloads,
        slots: anyio.CapacityLimiter,
        board: JobBoard,
    ) -> None:
        self.client = client
        self.clock = client.clock
        self.writer = writer
        self.events = events
        self.report = report
        self.options = options
        self.downloads = downloads
        self.slots = slots
        self.board = board  # jobs in flight polled through the job list (`jobboard`)

    async def record(
        self, item: PlanItem, outcome: OutcomeState, detail: str, **fields: Any
    ) -> Outcome:
        """Update the render's entry with `fields` (stamped now), save, say how it ended."""
        if fields:
            self.writer.update(item.render.id, updated_at=self.clock.now(), **fields)
        await self.writer.commit()
        return outcome_of(item, outcome, detail)

    async def follow(self, item: PlanItem, entry: Entry) -> Outcome:
        """Finish a job submitted earlier (resumed or adopted): poll it, then download.
        A completed entry without its result URL (deleted by hand, or in a merge) asks
        its job for it again rather than fail at every run until the job is gone."""
        polled: Entry | Outcome = entry
        if entry.state == "submitted" or entry.result_url is None:
            async with self.slots:
                polled = await self.poll(item, entry)
        return await self.collect(item, polled)

    async def collect(self, item: PlanItem, polled: Entry | Outcome) -> Outcome:
        """Download a completed job's result, or pass on how polling ended."""
        if isinstance(polled, Outcome):
            return polled
        return await self._download_result(item, polled)

    async def poll(self, item: PlanItem, entry: Entry) -> Entry | Outcome:
        """Poll a submitted job until it ends: the completed entry, or how it ended."""
        render = item.render
        age = model_age(self.clock, entry.submitted_at) if entry.submitted_at else 0.0
        tier, timeout = render.request.model_tier, self.options.job_timeout
        watch = JobWatch(
            self.clock,
            self.options.pacer,
            tier=tier,
            seconds=render.seconds,
            age=age,
            patience=self.options.poll_patience,
            deadline=timeout if timeout is not None else job_deadline(tier, render.seconds),
        )
        job = await follow_job(
            self.board, self.client, entry, watch, partial(self.events.progress, render.id)
        )
        if isinstance(job, Lost):
            if job.forgotten:
                return await self._forgotten(item, entry)
            return await self.record(item, "pending", job.detail, error=job.detail)
        if job.status == "failed":
            return await self._failed(item, job)
        watch.finished()
        return await self._completed(item, job)

    async def _failed(self, item: PlanItem, job: JobState) -> Outcome:
        """Record a failed job, with the bill its answer carries if any (`failed_fields`)."""
        render_id = item.render.id
        if job.billed_usd is not None and render_id in self.report.submitted:
            self.report.billed[render_id] = job.billed_usd
        recorded = self.writer.get(render_id)
        assert recorded is not None
        fields = failed_fields(recorded, job)
        outcome = await self.record(item, "failed", fields["error"], **fields)
        failed = self.writer.get(render_id)
        # Cancelled on the API's side: said so, by the rule `spend` reads the lockfile with.
        return replace(outcome, cancelled=failed is not None and failed.cancelled)

    async def _completed(self, item: PlanItem, job: JobState) -> Entry | Outcome:
        """Record a finished job's result URL and bill; the entry, ready to download."""
        render = item.render
        if render.id in self.report.submitted and job.billed_usd is not None:
            self.report.billed[render.id] = job.billed_usd
        recorded = self.writer.get(render.id)
        assert recorded is not None
        if not job.video_url:
            # Paid for: keep the job on record (the next run asks again) rather than fail
            # it into a paid re-render; and its bill, which the API forgets with the job.
            error = (
                f"job {job.job_id} completed but no video URL was found in its answer; "
                "the next run asks again"
            )
            bill = recorded.bill(job.job_id, job.billed_usd)
            return await self.record(item, "pending", error, error=error, **bill)
        entry = self.writer.update(render.id, **completed_fields(recorded, job, self.clock.now()))
        await self.writer.commit()
        self.events.progress(render.id, 1.0)
        self.events.event(render.id, "completed", job.job_id)
        return entry

    async def _forgotten(self, item: PlanItem, entry: Entry) -> Entry | Outcome:
        """The API dropped the job: its recorded URL may still serve the video."""
        if entry.result_url:
            return entry
        error = (
            f"the API no longer knows job {entry.job_id} (job state is kept one hour after "
            "completion) and no result URL was recorded; the next plan prices a re-render"
        )
        return await self.record(item, "failed", error, state="failed", error=error)

    async def _download_result(self, item: PlanItem, entry: Entry) -> Outcome:
        """Fetch a completed render into place (a stray's into the render cache only)."""
        output = None if item.stray else item.render.output
        seconds = _known_seconds(item.render, entry)
        attempts = self.options.download_attempts
        retained = not may_be_forgotten(self.clock, entry)  # a 404 now is a hiccup
        got = await self.downloads.collect(
            entry, output, seconds=seconds, attempts=attempts, retained=retained
        )
        fresh = got.fresh_url
        if got.failed is not None:
            return await self.record(item, "failed", got.failed, state="failed", error=got.failed)
        if got.download is None:
            pending = got.pending or "download failed; rerun to resume, the job is paid for"
            return await self.record(item, "pending", pending, error=pending, **fresh)
        sha256 = got.download.sha256
        url = fresh.get("result_url", entry.result_url)
        expires = fresh.get("result_expires_at", entry.result_expires_at)
        if url and expires:  # out of the lockfile, into the URL store
            known = KnownUrl(url, expires, entry.job_id, self.writer.lock.api)
            self.downloads.urls.put(sha256, known)
        done = {"output_sha256": sha256, "output_size": got.download.size, **_NO_URL}
        detail = str(output) if output is not None else "kept in the render cache (orphaned)"
        paths = {"output": str(output)} if output is not None else {}
        return await self.record(item, "done", detail, state="done", error=None, **done, **paths)


def completed_fields(entry: Entry, job: JobState, now: datetime) -> dict[str, Any]:
    """The fields that record `entry`'s job finished with a video (`job.video_url`): its
    result URL and when it expires, and its bill on the entry and its submission (an answer
    without one keeps the bill an earlier answer reported: a cancel's, say). A run's poll
    writes them, and so does `kling-batch cancel` when the job finished first."""
    assert job.video_url
    bill = {} if job.billed_usd is None else {"billed_usd": job.billed_usd}
    return {
        "state": "completed",
        "result_url": job.video_url,
        "result_expires_at": job.expires_at or now + RESULT_RETENTION,
        "completed_at": now,
        "updated_at": now,
        "billed_usd": bill.get("billed_usd", entry.billed_usd),
        "error": None,
        "submissions": entry.charged(job.job_id, **bill),
    }


def failed_fields(entry: Entry, job: JobState) -> dict[str, Any]:
    """The fields that record `entry`'s job failed: its error, and the bill its answer
    carries if any (a job failed after its video was made may be billed: never report
    less than the API says). A run's poll writes them, and so does `kling-batch cancel`
    when the job failed first."""
    reason = job.error.message if job.error else job.raw_status
    code = f" [{job.error.code}]" if job.error and job.error.code else ""
    error = f"job {job.job_id} {job.raw_status}: {reason}{code}"
    return {"state": "failed", "error": error, **entry.bill(job.job_id, job.billed_usd)}


def _known_seconds(render: PlannedRender, entry: Entry) -> Decimal | None:
    """The length the entry's job renders: the planned one, unless the plan only assumed
    it (a remote source video) or the job was made for an earlier request."""
    if render.assumptions or entry.fingerprint != render.fingerprint:
        return None
    return render.seconds


def outcome_of(item: PlanItem, state: OutcomeState, detail: str = "") -> Outcome:
    """How `item`'s render ended in this run."""
    return Outcome(item.render.id, item.action, state, detail)
