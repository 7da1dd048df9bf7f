"""Planning: RenderSpecs validated, priced and fingerprinted, then compared with the lockfile.

First the facts (each render's request, its assets' hashes and lengths, its price and
fingerprint), then the decisions (`Differ`: each render's action from those facts, the
lockfile, the outputs' hashes and `now`). No network, and the clock only as the `now`
argument: `plan` is exactly what `run` does. It writes only caches in the state folder
(`kling_batch.state`): the input hash cache and the lockfile's parse cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from kling_batch import kling_o3
from kling_batch.actions import Differ, FileFacts, change_reasons
from kling_batch.assets import Asset, AssetStore
from kling_batch.errors import AssetProblem, RequestRuleError, UserError, validation_error
from kling_batch.expand import RenderSpec, expand_shots
from kling_batch.kling_o3 import KlingO3Request
from kling_batch.limits import MAX_RENDERS
from kling_batch.lockfile import UNSETTLED, Entry, Lockfile, lock_path, read_lockfile
from kling_batch.manifest import LoadedManifest, load_manifest
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
from kling_batch.remote import RemoteUrl, resolve_remote
from kling_batch.selection import matches_any, require_matches
from kling_batch.urls import KnownUrl, ResultUrls

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


@dataclass(frozen=True)
class Plan:
    """The whole plan for one manifest."""

    loaded: LoadedManifest
    lock_path: Path
    lock: Lockfile
    items: Sequence[PlanItem]
    orphans: Sequence[Orphan]
    warnings: Sequence[str] = field(default_factory=list)
    # Orphaned entries whose job may be paid for: followed to their end by a run, their
    # videos kept in the render cache (no new cost; not counted among the renders).
    followups: Sequence[PlanItem] = ()
    # The team's shared store (`kling_batch.remote`), if one is configured.
    remote: RemoteUrl | None = None

    @property
    def has_work(self) -> bool:
        """True when a run would do anything at all."""
        return bool(self.followups) or any(i.action != "unchanged" for i in self.items)

    @property
    def totals(self) -> Totals:
        """Counts and costs; `to_run_cost` sums only what the run would pay for."""
        by_action: dict[str, int] = dict.fromkeys(ACTIONS, 0)
        for item in self.items:
            by_action[item.action] += 1
        paid = [item for item in self.items if item.paid]
        return Totals(
            renders=len(self.items),
            to_run=len(paid),
            cost=sum((item.render.cost for item in self.items), Decimal(0)),
            to_run_cost=sum((item.render.cost for item in paid), Decimal(0)),
            by_action=by_action,
        )

    @property
    def budget(self) -> Decimal | None:
        """The manifest's `budget_usd`, if any."""
        return self.loaded.manifest.budget_usd

    @property
    def over_budget(self) -> bool:
        """True when the cost to run exceeds the manifest's budget."""
        return self.budget is not None and self.totals.to_run_cost > self.budget


def build_plan(
    manifest_path: Path,
    *,
    now: datetime,
    only: Iterable[str] = (),
    force: Iterable[str] = (),
    lockfile: Path | None = None,
    emulator: bool = False,
    max_renders: int = MAX_RENDERS,
    api: str | None = None,
    remote: str | None = None,
) -> Plan:
    """Load, expand, validate, price and diff one manifest against its lockfile.

    `emulator`: renders of the bundled emulator (their own lockfile and output folder).
    `api`: the API the run would use (`endpoint.api_identity`); only its renders restore
    from the cache index or the URL store (None: none do). `remote` overrides the
    manifest's shared store, whose renders (as the lockfile records them) restore free.
    """
    loaded = _load(manifest_path, emulator=emulator)
    shared = resolve_remote(loaded.manifest.remote, remote, file=loaded.path)
    lock_file = lockfile or lock_path(loaded.path, emulator=emulator)
    store = AssetStore(loaded.root)
    store.state.check()
    specs = expand_shots(loaded, max_renders=max_renders)
    only, force = _selection(specs, only, force)
    lock, save_lock_cache = read_lockfile(lock_file, cache=store.state.lock_cache(lock_file))
    # The facts first: every render validated, its assets hashed and probed, priced.
    renders = [plan_render(spec, store) for spec in _chosen(specs, lock, only)]
    # Then the decisions, from those facts, the lockfile, the files' hashes and `now`.
    differ = Differ(
        lock,
        _ProjectFiles(store, lock_file, api),
        now,
        root=loaded.root,
        state=store.state,
        ids={spec.id for spec in specs},
        renders=renders,
        forced={r.id for r in renders if matches_any(r.id, r.tags, force)},
        remote=shared is not None,  # renders the lockfile says the store holds restore
    )
    items = [differ.item(r) for r in renders]
    orphans = _orphans(lock, set(differ.ids), adopted=differ.adopted)
    followups = [stray_item(key, lock.shots[key]) for key in differ.strays()]
    # Written last, so a manifest error above leaves nothing behind. Neither is needed:
    # a read-only checkout plans without them (only slower next time).
    save_lock_cache()
    store.save()
    warnings = _warnings(renders, orphans)
    return Plan(loaded, lock_file, lock, items, orphans, warnings, followups, shared)


class _ProjectFiles:
    """`FileFacts` of a project: file hashes from the asset store's stat cache, and the
    render cache's index."""

    def __init__(self, store: AssetStore, lock_file: Path, api: str | None) -> None:
        self.store = store
        self.lock_file = lock_file
        self.api = api
        self._urls: ResultUrls | None = None

    def relative_hash(self, relative: str) -> tuple[str, int] | None:
        return self.store.relative_hash(relative)

    def remembered_render(self, fingerprint: str) -> tuple[str, int] | None:
        if self.api is None:
            return None
        return self.store.state.remembered_render(self.lock_file, fingerprint, self.api)

    def result_url(self, sha256: str) -> KnownUrl | None:
        if self._urls is None:  # read only when a restore is in question
            self._urls = ResultUrls(self.store.state.result_urls(self.lock_file))
        known = self._urls.get(sha256)
        return known if known is not None and known.api == self.api else None


def _selection(
    specs: Sequence[RenderSpec], only: Iterable[str], force: Iterable[str]
) -> tuple[list[str], list[str]]:
    """`--only` and `--force` patterns, each refused (exit 2) when it matches no render."""
    only, force = list(only), list(force)
    candidates = [(spec.id, spec.tags) for spec in specs]
    require_matches(only, candidates, "--only")
    require_matches(force, candidates, "--force")
    return only, force


def _load(manifest_path: Path, *, emulator: bool) -> LoadedManifest:
    """The manifest; for the emulator, with outputs in `<output_dir>-emulator`."""
    loaded = load_manifest(manifest_path)
    if not emulator:
        return loaded
    output_dir = loaded.manifest.output_dir.rstrip("/") + "-emulator"
    manifest = loaded.manifest.model_copy(update={"output_dir": output_dir})
    return replace(loaded, manifest=manifest)


def _chosen(specs: Sequence[RenderSpec], lock: Lockfile, only: Sequence[str]) -> list[RenderSpec]:
    """The renders `--only` selects (by id glob or `tag:NAME`), plus every render whose job
    may be paid for: those are always followed, whatever `--only` says."""
    unsettled = {key for key, entry in lock.shots.items() if entry.state in UNSETTLED}
    return [
        spec
        for spec in specs
        if not only or matches_any(spec.id, spec.tags, only) or spec.id in unsettled
    ]


def _orphans(lock: Lockfile, ids: set[str], *, adopted: Mapping[str, str]) -> list[Orphan]:
    """Lockfile entries whose render is no longer in the manifest (and whose job no render
    of the manifest takes over)."""
    return [
        Orphan(key, entry.state, entry.output)
        for key, entry in sorted(lock.shots.items())
        if key not in ids and key not in adopted
    ]


def _warnings(renders: Sequence[PlannedRender], orphans: Sequence[Orphan]) -> list[str]:
    warnings = [f"{r.id}: {text}" for r in renders for text in r.warnings]
    warnings.extend(stray_warning(o.id, o.state) for o in orphans if o.state in UNSETTLED)
    return warnings


def stray_warning(render_id: str, state: str) -> str:
    """What the plan, its reports and the run say of an orphaned job that may be paid for."""
    return (
        f"{render_id}: removed from the manifest while its job is {state} (it may be paid "
        "for); the run follows it to its end and keeps the video in the render cache "
        "(no new cost; put the shot back to get it as an output)"
    )


def stray_item(render_id: str, entry: Entry) -> PlanItem:
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
        request=_stray_request(request),
        body=request,
        assets={},
        workflow=workflow,  # type: ignore[arg-type]
        price=Price(row, seconds, entry.cost_usd),
        fingerprint=entry.fingerprint,
        output=PurePosixPath(entry.output),
        tags=tuple(entry.tags),
        assumptions=(),
        warnings=(),
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
    body = kling_o3.wire_request(request, workflow)
    sent = {key: asset for key, asset in assets.items() if key.partition(".")[0] in body}
    return PlannedRender(
        id=spec.id,
        shot=spec.shot,
        take=spec.take,
        request=request,
        body=body,
        assets=sent,
        workflow=workflow,
        price=priced,
        fingerprint=render_fingerprint(body, sent, spec.take),
        output=spec.output,
        tags=spec.tags,
        assumptions=tuple(assumptions),
        warnings=tuple(warnings),
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
        if asset.kind != "local" or asset.path is None or asset.size is None:
            continue
        is_video = key == "video" or key.startswith("reference_videos")
        suffixes, limit = (
            (_VIDEO_SUFFIXES, _VIDEO_MAX_BYTES) if is_video else (_IMAGE_SUFFIXES, _IMAGE_MAX_BYTES)
        )
        kind = "video" if is_video else "image"
        if asset.path.suffix.lower() not in suffixes:
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
