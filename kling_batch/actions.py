"""Plan actions: what a run would do with each render, decided from facts alone."""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from kling_batch.canonical import plain_numbers
from kling_batch.lock_facts import EntryRecord, LockRecords, PastRecord
from kling_batch.lockfile import CANCELLED_ERROR, UNSETTLED, failed_by_cancel
from kling_batch.planned import PlanItem, PlannedRender, RestoreSource
from kling_batch.recall import RememberedJob, recall_window, recent
from kling_batch.state import StateDir
from kling_batch.urls import KnownUrl


class FileFacts(Protocol):
    """What planning knows of the files under the project."""

    def relative_hash(self, relative: str) -> tuple[str, int] | None:
        """(sha256, size) of `root/relative`, or None when it is not a file."""

    def remembered_render(self, fingerprint: str) -> tuple[str, int] | None:
        """(sha256, size) the render cache's index holds for a fingerprint, if any."""

    def result_url(self, sha256: str) -> KnownUrl | None:
        """The signed URL a downloaded render can be fetched from again, if one is known."""

    def remembered_job(self, fingerprint: str) -> RememberedJob | None:
        """The job an earlier run submitted for a fingerprint on this API (`recall`), if any."""


# The finished renders on record of one fingerprint: a done entry alone (most are: its
# render is `entry.as_past()`), else each render with its entry, if current (`_known`).
_Finished = EntryRecord | list[tuple[EntryRecord | None, PastRecord]]


def _finished_index(lock: LockRecords) -> dict[str, _Finished]:
    """Every finished render on record by fingerprint, in the lockfile's order. A done
    entry is held as itself, no pair made for it: a plan of 100,000 renders that asks
    for a restore indexes them all (issue 13)."""
    index: dict[str, _Finished] = {}
    for entry, past in lock.finished():
        held = index.get(past.fingerprint)
        if held is None and entry is not None:
            index[past.fingerprint] = entry
            continue
        if held is None:
            held = index[past.fingerprint] = []
        elif not isinstance(held, list):
            first = held.as_past()
            held = index[past.fingerprint] = [(held, first)] if first is not None else []
        held.append((entry, past))
    return index


class Differ:
    """Decides each render's action from the lockfile, the files' facts and `now`.

    No clock, no network, no file access of its own: given the same facts it decides the
    same way, so it is unit-tested with a dictionary standing for the folder. Facts are
    asked for as decisions need them (a no-op plan asks once per output, never about
    the render cache).
    """

    # A shared store is configured (`kling_batch.remote`): renders the lockfile says it
    # holds restore from it.
    remote = False

    def __init__(
        self,
        lock: LockRecords,
        files: FileFacts,
        now: datetime,
        *,
        root: Path,
        state: StateDir,
        ids: Collection[str] = (),
        renders: Sequence[PlannedRender] = (),
        forced: Collection[str] = (),
        remote: bool = False,
    ) -> None:
        self.root = root
        self.lock = lock
        self.files = files
        self.state = state
        self.now = now
        self.forced = frozenset(forced)
        self.remote = remote
        self.ids = frozenset(ids)
        self._paid: dict[str, PlannedRender] = {}
        self._finished: dict[str, _Finished] | None = None
        self._takes = takeovers(lock, renders, self.forced)  # render id → entry id
        self.adopted = {key: render for render, key in self._takes.items()}  # and back
        self._strays = [
            key
            for key in sorted(key for key in lock.shots if key not in ids)
            if lock.shots[key].state in UNSETTLED and key not in self.adopted
        ]

    def item(self, render: PlannedRender) -> PlanItem:
        """The action for one render; a second paid render of one fingerprint copies the first."""
        decided = self._decide(render, render.id in self.forced)
        if decided.adopt is not None:  # later renders of this request copy the adopter
            self._paid.setdefault(render.fingerprint, render)
            return decided
        if not decided.paid:
            return decided
        first = self._paid.setdefault(render.fingerprint, render)
        if first is render:
            return decided if render.id in self.forced else self._recalled(decided)
        source = RestoreSource("twin", "", 0, path=self.root / first.output, twin=first.id)
        reason = f"same request as {first.id}: copied from it once it renders (free)"
        return PlanItem(render, "restore", (reason,), source)

    def strays(self) -> list[str]:
        """Stray ids (not in the manifest, job maybe paid for) no render took over."""
        return list(self._strays)

    def _known(self, fingerprint: str) -> list[tuple[EntryRecord | None, PastRecord]]:
        """The finished renders on record with this fingerprint, each with its entry when
        it is the entry's current render (gathered when a restore is first in question: a
        no-op plan never asks)."""
        if self._finished is None:
            self._finished = _finished_index(self.lock)
        found = self._finished.get(fingerprint)
        if found is None or isinstance(found, list):
            return found or []
        past = found.as_past()
        return [(found, past)] if past is not None else []

    @cached_property
    def _submitted(self) -> frozenset[str]:
        """What names every submission on record, any entry's, current or past (read when
        a remembered job is first in question: most plans never ask)."""
        return self.lock.submitted()

    def _recalled(self, item: PlanItem) -> PlanItem:
        """A render to pay for whose request an earlier run already submitted, the lockfile
        not knowing (a `git checkout`, a stash or a revert took the record away): its job
        is resumed, an unanswered submission looked for in the job list, at no new cost.
        Asked only of renders to pay for: the one read of the state folder they cost."""
        render = item.render
        job = self.files.remembered_job(render.fingerprint)
        if job is None or not recent(job, self.now, recall_window(render.tier, render.seconds)):
            return item  # none, or gone from the API by now
        if job.mark in self._submitted:
            # Followed by the lockfile itself, or ended (re-rendered since, in history):
            # resumed, its charge would be recorded twice and spend say it was paid twice.
            return item
        if job.job_id is None:
            if any(
                entry.fingerprint == job.fingerprint and entry.state in UNSETTLED
                for entry in self.lock.shots.values()
            ):
                return item  # the lockfile follows that submission itself
            reason = (
                f"{job.describe()}, not in this lockfile: it may have made a job, looked up "
                "in the job list, no new cost"
            )
            return PlanItem(render, "uncertain", (reason,), recalled=job)
        reason = f"{job.describe()}, not in this lockfile: followed to its end, no new cost"
        return PlanItem(render, "resume", (reason,), recalled=job)

    def _adopt(self, render: PlannedRender, key: str) -> PlanItem:
        """Take over entry `key`'s job in flight: the same request under another id."""
        stray = self.lock.shots[key]
        shot = "shot" if key in self.ids else "renamed shot"
        if stray.state in ("submitted", "completed"):
            phase = "in flight" if stray.state == "submitted" else "done, download pending"
            reason = f"job of {shot} {key}, {phase}: no new cost"
            return PlanItem(render, "resume", (reason,), adopt=key)
        reason = (
            f"submission of {shot} {key} may have reached the API: looked up in the job "
            "list, no new cost"
        )
        return PlanItem(render, "uncertain", (reason,), adopt=key)

    def _decide(self, render: PlannedRender, forced: bool) -> PlanItem:
        key = self._takes.get(render.id)
        if key is not None:
            return self._adopt(render, key)
        entry = self.lock.shots.get(render.id)
        if entry is not None and render.id in self.adopted:
            # Its job, for the request it had before, goes to the render now asking for it.
            item = self._decide_from(render, None, forced)
            note = f"its job in flight (for its earlier request) goes to {self.adopted[render.id]}"
            return replace(item, reasons=(*item.reasons, note))
        return self._decide_from(render, entry, forced)

    def _decide_from(
        self, render: PlannedRender, entry: EntryRecord | None, forced: bool
    ) -> PlanItem:
        if entry is not None and entry.state in UNSETTLED:
            # A job that may be paid for is followed to its end before anything replaces
            # its entry (not even --force): replacing it would lose the job id.
            item = self._same_fingerprint(render, entry)
            if entry.fingerprint != render.fingerprint:
                note = (
                    "the request changed while a job for the previous one was in flight; "
                    "the change renders on the run after it lands"
                )
                item = replace(item, reasons=(*item.reasons, note))
            return item
        if forced:
            reasons = ("forced with --force",)
            return PlanItem(render, "changed" if entry else "new", reasons)
        if entry is None:
            source = self._restore_source(render.fingerprint)
            if source is not None:
                return PlanItem(render, "restore", (_restore_reason(source),), source)
            return PlanItem(render, "new")
        if entry.fingerprint != render.fingerprint:
            source = self._restore_source(render.fingerprint)
            if source is not None:
                reason = "request matches an earlier render; " + _restore_reason(source)
                return PlanItem(render, "restore", (reason,), source)
            return PlanItem(render, "changed", tuple(change_reasons(entry, render)))
        return self._same_fingerprint(render, entry)

    def _same_fingerprint(self, render: PlannedRender, entry: EntryRecord) -> PlanItem:
        if entry.state == "failed":
            failed = _failed_reason(entry)
            source = self._restore_source(render.fingerprint)
            if source is not None:
                reason = f"{failed}; an earlier render of this request is {_restore_reason(source)}"
                return PlanItem(render, "restore", (reason,), source)
            return PlanItem(render, "retry", (failed,))
        if entry.state == "uncertain":
            reason = "a submission may have reached the API; rerun with --resubmit-uncertain"
            return PlanItem(render, "uncertain", (reason,))
        if entry.state == "submitting":
            reason = (
                "stopped while submitting: the API may have the job; rerun with "
                "--resubmit-uncertain"
            )
            return PlanItem(render, "uncertain", (reason,))
        if entry.state == "submitted":
            return PlanItem(render, "resume", (f"job {entry.job_id} in flight",))
        if entry.state == "completed":
            return PlanItem(render, "resume", (f"job {entry.job_id} done; download pending",))
        # done
        if (
            entry.output == str(render.output)
            and entry.output_sha256 is not None
            and self._file_matches(entry.output, entry.output_sha256, entry.output_size)
        ):
            return PlanItem(render, "unchanged")
        source = self._restore_source(render.fingerprint)
        if source is not None:
            if entry.output != str(render.output):
                reason = f"output moved from {entry.output}; {_restore_reason(source)}"
            else:
                reason = "output missing or modified; " + _restore_reason(source)
            return PlanItem(render, "restore", (reason,), source)
        return PlanItem(
            render,
            "changed",
            ("output missing or modified; no cached copy or valid result URL to restore it",),
        )

    def _restore_source(self, fingerprint: str) -> RestoreSource | None:
        candidates = self._known(fingerprint)
        for entry, past in candidates:
            if entry is not None and self._file_matches(entry.output, past.sha256, past.size):
                return RestoreSource("file", past.sha256, past.size, path=self.root / entry.output)
        for _, past in candidates:
            cached = self.state.cached_render_relative(past.sha256)
            if self._file_matches(cached, past.sha256, past.size):
                return RestoreSource("cache", past.sha256, past.size, path=self.root / cached)
        for _, past in candidates:
            known = self._url_of(past)
            if known is not None and known.expires_at > self.now:
                url, job = known.url, known.job_id
                return RestoreSource("url", past.sha256, past.size, url=url, job_id=job)
        return self._remembered(fingerprint) or self._in_remote(candidates)

    def _in_remote(
        self, candidates: list[tuple[EntryRecord | None, PastRecord]]
    ) -> RestoreSource | None:
        """A finished render the lockfile says the team's shared store holds."""
        if self.remote:
            for _, past in candidates:
                if past.in_remote:
                    return RestoreSource("remote", past.sha256, past.size)
        return None

    def _url_of(self, past: PastRecord) -> KnownUrl | None:
        """A finished render's URL: in the URL store, or in the lockfile (older records)."""
        if past.result_url and past.result_expires_at is not None:
            return KnownUrl(past.result_url, past.result_expires_at)
        return self.files.result_url(past.sha256)

    def _remembered(self, fingerprint: str) -> RestoreSource | None:
        """The render cache's own index: a render whose record was lost (a lockfile
        reverted or deleted) is still restored from the cache."""
        remembered = self.files.remembered_render(fingerprint)
        if remembered is None:
            return None
        sha256, size = remembered
        cached = self.state.cached_render_relative(sha256)
        if not self._file_matches(cached, sha256, size):
            return None
        return RestoreSource("cache", sha256, size, path=self.root / cached)

    def _file_matches(self, relative: str, sha256: str, size: int | None) -> bool:
        """True when `root/relative` is a file with this content."""
        if relative.startswith(("/", "\\")) or ".." in relative.replace("\\", "/").split("/"):
            return False  # a lockfile path never leads outside the project
        found = self.files.relative_hash(relative)
        return found is not None and found[0] == sha256 and (size is None or found[1] == size)


def _failed_reason(entry: EntryRecord) -> str:
    """Why a failed render is retried: its last attempt's error, said as a cancel when
    its job was cancelled (it did not fail)."""
    error = entry.error or "unknown"
    if not failed_by_cancel(entry.state, entry.error):
        return f"last attempt failed: {error}"
    if error.startswith(CANCELLED_ERROR):  # "cancelled by the user (job …)"
        return f"last attempt was {error}"
    return f"last attempt was cancelled ({error})"


def _restore_reason(source: RestoreSource) -> str:
    if source.kind == "twin":
        return f"copied from {source.twin} once it renders (free)"
    if source.kind == "url":
        return "restored from its result URL (free)"
    if source.kind == "cache":
        return "restored from the local cache (free)"
    if source.kind == "remote":
        return "restored from the remote store (free)"
    return f"copied from {source.path.name if source.path else 'an earlier output'} (free)"


def change_reasons(entry: EntryRecord, render: PlannedRender) -> list[str]:
    """Which request fields differ from the locked render, and which assets' content changed."""
    reasons: list[str] = []
    old, new = entry.request, dict(render.body)
    new_hashes = render.asset_hashes
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name), new.get(name)
        if plain_numbers(before) != plain_numbers(after):
            if name == "prompt":
                reasons.append("prompt changed")
            elif before is None:
                reasons.append(f"{name} added: {_short(after)}")
            elif after is None:
                reasons.append(f"{name} removed (was {_short(before)})")
            else:
                reasons.append(f"{name}: {_short(before)} → {_short(after)}")
    for key in sorted(set(entry.assets) | set(new_hashes)):
        before_hash, after_hash = entry.assets.get(key), new_hashes.get(key)
        if before_hash and after_hash and before_hash != after_hash:
            asset = render.assets.get(key)
            label = asset.ref if asset else key
            reasons.append(f"content of {label} changed ({key})")
    if entry.take != render.take:
        reasons.append(f"take {entry.take} → {render.take}")
    return reasons or ["fingerprint changed"]


def _short(value: Any) -> str:
    text = str(plain_numbers(value))
    return text if len(text) <= 40 else text[:37] + "..."


def takeovers(
    lock: LockRecords, renders: Sequence[PlannedRender], forced: Collection[str]
) -> dict[str, str]:
    """Which render takes over which entry's job in flight (render id → entry id).

    An unsettled entry whose request no render of its own id still asks for (a renamed
    shot, a take renumbered, an output moved, an id reused for another request) goes to the
    first render asking for exactly that request that has no job of its own to follow and
    was not forced: paying again for the same request would pay twice.
    """
    current = {render.id: render.fingerprint for render in renders}
    strays = deque(
        key
        for key, entry in sorted(lock.shots.items())
        if entry.state in UNSETTLED and current.get(key) != entry.fingerprint
    )  # unsettled, and not followed by a render of their own
    if not strays:
        return {}
    asking: dict[str, list[PlannedRender]] = {}  # by request, in plan order
    for render in renders:
        asking.setdefault(render.fingerprint, []).append(render)
    takes: dict[str, str] = {}
    taken: set[str] = set()
    # A render following a job of its own is freed when another render takes that job
    # (shots renumbered in a chain: b to a, c to b): the entries it was asked for wait for
    # that, and are looked at again then, whichever order the ids sort in.
    waiting: dict[str, list[str]] = {}
    while strays:
        key = strays.popleft()
        for render in asking.get(lock.shots[key].fingerprint, ()):
            free = _free_to_adopt(render, key, lock, takes, taken, forced)
            if free is None:
                waiting.setdefault(render.id, []).append(key)
            elif free:
                takes[render.id] = key
                taken.add(key)
                strays.extend(k for k in waiting.pop(key, ()) if k not in taken)
                break
    return takes


def _free_to_adopt(
    render: PlannedRender,
    key: str,
    lock: LockRecords,
    takes: Mapping[str, str],
    taken: Collection[str],
    forced: Collection[str],
) -> bool | None:
    """True when `render` can take over entry `key`'s job: it has none of its own to
    follow (its own job is taken by another render, or it has none, nor a finished render
    of this request), adopts nothing else, was not forced. None while its own job in flight
    is not taken (yet): another render may still take it."""
    if render.id == key or render.id in takes or render.id in forced:
        return False
    own = lock.shots.get(render.id)
    if own is None:
        return True
    if own.state in UNSETTLED:  # it follows its own job first, unless another takes it
        return True if render.id in taken else None
    return own.fingerprint != render.fingerprint or own.state == "failed"
