"""Planning: RenderSpecs validated, priced and fingerprinted, then compared with the lockfile.

First the facts (each render's request, its assets' hashes and lengths, its price and
fingerprint), then the decisions (`Differ`: each render's action from those facts, the
lockfile, the outputs' hashes and `now`). No network, and the clock only as the `now`
argument: `plan` is exactly what `run` does. It writes only caches in the state folder
(`kling_batch.state`): the input hash cache and the lockfile's parse cache.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from functools import cached_property
from itertools import chain
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from kling_batch import kling_o3
from kling_batch.actions import Differ, FileFacts, change_reasons
from kling_batch.assets import Asset, AssetStore
from kling_batch.cachefile import tool_identity
from kling_batch.canonical import untagged
from kling_batch.collector import collecting_after
from kling_batch.errors import AssetProblem, RequestRuleError, UserError, validation_error
from kling_batch.expand import Expansion, RenderSpec, check_render_count, count_renders
from kling_batch.kling_o3 import KlingO3Request
from kling_batch.limits import MAX_RENDERS
from kling_batch.lock_facts import EntryRecord, LockFacts, LockRecords, read_facts
from kling_batch.lockfile import UNSETTLED, Lockfile
from kling_batch.lockname import lock_path
from kling_batch.manifest import (
    LoadedManifest,
    ShotPlace,
    SourcedShot,
    Walked,
    load_manifest,
    load_unsettled,
    read_shot,
)
from kling_batch.manifest_cache import ParseCache
from kling_batch.plan_cache import PlanCache, UnitKeys, context_key, decode
from kling_batch.planned import (
    ACTIONS,
    PAID_ACTIONS,
    Action,
    Orphan,
    PlanItem,
    PlannedRender,
    RestoreSource,
)
from kling_batch.pricing import Price, price, select_row
from kling_batch.recall import RememberedJob, read_job, remembered_jobs
from kling_batch.selection import matches_any, require_matches
from kling_batch.state import StateDir
from kling_batch.uptodate import EditBase, KnownShot
from kling_batch.urls import KnownUrl, ResultUrls

if TYPE_CHECKING:  # the shared store's module loads only when one is named
    from kling_batch.remote import RemoteUrl
    from kling_batch.templating import Templates

# The API a plan restores the renders of (`build_plan`): its identity, or what tells it.
ApiOf = str | Callable[[], str | None] | None

__all__ = [
    "ACTIONS",
    "PAID_ACTIONS",
    "Action",
    "Differ",
    "FileFacts",
    "Orphan",
    "Plan",
    "PlanItem",
    "PlannedRender",
    "RestoreSource",
    "Totals",
    "build_plan",
    "change_reasons",
    "plan_render",
    "render_fingerprint",
]

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
_VIDEO_SUFFIXES = {".mp4", ".mov"}
_IMAGE_MAX_BYTES = 10 * 1024 * 1024
_VIDEO_MAX_BYTES = 200 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Totals:
    """Sums over a plan."""

    renders: int
    to_run: int
    cost: Decimal
    to_run_cost: Decimal
    by_action: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class PlanUnit:
    """One shot of a plan as the up-to-date stamp keeps it: its plan cache key, the index
    of its first render when a template of it reads the index (else None), how many
    renders it has, and how many `--max-renders` counts for it (`check_render_count`)."""

    key: str
    start: int | None
    renders: int
    counted: int


@dataclass(frozen=True)
class Settled:
    """The renders a plan of an edit holds no item for (`plan_edit`): those of the shots
    the up-to-date stamp knows, every one unchanged. Counted, never listed."""

    renders: int
    cost: Decimal
    # (render id, warning) of every render of the manifest, in manifest order.
    warnings: Sequence[tuple[str, str]]
    # Every shot the stamp knows, each found as it was, and no other: the stamped plan
    # again (its manifest's files touched, or changed outside their shot tables).
    whole: bool = False


@dataclass(frozen=True)
class Plan:
    """The whole plan for one manifest.

    `records` is what planning read of the lockfile; `lock`, the whole lockfile, is read
    when first asked for (a run, the gallery), from the same bytes.
    """

    loaded: LoadedManifest
    lock_path: Path
    records: Lockfile | LockFacts
    items: Sequence[PlanItem]
    orphans: Sequence[Orphan]
    warnings: Sequence[str] = field(default_factory=list)
    # Orphaned entries whose job may be paid for: followed to their end by a run, their
    # videos kept in the render cache (no new cost; not counted among the renders).
    followups: Sequence[PlanItem] = ()
    # The team's shared store (`kling_batch.remote`), if one is configured.
    remote: RemoteUrl | None = None
    # The template partials the renders read: name → `partials.partial_digest`.
    partials: Mapping[str, str] = field(default_factory=dict)
    # Each shot of a whole plan, in order, as the up-to-date stamp keeps it.
    units: Sequence[PlanUnit] = ()
    # A plan of an edit (`plan_edit`): the renders it holds no item for, known unchanged.
    settled: Settled | None = None

    @cached_property
    def lock(self) -> Lockfile:
        """The whole lockfile the plan was made against."""
        if isinstance(self.records, Lockfile):
            return self.records
        return self.records.full()

    @property
    def has_work(self) -> bool:
        """True when a run would do anything at all."""
        return bool(self.followups) or any(i.action != "unchanged" for i in self.items)

    @cached_property
    def totals(self) -> Totals:
        """Counts and costs; `to_run_cost` sums only what the run would pay for (counted
        once: a plan's items do not change)."""
        by_action: dict[str, int] = dict.fromkeys(ACTIONS, 0)
        for item in self.items:
            by_action[item.action] += 1
        paid = [item for item in self.items if item.paid]
        settled = self.settled or Settled(0, Decimal(0), ())
        by_action["unchanged"] += settled.renders
        return Totals(
            renders=len(self.items) + settled.renders,
            to_run=len(paid),
            cost=sum((item.render.cost for item in self.items), settled.cost),
            to_run_cost=sum((item.render.cost for item in paid), Decimal(0)),
            by_action=by_action,
        )

    def render_warnings(self) -> list[tuple[str, str]]:
        """(render id, warning) of every render of the plan, in manifest order."""
        if self.settled is not None:
            return list(self.settled.warnings)
        return [(item.render.id, text) for item in self.items for text in item.render.warnings]

    @property
    def budget(self) -> Decimal | None:
        """The manifest's `budget_usd`, if any."""
        return self.loaded.manifest.budget_usd

    @property
    def over_budget(self) -> bool:
        """True when the cost to run exceeds the manifest's budget."""
        return self.budget is not None and self.totals.to_run_cost > self.budget


@collecting_after
def build_plan(
    manifest_path: Path,
    *,
    now: datetime,
    only: Iterable[str] = (),
    force: Iterable[str] = (),
    lockfile: Path | None = None,
    emulator: bool = False,
    max_renders: int = MAX_RENDERS,
    api: ApiOf = None,
    remote: str | None = None,
) -> Plan:
    """Load, expand, validate, price and diff one manifest against its lockfile.

    `emulator`: renders of the bundled emulator (their own lockfile and output folder).
    `api`: the API the run would use (`endpoint.api_identity`, or what tells it when a
    restore is in question); only its renders restore from the cache index or the URL
    store. `remote` overrides the manifest's shared store, whose renders restore free.
    Shots unchanged since the last plan come from the plan cache (`kling_batch.plan_cache`).
    """
    project = _Project.open(manifest_path, emulator, max_renders, remote, lockfile)
    loaded, store = project.loaded, project.store
    cached = project.state.plan_cache(project.lock_file) if project.usable else None
    cache = PlanCache(cached, context_key(loaded), loaded.root)
    templates, shots = _expand_all(loaded, store, cache)
    only, force = _selection(shots, only, force)
    lock, save_lock_caches = project.read_lock()
    # The facts first: every render validated, its assets hashed and probed, priced.
    renders = _planned(shots, store, cache, _chosen_ids(lock, only))
    # Then the decisions, from those facts, the lockfile, the files' hashes and `now`.
    ids = frozenset(render_id for shot in shots for render_id in shot.render_ids())
    forced = {r.id for r in renders if matches_any(r.id, r.tags, force)}
    items, orphans, followups = project.decide(lock, renders, ids, now, api, forced)
    # Written last: a manifest error above leaves none. A read-only checkout plans without.
    partials = templates.loader.read if templates else {}
    project.save_caches(save_lock_caches, lambda: cache.save(partials))
    warnings = _warnings(_render_warnings(renders), orphans)
    read = {**cache.partials, **partials}  # those of shots from the cache, checked by it
    units = _units(shots, loaded) if not only else []
    facts = (loaded, project.lock_file, lock, items, orphans, warnings, followups, project.remote)
    return Plan(*facts, read, units)


def _units(shots: Sequence[_Shot], loaded: LoadedManifest) -> list[PlanUnit]:
    """Each shot of a whole plan as the up-to-date stamp keeps it."""
    return [
        PlanUnit(shot.key, shot.start, len(shot.items), _counted(sourced))
        for shot, sourced in zip(shots, loaded.shots, strict=True)
    ]


@dataclass(frozen=True)
class _Project:
    """What every plan starts from: the manifest loaded (through its parse cache), the
    state folder, the asset store, the lockfile's path and the shared store, if any."""

    state: StateDir
    usable: bool
    parses: ParseCache
    loaded: LoadedManifest
    remote: RemoteUrl | None
    lock_file: Path
    store: AssetStore

    @classmethod
    def open(
        cls,
        manifest_path: Path,
        emulator: bool,
        max_renders: int,
        remote: str | None,
        lockfile: Path | None = None,
    ) -> _Project:
        """Load the manifest and refuse what no plan of it may go on with."""
        state = StateDir(Path(manifest_path).parent)
        usable = state.usable()
        parses = ParseCache(state.parse_cache(Path(manifest_path)) if usable else None)
        loaded = _for_emulator(load_manifest(manifest_path, parses), emulator)
        parses.settle()
        project = cls._of(state, usable, parses, loaded, remote, lockfile, emulator)
        check_render_count(loaded, max_renders)
        return project

    @classmethod
    def open_unsettled(
        cls,
        manifest_path: Path,
        emulator: bool,
        remote: str | None,
        settled: Callable[[ShotPlace], bool],
    ) -> tuple[_Project, list[Walked]] | None:
        """`open` with only the shots `settled` does not claim read (`load_unsettled`), and
        every shot in order; None when the manifest is not one to read so. Its renders
        are not counted: the caller counts them, `settled` ones included."""
        read = load_unsettled(Path(manifest_path), settled)
        if read is None:
            return None
        state = StateDir(Path(manifest_path).parent)
        loaded = _for_emulator(read[0], emulator)
        project = cls._of(state, state.usable(), ParseCache(None), loaded, remote, None, emulator)
        return project, read[1]

    @classmethod
    def _of(
        cls,
        state: StateDir,
        usable: bool,
        parses: ParseCache,
        loaded: LoadedManifest,
        remote: str | None,
        lockfile: Path | None,
        emulator: bool,
    ) -> _Project:
        shared = _shared_store(loaded, remote)
        lock_file = lockfile or lock_path(loaded.path, emulator=emulator)
        store = AssetStore(loaded.root, state)
        store.state.check()
        return cls(state, usable, parses, loaded, shared, lock_file, store)

    def read_lock(self) -> tuple[Lockfile | LockFacts, Callable[[], None]]:
        """The lockfile's records for planning (`lock_facts.read_facts`) and what saves
        their caches; no facts cache when the state folder is not usable."""
        state, lock_file = self.state, self.lock_file
        facts = state.lock_facts(lock_file) if self.usable else None
        return read_facts(lock_file, facts, state.lock_cache(lock_file), tool=tool_identity())

    def decide(
        self,
        lock: Lockfile | LockFacts,
        renders: Sequence[PlannedRender],
        ids: frozenset[str],
        now: datetime,
        api: ApiOf,
        forced: Collection[str] = (),
    ) -> tuple[list[PlanItem], list[Orphan], list[PlanItem]]:
        """Each render's item, the orphans and the follow-ups of a manifest whose renders
        have `ids` (`renders`: those planned)."""
        differ = Differ(
            lock,
            _ProjectFiles(self.store, self.lock_file, api),
            now,
            root=self.loaded.root,
            state=self.state,
            ids=ids,
            renders=renders,
            forced=forced,
            remote=self.remote is not None,
        )
        items = [differ.item(r) for r in renders]
        orphans = _orphans(lock, ids, adopted=differ.adopted)
        followups = [stray_item(key, lock.shots[key]) for key in differ.strays()]
        return items, orphans, followups

    def save_caches(self, *savers: Callable[[], None]) -> None:
        """Write the hash cache, the parse cache and `savers`' caches into the state
        folder (made, ignoring itself in git, if needed); none when it cannot be written."""
        self.store.save()
        try:
            self.state.ensure()
        except OSError:
            return
        for save in (self.parses.save, *savers):
            save()


# An edit is planned against the up-to-date stamp (`plan_edit`) while the renders it
# plans afresh number at most this many; beyond, the full plan with its plan cache is
# as quick (a warm plan of 10,000 renders takes about as long as 1,000 planned afresh).
EDIT_RENDERS = 1_000


@collecting_after
def plan_edit(
    manifest_path: Path,
    base: EditBase,
    *,
    now: datetime,
    emulator: bool = False,
    max_renders: int = MAX_RENDERS,
    api: ApiOf = None,
    remote: str | None = None,
) -> Plan | None:
    """The plan of an edit to the manifest since its up-to-date stamp (`base`), for the
    table report: the shots the stamp knows (same source, file, place, and first render's
    index if a template reads it, under the same shared context) are `Settled`, every
    render unchanged, for the stamp found nothing else they depend on changed (the
    lockfile, the inputs, the outputs, their folders, the partials); the others are
    planned and decided as in `build_plan`, against the ids and outputs of all.

    None when the edit is not one to plan so (the shared context changed, too many renders
    to plan afresh, the lockfile was written since the stamp was looked at) or the
    manifest has an error: the full plan then plans it, or says what is wrong, as it
    would have without a stamp.
    """
    try:
        project, shots = _open_edit(manifest_path, base, emulator, max_renders, remote)
        if context_key(project.loaded) != base.context:
            return None
        walked = _edited_shots(project, base, shots, max_renders)
        if walked is None:
            return None
        edited = _plan_edited(project, walked, now, api, stamped=len(base.shots))
    except UserError:
        return None
    # Checked once the lockfile was read: one written meanwhile is planned in full.
    return edited if base.lock_unchanged(project.loaded.root) else None


def _open_edit(
    manifest_path: Path, base: EditBase, emulator: bool, max_renders: int, remote: str | None
) -> tuple[_Project, Sequence[Walked]]:
    """The project of an edit and its shots: those the stamp knows left unread when the
    manifest can be read so (at 100,000 shots, most of a plan's memory), else all read."""
    keys, root = UnitKeys(), Path(manifest_path).parent

    def settled(place: ShotPlace) -> bool:
        return keys.key_at(root, place) in base.shots

    opened = _Project.open_unsettled(manifest_path, emulator, remote, settled)
    if opened is not None:
        return opened
    project = _Project.open(manifest_path, emulator, max_renders, remote)
    return project, project.loaded.shots


# A shot of an edit: known to the stamp, or its renders to plan.
_Walked = KnownShot | list[RenderSpec]


def _edited_shots(
    project: _Project, base: EditBase, shots: Sequence[Walked], max_renders: int
) -> list[_Walked] | None:
    """Each enabled shot in order: known to the stamp (its ids and outputs claimed), or
    expanded (read first if it was left unread); None when more renders than
    `EDIT_RENDERS` would be planned afresh, or more than `max_renders` in all."""
    loaded = project.loaded
    expansion, keys, fresh, total = Expansion(loaded, is_dir=project.store.is_dir), UnitKeys(), 0, 0
    walked: list[_Walked] = []
    for sourced in shots:
        if isinstance(sourced, SourcedShot) and not sourced.shot.enabled:
            continue
        known = base.shots.get(keys.key(loaded, sourced))
        if known is not None and known.start in (None, expansion.index):
            expansion.claim(sourced, zip(known.ids, known.outputs, strict=True))
            walked.append(known)
            total += known.counted  # as the full plan counts it, not the renders it has
            continue
        read = read_shot(sourced) if isinstance(sourced, ShotPlace) else sourced
        if read is None:  # its file changed since it was left unread
            return None
        count = _counted(read)
        fresh, total = fresh + count, total + count
        if fresh > EDIT_RENDERS:
            return None
        walked.append(expansion.shot(read))
    return walked if total <= max_renders else None


def _counted(sourced: SourcedShot) -> int:
    """The renders `check_render_count` counts for a shot: none when it is disabled."""
    return count_renders(sourced)[0] if sourced.shot.enabled else 0


def _plan_edited(
    project: _Project, walked: list[_Walked], now: datetime, api: ApiOf, *, stamped: int
) -> Plan:
    """`plan_edit`'s plan of the walked shots (`stamped`: how many shots the stamp knows)."""
    store = project.store
    store.only(_named_files(spec for shot in walked if isinstance(shot, list) for spec in shot))
    planned: list[KnownShot | list[PlannedRender]] = [
        shot if isinstance(shot, KnownShot) else [plan_render(spec, store) for spec in shot]
        for shot in walked
    ]
    # Read after planning: the hash cache's parse is let go before the lockfile's facts.
    lock, save_lock_caches = project.read_lock()
    renders = [r for shot in planned if not isinstance(shot, KnownShot) for r in shot]
    known = [shot for shot in planned if isinstance(shot, KnownShot)]
    ids = frozenset(
        chain((render_id for shot in known for render_id in shot.ids), (r.id for r in renders))
    )
    items, orphans, followups = project.decide(lock, renders, ids, now, api)
    project.save_caches(save_lock_caches)
    pairs: list[tuple[str, str]] = []
    for shot in planned:
        if isinstance(shot, KnownShot):
            pairs.extend((render_id, text) for render_id, text in shot.warnings)
        else:
            pairs.extend(_render_warnings(shot))
    cost = sum((Decimal(shot.cost) for shot in known), Decimal(0))
    whole = len(known) == len(walked) == stamped  # keys are unique: each one found once
    settled = Settled(sum(len(shot.ids) for shot in known), cost, pairs, whole)
    warnings = _warnings(pairs, orphans)
    facts = (project.loaded, project.lock_file, lock, items, orphans, warnings, followups)
    return Plan(*facts, project.remote, settled=settled)


def _named_files(specs: Iterable[RenderSpec]) -> Iterator[str]:
    """Every text in the renders' fields and their outputs, as written and normalised: the
    files their plan asks the hash cache for (`AssetStore.only`), and more."""
    for spec in specs:
        yield str(spec.output)
        for value in spec.fields.values():
            for text in value if isinstance(value, list) else [value]:
                if isinstance(text, str):
                    yield text
                    yield posixpath.normpath(text)


def _shared_store(loaded: LoadedManifest, remote: str | None) -> RemoteUrl | None:
    """`remote.resolve_remote`: the override over the manifest's `remote` (refused when
    malformed); None, without loading the store's module, when neither names one."""
    if remote is None and loaded.manifest.remote is None:
        return None
    from kling_batch.remote import resolve_remote

    return resolve_remote(loaded.manifest.remote, remote, file=loaded.path)


def _expand_all(
    loaded: LoadedManifest, store: AssetStore, cache: PlanCache
) -> tuple[Templates | None, list[_Shot]]:
    """Every shot, from the plan cache or expanded now, in manifest order, and the
    template engine if a shot was expanded (the expansion's claims of ids and outputs,
    100,000 of each at scale, are let go with it)."""
    expansion = Expansion(loaded, is_dir=store.is_dir)
    shots = [_expand(shot, loaded, store, cache, expansion) for shot in loaded.shots]
    return expansion.templates, shots


def _selection(
    shots: Sequence[_Shot], only: Iterable[str], force: Iterable[str]
) -> tuple[list[str], list[str]]:
    """`--only` and `--force` patterns, each refused (exit 2) when it matches no render."""
    only, force = list(only), list(force)
    if only or force:
        candidates = [candidate for shot in shots for candidate in shot.ids()]
        require_matches(only, candidates, "--only")
        require_matches(force, candidates, "--force")
    return only, force


@dataclass
class _Shot:
    """One shot of the manifest while planning: its renders, each from the plan cache or a
    spec to plan (`start`: the index of its first render, as the cache keeps it: None when
    no template of it reads `shot`; `whole`: every render came from the cache)."""

    key: str
    start: int | None
    items: list[PlannedRender | RenderSpec] = field(default_factory=list)
    whole: bool = False

    def render_ids(self) -> list[str]:
        """The id of each render."""
        return [item.id for item in self.items]

    def ids(self) -> list[tuple[str, tuple[str, ...]]]:
        """(id, tags) of each render."""
        return [(item.id, item.tags) for item in self.items]


def _expand(
    sourced: SourcedShot,
    loaded: LoadedManifest,
    store: AssetStore,
    cache: PlanCache,
    expansion: Expansion,
) -> _Shot:
    """A shot's renders from the plan cache when nothing they came from changed (those
    whose assets changed as specs to plan again), else its specs, expanded now."""
    key, start = cache.key(loaded, sourced), expansion.index
    if not sourced.shot.enabled:
        return _Shot(key, None, whole=True)
    hit = cache.get(key, start)
    items = decode(hit, store, sourced.file) if hit is not None else None
    fine = items is not None and all(expansion.dirs.still_fine(i.output) for i in items)
    if hit is not None and items is not None and fine:
        expansion.claim(sourced, [(item.id, item.output) for item in items])
        whole = all(isinstance(item, PlannedRender) for item in items)
        if whole:
            cache.reuse(key, hit)
        return _Shot(key, hit.start, items, whole)
    expansion.renderer.reads_shot = False
    specs: list[PlannedRender | RenderSpec] = list(expansion.shot(sourced))
    return _Shot(key, start if expansion.renderer.reads_shot else None, specs)


def _planned(
    shots: Sequence[_Shot],
    store: AssetStore,
    cache: PlanCache,
    chosen: Callable[[str, tuple[str, ...]], bool],
) -> list[PlannedRender]:
    """Every chosen render, planned (or from the cache); a shot planned whole is cached."""
    renders: list[PlannedRender] = []
    for shot in shots:
        picked = [item for item in shot.items if chosen(item.id, item.tags)]
        planned = [i if isinstance(i, PlannedRender) else plan_render(i, store) for i in picked]
        renders.extend(planned)
        if not shot.whole and len(planned) == len(shot.items):
            fresh = sum(not isinstance(item, PlannedRender) for item in picked)
            cache.learn(shot.key, shot.start, planned, fresh)
    return renders


class _ProjectFiles:
    """`FileFacts` of a project: file hashes from the asset store's stat cache, and the
    render cache's index. `api` may be what tells the API, asked only when the index has a
    render to restore (telling it may load the HTTP client: most plans never ask)."""

    def __init__(self, store: AssetStore, lock_file: Path, api: ApiOf) -> None:
        self.store = store
        self.lock_file = lock_file
        self._api = api
        self._urls: ResultUrls | None = None

    @cached_property
    def api(self) -> str | None:
        """The API whose renders restore from the cache index or the URL store."""
        return self._api() if callable(self._api) else self._api

    def relative_hash(self, relative: str) -> tuple[str, int] | None:
        return self.store.relative_hash(relative)

    def remembered_render(self, fingerprint: str) -> tuple[str, int] | None:
        # Most renders to make have no index entry: the API (which may take loading the
        # HTTP client to tell) is asked only when one has.
        state = self.store.state
        if state.remembered_render(self.lock_file, fingerprint) is None or self.api is None:
            return None
        return state.remembered_render(self.lock_file, fingerprint, self.api)

    @cached_property
    def _remembered_jobs(self) -> frozenset[str]:
        """The fingerprints (untagged) with a job remembered for this lockfile: one listing
        of the folder, so a plan of thousands of new renders reads no file for each."""
        return remembered_jobs(self.store.state, self.lock_file)

    def remembered_job(self, fingerprint: str) -> RememberedJob | None:
        # Asked only for a render to pay for; the API only if a job is remembered.
        if untagged(fingerprint) not in self._remembered_jobs:
            return None
        job = read_job(self.store.state, self.lock_file, fingerprint)
        if job is None or self.api is None or job.api != self.api:
            return None
        return job

    def result_url(self, sha256: str) -> KnownUrl | None:
        if self._urls is None:  # read only when a restore is in question
            self._urls = ResultUrls(self.store.state.result_urls(self.lock_file))
        known = self._urls.get(sha256)
        return known if known is not None and known.api == self.api else None


def _for_emulator(loaded: LoadedManifest, emulator: bool) -> LoadedManifest:
    """The manifest; for the emulator, with outputs in `<output_dir>-emulator`."""
    if not emulator:
        return loaded
    output_dir = loaded.manifest.output_dir.rstrip("/") + "-emulator"
    manifest = loaded.manifest.model_copy(update={"output_dir": output_dir})
    return replace(loaded, manifest=manifest)


def _chosen_ids(lock: LockRecords, only: Sequence[str]) -> Callable[[str, tuple[str, ...]], bool]:
    """Which renders `--only` selects (by id glob or `tag:NAME`), plus every render whose
    job may be paid for: those are always followed, whatever `--only` says."""
    unsettled = {key for key, entry in lock.shots.items() if entry.state in UNSETTLED}

    def chosen(render_id: str, tags: tuple[str, ...]) -> bool:
        return not only or matches_any(render_id, tags, only) or render_id in unsettled

    return chosen


def _orphans(lock: LockRecords, ids: frozenset[str], *, adopted: Mapping[str, str]) -> list[Orphan]:
    """Lockfile entries whose render is no longer in the manifest (and whose job no render
    of the manifest takes over)."""
    gone = sorted(key for key in lock.shots if key not in ids and key not in adopted)
    return [Orphan(key, lock.shots[key].state, lock.shots[key].output) for key in gone]


def _render_warnings(renders: Sequence[PlannedRender]) -> list[tuple[str, str]]:
    return [(render.id, text) for render in renders for text in render.warnings]


def _warnings(pairs: Iterable[tuple[str, str]], orphans: Sequence[Orphan]) -> list[str]:
    warnings = [f"{render_id}: {text}" for render_id, text in pairs]
    warnings.extend(stray_warning(o.id, o.state) for o in orphans if o.state in UNSETTLED)
    return warnings


def stray_warning(render_id: str, state: str) -> str:
    """What the plan, its reports and the run say of an orphaned job that may be paid for."""
    return (
        f"{render_id}: removed from the manifest while its job is {state} (it may be paid "
        "for); the run follows it to its end and keeps the video in the render cache "
        "(no new cost; put the shot back to get it as an output)"
    )


def stray_item(render_id: str, entry: EntryRecord) -> PlanItem:
    """A run's follow-up of an orphaned entry: its job followed to its end, no new cost."""
    request = entry.request
    tier = str(request.get("model_tier", "pro"))
    workflow = str(request.get("workflow", "t2v"))
    video_input = workflow == "video_edit" or bool(request.get("reference_videos"))
    row = select_row(tier, video_input=video_input, sound=bool(request.get("sound", True)))
    seconds = entry.cost_usd / row.rate if row.rate else Decimal(0)
    render = PlannedRender(
        id=render_id,
        shot=entry.shot,
        take=entry.take,
        fields_data=request,
        body_data=request,
        assets={},
        workflow=workflow,  # type: ignore[arg-type]
        price=Price(row, seconds, entry.cost_usd),
        fingerprint=entry.fingerprint,
        output=PurePosixPath(entry.output),
        tags=tuple(entry.tags),
        assumptions=(),
        warnings=(),
        model=_stray_request(request),
    )
    action: Action = "resume" if entry.state in ("submitted", "completed") else "uncertain"
    reason = stray_warning(render_id, entry.state).partition(": ")[2]
    return PlanItem(render, action, (reason,), stray=True)


def _stray_request(request: Mapping[str, Any]) -> KlingO3Request:
    """The recorded request as a model (for its tier and settings); a lenient reading."""
    fields = {k: v for k, v in request.items() if k in KlingO3Request.model_fields}
    try:
        return KlingO3Request.model_validate(fields)
    except ValidationError:  # an older record: only its tier matters to a follow-up
        tier = fields.get("model_tier")
        return KlingO3Request(prompt="-", model_tier=tier if tier in ("standard", "4k") else "pro")


def plan_render(spec: RenderSpec, store: AssetStore) -> PlannedRender:
    """Validate one RenderSpec against the kling-o3 schema, resolve its assets and price it."""

    def fail(message: str, field_name: str | None) -> UserError:
        return UserError(message, file=spec.file, shot=spec.id, field=field_name)

    request, workflow, scenes, warnings = _validated(spec, fail)
    assets = _resolve_assets(request, store, fail)
    warnings.extend(_asset_warnings(assets))
    warnings.extend(_reference_video_warnings(assets, store, fail))
    assumptions: list[str] = []
    if workflow == "video_edit":
        seconds = _video_edit_seconds(request, assets["video"], store, fail, warnings, assumptions)
    else:
        seconds = _scene_seconds(scenes, request, warnings)
    video_input = kling_o3.has_video_input(request, workflow)
    priced = price(
        request.model_tier, video_input=video_input, sound=request.sound, seconds=seconds
    )
    body = kling_o3.wire_request(request, workflow, scenes)  # the prompt parsed once
    sent = {key: asset for key, asset in assets.items() if key.partition(".")[0] in body}
    unsent = {k: a for k, a in assets.items() if k not in sent and a.kind == "local"}
    return PlannedRender(
        id=spec.id,
        shot=spec.shot,
        take=spec.take,
        fields_data=spec.fields,
        body_data=body,
        assets=sent,
        workflow=workflow,
        price=priced,
        fingerprint=render_fingerprint(body, sent, spec.take),
        output=spec.output,
        tags=spec.tags,
        assumptions=tuple(assumptions),
        warnings=tuple(warnings),
        model=request,
        unsent=unsent,
    )


def render_fingerprint(body: Mapping[str, Any], assets: Mapping[str, Asset], take: int) -> str:
    """The model, the request with each local asset as its content hash, and the take."""
    media = {key: asset.identity for key, asset in assets.items()}
    return kling_o3.request_fingerprint(body, media, take)


_Fail = Callable[[str, str | None], UserError]


def _validated(
    spec: RenderSpec, fail: _Fail
) -> tuple[KlingO3Request, kling_o3.ResolvedWorkflow, list[kling_o3.Scene], list[str]]:
    """The request, its resolved workflow and scenes, and the rules' warnings."""
    try:
        request = KlingO3Request.model_validate(spec.fields)
    except ValidationError as exc:
        raise validation_error(exc, file=spec.file, shot=spec.id) from None
    workflow = kling_o3.resolve_workflow(request)
    try:
        scenes = kling_o3.parse_scenes(request.prompt)
        warnings = kling_o3.check_rules(request, workflow)
    except RequestRuleError as exc:
        raise fail(str(exc), exc.field) from None
    return request, workflow, scenes, warnings


def _scene_seconds(
    scenes: list[kling_o3.Scene], request: KlingO3Request, warnings: list[str]
) -> Decimal:
    seconds = kling_o3.scene_seconds(scenes, request.duration)
    if len(scenes) > 1 and seconds > kling_o3.MAX_SECONDS:
        warnings.append(
            f"{len(scenes)} scenes total {_secs(seconds)}, over the model's 15s; the API may "
            "refuse or shorten it"
        )
    return seconds


def _reference_video_warnings(
    assets: Mapping[str, Asset], store: AssetStore, fail: _Fail
) -> list[str]:
    warnings = []
    for key, asset in assets.items():
        if asset.kind == "local" and key.startswith("reference_videos"):
            length = _seconds_of(store, asset, fail, key)
            if length > kling_o3.VIDEO_INPUT_CAP_SECONDS:
                warnings.append(
                    f"{asset.ref} is {_secs(length)}; reference videos are capped to 10s"
                )
    return warnings


def _resolve_assets(request: KlingO3Request, store: AssetStore, fail: _Fail) -> dict[str, Asset]:
    assets: dict[str, Asset] = {}
    for name in kling_o3.MEDIA_FIELDS:
        ref = getattr(request, name)
        if ref:
            try:
                assets[name] = store.resolve(ref)
            except AssetProblem as exc:
                raise fail(str(exc), name) from None
    for name in kling_o3.MEDIA_LIST_FIELDS:
        for index, ref in enumerate(getattr(request, name) or ()):
            try:
                assets[f"{name}.{index}"] = store.resolve(ref)
            except AssetProblem as exc:
                raise fail(str(exc), f"{name}[{index}]") from None
    return assets


def _asset_warnings(assets: Mapping[str, Asset]) -> list[str]:
    """The inferred input limits (API reference §7): file types and sizes."""
    warnings = []
    for key, asset in assets.items():
        if asset.kind != "local" or asset.location is None or asset.size is None:
            continue
        is_video = key == "video" or key.startswith("reference_videos")
        suffixes, limit = (
            (_VIDEO_SUFFIXES, _VIDEO_MAX_BYTES) if is_video else (_IMAGE_SUFFIXES, _IMAGE_MAX_BYTES)
        )
        kind = "video" if is_video else "image"
        # A str path: a Path per input cost more than this check (issue 13).
        suffix = os.path.splitext(asset.location)[1]  # noqa: PTH122 - hot path
        if suffix.lower() not in suffixes:
            allowed = ", ".join(sorted(suffixes))
            warnings.append(f"{asset.ref}: {kind} inputs are believed to be {allowed} only")
        if asset.size > limit:
            warnings.append(
                f"{asset.ref} is {asset.size / 1e6:.1f} MB; {kind} inputs are believed to be "
                f"limited to {limit // (1024 * 1024)} MB"
            )
    return warnings


def _seconds_of(store: AssetStore, asset: Asset, fail: _Fail, field_name: str) -> Decimal:
    try:
        return store.video_seconds(asset)
    except AssetProblem as exc:
        raise fail(str(exc), field_name) from None


def _video_edit_seconds(
    request: KlingO3Request,
    video: Asset,
    store: AssetStore,
    fail: _Fail,
    warnings: list[str],
    assumptions: list[str],
) -> Decimal:
    """Billed seconds of an edit: the source's length, capped at 10 s."""
    cap = Decimal(kling_o3.VIDEO_INPUT_CAP_SECONDS)
    if video.kind != "local":
        # The edit bills the clip's own length, up to the cap, whatever `duration` says: an
        # unknown length is priced at the most it can cost, never less.
        assumptions.append(f"remote video: length unknown, priced at the {cap}s cap")
        return cap
    length = _seconds_of(store, video, fail, "video")
    if length > cap:
        warnings.append(
            f"{video.ref} is {_secs(length)}; video_edit uses (and bills) the first {cap}s"
        )
    return min(length, cap)


def _secs(seconds: Decimal) -> str:
    return f"{seconds.normalize():f}s"
