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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Literal

import anyio

from kling_batch import ui
from kling_batch.client import EmpirioClient
from kling_batch.endpoint import api_identity, api_key_from_env, resolve_base_url
from kling_batch.errors import ApiError, JobNotFound, RunFatal
from kling_batch.following import completed_fields, failed_fields
from kling_batch.lockfile import (
    CANCELLED_ERROR,
    CANCELLED_WORDS,
    Entry,
    LockWriter,
    check_api,
    load_lockfile,
)
from kling_batch.lockname import lock_path
from kling_batch.manifest import require_manifest
from kling_batch.payloads import JobState
from kling_batch.pricing import round_cost
from kling_batch.recall import JobMemory
from kling_batch.reports import usd
from kling_batch.runlock import hold_run_lock
from kling_batch.selection import matches_any, require_matches
from kling_batch.state import StateDir

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


def cancel_command(request: CancelRequest) -> int:
    """Cancel the chosen in-flight jobs; the exit code (1 when any is still rendering)."""
    insecure = request.allow_insecure_http
    resolve_base_url(request.api_base, allow_insecure_http=insecure, warn=ui.warn)
    require_manifest(request.manifest)
    lock_file = lock_path(request.manifest)
    with hold_run_lock(StateDir(request.manifest.parent), lock_file, then="cancel again"):
        lock = load_lockfile(lock_file)
        # Job ids mean something only to the API that made them.
        api = api_identity(emulator=False, api_base=request.api_base)
        check_api(lock, lock_file, api, doing="cancelling")
        require_matches(request.only, [(k, e.tags) for k, e in lock.shots.items()], "--only")
        chosen = [
            (key, entry)
            for key, entry in sorted(lock.shots.items())
            if not request.only or matches_any(key, entry.tags, request.only)
        ]
        for key, entry in chosen:
            reason = _not_cancellable(entry)
            if reason is not None:
                ui.say(f"{key}: {reason}")
        jobs = [(key, entry) for key, entry in chosen if _cancellable(entry)]
        if not jobs:
            ui.say(f"Nothing to cancel: no job is rendering in {lock_file.name}.")
            return 0
        key = api_key_from_env()
        writer = LockWriter(lock_file, lock)
        # A cancelled job is over: no lockfile that lost its record may resume it.
        writer.jobs = JobMemory(StateDir(request.manifest.parent), lock_file)
        return anyio.run(_cancel_all, request, key, writer, jobs)


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
    request: CancelRequest, key: str, writer: LockWriter, jobs: Sequence[tuple[str, Entry]]
) -> int:
    client = EmpirioClient(
        api_key=key, base_url=request.api_base, allow_insecure_http=request.allow_insecure_http
    )
    results: list[Cancelled] = []
    async with client:
        for render_id, entry in jobs:
            done = await _cancel_one(client, render_id, entry)
            if done.result == "not_offered":
                ui.say(done.detail)
                return 1
            if _record(writer, render_id, done, client.clock.now()):
                await writer.commit()
            bill = (
                "" if done.billed_usd is None else f" (billed {usd(round_cost(done.billed_usd))})"
            )
            ui.say(f"{render_id}: {done.detail}{bill}")
            results.append(done)
    count = sum(1 for done in results if done.result == "cancelled")
    ui.say(f"Cancelled {count} of {len(results)} job(s) in flight; recorded in {writer.path.name}.")
    return 1 if any(done.result in {"running", "error"} for done in results) else 0


def _record(writer: LockWriter, render_id: str, done: Cancelled, now: datetime) -> bool:
    """Write what the API's answer settled, as a run writes it from a poll (which may never
    come: job state is kept one hour): the cancel, the job's end (completed with its result
    URL, or failed), or the bill it reported. Whether anything was written."""
    entry = writer.get(render_id)
    assert entry is not None
    job = done.job
    fields = entry.bill(entry.job_id or "", done.billed_usd)
    if done.result == "cancelled":
        fields.update(state="failed", error=done.detail)
    elif job is not None and done.result == "ended" and job.status == "failed":
        fields = failed_fields(entry, job)
    elif job is not None and done.result == "ended" and job.video_url:
        fields = completed_fields(entry, job, now)
    if not fields:
        return False
    writer.update(render_id, **{"updated_at": now, **fields})
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
