"""The run: every planned render uploaded, submitted, polled, downloaded and recorded.

One anyio task per render; a `CapacityLimiter` keeps at most `jobs` in flight and the
client's shared `RateLimiter` keeps every request inside the account's budget. Every state
change goes to the lockfile before the next step (`LockWriter.commit`), so a crash at any
point leaves a lockfile the next run resumes from without paying twice:

    submitting ─POST─▶ submitted ─poll─▶ completed ─download─▶ done
        │ no answer         │ job failed     │ URL refused, the job gone
        ▼                   ▼                ▼
     uncertain            failed           failed

Expected per-render failures are values (`Outcome`), never exceptions, so one bad shot
never cancels its siblings. An unexpected error fails only its own render (its record is
kept); only a lockfile that cannot be written stops the run. The steps' mechanics live
beside it: `uploads` (inputs, once per content), `polling` and `pacing` (following a job),
`following` (a job polled, its result downloaded, each step recorded), `downloads`
(results and restores into place), `adoption` (unanswered submissions found in the job
list), `team` (claims on a shared store); this module decides what each render needs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.lowlevel
import anyio.to_thread

from kling_batch.adoption import (
    JobFinder,
    JobLister,
    Look,
    stray_detail,
    unsettled_detail,
)
from kling_batch.downloads import Downloads, ResultClient
from kling_batch.errors import (
    LockWriteError,
    RunFatal,
    UploadFailed,
)
from kling_batch.following import Follower, RunOptions, outcome_of
from kling_batch.jobboard import JobBoard
from kling_batch.lockfile import (
    UNSETTLED,
    Entry,
    LockWriter,
    inherited,
    new_entry,
)
from kling_batch.outcomes import Events, Outcome, OutcomeState, RunReport, stop_reason
from kling_batch.pacing import job_deadline, longest_first
from kling_batch.plan import PAID_ACTIONS, PlanItem, PlannedRender, RestoreSource
from kling_batch.recall import JobMemory, recalled_entry
from kling_batch.state import StateDir
from kling_batch.submission import Poster, Submitter
from kling_batch.team import (
    Follow,
    FromStore,
    Later,
    Pay,
    Team,
    Verdict,
    Wait,
    claimed_entry,
    claimed_uploads,
)
from kling_batch.uploads import Uploader, Uploads

log = logging.getLogger(__name__)


class ApiClient(Poster, Uploader, JobLister, ResultClient, Protocol):
    """What the executor needs of `EmpirioClient` (tests may pass a fake)."""


class Executor:
    """Runs plan items against an API client, recording each step through a LockWriter."""

    def __init__(
        self,
        *,
        root: Path,
        client: ApiClient,
        writer: LockWriter,
        events: Events,
        options: RunOptions | None = None,
        team: Team | None = None,
    ) -> None:
        self.root = root
        self.team = team  # the shared store's claims and pushes (`kling_batch.team`)
        self.client = client
        self.clock = client.clock
        self.writer = writer
        self.events = events
        self.options = options or RunOptions()
        self.state = StateDir(root)
        self.report = RunReport()
        self.stop_submitting = anyio.Event()
        self._slots = anyio.CapacityLimiter(self.options.jobs)
        self._uploads = Uploads(client, writer, self.clock)
        self._finder = JobFinder(client, writer, scope=self._uploads.scope)
        self._downloads = Downloads(client, self.state, writer.path, writer.lock.api)
        self._submitter = Submitter(
            client,
            writer,
            events=events,
            report=self.report,
            stopped=self.stop_submitting,
            on_job=self._finder.claim,
            stop=self.stop,
        )
        self._follower = Follower(
            client,
            writer,
            events=events,
            report=self.report,
            options=self.options,
            downloads=self._downloads,
            slots=self._slots,
            board=JobBoard(client, window=self.options.pacer.list_window),
        )
        self._done_events: dict[str, anyio.Event] = {}
        self._memory = JobMemory(self.state, writer.path)
        writer.jobs = self._memory

    def stop(self, reason: str) -> None:
        """Submit nothing new; renders already submitted are still followed to the end."""
        if self.report.stopped is None:
            self.report.stopped = reason
        self.stop_submitting.set()

    async def run(self, items: Sequence[PlanItem]) -> RunReport:
        """Run every item; returns when each has an outcome (or the run was cancelled)."""
        self.state.ensure()
        await anyio.to_thread.run_sync(self._memory.tidy, self.writer.lock, self.clock.now())
        await self._downloads.detach_cache()
        self._downloads.urls.absorb(self.writer)
        await self._take_over(items)
        await self._recall(items)
        items = [await self._staged(item) for item in items]
        try:
            async with anyio.create_task_group() as group:
                for item in longest_first(items):
                    group.start_soon(self._run_item, item)
        finally:
            await self.writer.commit()
            self._downloads.urls.save()
        return self.report

    # -- one render ---------------------------------------------------------------------

    def _finished(self, render_id: str) -> anyio.Event:
        """Set when a render's task has ended, however it ended."""
        return self._done_events.setdefault(render_id, anyio.Event())

    async def _run_item(self, item: PlanItem) -> None:
        try:
            outcome = await self._outcome_of(item)
            if self.team is not None:
                render = item.render
                entry, done = self.writer.get(render.id), outcome.state == "done"
                self.team.settled(render.id, render.fingerprint, entry, done=done)
            self.report.outcomes.append(outcome)
            self.events.event(outcome.id, outcome.state, outcome.detail)
            if outcome.state == "failed" and self.options.fail_fast:
                self.stop(f"--fail-fast: {outcome.id} failed")
        finally:
            self._finished(item.render.id).set()

    async def _outcome_of(self, item: PlanItem) -> Outcome:
        """`_dispatch`, with every way a render can break turned into its outcome."""
        render = item.render
        try:
            return await self._dispatch(item)
        except RunFatal as exc:
            self.stop(stop_reason(exc))
            # Refused at submit: failed (nothing was created). Refused while polling: the
            # job is still recorded and the next run resumes it.
            entry = self.writer.get(render.id)
            state: OutcomeState = "failed" if entry and entry.state == "failed" else "pending"
            return _outcome(item, state, str(exc))
        except anyio.get_cancelled_exc_class():
            entry = self.writer.get(render.id)
            if entry is not None and entry.state in UNSETTLED:
                detail = f"interrupted with the job {entry.state}; the next run resumes it"
                self.report.outcomes.append(_outcome(item, "pending", detail))
            raise
        except LockWriteError as exc:
            # The run ends: nothing more may go out whose job it could not record (a
            # submit waiting shielded for its retry would otherwise still be sent).
            self.stop_submitting.set()
            self.report.outcomes.append(_outcome(item, "pending", f"not recorded: {exc}"))
            raise
        except Exception as exc:  # an unexpected failure must not cancel paid siblings
            log.debug("render %s failed unexpectedly", render.id, exc_info=True)
            entry = self.writer.get(render.id)
            if entry is not None and entry.state == "submitting":
                self.report.submitted[render.id] = render.cost  # the POST may have gone out
            detail = f"unexpected error ({type(exc).__name__}: {exc}); its record is kept"
            return _outcome(item, "failed", detail)

    async def _dispatch(self, item: PlanItem) -> Outcome:
        action = item.action
        if action == "unchanged":
            return _outcome(item, "done", "unchanged")
        if action == "restore":
            return await self._restore(item)
        entry = self.writer.get(item.render.id)
        if action == "resume" and entry is not None:
            return await self._follower.follow(item, entry)
        if action == "uncertain" and entry is not None:
            return await self._settle_uncertain(item, entry)
        if action in PAID_ACTIONS:
            return await self._render(item, entry)
        return _outcome(item, "skipped", f"nothing to do for {action}")

    async def _staged(self, item: PlanItem) -> PlanItem:
        """A restore whose source is another output, copied into the cache first: when two
        renders swap names, neither copy may read a file the other has just replaced."""
        if item.restore is None or item.restore.kind != "file":
            return item
        return replace(item, restore=await self._downloads.stage(item.restore))

    async def _take_over(self, items: Sequence[PlanItem]) -> None:
        """Move every entry whose job another render takes over (a renamed shot, a take
        renumbered, an id reused for another request) under that render's id, in one save
        before any render starts: a job always has exactly one owner on record."""
        moves = [item for item in items if item.adopt is not None]
        for item in moves:
            assert item.adopt is not None
            self.writer.move(item.adopt, item.render.id, item.render)
        await self.writer.commit()
        for item in moves:
            self.events.event(item.render.id, "adopted", f"the job of {item.adopt}")

    async def _recall(self, items: Sequence[PlanItem]) -> None:
        """Record under its render every job (or unanswered submission) an earlier run made
        that the lockfile lost (`kling_batch.recall`), in one save before any render starts:
        from then on it is followed, or looked for, like one of this lockfile's own."""
        recalled = [item for item in items if item.recalled is not None]
        now = self.clock.now()
        for item in recalled:
            assert item.recalled is not None
            render = item.render
            entry = recalled_entry(render, self.writer.get(render.id), item.recalled, now)
            self.writer.set(render.id, entry)
        await self.writer.commit()
        for item in recalled:
            assert item.recalled is not None
            self.events.event(item.render.id, "adopted", item.recalled.describe())

    async def _render(self, item: PlanItem, previous: Entry | None) -> Outcome:
        """Upload, claim (with a shared store), submit and poll a render in a job slot, then
        download it outside one.

        The slot is held from before the upload until the job completes on the API, so the
        next render can be submitted while this one downloads. A render another run claimed
        is waited for outside any slot (`_elsewhere`).
        """
        render = item.render
        verdict: Verdict = Pay()
        async with self._slots:
            if self.stop_submitting.is_set():
                return _outcome(item, "skipped", "not submitted")
            try:
                body = await self._uploads.wire_body(render.body, render.assets)
            except UploadFailed as exc:
                detail = await self._submitter.record_failure(render, previous, str(exc))
                return _outcome(item, "failed", detail)
            if self.team is not None:  # the claim is taken before `submitting` is saved
                verdict = await self.team.arbitrate(render, body)
            if isinstance(verdict, Pay):
                polled = await self._submit(item, previous, body)
        if not isinstance(verdict, Pay):
            return await self._elsewhere(item, previous, verdict)
        return await self._follower.collect(item, polled)

    async def _submit(
        self, item: PlanItem, previous: Entry | None, body: dict[str, Any]
    ) -> Entry | Outcome:
        """Submit and poll (in the caller's job slot): the completed entry, or how it ended."""
        render = item.render
        if self.stop_submitting.is_set():
            return _outcome(item, "skipped", "not submitted")
        rewire = partial(self._uploads.rewire, render.body, render.assets)
        entry = await self._submitter.submit(render, previous, body, rewire=rewire)
        if entry is None:
            return _outcome(item, "skipped", "not submitted")
        if entry.state != "submitted":
            state: OutcomeState = "uncertain" if entry.state == "uncertain" else "failed"
            return _outcome(item, state, entry.error or "")
        if self.team is not None and entry.job_id:
            self.team.submitted(render.fingerprint, entry.job_id)
        return await self._follower.poll(item, entry)

    async def _elsewhere(self, item: PlanItem, previous: Entry | None, verdict: Verdict) -> Outcome:
        """A render another run claimed (`kling_batch.claims`): wait while it holds it, then
        restore its record, follow its job, or settle a dead run's claim as uncertain."""
        assert self.team is not None
        render = item.render
        if isinstance(verdict, Wait):
            self.events.event(render.id, "waiting", verdict.detail)
            patience = job_deadline(render.request.model_tier, render.seconds)
            patience = patience * self.clock.time_scale + 2 * self.team.lease
            verdict = await self.team.settle(render, verdict, patience=patience)
        if isinstance(verdict, Pay):  # the claim came free and is this run's now
            return await self._render(item, previous)
        if isinstance(verdict, FromStore):
            reason = "rendered by a teammate: restored from the remote store (free)"
            return await self._restore(PlanItem(render, "restore", (reason,), verdict.source))
        if isinstance(verdict, Later):
            return _outcome(item, "pending", verdict.reason)
        if isinstance(verdict, Wait):  # `settle` ends every wait; kept for the type
            return _outcome(item, "pending", verdict.detail)
        entry = claimed_entry(render, previous, verdict, now=self.clock.now())
        self.writer.set(render.id, entry)
        await self.writer.commit()
        if isinstance(verdict, Follow):
            how = "taken over from" if verdict.takeover else "claimed by"
            detail = f"{verdict.job_id}, {how} {verdict.claim.holder}"
            self.events.event(render.id, "adopted", detail)
            return await self._follower.follow(item, entry)
        if verdict.gap is None:  # same account: later looks compare with what it sent
            for sha256, upload in claimed_uploads(render, verdict.claim).items():
                self.writer.add_upload(self._uploads.scope, sha256, upload)
        body = verdict.claim.body if verdict.gap is None else None
        return await self._settle_uncertain(item, entry, body=body, gap=verdict.gap)

    # -- restore and uncertain ----------------------------------------------------------

    async def _restore(self, item: PlanItem) -> Outcome:
        """Put an earlier render back in place for free: a file, the cache or its URL."""
        render, source = item.render, item.restore
        assert source is not None
        if source.kind == "twin":
            twin = await self._twin_source(source)
            if twin is None:
                detail = f"{source.twin} (same request) did not finish; the next run plans it"
                return _outcome(item, "skipped", detail)
            source = twin
        problem = await self._place(render, source)
        if problem is not None:
            return _outcome(item, "failed", problem)
        self._downloads.remember(render.fingerprint, source.sha256, source.size)
        entry = new_entry(
            render,
            "done",
            output_sha256=source.sha256,
            output_size=source.size,
            updated_at=self.clock.now(),
            in_remote=True if source.kind == "remote" else None,
            **inherited(self.writer.get(render.id)),
        )
        self.writer.set(render.id, entry)
        return await self._follower.record(item, "done", f"restored from {source.kind}")

    async def _place(self, render: PlannedRender, source: RestoreSource) -> str | None:
        """Put a restore's bytes in place; None when done, else why not."""
        if source.kind != "remote":
            return await self._downloads.restore(render.output, source)
        if self.team is None:
            return "the remote store is not reachable in this run; the next run tries again"
        return await self.team.restore(render, source)

    async def _twin_source(self, source: RestoreSource) -> RestoreSource | None:
        """The finished twin's output as a source, once its task ended; None if it failed."""
        assert source.twin is not None
        await self._finished(source.twin).wait()
        twin = self.writer.get(source.twin)
        if twin is None or twin.state != "done" or not twin.output_sha256:
            return None
        size = twin.output_size or 0
        return replace(source, sha256=twin.output_sha256, size=size, path=self.root / twin.output)

    async def _settle_uncertain(
        self,
        item: PlanItem,
        entry: Entry,
        *,
        body: Mapping[str, Any] | None = None,
        gap: str | None = None,
    ) -> Outcome:
        """Adopt the job if the API's job list shows it; resubmit only when asked to, and
        without `blind` only after a complete look (`adoption.Look`).

        `body`: what was sent, when another run sent it (a claim taken over); `gap`: why
        this run's job list cannot settle it at all (another API account's submission).
        """
        render = item.render
        look = Look(gap=gap) if gap is not None else await self._finder.find(entry, body=body)
        recorded = self._finder.record(render.id, entry, look, self.clock.now())
        await self.writer.commit()
        if look.job is not None:
            self.events.event(render.id, "submitted", f"found {look.job.job_id} in the job list")
            return await self._follower.follow(item, recorded)
        if item.stray:
            return await self._settle_stray(item, look)
        mode = self.options.resubmit_uncertain
        if not look.may_resend(mode):
            return _outcome(item, "uncertain", unsettled_detail(entry, look, mode))
        return await self._render(PlanItem(render, "retry", item.reasons), recorded)

    async def _settle_stray(self, item: PlanItem, look: Look) -> Outcome:
        """An orphaned unanswered submission: settled (failed, nothing paid) once a complete
        look proves it made no job; else left uncertain. Never sent again."""
        detail = stray_detail(look)
        if not look.complete:
            return _outcome(item, "uncertain", detail)
        await self._follower.record(item, "done", detail, state="failed", error=detail)
        return _outcome(item, "done", detail)


def _outcome(item: PlanItem, state: OutcomeState, detail: str = "") -> Outcome:
    return outcome_of(item, state, detail)
