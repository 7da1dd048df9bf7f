"""The run: every planned render uploaded, submitted, polled, downloaded and recorded.

One anyio task per render; a `CapacityLimiter` keeps at most `jobs` in flight and the
client's shared `RateLimiter` keeps every request inside the account's budget. Every state
change goes to the lockfile before the next step (`LockWriter.commit`), so a crash at any
point leaves a lockfile the next run resumes from without paying twice:

    submitting ─POST─▶ submitted ─poll─▶ completed ─download─▶ done
        │ no answer         │ job failed     │ URL expired
        ▼                   ▼                ▼
     uncertain            failed           failed

Expected per-render failures are values (`Outcome`), never exceptions, so one bad shot
never cancels its siblings. An unexpected error fails only its own render (its record is
kept); only a lockfile that cannot be written stops the run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, Protocol

import anyio
import anyio.lowlevel
import anyio.to_thread

from kling_batch import kling_o3
from kling_batch.atomic import discard
from kling_batch.canonical import canonical_json
from kling_batch.clock import Clock
from kling_batch.errors import (
    AmbiguousSubmit,
    ApiError,
    BadOutput,
    JobNotFound,
    LockWriteError,
    ResultExpired,
    RetryableError,
    RunFatal,
    ShotRejected,
    TryLater,
    UploadFailed,
)
from kling_batch.lockfile import Entry, LockWriter, PastRender, UploadedAsset
from kling_batch.outputs import place_copy, temp_beside, verify_and_place
from kling_batch.pacing import PollPacing, measured_speed
from kling_batch.payloads import Download, JobState, Submission, Upload, parse_time
from kling_batch.plan import (
    PAID_ACTIONS,
    UNSETTLED,
    PlanItem,
    PlannedRender,
    new_entry,
)
from kling_batch.state import StateDir

log = logging.getLogger(__name__)

FINGERPRINT_HEADER = "x-kling-batch-fingerprint"
RESULT_RETENTION = timedelta(days=7)  # signed result URLs (API reference §3.1)
JOB_RETENTION = timedelta(hours=1)  # job state after completion (API reference §3.1)
_HISTORY_LIMIT = 20

OutcomeState = Literal["done", "failed", "uncertain", "pending", "skipped"]


class ApiClient(Protocol):
    """What the executor needs of `EmpirioClient` (tests may pass a fake)."""

    @property
    def clock(self) -> Clock: ...

    async def submit(
        self, body: Mapping[str, Any], *, headers: Mapping[str, str] | None = None
    ) -> Submission: ...

    async def get_job(self, job_id: str, poll_url: str | None = None) -> JobState: ...

    async def list_jobs(
        self, status: str | None = None, limit: int = 100
    ) -> list[JobState] | None: ...

    async def upload(self, path: Path, *, content_type: str | None = None) -> Upload: ...

    async def download(self, url: str, dest: Path) -> Download: ...


class Events(Protocol):
    """Where the executor reports what happens (the console UI, or a test recorder)."""

    def event(self, render_id: str, state: str, detail: str = "") -> None: ...

    def progress(self, render_id: str, fraction: float | None) -> None: ...


@dataclass(frozen=True)
class RunOptions:
    """How a run behaves; all durations in model seconds."""

    jobs: int = 4
    fail_fast: bool = False
    resubmit_uncertain: bool = False
    pacer: PollPacing = field(default_factory=lambda: PollPacing())
    # Give up polling a job that stays unreachable this long; it stays `submitted`.
    poll_patience: float = 1800.0
    download_attempts: int = 3


@dataclass(frozen=True)
class Outcome:
    """How one render ended in this run."""

    id: str
    action: str
    state: OutcomeState
    detail: str = ""


@dataclass
class RunReport:
    """Every outcome, what this run submitted (and may have paid for), why it stopped."""

    outcomes: list[Outcome] = field(default_factory=list)
    # Render id → estimated cost, for every POST this run made that may have created a job
    # (answered with a job id, or unanswered): counted the moment it happens, so a run
    # cut short still reports what it spent.
    submitted: dict[str, Decimal] = field(default_factory=dict)
    billed: dict[str, Decimal] = field(default_factory=dict)
    stopped: str | None = None
    interrupted: bool = False

    def count(self, state: OutcomeState) -> int:
        """How many renders ended in `state`."""
        return sum(1 for outcome in self.outcomes if outcome.state == state)

    @property
    def estimated_cost(self) -> Decimal:
        """Estimated cost of every submission this run made."""
        return sum(self.submitted.values(), Decimal(0))

    @property
    def billed_cost(self) -> Decimal | None:
        """What the API billed for this run's submissions, if it said so for every one."""
        if not self.submitted or set(self.billed) != set(self.submitted):
            return None
        return sum(self.billed.values(), Decimal(0))

    @property
    def exit_code(self) -> int:
        """0 when every render is done; 130 when interrupted; 1 otherwise."""
        if self.interrupted:
            return 130
        if self.stopped or any(o.state != "done" for o in self.outcomes):
            return 1
        return 0


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
    ) -> None:
        self.root = root
        self.client = client
        self.clock = client.clock
        self.writer = writer
        self.events = events
        self.options = options or RunOptions()
        self.state = StateDir(root)
        self.report = RunReport()
        self.stop_submitting = anyio.Event()
        self._slots = anyio.CapacityLimiter(self.options.jobs)
        self._uploads: dict[str, anyio.Event] = {}
        self._upload_errors: dict[str, str] = {}
        self._claimed: set[str] = {e.job_id for e in writer.lock.shots.values() if e.job_id}
        self._listed: list[JobState] | None = None
        self._done_events: dict[str, anyio.Event] = {}
        self._list_lock = anyio.Lock()

    def stop(self, reason: str) -> None:
        """Submit nothing new; renders already submitted are still followed to the end."""
        if self.report.stopped is None:
            self.report.stopped = reason
        self.stop_submitting.set()

    async def run(self, items: Sequence[PlanItem]) -> RunReport:
        """Run every item; returns when each has an outcome (or the run was cancelled)."""
        self.state.ensure()
        try:
            async with anyio.create_task_group() as group:
                for item in longest_first(items):
                    group.start_soon(self._run_item, item)
        finally:
            await self.writer.commit()
        return self.report

    # -- one render ---------------------------------------------------------------------

    def _finished(self, render_id: str) -> anyio.Event:
        """Set when a render's task has ended, however it ended."""
        event = self._done_events.get(render_id)
        if event is None:
            event = self._done_events[render_id] = anyio.Event()
        return event

    async def _run_item(self, item: PlanItem) -> None:
        try:
            await self._run_item_inner(item)
        finally:
            self._finished(item.render.id).set()

    async def _run_item_inner(self, item: PlanItem) -> None:
        render = item.render
        try:
            outcome = await self._dispatch(item)
        except RunFatal as exc:
            self.stop(f"the API refused the account: {exc}")
            entry = self.writer.lock.shots.get(render.id)
            # Refused at submit: failed (nothing was created). Refused while polling: the
            # job is still recorded and the next run resumes it.
            state: OutcomeState = "failed" if entry and entry.state == "failed" else "pending"
            outcome = Outcome(render.id, item.action, state, detail=str(exc))
        except anyio.get_cancelled_exc_class():
            entry = self.writer.lock.shots.get(render.id)
            if entry is not None and entry.state in UNSETTLED:
                detail = f"interrupted with the job {entry.state}; the next run resumes it"
                self.report.outcomes.append(Outcome(render.id, item.action, "pending", detail))
            raise
        except LockWriteError:
            raise
        except Exception as exc:  # an unexpected failure must not cancel paid siblings
            log.debug("render %s failed unexpectedly", render.id, exc_info=True)
            entry = self.writer.lock.shots.get(render.id)
            if entry is not None and entry.state == "submitting":
                self.report.submitted[render.id] = render.cost  # the POST may have gone out
            detail = f"unexpected error ({type(exc).__name__}: {exc}); its record is kept"
            outcome = Outcome(render.id, item.action, "failed", detail)
        self.report.outcomes.append(outcome)
        self.events.event(render.id, outcome.state, outcome.detail)
        if outcome.state == "failed" and self.options.fail_fast:
            self.stop(f"--fail-fast: {render.id} failed")

    async def _dispatch(self, item: PlanItem) -> Outcome:
        action = item.action
        if action == "unchanged":
            return Outcome(item.render.id, action, "done", detail="unchanged")
        if action == "restore":
            return await self._restore(item)
        entry = self.writer.lock.shots.get(item.render.id)
        if action == "resume" and entry is not None:
            return await self._follow(item, entry)
        if action == "uncertain" and entry is not None:
            return await self._settle_uncertain(item, entry)
        if action in PAID_ACTIONS:
            return await self._render(item, entry)
        return Outcome(item.render.id, action, "skipped", detail=f"nothing to do for {action}")

    async def _render(self, item: PlanItem, previous: Entry | None) -> Outcome:
        render = item.render
        # A job slot is held from before the upload until the job completes on the API;
        # the download happens outside it so the next render can be submitted meanwhile.
        async with self._slots:
            if self.stop_submitting.is_set():
                return Outcome(render.id, item.action, "skipped", detail="not submitted")
            try:
                body = await self._wire_body(render)
            except UploadFailed as exc:
                await self._record_failure(render, previous, str(exc))
                return Outcome(render.id, item.action, "failed", detail=str(exc))
            if self.stop_submitting.is_set():
                return Outcome(render.id, item.action, "skipped", detail="not submitted")
            entry = await self._submit(render, previous, body)
            if entry is None:
                return Outcome(render.id, item.action, "skipped", detail="not submitted")
            if entry.state != "submitted":
                state: OutcomeState = "uncertain" if entry.state == "uncertain" else "failed"
                return Outcome(render.id, item.action, state, entry.error or "")
            polled = await self._poll(render, entry)
        return await self._finish(item, polled)

    async def _submit(
        self, render: PlannedRender, previous: Entry | None, body: dict[str, Any]
    ) -> Entry | None:
        """Record `submitting`, POST, record the answer; returns the entry as it ends up.

        Returns None, with the previous record put back, when the run was stopped or
        cancelled after `submitting` was saved but before the POST went out.
        """
        attempts = (previous.attempts if previous else 0) + 1
        self.writer.set(
            render.id,
            new_entry(
                render,
                "submitting",
                attempts=attempts,
                updated_at=self.clock.now(),
                history=_carry_history(previous, render.fingerprint),
            ),
        )
        await self.writer.commit()
        try:
            await anyio.lowlevel.checkpoint()  # a second Ctrl-C during the save lands here
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._unsubmit(render.id, previous)
            raise
        if self.stop_submitting.is_set():
            await self._unsubmit(render.id, previous)
            return None
        self.events.event(render.id, "submitting")
        headers = {FINGERPRINT_HEADER: render.fingerprint}
        try:
            # Shielded: once the POST is on the wire, hearing its answer beats guessing.
            with anyio.CancelScope(shield=True):
                submission = await self.client.submit(body, headers=headers)
        except AmbiguousSubmit as exc:
            self.report.submitted[render.id] = render.cost
            entry = self.writer.update(
                render.id,
                state="uncertain",
                error=f"no answer to the submission ({exc}); it may have been billed",
                updated_at=self.clock.now(),
            )
        except ShotRejected as exc:
            entry = self.writer.update(render.id, state="failed", error=f"rejected: {exc}")
        except RunFatal as exc:
            self.writer.update(render.id, state="failed", error=f"not submitted: {exc}")
            await self.writer.commit()
            raise
        except ApiError as exc:
            entry = self.writer.update(render.id, state="failed", error=f"not submitted: {exc}")
        else:
            self.report.submitted[render.id] = render.cost
            now = self.clock.now()
            entry = self.writer.update(
                render.id,
                state="submitted",
                job_id=submission.job_id,
                poll_url=submission.poll_url,
                submitted_at=now,
                updated_at=now,
                error=None,
            )
            self._claimed.add(submission.job_id)
        await self.writer.commit()
        if entry.state == "submitted":
            self.events.event(render.id, "submitted", entry.job_id or "")
        return entry

    async def _unsubmit(self, shot_id: str, previous: Entry | None) -> None:
        """Put back the record a `submitting` entry replaced (its POST was never sent)."""
        if previous is None:
            self.writer.remove(shot_id)
        else:
            self.writer.set(shot_id, previous)
        await self.writer.commit()

    async def _follow(self, item: PlanItem, entry: Entry) -> Outcome:
        """Finish a job submitted earlier (resumed or adopted): poll it, then download."""
        polled: Entry | Outcome = entry
        if entry.state == "submitted":
            async with self._slots:
                polled = await self._poll(item.render, entry)
        return await self._finish(item, polled)

    async def _finish(self, item: PlanItem, polled: Entry | Outcome) -> Outcome:
        """Download a completed job's result (or pass on how polling ended)."""
        if isinstance(polled, Outcome):
            return replace(polled, action=item.action)
        outcome = await self._download_result(item.render, polled)
        return replace(outcome, action=item.action)

    async def _poll(self, render: PlannedRender, entry: Entry) -> Entry | Outcome:
        assert entry.job_id is not None
        pacer = self.options.pacer
        started = self.clock.monotonic()
        if entry.submitted_at is not None:
            started -= _model_age(self.clock, entry.submitted_at)
        readings: list[tuple[float, float]] = []
        unreachable_since: float | None = None
        tier, seconds = render.request.model_tier, render.seconds
        while True:
            elapsed = self.clock.monotonic() - started
            await self.clock.sleep(pacer.next_delay(tier, seconds, elapsed, readings))
            trouble: ApiError | None = None
            try:
                job = await self.client.get_job(entry.job_id, entry.poll_url)
            except JobNotFound as exc:
                if self._may_be_forgotten(entry):
                    return await self._forgotten(render, entry)
                # The API keeps a job an hour after it completes: a 404 sooner is a
                # hiccup, not a lost job. Ask again later rather than re-pay.
                trouble = exc
            except RetryableError as exc:
                trouble = exc
            except RunFatal:
                raise
            except ApiError as exc:
                detail = f"cannot poll job {entry.job_id} ({exc}); rerun to resume it"
                return Outcome(render.id, "resume", "pending", detail=detail)
            if trouble is not None:
                tick = self.clock.monotonic()
                unreachable_since = unreachable_since or tick
                if tick - unreachable_since > self.options.poll_patience:
                    detail = f"job {entry.job_id} unreachable ({trouble}); rerun to resume it"
                    return Outcome(render.id, "resume", "pending", detail=detail)
                continue
            unreachable_since = None
            elapsed = self.clock.monotonic() - started
            if job.status == "succeeded":
                pacer.learn(tier, seconds, elapsed)
                speed = measured_speed(readings)
                if speed is not None:
                    pacer.learn_speed(tier, seconds, speed)
                if render.id in self.report.submitted and job.billed_usd is not None:
                    self.report.billed[render.id] = job.billed_usd
                if not job.video_url:
                    # Paid for: keep the job on record (the next run asks again) rather
                    # than fail it into a paid re-render.
                    error = (
                        f"job {job.job_id} completed but no video URL was found in its "
                        "answer; the next run asks again"
                    )
                    self.writer.update(render.id, error=error, updated_at=self.clock.now())
                    await self.writer.commit()
                    return Outcome(render.id, "resume", "pending", detail=error)
                now = self.clock.now()
                entry = self.writer.update(
                    render.id,
                    state="completed",
                    result_url=job.video_url,
                    result_expires_at=job.expires_at or now + RESULT_RETENTION,
                    completed_at=now,
                    updated_at=now,
                    billed_usd=job.billed_usd,
                )
                await self.writer.commit()
                self.events.progress(render.id, 1.0)
                self.events.event(render.id, "completed", job.job_id)
                return entry
            if job.status == "failed":
                reason = job.error.message if job.error else job.raw_status
                code = f" [{job.error.code}]" if job.error and job.error.code else ""
                error = f"job {job.job_id} {job.raw_status}: {reason}{code}"
                self.writer.update(
                    render.id, state="failed", error=error, updated_at=self.clock.now()
                )
                await self.writer.commit()
                return Outcome(render.id, "resume", "failed", detail=error)
            if job.progress is not None:
                readings.append((elapsed, job.progress))
            self.events.progress(render.id, job.progress)

    def _may_be_forgotten(self, entry: Entry) -> bool:
        """True once a job could have completed and been dropped (kept 1 h after completion)."""
        if entry.submitted_at is None:
            return True
        return _model_age(self.clock, entry.submitted_at) > JOB_RETENTION.total_seconds()

    async def _forgotten(self, render: PlannedRender, entry: Entry) -> Entry | Outcome:
        """The API dropped the job (state is kept an hour after completion)."""
        if entry.result_url:
            return entry
        error = (
            f"the API no longer knows job {entry.job_id} (job state is kept one hour after "
            "completion) and no result URL was recorded; the next plan prices a re-render"
        )
        self.writer.update(render.id, state="failed", error=error, updated_at=self.clock.now())
        await self.writer.commit()
        return Outcome(render.id, "resume", "failed", detail=error)

    async def _download_result(self, render: PlannedRender, entry: Entry) -> Outcome:
        """Fetch a completed render into place; on expiry, ask the job for a fresh URL."""
        assert entry.result_url is not None
        url = entry.result_url
        last_error = ""
        for _ in range(self.options.download_attempts):
            try:
                download = await self._fetch(url, render.output)
            except ResultExpired as exc:
                try:
                    fresh = await self._fresh_url(entry)
                except TryLater as later:
                    detail = f"result URL refused and the job could not be asked ({later})"
                    self.writer.update(render.id, error=detail, updated_at=self.clock.now())
                    await self.writer.commit()
                    return Outcome(render.id, "resume", "pending", detail=detail)
                if fresh is None:
                    error = (
                        f"result URL expired and job {entry.job_id} is gone ({exc}); "
                        "the next plan prices a re-render"
                    )
                    self.writer.update(
                        render.id, state="failed", error=error, updated_at=self.clock.now()
                    )
                    await self.writer.commit()
                    return Outcome(render.id, "resume", "failed", detail=error)
                url = fresh
                entry = self.writer.update(render.id, result_url=fresh)
                continue
            except RunFatal:
                raise
            except (ApiError, BadOutput, OSError) as exc:
                last_error = str(exc)
                continue
            now = self.clock.now()
            self.writer.update(
                render.id,
                state="done",
                output=str(render.output),
                output_sha256=download.sha256,
                output_size=download.size,
                updated_at=now,
                error=None,
            )
            await self.writer.commit()
            return Outcome(render.id, "resume", "done", detail=str(render.output))
        detail = f"download failed ({last_error}); rerun to resume, the job is paid for"
        self.writer.update(render.id, error=detail, updated_at=self.clock.now())
        await self.writer.commit()
        return Outcome(render.id, "resume", "pending", detail=detail)

    async def _fresh_url(self, entry: Entry) -> str | None:
        """A new result URL from the job, None if the job is gone; `TryLater` if unsure."""
        if entry.job_id is None:
            return None
        try:
            job = await self.client.get_job(entry.job_id, entry.poll_url)
        except JobNotFound:
            return None
        except RunFatal:
            raise
        except ApiError as exc:
            raise TryLater(str(exc)) from None
        if job.status == "succeeded" and job.video_url:
            return job.video_url
        if job.status == "succeeded":
            raise TryLater(f"job {job.job_id} answered without a video URL")
        return None

    # -- restore and uncertain ----------------------------------------------------------

    async def _restore(self, item: PlanItem) -> Outcome:
        """Put an earlier render back in place for free: a file, the cache or its URL."""
        render, source = item.render, item.restore
        assert source is not None
        if source.kind == "twin":
            assert source.twin is not None
            await self._finished(source.twin).wait()
            twin = self.writer.lock.shots.get(source.twin)
            if twin is None or twin.state != "done" or not twin.output_sha256:
                detail = f"{source.twin} (same request) did not finish; the next run plans it"
                return Outcome(render.id, "restore", "skipped", detail=detail)
            source = replace(
                source,
                sha256=twin.output_sha256,
                size=twin.output_size or 0,
                path=self.root / twin.output,
            )
        previous = self.writer.lock.shots.get(render.id)
        target = self.root / render.output
        try:
            if source.kind == "url":
                assert source.url is not None
                await self._fetch(source.url, render.output, expected=source.sha256)
            else:
                assert source.path is not None
                await anyio.to_thread.run_sync(place_copy, source.path, target, source.sha256)
        except (ApiError, BadOutput, OSError) as exc:
            return Outcome(render.id, "restore", "failed", detail=f"restore failed: {exc}")
        past = self._past_render(render.fingerprint)
        self.writer.set(
            render.id,
            new_entry(
                render,
                "done",
                output_sha256=source.sha256,
                output_size=source.size,
                result_url=past.result_url if past else None,
                result_expires_at=past.result_expires_at if past else None,
                updated_at=self.clock.now(),
                history=_carry_history(previous, render.fingerprint),
            ),
        )
        await self.writer.commit()
        return Outcome(render.id, "restore", "done", detail=f"restored from {source.kind}")

    def _past_render(self, fingerprint: str) -> PastRender | None:
        for entry in self.writer.lock.shots.values():
            if entry.fingerprint == fingerprint and entry.output_sha256:
                return PastRender(
                    fingerprint=fingerprint,
                    output_sha256=entry.output_sha256,
                    output_size=entry.output_size or 0,
                    result_url=entry.result_url,
                    result_expires_at=entry.result_expires_at,
                )
            for past in entry.history:
                if past.fingerprint == fingerprint:
                    return past
        return None

    async def _settle_uncertain(self, item: PlanItem, entry: Entry) -> Outcome:
        """Adopt the job if the API's job list shows it; resubmit only when asked to."""
        render = item.render
        job = await self._find_submitted(render, entry)
        if job is not None:
            now = self.clock.now()
            adopted = self.writer.update(
                render.id,
                state="submitted",
                job_id=job.job_id,
                poll_url=None,
                submitted_at=now,
                updated_at=now,
                error=None,
            )
            await self.writer.commit()
            self.events.event(render.id, "submitted", f"found {job.job_id} in the job list")
            return await self._follow(item, adopted)
        if not self.options.resubmit_uncertain:
            detail = entry.error or "the submission may have reached the API"
            return Outcome(render.id, "uncertain", "uncertain", detail=detail)
        return await self._render(PlanItem(render, "retry", item.reasons), entry)

    async def _find_submitted(self, render: PlannedRender, entry: Entry) -> JobState | None:
        """A listed job with this render's exact request, created since it was submitted."""
        async with self._list_lock:
            if self._listed is None:
                try:
                    self._listed = await self.client.list_jobs(limit=100) or []
                except RunFatal:
                    raise
                except ApiError:
                    self._listed = []
            candidates = self._listed
            wanted = canonical_json(self._sent_body(entry))
            since = entry.updated_at - timedelta(minutes=5) if entry.updated_at else None
            for job in candidates:
                if job.job_id in self._claimed or job.status == "failed":
                    continue
                sent = job.raw.get("request") or job.raw.get("input") or job.raw.get("params")
                if not isinstance(sent, dict) or _comparable(sent) != wanted:
                    continue
                created = _created_at(job)
                if since is not None and created is not None and created < since:
                    continue
                self._claimed.add(job.job_id)
                return job
        return None

    def _sent_body(self, entry: Entry) -> dict[str, Any]:
        """What was POSTed for an entry: its request with local assets as upload paths."""
        uploads = self.writer.lock.uploads
        paths = {key: uploads[sha].path for key, sha in entry.assets.items() if sha in uploads}
        return kling_o3.with_media(entry.request, paths)

    # -- uploads and downloads ----------------------------------------------------------

    async def _wire_body(self, render: PlannedRender) -> dict[str, Any]:
        """The request body with every local asset replaced by its upload path."""
        paths = {}
        for key, asset in render.assets.items():
            if asset.kind == "local":
                assert asset.path is not None and asset.sha256 is not None
                paths[key] = await self._uploaded(asset.sha256, asset.path, asset.ref)
        return kling_o3.with_media(render.body, paths)

    async def _uploaded(self, sha256: str, path: Path, ref: str) -> str:
        """The `bunny://` path of a file's content, uploading it once per run and lockfile."""
        known = self.writer.lock.uploads.get(sha256)
        if known is not None:
            return known.path
        done = self._uploads.get(sha256)
        if done is None:
            done = self._uploads[sha256] = anyio.Event()
            try:
                upload = await self.client.upload(path)
            except RunFatal:
                raise
            except (ApiError, OSError) as exc:
                self._upload_errors[sha256] = f"upload of {ref} failed: {exc}"
            else:
                self.writer.add_upload(
                    sha256,
                    UploadedAsset(path=upload.path, size=upload.size, uploaded_at=self.clock.now()),
                )
                await self.writer.commit()
            finally:
                done.set()
        else:
            await done.wait()
        known = self.writer.lock.uploads.get(sha256)
        if known is None:
            raise UploadFailed(self._upload_errors.get(sha256, f"upload of {ref} failed"))
        return known.path

    async def _fetch(self, url: str, output: Any, *, expected: str | None = None) -> Download:
        """Download to a temp file beside the target, verify it, cache it, move it in place.

        With `expected`, bytes that hash differently are refused before they replace
        anything.
        """
        target = self.root / output
        temp = await anyio.to_thread.run_sync(temp_beside, target)
        try:
            download = await self.client.download(url, temp)
            await anyio.to_thread.run_sync(
                verify_and_place, temp, target, download, self.state.cached_render
            )
        finally:
            await anyio.to_thread.run_sync(discard, temp)
        return download

    async def _record_failure(
        self, render: PlannedRender, previous: Entry | None, error: str
    ) -> None:
        if previous is not None and previous.state == "done":
            return  # keep the earlier finished render on record; the plan retries the edit
        self.writer.set(
            render.id,
            new_entry(
                render,
                "failed",
                error=error,
                updated_at=self.clock.now(),
                attempts=previous.attempts if previous else 0,
                history=_carry_history(previous, render.fingerprint),
            ),
        )
        await self.writer.commit()


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


def _carry_history(previous: Entry | None, fingerprint: str) -> list[PastRender]:
    """The previous entry's history, plus the previous render itself if it was finished.

    A forced re-render of the same request keeps the earlier one too: if the new attempt
    fails, the plan restores the earlier video for free instead of paying again.
    """
    if previous is None:
        return []
    history = list(previous.history)
    if previous.state == "done" and previous.output_sha256 and previous.output_size is not None:
        history = [p for p in history if p.fingerprint != previous.fingerprint]
        history.append(
            PastRender(
                fingerprint=previous.fingerprint,
                output_sha256=previous.output_sha256,
                output_size=previous.output_size,
                result_url=previous.result_url,
                result_expires_at=previous.result_expires_at,
            )
        )
    return history[-_HISTORY_LIMIT:]


def _model_age(clock: Clock, since: datetime) -> float:
    """Model seconds since a recorded wall-clock time (0 if the clock went backwards)."""
    return max((clock.now() - since).total_seconds(), 0.0) / clock.time_scale


def _comparable(request: Mapping[str, Any]) -> str:
    """Canonical text of a listed job's request; list fields compared comma-joined."""
    normal = {
        key: ",".join(value) if isinstance(value, list) else value for key, value in request.items()
    }
    return canonical_json(normal)


def _created_at(job: JobState) -> datetime | None:
    return parse_time(job.raw.get("created_at"))
