"""Submitting a render: the one step that spends money, so the one most carefully recorded.

`submitting` is saved before the POST and the answer right after it, so a crash at any
point leaves a record: `submitting` (the POST may have gone out: never re-sent blindly),
`submitted` with the job id, `failed` (refused, nothing created) or `uncertain` (sent, no
answer: it may have been billed). A stop or cancel that lands after `submitting` was
saved but before the POST (the client waiting for its turn or a retry, inputs uploaded
again for a resend) puts the previous record back: nothing is sent once the run stopped.
A 2xx answer reporting an error and no job id leaves the render uncertain and stops the
run's submitting: every later submit answered so would be as blind, and may be as paid for.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import anyio
import anyio.lowlevel

from kling_batch import kling_o3
from kling_batch.clock import Clock
from kling_batch.errors import (
    AmbiguousSubmit,
    AnsweredWithError,
    ApiError,
    KeyRefused,
    RunFatal,
    ShotRejected,
    SubmitWithdrawn,
    UploadFailed,
)
from kling_batch.lockfile import Charge, Entry, LockWriter, inherited, new_entry
from kling_batch.outcomes import Events, RunReport
from kling_batch.payloads import Submission
from kling_batch.plan import PlannedRender
from kling_batch.uploads import stale_paths

FINGERPRINT_HEADER = "x-kling-batch-fingerprint"
# Makes the body again once the given upload paths were found stale (uploads anew).
Rewire = Callable[[set[str]], Awaitable[dict[str, Any] | None]]


class Poster(Protocol):
    """What submitting needs of the API client."""

    @property
    def clock(self) -> Clock: ...

    async def submit(
        self,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        halt: anyio.Event | None = None,
    ) -> Submission:
        """POST `body`; once `halt` is set, raise `SubmitWithdrawn` instead of sending."""


class Submitter:
    """Submits renders through one client, recording every step with one writer."""

    def __init__(
        self,
        client: Poster,
        writer: LockWriter,
        *,
        events: Events,
        report: RunReport,
        stopped: anyio.Event,
        on_job: Callable[[str], None],
        stop: Callable[[str], None],
    ) -> None:
        self.client = client
        self.clock = client.clock
        self.writer = writer
        self.events = events
        self.report = report
        self.stopped = stopped
        self.on_job = on_job
        self.stop = stop  # submit nothing new, saying why (`Executor.stop`)

    async def submit(
        self,
        render: PlannedRender,
        previous: Entry | None,
        body: dict[str, Any],
        *,
        rewire: Rewire | None = None,
    ) -> Entry | None:
        """Record `submitting`, POST, record the answer; returns the entry as it ends up.

        None, with the previous record put back, when the run was stopped or cancelled
        after `submitting` was saved but before the POST went out, or when the client
        refused to send it (`KeyRefused`: the API refused the key earlier in the run).
        With `rewire`, a POST refused because the API no longer knows an upload path is
        sent once more with the body `rewire` makes after uploading again (a refused
        request is not billed), unless the run stopped meanwhile: that resend is a new
        POST like any other.
        """
        if not await self._save_submitting(render, previous, body):
            return None
        self.events.event(render.id, "submitting")
        try:
            entry = await self._post(render, body, rewire, previous)
        except (KeyRefused, SubmitWithdrawn):
            await self._unsubmit(render.id, previous)  # never sent: the record goes back
            return None
        await self.writer.commit()
        if entry.state == "submitted":
            self.events.event(render.id, "submitted", entry.job_id or "")
        return entry

    async def record_failure(
        self, render: PlannedRender, previous: Entry | None, error: str
    ) -> str:
        """Record a render that failed before its POST; returns what the run reports.

        An earlier done render stays on record, and so does an unanswered submission no
        look has ruled out (an uncertain resend that failed before sending): recorded as
        failed, the next plan would send it again without looking for the job it may
        have made.
        """
        if previous is not None and previous.state == "done":
            return error  # keep the earlier finished render on record; the plan retries the edit
        if _may_have_made_a_job(previous):
            return f"{error}; not sent again: the earlier submission stays uncertain"
        entry = new_entry(
            render,
            "failed",
            error=error,
            updated_at=self.clock.now(),
            attempts=previous.attempts if previous else 0,
            **inherited(previous),
        )
        self.writer.set(render.id, entry)
        await self.writer.commit()
        return error

    async def _save_submitting(
        self, render: PlannedRender, previous: Entry | None, body: dict[str, Any]
    ) -> bool:
        """Save `submitting` before the POST; False (record put back) if stopped meanwhile.

        The charge records the digest of the exact body: if the answer is lost, that is
        what the API's job list is searched for.
        """
        now = self.clock.now()
        kept = inherited(previous)
        charge = Charge(
            fingerprint=render.fingerprint,
            submitted_at=now,
            cost_usd=render.cost,
            sent=kling_o3.sent_digest(body),
        )
        entry = new_entry(
            render,
            "submitting",
            attempts=(previous.attempts if previous else 0) + 1,
            updated_at=now,
            history=kept["history"],
            submissions=[*kept["submissions"], charge],
        )
        self.writer.set(render.id, entry)
        await self.writer.commit()
        try:
            await anyio.lowlevel.checkpoint()  # a second Ctrl-C during the save lands here
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._unsubmit(render.id, previous)
            raise
        if self.stopped.is_set():
            await self._unsubmit(render.id, previous)
            return False
        return True

    async def _post(
        self,
        render: PlannedRender,
        body: dict[str, Any],
        rewire: Rewire | None = None,
        previous: Entry | None = None,
    ) -> Entry:
        """The POST; returns the entry updated with its answer (saved by the caller).
        `SubmitWithdrawn` when the run stopped before it went out (the caller puts back
        `previous`, which a resend cancelled before its POST puts back itself)."""
        headers = {FINGERPRINT_HEADER: render.fingerprint}
        try:
            # Shielded: once the POST is on the wire, hearing its answer beats guessing. A
            # stop ends the client's waits before it (`halt`).
            with anyio.CancelScope(shield=True):
                submission = await self.client.submit(body, headers=headers, halt=self.stopped)
        except AnsweredWithError as exc:
            self.stop(
                f"{render.id}: {exc}; the job may exist, so nothing more is submitted "
                f"({render.id} stays uncertain; the next run looks for its job in the job list)"
            )
            return self._unanswered(render, str(exc))
        except AmbiguousSubmit as exc:
            return self._unanswered(render, f"no answer to the submission ({exc})")
        except ShotRejected as exc:
            stale = stale_paths(exc, body) if rewire is not None else set()
            rewired = await self._rewired(render, previous, rewire, stale) if stale else None
            if rewired is None:
                return self._refused(render, f"rejected: {exc}")
            return rewired
        except (KeyRefused, SubmitWithdrawn):
            raise  # never sent
        except RunFatal as exc:
            self._refused(render, f"not submitted: {exc}")
            await self.writer.commit()
            raise
        except ApiError as exc:
            return self._refused(render, f"not submitted: {exc}")
        return self._answered(render, submission)

    def _answered(self, render: PlannedRender, submission: Submission) -> Entry:
        """The entry of an answered POST: `submitted`, with its job id and charge."""
        self.report.submitted[render.id] = render.cost
        self.on_job(submission.job_id)
        now = self.clock.now()
        entry = self.writer.get(render.id)
        assert entry is not None
        return self.writer.update(
            render.id,
            state="submitted",
            job_id=submission.job_id,
            poll_url=submission.poll_url,
            submitted_at=now,
            updated_at=now,
            error=None,
            submissions=entry.charged(submission.job_id),
        )

    def _unanswered(self, render: PlannedRender, why: str) -> Entry:
        """The POST may have made a job and no job id came back: `uncertain` (counted as
        spent), so no plan sends it again before the job list was looked at."""
        self.report.submitted[render.id] = render.cost
        error = f"{why}; it may have been billed"
        return self.writer.update(
            render.id, state="uncertain", error=error, updated_at=self.clock.now()
        )

    async def _rewired(
        self, render: PlannedRender, previous: Entry | None, rewire: Rewire | None, stale: set[str]
    ) -> Entry | None:
        """Upload again the inputs whose paths the API forgot, then POST once more; None
        when none of the refused paths was an upload of this run's (nothing to redo).

        A stop seen before that POST raises `SubmitWithdrawn`, and a cancel during the
        upload puts `previous` back: the refused first POST made nothing, so the record is
        what a stop before any POST leaves.
        """
        assert rewire is not None
        self._unless_stopped()  # no upload for a resend that will not go out
        try:
            body = await rewire(stale)
            if body is not None:
                await self._resending(render, body)
        except UploadFailed as exc:
            return self._refused(render, str(exc))
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._unsubmit(render.id, previous)
            raise
        return None if body is None else await self._post(render, body)

    async def _resending(self, render: PlannedRender, body: dict[str, Any]) -> None:
        """Save the digest of the resend's body before it goes out; `SubmitWithdrawn` if
        the run stopped meanwhile (the upload may have taken a while)."""
        entry = self.writer.get(render.id)
        assert entry is not None
        self.writer.update(
            render.id, submissions=entry.charged(None, sent=kling_o3.sent_digest(body))
        )
        await self.writer.commit()
        await anyio.lowlevel.checkpoint()  # a second Ctrl-C during the save lands here
        self._unless_stopped()
        self.events.event(render.id, "submitting", "inputs uploaded again (paths expired)")

    def _unless_stopped(self) -> None:
        """Raise `SubmitWithdrawn` once the run stopped submitting."""
        if self.stopped.is_set():
            raise SubmitWithdrawn("not sent again: the run stopped submitting")

    def _refused(self, render: PlannedRender, error: str) -> Entry:
        """The API refused the POST: nothing was created, so its charge is dropped. A
        resend of an unanswered submission no look has ruled out stays uncertain: the
        refusal says nothing of the job the first may have made (as failed, the next plan
        would send it again without looking)."""
        entry = self.writer.get(render.id)
        assert entry is not None
        kept = entry.submissions[:-1]
        state = "uncertain" if any(charge.waiting for charge in kept) else "failed"
        return self.writer.update(render.id, state=state, error=error, submissions=kept)

    async def _unsubmit(self, shot_id: str, previous: Entry | None) -> None:
        """Put back the record a `submitting` entry replaced (its POST was never sent)."""
        if previous is None:
            self.writer.remove(shot_id)
        else:
            self.writer.set(shot_id, previous)
        await self.writer.commit()


def _may_have_made_a_job(entry: Entry | None) -> bool:
    """Whether `entry` is an unanswered submission (uncertain, or stopped while submitting)
    that no complete look at the job list has proved jobless (`Charge.no_job`)."""
    if entry is None or entry.state not in ("uncertain", "submitting"):
        return False
    return entry.unanswered() is not None or not entry.submissions
