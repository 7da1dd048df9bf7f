"""Jobs remembered outside the lockfile: the last submission of each request, by its
fingerprint, in the state folder (`StateDir.remembered_job`).

The lockfile is committed and the state folder is not, so `git checkout`, `git stash` or a
revert can take a job's record away while the job renders (or after a run stopped with it
in flight). A plan that then finds the request new or changed would pay for it again; with
a job remembered here it resumes that job instead (or, for a submission that went
unanswered, looks for it in the job list), at no new cost. `kling-batch cancel` cancels
such a job too, writing it into the lockfile as a run resuming it would (`recalled_entry`).

Written by the run's `LockWriter` at each commit, just before the lockfile: `submitting` and
`uncertain` records as unanswered submissions, `submitted` and `completed` ones with their
job; removed when the render ends (`done` or `failed`, a job `kling-batch cancel` cancelled
or found failed too), by the next run when the lockfile records its submission as ended
(`JobMemory.tidy`; a plan never recalls a submission the lockfile records anywhere), and by
`kling-batch gc` once past the longest recall window (`longest_window`). It is a cache, not
a record: a damaged or unreadable file is no file, and one that cannot be written is
skipped.

A job is recalled for its `recall_window` after its submission (`recent`). A memo dated
more than `AHEAD` (five minutes) after now was written while the clock was ahead, or now's
is behind: its date tells nothing of its age, and doubt must keep it (resuming a job that
is gone costs one poll; not resuming one that is still there pays for it twice). So it
counts from when it was first seen instead: from its file's modification time when that
is not ahead too, else from now, kept meanwhile; a run (`JobMemory.tidy`) or `kling-batch
gc` that finds both ahead sets the modification time to now (a plan only reads). It is
kept one window from then, not until the clock reaches its date.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from kling_batch import kling_o3, safefiles
from kling_batch.atomic import atomic_write
from kling_batch.canonical import tagged
from kling_batch.errors import UserError
from kling_batch.lockfile import (
    Charge,
    Entry,
    Lockfile,
    Memo,
    RenderRecord,
    inherited,
    new_entry,
    sending_mark,
)
from kling_batch.pacing import RENDER_SECONDS_PER_SECOND, job_deadline
from kling_batch.state import StateDir

log = logging.getLogger(__name__)

_FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")
_LIMIT = 4096  # a remembered job is a few hundred bytes
AHEAD = timedelta(minutes=5)  # clocks a little apart: a memo dated this far ahead is sound


@dataclass(frozen=True, slots=True)
class RememberedJob:
    """A submission an earlier run made for a request: its job, or None when no answer
    came (the POST may have created one)."""

    fingerprint: str
    api: str
    submitted_at: datetime
    job_id: str | None = None
    poll_url: str | None = None
    sent: str | None = None  # `kling_o3.sent_digest` of the body POSTed, when recorded
    cost_usd: Decimal | None = None
    # When the file was last written (or first seen dated ahead: `counted_from`); not in it.
    seen_at: datetime | None = None

    @property
    def mark(self) -> str:
        """What names this submission in a lockfile (`lockfile.submission_marks`): its
        job id, else what was sent when."""
        if self.job_id is not None:
            return self.job_id
        assert self.sent is not None  # `_parsed` refuses a memo with neither
        return sending_mark(self.sent, self.submitted_at)

    def dumps(self) -> str:
        """The file's text."""
        data = {
            "fingerprint": self.fingerprint,
            "api": self.api,
            "submitted_at": self.submitted_at.isoformat(),
            "job_id": self.job_id,
            "poll_url": self.poll_url,
            "sent": self.sent,
            "cost_usd": str(self.cost_usd) if self.cost_usd is not None else None,
        }
        return json.dumps(data, sort_keys=True) + "\n"

    def describe(self) -> str:
        """The job, or the unanswered submission, in words."""
        when = f"{self.submitted_at:%Y-%m-%d %H:%M:%S %Z}".strip()
        if self.job_id is None:
            return f"a submission sent {when} by an earlier run, unanswered"
        return f"job {self.job_id}, submitted {when} by an earlier run"


def recall_window(tier: str, seconds: Decimal) -> timedelta:
    """How long after its submission a job may still be on the API: the API keeps a job an
    hour after it ends, and a job of this size ends at the latest around its run deadline
    (`pacing.job_deadline`, ten times the expected time). Generous on purpose: a job
    resumed after it is gone costs one poll (and fails, to be retried), one not resumed
    while it is kept is paid twice."""
    from kling_batch.polling import JOB_RETENTION  # the run's modules: plan rarely asks

    return JOB_RETENTION + timedelta(seconds=job_deadline(tier, seconds))


def counted_from(job: RememberedJob, now: datetime) -> datetime:
    """When `job`'s recall window starts: its submission, unless dated more than `AHEAD`
    after `now` (see the module docstring): then when it was first seen."""
    if job.submitted_at <= now + AHEAD:
        return job.submitted_at
    if job.seen_at is not None and job.seen_at <= now + AHEAD:
        return job.seen_at
    return now


def recent(job: RememberedJob, now: datetime, window: timedelta) -> bool:
    """Whether `job` may still be on the API at `now`, with `window` (`recall_window`)."""
    return now - counted_from(job, now) <= window


def unseen(job: RememberedJob, now: datetime) -> bool:
    """True when `job` is dated ahead and no run has seen it yet (its file's time is ahead
    too): its window counts from now until one marks it (`first_seen`)."""
    ahead = now + AHEAD
    return job.submitted_at > ahead and (job.seen_at is None or job.seen_at > ahead)


def first_seen(state: StateDir, lock_file: Path, job: RememberedJob, now: datetime) -> None:
    """Mark `job` as first seen at `now` (its file's modification time) when it is
    `unseen`: from then on it counts one window from now (best effort)."""
    if not unseen(job, now):
        return
    stamp = now.timestamp()
    with contextlib.suppress(OSError):
        os.utime(state.remembered_job(lock_file, job.fingerprint), (stamp, stamp))


def longest_window() -> timedelta:
    """The longest `recall_window` of any render: the slowest tier, and as many scenes as
    the model takes, each as long as it takes (`kling-batch gc` keeps every remembered job
    that long: the request it was made for may be in no file any more)."""
    slowest = max(RENDER_SECONDS_PER_SECOND, key=RENDER_SECONDS_PER_SECOND.__getitem__)
    return recall_window(slowest, Decimal(kling_o3.MAX_SCENES * kling_o3.MAX_SECONDS))


def remembered_jobs(state: StateDir, lock_file: Path) -> frozenset[str]:
    """The names (untagged fingerprints) of the jobs remembered for `lock_file`; none when
    the folder is missing or cannot be listed."""
    try:
        return frozenset(path.name for path in state.remembered_jobs(lock_file).iterdir())
    except OSError:
        return frozenset()


def read_job(state: StateDir, lock_file: Path, fingerprint: str) -> RememberedJob | None:
    """The job remembered for `fingerprint` from `lock_file`, if a sound one is there."""
    path = state.remembered_job(lock_file, fingerprint)
    try:
        text = safefiles.read_text(path, limit=_LIMIT, what="a cache")
        job = _parsed(json.loads(text), fingerprint)
        seen_at = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except (OSError, UnicodeDecodeError, UserError, ValueError, OverflowError, RecursionError):
        return None  # a cache, not a record: a damaged entry (nested too deep too) is none
    return replace(job, seen_at=seen_at) if job is not None else None


def _parsed(data: Any, fingerprint: str) -> RememberedJob | None:
    if not isinstance(data, dict) or data.get("fingerprint") != fingerprint:
        return None
    api, job_id, poll_url, sent = (data.get(k) for k in ("api", "job_id", "poll_url", "sent"))
    if not isinstance(api, str) or not api:
        return None
    if not all(v is None or (isinstance(v, str) and v) for v in (job_id, poll_url, sent)):
        return None
    if job_id is None and sent is None:
        return None  # the job list could not be searched for what was sent: a look proves nothing
    submitted_at = datetime.fromisoformat(str(data.get("submitted_at")))
    if submitted_at.tzinfo is None:
        return None
    cost = data.get("cost_usd")
    try:
        cost_usd = Decimal(cost) if isinstance(cost, str) else None
    except InvalidOperation:
        return None
    if cost_usd is not None and not (cost_usd.is_finite() and cost_usd >= 0):
        return None
    return RememberedJob(fingerprint, api, submitted_at, job_id, poll_url, sent, cost_usd)


def remembered(entry: Entry, api: str) -> RememberedJob | None:
    """What to remember of an entry: its job (submitted, completed), or its unanswered
    submission (submitting, uncertain); None when there is nothing in flight to remember."""
    if entry.state in ("submitted", "completed") and entry.job_id:
        when = entry.submitted_at or entry.updated_at
        if when is None:
            return None
        return RememberedJob(
            entry.fingerprint, api, when, entry.job_id, entry.poll_url, cost_usd=entry.cost_usd
        )
    if entry.state not in ("submitting", "uncertain"):
        return None
    charge = entry.unanswered()
    if charge is None:
        return None  # none waiting (a complete look proved it made no job), or none recorded
    when, sent = charge.submitted_at, charge.sent
    if sent is None:
        return None  # what was sent is not known: the job list cannot be searched for it
    return RememberedJob(entry.fingerprint, api, when, sent=sent, cost_usd=entry.cost_usd)


def recalled_entry(
    render: RenderRecord, previous: Entry | None, job: RememberedJob, now: datetime
) -> Entry:
    """`render`'s entry for a remembered job: `submitted` with it, or `uncertain` for an
    unanswered submission (looked for in the job list like any). Its charge is recorded
    here too: this lockfile now follows the job, and spend is never under-reported."""
    kept = inherited(previous)
    charge = Charge(
        fingerprint=render.fingerprint,
        submitted_at=job.submitted_at,
        cost_usd=job.cost_usd if job.cost_usd is not None else render.cost,
        job_id=job.job_id,
        sent=job.sent,
    )
    fields: dict[str, Any] = {
        "updated_at": now,
        "history": kept["history"],
        "submissions": [*kept["submissions"], charge],
        "attempts": previous.attempts if previous else 0,
    }
    if job.job_id is None:
        error = f"{job.describe()}: it may have reached the API"
        return new_entry(render, "uncertain", error=error, **fields)
    return new_entry(
        render,
        "submitted",
        job_id=job.job_id,
        poll_url=job.poll_url,
        submitted_at=job.submitted_at,
        **fields,
    )


class JobMemory:
    """Keeps the remembered jobs of one lockfile in step with its entries (for `LockWriter`).

    `changes` is worked out in the event loop from the entries as they stand; `apply` writes
    them (in the writer's worker thread, before the lockfile). Nothing is written unless
    the state folder exists (a run makes it) and the lockfile names its API.
    """

    def __init__(self, state: StateDir, lock_file: Path) -> None:
        self.state = state
        self.lock_file = lock_file
        self._written: dict[str, str] = {}  # fingerprint → text this run last wrote

    def changes(
        self, changed: dict[str, tuple[Entry | None, Entry | None]], api: str | None
    ) -> Memo:
        """(fingerprint, text to write or None to remove, the job the removal is for) of
        each entry changed since the last commit ((before, after) by id)."""
        if api is None:
            return []
        work: Memo = []
        kept: set[str] = set()  # still in flight after this commit: no entry removes them
        ended: list[Entry] = []  # entries whose job ended, or whose POST never went out
        for before, after in changed.values():
            memo = remembered(after, api) if after is not None else None
            if memo is None:
                ended.extend(entry for entry in (before, after) if entry is not None)
                continue
            kept.add(memo.fingerprint)
            text = memo.dumps()
            if self._written.get(memo.fingerprint) != text:
                self._written[memo.fingerprint] = text
                work.append((memo.fingerprint, text, None))
        for entry in ended:
            if entry.fingerprint not in kept:
                self._written.pop(entry.fingerprint, None)
                work.append((entry.fingerprint, None, entry.job_id))
        return [item for item in work if _FINGERPRINT.fullmatch(item[0])]

    def apply(self, work: Memo) -> None:
        """Write or remove each remembered job (best effort: it only saves money)."""
        if not work or not self.state.path.is_dir():
            return
        for fingerprint, text, job_id in work:
            path = self.state.remembered_job(self.lock_file, fingerprint)
            try:
                if text is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write(path, text)
                else:
                    self._forget(fingerprint, job_id)
            except OSError as exc:
                log.debug("could not remember the job of %s: %s", fingerprint, exc)

    def tidy(self, lock: Lockfile, now: datetime) -> None:
        """Before a run: remove each remembered job that `lock` records as ended (a memo
        whose removal failed, or one a run on another branch left): plans ignore it
        (`actions.Differ`), and left in place it would be read again and again. A job one
        of its entries follows stays; a memo whose request has another submission in
        flight on record is replaced by that one's. One dated ahead is marked first seen."""
        names = remembered_jobs(self.state, self.lock_file)
        if lock.api is None or not names:
            return  # most runs: nothing remembered, and the lockfile is not gone through
        live = {
            m.fingerprint: m for m in (remembered(e, lock.api) for e in lock.shots.values()) if m
        }
        followed = {memo.mark for memo in live.values()}
        on_record = lock.submitted()
        for name in sorted(names):
            found = read_job(self.state, self.lock_file, tagged(name))
            if found is None or found.api != lock.api:
                continue  # unreadable (gc's to remove), or of another API: not this lockfile's
            first_seen(self.state, self.lock_file, found, now)
            if found.mark not in on_record or found.mark in followed:
                continue
            instead = live.get(found.fingerprint)
            path = self.state.remembered_job(self.lock_file, found.fingerprint)
            try:
                if instead is None:
                    path.unlink(missing_ok=True)
                else:
                    atomic_write(path, instead.dumps())
                    self._written[found.fingerprint] = instead.dumps()
            except OSError as exc:
                log.debug("could not tidy the remembered job of %s: %s", name, exc)

    def _forget(self, fingerprint: str, job_id: str | None) -> None:
        """Remove the remembered job of `fingerprint` if it is `job_id`'s (or unanswered):
        a job another lockfile's render still follows stays remembered."""
        found = read_job(self.state, self.lock_file, fingerprint)
        if found is not None and found.job_id is not None and found.job_id != job_id:
            return
        with contextlib.suppress(FileNotFoundError):
            self.state.remembered_job(self.lock_file, fingerprint).unlink()
