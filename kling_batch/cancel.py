"""`kling-batch cancel`: cancel a manifest's jobs still rendering on the API, and record it.

Only a job still rendering can be cancelled: a `submitted` entry of the lockfile. A
`completed` one has finished rendering (it is paid for; the next run downloads it), and a
`submitting` or `uncertain` one has no job id to name; each is said, and left alone.

An entry is recorded as `failed` with the error "cancelled by the user" only once the API
answered that its job is cancelled, so the next plan prices it as a retry (leave it out
with `--only`, or `enabled = false`). Whether a cancelled job is billed is unknown: a bill in
the API's answer is recorded as a run records one, so `spend` never reports less than the API
charged. A job that had already ended is recorded as a run's poll records it, since the API
forgets it an hour later: `completed` with its result URL (the next run downloads it without
asking for the job), or `failed` with its error. The command holds the run lock: it cannot
race a run of the same lockfile. The API's cancel route is provisional
(`EmpirioClient.cancel_job`); when the API does not offer it, the command says so plainly,
changes nothing and exits 1.

A job the lockfile lost (a `git checkout`, a stash or a revert took its record away) but an
earlier run remembers in the state folder (`kling_batch.recall`) is cancelled too: the one
the plan would resume for a render of the manifest. Once the API answered for it, it is
written into the lockfile as a run resuming it writes it (`recall.recalled_entry`, its
charge included), then recorded like any: so its bill reaches `spend`, a job found
completed is downloaded by the next run without paying again, and its memo is removed
when the job is over. Should the lockfile's entry of that render hold a job of its own,
which the plan gives to another render (a renamed shot asking for its request), that entry
is first moved under the other render, as a run taking the job over moves it: writing the
remembered job must never drop a job still to be followed (it would be paid for again).
A remembered submission that went unanswered has no job id to name: it is said, and left
to the next run's look in the job list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import anyio

from kling_batch import ui
from kling_batch.client import EmpirioClient
from kling_batch.endpoint import api_identity, api_key_from_env, resolve_base_url
from kling_batch.errors import ApiError, JobNotFound, RunFatal, UserError
from kling_batch.following import completed_fields, failed_fields
from kling_batch.lockfile import (
    CANCELLED_ERROR,
    CANCELLED_WORDS,
    UNSETTLED,
    Entry,
    Lockfile,
    LockWriter,
    check_api,
    load_lockfile,
)
from kling_batch.lockname import lock_path
from kling_batch.manifest import require_manifest
from kling_batch.payloads import JobState
from kling_batch.pricing import round_cost
from kling_batch.recall import JobMemory, recalled_entry, remembered_jobs
from kling_batch.reports import usd
from kling_batch.runlock import hold_run_lock
from kling_batch.selection import Candidate, matches_any, require_matches
from kling_batch.state import StateDir

if TYPE_CHECKING:
    from kling_batch.planned import PlanItem

Result = Literal["cancelled", "ended", "running", "gone", "error", "not_offered"]


@dataclass(frozen=True)
class CancelRequest:
    """Everything the `cancel` command was asked to do."""

    manifest: Path
    only: Sequence[str] = ()
    api_base: str | None = None
    allow_insecure_http: bool = False


@dataclass(frozen=True)
class Cancelled:
    """What became of one job the command tried to cancel."""

    render_id: str
    result: Result
    detail: str
    billed_usd: Decimal | None = None  # the bill the API's answer reported, if any
    job: JobState | None = None  # the API's answer, when it gave one


@dataclass(frozen=True)
class _Job:
    """A render's job to cancel, and its entry: the lockfile's, or for a job only a memo
    remembers (`recalled`, the plan's item of its render) the one a run resuming the job
    would write, written only once the API answered for the job."""

    render_id: str
    entry: Entry
    recalled: PlanItem | None = None

    @property
    def remembered(self) -> bool:
        """Whether only a memo remembers this job (the lockfile does not record it)."""
        return self.recalled is not None


@dataclass(frozen=True)
class _Recalled:
    """What the plan says of the jobs only memos remember: the items of their renders, and
    by entry id the render that takes over each entry's job in flight (`PlanItem.adopt`)."""

    items: list[PlanItem]
    takers: dict[str, PlanItem]


# Answers that prove the job is on the API: a remembered one is then written into the
# lockfile (one the API no longer knows, or did not answer for, is left to the next run).
_ANSWERED: frozenset[Result] = frozenset({"cancelled", "ended", "running"})


def cancel_command(request: CancelRequest) -> int:
    """Cancel the chosen in-flight jobs; the exit code (1 when any is still rendering, or
    the jobs remembered from earlier runs could not be looked for)."""
    insecure = request.allow_insecure_http
    resolve_base_url(request.api_base, allow_insecure_http=insecure, warn=ui.warn)
    require_manifest(request.manifest)
    lock_file = lock_path(request.manifest)
    state = StateDir(request.manifest.parent)
    with hold_run_lock(state, lock_file, then="cancel again"):
        lock = load_lockfile(lock_file)
        # Job ids mean something only to the API that made them.
        api = api_identity(emulator=False, api_base=request.api_base)
        check_api(lock, lock_file, api, doing="cancelling")
        recalled = _recalled(request.manifest, state, lock_file, api)
        jobs = _chosen(request.only, lock, lock_file, recalled.items if recalled else [])
        unplanned = 1 if recalled is None else 0
        if not jobs:
            ui.say(
                f"Nothing to cancel: no job is rendering in {lock_file.name}, nor any "
                "remembered from an earlier run."
            )
            return unplanned
        key = api_key_from_env()
        writer = LockWriter(lock_file, lock)
        # A cancelled job is over: no lockfile that lost its record may resume it.
        writer.jobs = JobMemory(state, lock_file)
        takers = recalled.takers if recalled else {}
        return max(unplanned, anyio.run(_cancel_all, request, key, writer, jobs, api, takers))


def _recalled(manifest: Path, state: StateDir, lock_file: Path, api: str) -> _Recalled | None:
    """The renders of the manifest whose job the plan would resume (or look for) from an
    earlier run's memo, the lockfile not recording it (`actions.Differ._recalled`); None,
    with a warning, when the manifest does not plan (the lockfile's jobs are still
    cancelled). The manifest is planned only when some job is remembered at all."""
    if not remembered_jobs(state, lock_file):
        return _Recalled([], {})
    from kling_batch.plan import build_plan  # planning's modules: most cancels never ask

    try:
        plan = build_plan(manifest, now=datetime.now(UTC), api=api)
    except UserError as exc:
        ui.warn(
            f"jobs remembered from earlier runs were not looked for, as the manifest does "
            f"not plan ({exc}); fix it and cancel again, or they keep rendering"
        )
        return None
    items = [item for item in plan.items if item.recalled is not None]
    takers = {item.adopt: item for item in plan.items if item.adopt is not None}
    return _Recalled(items, takers)


def _chosen(
    only: Sequence[str], lock: Lockfile, lock_file: Path, recalled: Sequence[PlanItem]
) -> list[_Job]:
    """The jobs `--only` chooses, by render id: the lockfile's in flight, then those the plan
    recalls (recorded after the lockfile's: writing one may move a lockfile entry under
    another id); each job that cannot be cancelled is said, one line per render."""
    candidates: list[Candidate] = [(key, entry.tags) for key, entry in lock.shots.items()]
    candidates += [(item.render.id, item.render.tags) for item in recalled]
    require_matches(only, candidates, "--only")
    jobs: list[_Job] = []
    for key, entry in sorted(lock.shots.items()):
        if only and not matches_any(key, entry.tags, only):
            continue
        reason = _not_cancellable(entry)
        if reason is not None:
            ui.say(f"{key}: {reason}")
        elif _cancellable(entry):
            jobs.append(_Job(key, entry))
    now = datetime.now(UTC)
    remembered: list[_Job] = []
    for item in recalled:
        render, memo = item.render, item.recalled
        assert memo is not None
        if only and not matches_any(render.id, render.tags, only):
            continue
        if memo.job_id is None:
            ui.say(
                f"{render.id}: {memo.describe()}, not in {lock_file.name}: no job id is "
                "known, so it cannot be cancelled; `kling-batch run` looks for it in the "
                "job list (or check the EmpirioLabs dashboard)"
            )
            continue
        entry = recalled_entry(render, lock.shots.get(render.id), memo, now)  # its job's ids
        remembered.append(_Job(render.id, entry, recalled=item))
    return jobs + sorted(remembered, key=lambda job: job.render_id)


def _cancellable(entry: Entry) -> bool:
    return entry.state == "submitted" and bool(entry.job_id)


def _not_cancellable(entry: Entry) -> str | None:
    """Why an entry whose job may exist is left alone (None: cancellable, or settled)."""
    if entry.state == "completed":
        return (
            f"job {entry.job_id} has finished rendering (it is paid for); "
            "`kling-batch run` downloads it"
        )
    if entry.state in {"submitting", "uncertain"}:
        return (
            "the submission may have reached the API but no job id is known, so it cannot "
            "be cancelled; check the EmpirioLabs dashboard"
        )
    return None


async def _cancel_all(
    request: CancelRequest,
    key: str,
    writer: LockWriter,
    jobs: Sequence[_Job],
    api: str,
    takers: dict[str, PlanItem],
) -> int:
    """Cancel each job in turn, recording each answer; `api`: the API the jobs are of;
    `takers`: the renders the plan gives entries' jobs in flight to (`_Recalled.takers`)."""
    client = EmpirioClient(
        api_key=key, base_url=request.api_base, allow_insecure_http=request.allow_insecure_http
    )
    results: list[Cancelled] = []
    async with client:
        for job in jobs:
            done = await _cancel_one(client, job.render_id, job.entry)
            if done.result == "not_offered":
                ui.say(done.detail)
                return 1
            written = _record(writer, job, done, client.clock.now(), api, takers)
            if written:
                await writer.commit()
            said = _said(job, done, written, writer.path.name)
            ui.say(f"{job.render_id}: {done.detail}{said}")
            results.append(done)
    count = sum(1 for done in results if done.result == "cancelled")
    ui.say(f"Cancelled {count} of {len(results)} job(s) in flight; recorded in {writer.path.name}.")
    return 1 if any(done.result in {"running", "error"} for done in results) else 0


def _said(job: _Job, done: Cancelled, written: bool, lock_name: str) -> str:
    """What follows a job's line: its bill, and for a remembered job, where it is now."""
    bill = "" if done.billed_usd is None else f" (billed {usd(round_cost(done.billed_usd))})"
    if not job.remembered:
        return bill
    where = "recorded there now" if written else "left as it was"
    return f"{bill}; an earlier run submitted it, not in {lock_name}: {where}"


def _record(
    writer: LockWriter,
    job: _Job,
    done: Cancelled,
    now: datetime,
    api: str,
    takers: dict[str, PlanItem],
) -> bool:
    """Write what the API's answer settled, as a run writes it from a poll (which may never
    come: job state is kept one hour): the cancel, the job's end (completed with its result
    URL, or failed), or the bill it reported. A remembered job the API answered for is first
    written into the lockfile, as a run resuming it writes it (its charge with it). Whether
    anything was written."""
    if job.recalled is not None:
        if done.result not in _ANSWERED or not _vacate(writer, job.render_id, takers, set()):
            return False
        writer.claim_api(api)
        render, memo = job.recalled.render, job.recalled.recalled
        assert memo is not None
        writer.set(job.render_id, recalled_entry(render, writer.get(job.render_id), memo, now))
    entry = writer.get(job.render_id)
    assert entry is not None
    answer = done.job
    fields = entry.bill(entry.job_id or "", done.billed_usd)
    if done.result == "cancelled":
        fields.update(state="failed", error=done.detail)
    elif answer is not None and done.result == "ended" and answer.status == "failed":
        fields = failed_fields(entry, answer)
    elif answer is not None and done.result == "ended" and answer.video_url:
        fields = completed_fields(entry, answer, now)
    if fields:
        writer.update(job.render_id, **{"updated_at": now, **fields})
    return bool(fields) or job.remembered


def _vacate(writer: LockWriter, key: str, takers: dict[str, PlanItem], seen: set[str]) -> bool:
    """Make entry `key` free to be replaced: one holding a job still to be followed (in
    flight, or done with its download pending) is moved under the render the plan gives
    that job to, as a run taking it over moves it (that render's own such entry first).
    False when the job has no taker: the entry must stay, and nothing is written over it."""
    entry = writer.get(key)
    if entry is None or entry.state not in UNSETTLED:
        return True  # nothing to follow: replaced, its history and submissions are kept
    taker = takers.get(key)
    if taker is None or key in seen:
        return False
    seen.add(key)
    if not _vacate(writer, taker.render.id, takers, seen):
        return False
    writer.move(key, taker.render.id, taker.render)
    return True


async def _cancel_one(client: EmpirioClient, render_id: str, entry: Entry) -> Cancelled:
    """Ask the API to cancel one job, and read what it answered."""
    job_id = entry.job_id or ""
    try:
        job = await client.cancel_job(job_id)
        if job is None:  # no such route, or no such job: the job itself tells which
            await client.get_job(job_id, entry.poll_url)
            return Cancelled(render_id, "not_offered", _NOT_OFFERED)
    except JobNotFound:
        detail = f"the API no longer knows job {job_id}; `kling-batch run` settles it"
        return Cancelled(render_id, "gone", detail)
    except RunFatal:
        raise
    except ApiError as exc:
        return Cancelled(render_id, "error", f"job {job_id} could not be cancelled: {exc}")
    return replace(_answered(render_id, job), billed_usd=job.billed_usd, job=job)


def _answered(render_id: str, job: JobState) -> Cancelled:
    """What the API's answer to a cancel says became of the job."""
    job_id = job.job_id
    if job.raw_status.strip().lower() in CANCELLED_WORDS:
        return Cancelled(render_id, "cancelled", f"{CANCELLED_ERROR} (job {job_id})")
    if job.status == "succeeded":
        detail = (
            f"job {job_id} finished before it could be cancelled; `kling-batch run` downloads it"
        )
        return Cancelled(render_id, "ended", detail)
    if job.status == "failed":
        detail = f"job {job_id} had already {job.raw_status}; the next plan prices a retry"
        return Cancelled(render_id, "ended", detail)
    detail = (
        f"asked to cancel job {job_id}, but the API still reports it {job.raw_status or 'pending'}"
    )
    return Cancelled(render_id, "running", detail)


_NOT_OFFERED = (
    "The API does not offer cancelling jobs (POST /v1/jobs/{id}/cancel answered 404): nothing "
    "was cancelled. The jobs keep rendering and are billed; `kling-batch run` collects them."
)
