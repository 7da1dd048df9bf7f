"""A run's part in the team: a claim before each render it would pay for, each finished
render pushed after, and what a failing store means on the way.

The executor asks `Team` at three points of a render's life:

- before it pays (`arbitrate`, in its job slot, inputs uploaded): the answer is a
  `Verdict`. `Pay`: the claim is this run's (or the store is down and the run renders
  alone). `FromStore`: a record is there, restore it. `Follow`: adopt the job another run
  of this API account claimed. `Unsure`: a claim whose lease ran out before it named a
  job, settled like a local uncertain submission. `Later`: not now. `Wait`: another run
  holds it; `settle` waits (outside the job slot) until one of the others holds;
- once the API answered a POST (`submitted`): the job id goes into the claim;
- once the render ended (`settled`): done renders are pushed, claims on renders that left
  nothing to pay for are released.

`session` runs the background: lease renewal and the `push.Pusher`; at its end the pushes
drain and what the store still lacks is kept for the end-of-run warning (`unpushed`).
Nothing here ever fails a render: a store that fails is marked down (`push.Health`),
claims are skipped with one warning (`--require-remote`: nothing more is submitted) and
pushes wait for it to answer again. The claim protocol itself is `kling_batch.claims`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.abc

from kling_batch import ui
from kling_batch.claims import Busy, Claim, ClaimBook, RunIdentity, Taken
from kling_batch.errors import RefusedError, RemoteError
from kling_batch.lockfile import (
    UNSETTLED,
    Charge,
    Entry,
    LockWriter,
    UploadedAsset,
    inherited,
    new_entry,
)
from kling_batch.planned import PlannedRender, RestoreSource
from kling_batch.push import Health, Pusher, PushJob, Unpushed
from kling_batch.remote import RemoteStore, RemoteUrl, open_store
from kling_batch.remote_files import Pushed, fetch_render, read_record, record_of
from kling_batch.state import StateDir

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Pay:
    """Submit it: the claim is this run's, or the store is down and the run renders alone."""


@dataclass(frozen=True, slots=True)
class FromStore:
    """The store holds it: restore it for free."""

    source: RestoreSource


@dataclass(frozen=True, slots=True)
class Follow:
    """Adopt a job another run of this API account claimed (`takeover`: its lease ran out)."""

    claim: Claim
    job_id: str
    takeover: bool


@dataclass(frozen=True, slots=True)
class Unsure:
    """A claim taken over whose POST may or may not have gone out; `gap` says why the job
    list cannot settle it (another API account), None when it can be looked up."""

    claim: Claim
    gap: str | None


@dataclass(frozen=True, slots=True)
class Later:
    """Not now; the next run looks again."""

    reason: str


@dataclass(frozen=True, slots=True)
class Wait:
    """Another run holds it (`claim` None: its claim cannot be read)."""

    claim: Claim | None
    body: Mapping[str, Any] | None

    @property
    def detail(self) -> str:
        """Who holds it, for people."""
        if self.claim is None:
            return "claimed in the remote store (unreadable claim); waiting for its record"
        return f"claimed by {self.claim.holder}; waiting for it"


Verdict = Pay | FromStore | Follow | Unsure | Later | Wait


class Team:
    """One run's claims and pushes in one store (see the module's docstring)."""

    def __init__(
        self,
        store: RemoteStore,
        me: RunIdentity,
        writer: LockWriter,
        state: StateDir,
        *,
        lease: float,
        require: bool = False,
        api: str | None = None,
        say: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.store = store
        self.me = me
        self.writer = writer
        self.state = state
        self.require = require
        self.api = api
        self.say = say
        self.health = Health()
        self.claims = ClaimBook(store, me, lease=lease)
        self.pusher = Pusher(store, self.health, self._pushed)
        self.unpushed: list[Unpushed] = []
        self._warned = False
        self._abandoned = False
        self._group: anyio.abc.TaskGroup | None = None

    @property
    def lease(self) -> float:
        """The lease of this run's claims, in seconds."""
        return self.claims.lease.total_seconds()

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Team]:
        """Renew leases and push in the background for the block; drain pushes after it."""
        async with anyio.create_task_group() as group:
            self._group = group
            group.start_soon(self._renew_leases)
            group.start_soon(self.pusher.work)
            try:
                yield self
                if not self._abandoned:
                    self.unpushed = await self.pusher.finish()
            finally:
                self.unpushed = self.unpushed or self.pusher.unpushed()
                group.cancel_scope.cancel()

    def abandon(self) -> None:
        """The run is leaving now (a second Ctrl-C): end the session without waiting for
        pushes; what was not pushed is reported, for `push` to finish."""
        self._abandoned = True

    # -- before paying --------------------------------------------------------------------

    async def arbitrate(
        self,
        render: PlannedRender,
        body: Mapping[str, Any] | None,
        *,
        read_first: bool = False,
        waiting: bool = False,
    ) -> Verdict:
        """Claim a render before paying for it (see the module's docstring). `waiting`:
        another run was seen holding it, so a store that fails now means `Later`, not
        rendering alone (that run is likely paying for it)."""
        if not self.health.worth_asking:
            return self._alone(waiting)
        fingerprint = render.fingerprint
        taken: Taken | Busy | None = None
        try:
            taken = await self.claims.take(fingerprint, body, read_first=read_first)
            if isinstance(taken, Busy) and taken.failed is not None:
                raise RemoteError(taken.failed)  # seen held, then the store failed
            self.health.up()
            recorded = await self._recorded(fingerprint)
            if isinstance(taken, Busy):
                return recorded or self._adoptable(taken.claim) or Wait(taken.claim, body)
            if recorded is not None:
                await self.claims.finish(fingerprint)
                return recorded
        except RemoteError as exc:
            self.health.down(str(exc))
            if isinstance(taken, Taken) and taken.expired is not None:
                return self._taken_over(taken.expired)  # its job is ours to follow now
            # Another run seen holding it is likely paying for it: never render alone then.
            return self._alone(waiting or isinstance(taken, Busy))
        if taken.expired is not None:
            return self._taken_over(taken.expired)
        return Pay()

    async def settle(self, render: PlannedRender, verdict: Verdict, *, patience: float) -> Verdict:
        """Wait while another run holds the claim: for its record, its job id (same
        account), a release or its lease running out; `Later` after `patience` seconds."""
        started = anyio.current_time()
        while isinstance(verdict, Wait):
            if anyio.current_time() - started > patience:
                holder = verdict.claim.holder if verdict.claim else "another run"
                return Later(f"still claimed by {holder}; the next run looks again")
            await anyio.sleep(self._pause(verdict.claim))
            verdict = await self.arbitrate(render, verdict.body, read_first=True, waiting=True)
        return verdict

    async def _recorded(self, fingerprint: str) -> FromStore | None:
        record = await read_record(self.store, fingerprint)
        if record is None:
            return None
        return FromStore(RestoreSource("remote", record.output_sha256, record.output_size))

    def _adoptable(self, claim: Claim | None) -> Follow | None:
        """A live claim's job, when this run can follow it (same API account)."""
        if claim is None or not claim.live(self.claims.now()):
            return None  # an expired one is taken over (its charge recorded here), not adopted
        if claim.job_id and claim.job_account == self.me.scope:
            return Follow(claim, claim.job_id, takeover=False)
        return None

    def _taken_over(self, expired: Claim) -> Verdict:
        if expired.job_account != self.me.scope:
            job = f" (its job {expired.job_id})" if expired.job_id else ""
            gap = (
                f"it was claimed by {expired.holder} on another API account{job}, whose lease "
                "ran out; that account's jobs cannot be followed or looked up from here"
            )
            return Unsure(expired, gap)
        if expired.job_id:
            return Follow(expired, expired.job_id, takeover=True)
        return Unsure(expired, None)

    def _alone(self, waiting: bool = False) -> Verdict:
        """What a render does when the store cannot be reached."""
        problem = self.health.problem or "no answer"
        if waiting:
            return Later(
                f"another run holds its claim and the remote store stopped answering "
                f"({problem}); not submitted, the next run looks again"
            )
        if self.require:
            return Later(
                f"not submitted: the remote store cannot be reached ({problem}) and "
                "--require-remote is set"
            )
        if not self._warned:
            self._warned = True
            self.say(
                f"warning: the remote store {self.store.url} cannot be reached ({problem}); "
                "rendering on this machine alone: renders are not claimed, so another "
                "machine may pay for them too (--require-remote refuses instead); finished "
                "renders are pushed once it answers"
            )
        return Pay()

    def _pause(self, claim: Claim | None) -> float:
        """How long to wait before looking at a held claim again."""
        most = min(5.0, max(self.lease / 4, 0.2))
        if claim is None:
            return most
        left = (claim.expires_at - datetime.now(UTC)).total_seconds()
        return max(0.05, min(most, left + 0.05))

    # -- after -------------------------------------------------------------------------------

    def submitted(self, fingerprint: str, job_id: str) -> None:
        """The API answered with a job: write it into the claim (in the background)."""
        if self.claims.holds(fingerprint):
            self._soon(self.claims.set_job, fingerprint, job_id)

    def settled(self, render_id: str, fingerprint: str, entry: Entry | None, *, done: bool) -> None:
        """A render's task ended (`done`: with its video in place): push it, or release a
        claim on it that has nothing left to pay for; a job in flight or uncertain keeps its
        claim."""
        done = done and entry is not None and entry.fingerprint == fingerprint
        if done and entry is not None and entry.state == "done":
            if entry.in_remote:
                if self.claims.holds(fingerprint):
                    self._soon(self.claims.finish, fingerprint)
            else:
                self.pusher.push(self._push_job(render_id, entry))
        elif self.claims.holds(fingerprint) and (entry is None or entry.state not in UNSETTLED):
            self._soon(self.claims.release, fingerprint)

    async def restore(self, render: PlannedRender, source: RestoreSource) -> str | None:
        """Fetch a render the store holds into place; None when done, else why not."""
        try:
            problem = await fetch_render(self.store, self.state, render.output, source.sha256)
        except RemoteError as exc:
            self.health.down(str(exc))
            return f"restore from the remote store failed ({exc}); the next run tries again"
        if problem is not None:
            self.writer.mark_in_remote(render.fingerprint, source.sha256, held=False)
            return f"restore failed: {problem}; the next plan prices a re-render"
        return None

    def _push_job(self, render_id: str, entry: Entry) -> PushJob:
        past = entry.as_past()
        assert past is not None
        now = datetime.now(UTC)
        record = record_of(entry, past, run=self.me.run, host=self.me.host, api=self.api, at=now)
        sources = (self.state.cached_render(past.sha256), self.state.root / entry.output)
        return PushJob(render_id, record, sources)

    async def _pushed(self, job: PushJob, pushed: Pushed) -> None:
        record = job.record
        self.writer.mark_in_remote(record.fingerprint, record.output_sha256)
        if self.claims.holds(record.fingerprint):
            await self._quietly(self.claims.finish, record.fingerprint)

    async def _renew_leases(self) -> None:
        while True:
            await anyio.sleep(self.lease / 3)
            await self._quietly(self.claims.renew)

    def _soon(self, call: Callable[..., Awaitable[Any]], *args: Any) -> None:
        if self._group is not None:
            self._group.start_soon(self._quietly, call, *args)

    async def _quietly(self, call: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """A background claim write: a failing store marks it down, never fails a render."""
        try:
            await call(*args)
        except RemoteError as exc:
            log.debug("remote store: %s", exc)
            self.health.down(str(exc))


@dataclass(frozen=True, slots=True)
class Shared:
    """The store a run shares renders through, and why it did not answer, if it did not."""

    store: RemoteStore
    problem: str | None = None


def connect(url: RemoteUrl | None, *, emulator: bool, require: bool) -> Shared | None:
    """Open and probe the run's shared store (emulator renders go under `emulator/`).

    None when there is none, or it cannot even be opened (a missing extra, a configuration
    it refuses): the run renders alone, said once. A store that does not answer is kept
    with its problem: the run renders alone until it does. With `require`, either refuses
    the run (`RefusedError`) before anything is spent.
    """
    if url is None:
        return None
    where = url.below("emulator") if emulator else url
    try:
        store = open_store(where)
    except RemoteError as exc:
        _unshared(str(exc), require)
        return None
    try:
        anyio.run(store.probe)
    except RemoteError as exc:
        if require:
            _unshared(str(exc), require)
        ui.say(
            f"warning: the remote store cannot be reached ({exc}); this run renders alone "
            "(renders are not claimed, so another machine may pay for them too) and pushes "
            "once it answers; --require-remote refuses instead"
        )
        return Shared(store, str(exc))
    return Shared(store)


def _unshared(problem: str, require: bool) -> None:
    if require:
        raise RefusedError(f"--require-remote: {problem}; nothing was submitted")
    ui.warn(f"{problem}; this run renders alone and pushes nothing")


def claimed_entry(
    render: PlannedRender, previous: Entry | None, verdict: Follow | Unsure, *, now: datetime
) -> Entry:
    """This render's entry for a job adopted from a claim, or a taken-over claim left
    uncertain. A job adopted from a live claim is charged to the run that claimed it (its
    lockfile records it); one taken over from a dead run is charged here."""
    kept = inherited(previous)
    claim = verdict.claim
    if isinstance(verdict, Follow):
        charges = list(kept["submissions"])
        if verdict.takeover:
            charges.append(_charge(render, claim, verdict.job_id))
        return new_entry(
            render,
            "submitted",
            job_id=verdict.job_id,
            submitted_at=claim.claimed_at,
            updated_at=now,
            history=kept["history"],
            submissions=charges,
            attempts=previous.attempts if previous else 0,
        )
    error = (
        f"claimed by {claim.holder} at {claim.claimed_at:%Y-%m-%d %H:%M:%S} UTC, whose lease "
        "ran out before it recorded a job: its submission may have reached the API"
    )
    return new_entry(
        render,
        "uncertain",
        error=error,
        updated_at=now,
        history=kept["history"],
        submissions=[*kept["submissions"], _charge(render, claim, None)],
        attempts=previous.attempts if previous else 0,
    )


def claimed_uploads(render: PlannedRender, claim: Claim) -> dict[str, UploadedAsset]:
    """The uploads a dead run's claimed body used for this render's local inputs, by
    content hash: recorded as this account's own, so every later look in the job list
    compares against what that run sent (another machine's upload paths)."""
    found: dict[str, UploadedAsset] = {}
    body = claim.body or {}
    for key, asset in render.assets.items():
        field_name, _, index = key.partition(".")
        value = body.get(field_name)
        if asset.sha256 is None or asset.size is None or not isinstance(value, str):
            continue
        paths = value.split(",") if index else [value]
        path = paths[int(index)] if index and int(index) < len(paths) else paths[0]
        if path.startswith("bunny://"):
            found[asset.sha256] = UploadedAsset(
                path=path, size=asset.size, uploaded_at=claim.claimed_at
            )
    return found


def _charge(render: PlannedRender, claim: Claim, job_id: str | None) -> Charge:
    return Charge(
        fingerprint=render.fingerprint,
        submitted_at=claim.claimed_at,
        cost_usd=render.cost,
        job_id=job_id,
    )
