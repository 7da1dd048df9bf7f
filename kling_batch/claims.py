"""Claims: before a run pays for a render, it claims it in the team's shared store, so no
other machine (a teammate, a CI runner) pays for the same render at the same time.

One claim per fingerprint, `claims/<fingerprint hex>`, a small JSON document (`Claim`):
the run's identity (a run id, host and pid), its API account (`upload_scope`: a hash of
the API's origin and key, never the key), the body it is about to send, the job id once
the API answered, its state, and a lease (`expires_at`, wall-clock UTC).

The protocol:

1. Take. After its inputs are uploaded and before it saves `submitting`, a run creates
   the claim with a conditional create (If-None-Match: *, object_store's
   `mode="create"`). Of any number of runs creating it at once, exactly one succeeds.
2. Check. Holding the claim, the run reads `renders/<fingerprint>.json`: a record there (a
   teammate finished it, or `push` stored it) is restored for free instead of paid for.
3. Hold. The run renews the lease every third of it and writes the job id into the claim
   once the API answers, each a conditional update (If-Match on the version it wrote
   last, so a run that lost its claim finds out instead of overwriting the new holder).
4. End. Once the render's record is written, the claim says `done`; a render that ended
   without a job to pay for (refused, or its job failed) says `released`, so the next
   run may take it at once. A render left uncertain or in flight keeps its claim until
   the lease runs out. Nothing is ever deleted: one small object per fingerprint stays.

A run that finds a claim it does not hold:

- live (`rendering`, lease not run out): it does not submit. On the same API account
  with a job id, it adopts the job and follows it itself (both runs download the one
  video; one charge). Otherwise it waits, outside its job slot: for the record (then
  restores it), for the job id, for a release, or for the lease to run out.
- `released` or `done`: taken with a conditional update (If-Match on the version read);
  of two runs trying at once one wins, the other reads again.
- lease run out (its machine died, or lost the store): taken over the same way. With a
  job id on the same account, that job is adopted and followed (its charge recorded in
  this lockfile: the dead run's may never come back). Without one, its POST may or may
  not have gone out: the render is `uncertain` under the rules of a local uncertain one
  (looked up in the job list with the claimed body, from the claim's time; sent again
  only with `--resubmit-uncertain`). Another account's job cannot be followed or looked
  up from here: uncertain too, and the run says why; a claim taken over keeps the account
  of its job (`job_scope`), so the runs after it know it too.

Failure cases:

- The store cannot be reached when a claim is due: the run renders alone and says so
  once (`--require-remote` refuses to submit instead), and asks the store again with the
  first claim due fifteen seconds later. Two machines that both fall back may both pay:
  that is what the warning is for. A run that has seen another run's claim (waiting on
  it, or just told it exists: by a read, or by a create that found one it then could not
  read) does not fall back: it leaves the render for the next run (the other run is
  likely paying). Nor does one that read a claim it could not take over (the update
  failed), and one that took over a dead run's claim follows its job even if the store
  fails right after.
- The store is lost while a claim is held: renewals fail quietly and the lease runs out;
  a teammate then adopts the job (same account: no second charge) or leaves the render
  uncertain. The holder finishes its own job; its record is pushed once the store is back.
- A holder that is only slow (renewals later than the lease): taken over as if dead. With
  a job id that costs nothing (both follow one job); before the job id is known the taker
  records `uncertain` and sends nothing. The holder finds out at its next write (If-Match
  fails), stops renewing and still finishes its own job.
- Clocks: a lease is judged by the reader's clock against the writer's `expires_at`, so
  machines must agree to well within a lease (120 s by default; NTP does far better).
- A claim that cannot be read (damaged, or from an incompatible version): treated as live
  and never taken over; the reader waits for a record until its patience runs out and
  leaves the render to a later run.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, ValidationError

from kling_batch.canonical import canonical_json
from kling_batch.errors import RemoteError
from kling_batch.remote import RemoteStore, claim_key

LEASE_SECONDS = 120.0
_ATTEMPTS = 4  # create/read/replace rounds before a contended claim counts as busy

ClaimState = Literal["rendering", "released", "done"]


class Claim(BaseModel):
    """A claim as stored; fields other versions add are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    kling_batch_claim: int = 1
    fingerprint: str
    run: str
    host: str = ""
    pid: int = 0
    scope: str = ""
    state: ClaimState = "rendering"
    job_id: str | None = None
    body: dict[str, Any] | None = None
    # The API account `job_id` and `body` belong to, when not `scope`: a claim taken over
    # from a run of another account keeps that account's job, which this one cannot follow.
    job_scope: str | None = None
    claimed_at: datetime
    expires_at: datetime

    def live(self, now: datetime) -> bool:
        """True while its run holds it: rendering, within its lease."""
        return self.state == "rendering" and now < self.expires_at

    @property
    def job_account(self) -> str:
        """The API account its job (and the body that made it) belongs to."""
        return self.job_scope if self.job_scope is not None else self.scope

    @property
    def holder(self) -> str:
        """Who holds it, for people: `run 1a2b3c4d on ci-runner-7`."""
        return f"run {self.run[:8]} on {self.host or 'an unnamed host'}"

    def dumps(self) -> bytes:
        """The stored form (JSON)."""
        return self.model_dump_json().encode()


@dataclass(frozen=True, slots=True)
class RunIdentity:
    """Who a run is, as its claims say: a fresh id, its host and pid, its API account."""

    run: str
    host: str
    pid: int
    scope: str

    @classmethod
    def new(cls, scope: str) -> RunIdentity:
        """This process's identity for a run on the API account `scope`."""
        return cls(uuid.uuid4().hex, socket.gethostname(), os.getpid(), scope)


@dataclass(frozen=True, slots=True)
class Taken:
    """This run holds the claim. `expired`: the claim it took over whose lease had run out
    (None: a new claim, or one released or done)."""

    expired: Claim | None = None


@dataclass(frozen=True, slots=True)
class Busy:
    """Another run holds the claim (`claim` None: one that cannot be read); `failed`: the
    store failed after showing it (it cannot be read, or taken over): wait for a later run."""

    claim: Claim | None
    failed: str | None = None


@dataclass
class _Held:
    claim: Claim
    etag: str | None
    lock: anyio.Lock = field(default_factory=anyio.Lock)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ClaimBook:
    """The claims one run takes, holds, renews and lets go of. Store failures raise
    `RemoteError`; the caller decides what a failing store means."""

    def __init__(
        self,
        store: RemoteStore,
        me: RunIdentity,
        *,
        lease: float = LEASE_SECONDS,
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.store = store
        self.me = me
        self.lease = timedelta(seconds=lease)
        self.now = now
        self.lost: set[str] = set()  # fingerprints another run took over from this one
        self._held: dict[str, _Held] = {}

    def holds(self, fingerprint: str) -> bool:
        """True while this run holds the claim on `fingerprint`."""
        return fingerprint in self._held

    def holding(self) -> list[str]:
        """Every fingerprint this run holds a claim on."""
        return list(self._held)

    async def take(
        self, fingerprint: str, body: Mapping[str, Any] | None, *, read_first: bool = False
    ) -> Taken | Busy:
        """Claim a render: a new claim, or a released, done or expired one taken over.

        `read_first` looks before creating (a run waiting on a claim it expects to find).
        """
        if fingerprint in self._held:
            return Taken()
        key = claim_key(fingerprint)
        for attempt in range(_ATTEMPTS):
            mine = self._fresh(fingerprint, body)
            if not (read_first and attempt == 0):
                etag = await self.store.create(key, mine.dumps())
                if etag is not None:
                    self._hold(mine, etag)
                    return Taken()
            try:
                stored = await self.store.read(key)
            except RemoteError as exc:
                if read_first and attempt == 0:
                    raise
                return Busy(None, str(exc))  # the create found one: held by another run
            if stored is None:
                continue  # none there (or removed by hand): create it
            found = _parse(stored.data, fingerprint)
            if found is None or found.live(self.now()):
                return Busy(found)
            expired = found if found.state == "rendering" else None
            if expired is not None:  # its job, body and account go on under this run
                account = found.job_account
                update = {
                    "job_id": found.job_id,
                    "body": found.body or mine.body,
                    "job_scope": None if account == self.me.scope else account,
                }
                mine = mine.model_copy(update=update)
            try:
                etag = await self.store.replace(key, mine.dumps(), stored.etag)
            except RemoteError as exc:
                return Busy(found, str(exc))  # read but not taken over: never paid
            if etag is not None:
                self._hold(mine, etag)
                return Taken(expired)
        return Busy(None)

    async def set_job(self, fingerprint: str, job_id: str) -> bool:
        """Write the job id into a held claim (and renew its lease)."""
        return await self._rewrite(
            fingerprint, job_id=job_id, job_scope=None, expires_at=self._expiry()
        )

    async def renew(self) -> None:
        """Renew the lease of every claim this run holds (one conditional update each)."""
        for fingerprint in self.holding():
            await self._rewrite(fingerprint, expires_at=self._expiry())

    async def release(self, fingerprint: str) -> None:
        """Let go of a claim whose render left nothing to pay for: the next run may take it."""
        await self._let_go(fingerprint, "released")

    async def finish(self, fingerprint: str) -> None:
        """Mark a claim done: the render's record is in the store."""
        await self._let_go(fingerprint, "done")

    async def _let_go(self, fingerprint: str, state: ClaimState) -> None:
        if await self._rewrite(fingerprint, state=state, expires_at=self.now()):
            self._held.pop(fingerprint, None)

    async def _rewrite(self, fingerprint: str, **changes: Any) -> bool:
        """Update a held claim if it is still as this run wrote it; False when it is not
        held (any more): another run took it over, or it was removed."""
        held = self._held.get(fingerprint)
        if held is None:
            return False
        async with held.lock:
            if self._held.get(fingerprint) is not held:
                return False
            claim = held.claim.model_copy(update=changes)
            etag = await self.store.replace(claim_key(fingerprint), claim.dumps(), held.etag)
            if etag is None:
                self._held.pop(fingerprint, None)
                self.lost.add(fingerprint)
                return False
            held.claim, held.etag = claim, etag
            return True

    def _fresh(self, fingerprint: str, body: Mapping[str, Any] | None) -> Claim:
        now = self.now()
        return Claim(
            fingerprint=fingerprint,
            run=self.me.run,
            host=self.me.host,
            pid=self.me.pid,
            scope=self.me.scope,
            body=json.loads(canonical_json(body)) if body is not None else None,  # plain JSON
            claimed_at=now,
            expires_at=now + self.lease,
        )

    def _hold(self, claim: Claim, etag: str | None) -> None:
        self._held[claim.fingerprint] = _Held(claim, etag)

    def _expiry(self) -> datetime:
        return self.now() + self.lease


def _parse(data: bytes, fingerprint: str) -> Claim | None:
    """The claim stored for `fingerprint`, or None when it cannot be read as one."""
    try:
        claim = Claim.model_validate_json(data)
    except ValidationError:
        return None
    return claim if claim.fingerprint == fingerprint else None
