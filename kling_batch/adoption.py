"""Adopting jobs from the API's job list: a submission that went unanswered may have
created a job, and if the list shows one with exactly that request, it is that job.

A job is adopted once: job ids already on record (current or in a render's submissions),
or adopted or created in this run, are never matched again, so two uncertain renders of
one request cannot share one job.

Not finding the job proves it was never created only after a complete look (issue 8):
the list was read, newest first and page by page, back past the submission (less
`CLOCK_SKEW`) or to its end, and the submission is recent enough that the API still lists
any job it made (it keeps a job an hour after the job ends). A `Look` says what was
found, or why not finding it proves nothing; `--resubmit-uncertain` resends only after a
complete look, `--resubmit-uncertain=blind` after any look.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

import anyio

from kling_batch import kling_o3
from kling_batch.clock import Clock
from kling_batch.errors import ApiError, RunFatal
from kling_batch.joblist import JobPage, NextPage
from kling_batch.lockfile import Entry, LockWriter
from kling_batch.payloads import JobState
from kling_batch.polling import JOB_RETENTION, model_age

# How far a job's creation time may precede the recorded submission (clock skew).
CLOCK_SKEW = timedelta(minutes=5)
# A submission younger than this has its job, if any, still in the list (kept an hour after
# it ends; five minutes' margin for the API's own notion of an hour).
LISTED_FOR = JOB_RETENTION - timedelta(minutes=5)
PAGE_SIZE = 100
MAX_PAGES = 50

# What `run` does with an unanswered submission the job list does not show: keep it
# uncertain ("off"), send it again after a complete look ("look"), or after any ("blind").
Resubmit = Literal["off", "look", "blind"]
RESUBMIT_MODES: tuple[Resubmit, ...] = ("off", "look", "blind")


class JobLister(Protocol):
    """What this module needs of the API client."""

    @property
    def clock(self) -> Clock: ...

    async def list_jobs_page(
        self, *, status: str | None = None, limit: int = 100, page: NextPage | None = None
    ) -> JobPage | None: ...


@dataclass(frozen=True)
class Look:
    """What the job list told about one unanswered submission: its job, or, when the job
    was not found, why that does not prove it was never created (`gap`; None when it does).
    """

    job: JobState | None = None
    gap: str | None = None

    @property
    def complete(self) -> bool:
        """True when not finding the job proves the submission created none."""
        return self.gap is None

    def may_resend(self, mode: Resubmit) -> bool:
        """Whether `mode` sends the render again after this look."""
        return self.job is None and (mode == "blind" or (mode == "look" and self.complete))


class JobFinder:
    """Finds, in the API's job list, the job an unanswered submission created."""

    def __init__(self, client: JobLister, writer: LockWriter, *, scope: str = "") -> None:
        self.client = client
        self.writer = writer
        self.scope = scope  # the upload scope of this run's API and account
        self._claimed = writer.job_ids() | _charged_jobs(writer)
        self._pages = _Pages(client)
        self._lock = anyio.Lock()

    def record(self, render_id: str, entry: Entry, look: Look, now: datetime) -> Entry:
        """What a look teaches, recorded (saved by the caller's commit): a job found is the
        render's job from the time it was really submitted; a complete look that found
        none marks the unanswered charge as having made no job (nothing can be billed)."""
        charge = entry.unanswered()
        if look.job is not None:
            sent = charge.submitted_at if charge else entry.updated_at
            return self.writer.update(
                render_id,
                state="submitted",
                job_id=look.job.job_id,
                poll_url=None,
                submitted_at=sent or now,
                updated_at=now,
                error=None,
                submissions=entry.charged(look.job.job_id),
            )
        if look.complete and charge is not None:
            return self.writer.update(render_id, submissions=entry.charged(None, no_job=True))
        return entry

    def claim(self, job_id: str) -> None:
        """Never adopt this job: a render of this run already owns it."""
        self._claimed.add(job_id)

    async def find(self, entry: Entry, *, body: Mapping[str, Any] | None = None) -> Look:
        """A listed job with the entry's exact request (or exactly `body`, when another
        run sent it), created since it was submitted, read as far back as that needs; or
        why its absence proves nothing."""
        async with self._lock:
            sent = sent_at(entry)
            since = sent - CLOCK_SKEW if sent is not None else None
            short = await self._pages.back_to(since)
            prompt = (body if body is not None else entry.request).get("prompt")
            job, opaque = self._match(self._wanted(entry, body), prompt, since)
            if job is not None:
                self._claimed.add(job.job_id)
                return Look(job=job)
            if opaque and not short:
                short = (
                    f"the job list does not say what {opaque} job(s) since then were asked "
                    "for (or shows a request of the same prompt written otherwise), so it "
                    "cannot rule it out"
                )
            return Look(gap=short or self._unlisted(sent))

    def sent_body(self, entry: Entry) -> dict[str, Any]:
        """What an entry's POST most likely carried, for a submission that did not record
        its digest (older lockfiles): its request with local assets as the upload paths
        on record (this run's account first)."""
        paths = {}
        for key, sha256 in entry.assets.items():
            upload = self.writer.any_upload(sha256, prefer=self.scope)
            if upload is not None:
                paths[key] = upload.path
        return kling_o3.with_media(entry.request, paths)

    def _wanted(self, entry: Entry, body: Mapping[str, Any] | None) -> str:
        """The digest of what the unanswered submission sent: `body` when another run sent
        it (a claim taken over), else what its charge recorded, else a reconstruction."""
        if body is not None:
            return kling_o3.sent_digest(body)
        charge = entry.unanswered()
        if charge is not None and charge.sent:
            return charge.sent
        return kling_o3.sent_digest(self.sent_body(entry))

    def _match(
        self, wanted: str, prompt: Any, since: datetime | None
    ) -> tuple[JobState | None, int]:
        """The first unclaimed job since `since` whose request as sent is `wanted` (its
        `kling_o3.sent_digest`, numbers and empty fields read as we send them), and how many
        such jobs may be it unseen: the list shows no request for them, or one of the same
        `prompt` that reads otherwise (the API may echo fields it filled in itself)."""
        opaque = 0
        for job in self._pages.jobs:
            if job.job_id in self._claimed or job.status == "failed":
                continue
            if since is not None and job.created_at is not None and job.created_at < since:
                continue
            if job.request is None:
                opaque += 1
            elif wanted in _echoed_digests(job.request):
                return job, opaque
            elif prompt is not None and job.request.get("prompt") == prompt:
                opaque += 1
        return None, opaque

    def _unlisted(self, sent: datetime | None) -> str | None:
        """Why the list may no longer show a job made by a submission sent at `sent`."""
        if sent is None:
            return "no time of the submission is recorded, so the job list cannot rule it out"
        if model_age(self.client.clock, sent) < LISTED_FOR.total_seconds():
            return None
        return (
            "it was sent over an hour ago and the API lists a job only until an hour after "
            "it ends, so the job list cannot rule it out"
        )


class _Pages:
    """The job list as read so far in this run, newest first, a page at a time.

    Pages read are kept for later looks, but they show only the jobs made before their
    first page was read: a look for a submission that may have been made since (within
    the clock skew) reads the list again from its first page. A list seen out of order (a
    job newer than one before it: the REST list's order is not documented) is read to its
    end, since a job older than the submission then proves nothing of the jobs after it.
    """

    def __init__(self, client: JobLister) -> None:
        self.client = client
        self._restart()

    def _restart(self) -> None:
        self.jobs: list[JobState] = []
        self.ended = False  # every job the API lists has been read
        self.stuck: str | None = None  # why no further page can be read
        self._seen: set[str] = set()
        self._oldest: datetime | None = None
        self._last: datetime | None = None  # the creation time of the last job read
        # A job newer than one before it: the list is not newest-first, so reaching an
        # old job proves nothing of those after it; only its end does.
        self.unordered = False
        self._next: NextPage | None = None
        self._pages = 0
        self._head_at: datetime | None = None  # when the first page was read

    async def back_to(self, since: datetime | None) -> str | None:
        """Read pages until the list reaches a job created before `since`, or its end.

        None when it did; else why it stopped short. `since` is a submission's time less
        the clock skew: one that may have been sent after the first page was read (or
        of no known time) reads the list afresh.
        """
        head = self._head_at
        if head is not None and (since is None or since + 2 * CLOCK_SKEW >= head):
            self._restart()
        while self.stuck is None and not self.ended and not self._reaches(since):
            await self._read_page()
        return None if self.ended or self._reaches(since) else self.stuck

    def _reaches(self, since: datetime | None) -> bool:
        if since is None or self._oldest is None or self.unordered:
            return False
        return self._oldest < since

    async def _read_page(self) -> None:
        if self._pages >= MAX_PAGES:
            self.stuck = f"the job list goes on past the {MAX_PAGES * PAGE_SIZE} newest jobs"
            return
        asked = self.client.clock.now()
        try:
            page = await self.client.list_jobs_page(limit=PAGE_SIZE, page=self._next)
        except RunFatal:
            raise
        except ApiError as exc:
            self.stuck = f"the API's job list could not be read ({exc})"
            return
        if page is None:
            self.stuck = "the API offers no job list (GET /v1/jobs answered 404 or 405)"
            return
        self._pages += 1
        if self._head_at is None:
            self._head_at = asked  # it shows the jobs made before it was asked for
        fresh = [job for job in page.jobs if job.job_id not in self._seen]
        if page.jobs and not fresh:
            self.stuck = "the API's job list answered the same page again instead of the next"
            return
        self._add(fresh)
        if page.ended:
            self.ended = True
        elif page.next is None:
            self.stuck = "the API's job list says more jobs follow but gives no way to read them"
        self._next = page.next

    def _add(self, jobs: list[JobState]) -> None:
        for job in jobs:
            self._seen.add(job.job_id)
            self.jobs.append(job)
            made = job.created_at
            if made is None:
                continue
            if self._last is not None and made > self._last:
                self.unordered = True
            self._last = made
            if self._oldest is None or made < self._oldest:
                self._oldest = made


def sent_at(entry: Entry) -> datetime | None:
    """When the entry's unanswered submission was sent (its charge still without a job)."""
    for charge in reversed(entry.submissions):
        if charge.job_id is None:
            return charge.submitted_at
    return entry.submitted_at or entry.updated_at


def unsettled_detail(entry: Entry, look: Look, mode: Resubmit) -> str:
    """Why a render stays uncertain after `look`, and what the user can check or do."""
    said = entry.error or "the submission may have reached the API"
    if look.gap is None:
        return f"{said}; the API's job list does not show it: --resubmit-uncertain sends it again"
    sent = sent_at(entry)
    when = f" around {sent.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC" if sent is not None else ""
    prompt = str(entry.request.get("prompt", ""))
    shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
    check = (
        f"check the EmpirioLabs dashboard for a job created{when} with the prompt {shown!r}; "
        "rerun with --resubmit-uncertain=blind to send it again anyway (it may be paid twice)"
    )
    if mode == "look":
        return f"not sent again: {look.gap}; {check}"
    return f"{said}; {look.gap}; {check}"


def _charged_jobs(writer: LockWriter) -> set[str]:
    """Job ids of every submission on record, earlier ones of each render included."""
    return {
        charge.job_id
        for entry in writer.lock.shots.values()
        for charge in entry.submissions
        if charge.job_id
    }


def stray_detail(look: Look) -> str:
    """Why an orphaned unanswered submission ends as it does (it is never sent again)."""
    if look.complete:
        return (
            "no longer in the manifest, and a complete look at the job list shows its "
            "submission made no job: nothing was paid, the record is settled"
        )
    return (
        "no longer in the manifest and not found in the job list; never sent again "
        f"({look.gap}; put the shot back to decide)"
    )


def _echoed_digests(request: Mapping[str, Any]) -> set[str]:
    """The digests a listed job's request may be ours under: as listed, and as we would
    have sent it (a whole number the API echoes as `5.0` sent as `5`, a field it echoes as
    null not sent at all)."""
    ours = {
        key: int(value) if isinstance(value, float) and value.is_integer() else value
        for key, value in request.items()
        if value is not None
    }
    return {kling_o3.sent_digest(request), kling_o3.sent_digest(ours)}
