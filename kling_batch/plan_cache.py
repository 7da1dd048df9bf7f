"""The plan cache: each shot's planned renders, reused while nothing they came from changed.

Expanding, validating, pricing and fingerprinting 10,000 renders takes seconds; a plan
run on every save must take a fraction of one (issue 13). So `plan` keeps each shot's
renders (ids, request fields and body, assets, price, fingerprint, output, warnings) in
`.kling-batch/<lockfile name>.plan.json` and reuses them while all of these are the same:

- the shot's source: the digest of its TOML table (`kling_batch.manifest_cache`) or of
  its data, the file it is in and its place there;
- everything shared (the context key): kling-batch's version and the stat facts of its
  modules, the model data (prices, rules), the project's folder, and the manifest's head
  (name, output folder, vars, defaults);
- the template partials any shot included: each must still hold what it held (read
  again, cheaply, by `kling_batch.partials`), or nothing in the cache is used;
- the index of its first render, when one of its templates reads `shot` (or includes a
  partial, which may);
- each local asset's content: resolved again through the asset store (a `stat`, the hash
  cache), compared with the hash the renders were planned with; so is each local input
  the manifest names but the workflow does not send (its length and size are read);
- each output path's folder and kind (not a folder; its folder does not lead out).

Any difference plans the shot from scratch, as without a cache. The cache records facts
about renders, never decisions: every action is decided afresh from the lockfile and
the files. Like every cache it may be damaged or missing (`kling_batch.cachefile`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path, PurePosixPath
from typing import Any

from kling_batch.assets import Asset, AssetStore
from kling_batch.cachefile import (
    Blob,
    BlobWriter,
    Cold,
    read_cache,
    tool_identity,
    worth_rewriting,
    write_cache,
)
from kling_batch.canonical import text_digest
from kling_batch.errors import AssetProblem
from kling_batch.expand import RenderSpec
from kling_batch.manifest import LoadedManifest, ShotPlace, SourcedShot, display_path
from kling_batch.partials import partial_digest
from kling_batch.planned import Deferred, PlannedRender
from kling_batch.pricing import Price, price_rows

_VERSION = "plan-units-8"


def context_key(loaded: LoadedManifest) -> str:
    """What every shot's renders depend on besides the shot itself."""
    head = loaded.manifest.model_dump(mode="python", exclude={"shots", "include"})
    shared = {"tool": tool_identity(), "root": str(loaded.root.resolve()), "head": head}
    # Key order is kept: a table's order is what `.items()` or `{{ table }}` renders.
    return text_digest(_keyed(shared))


@dataclass(frozen=True, slots=True)
class CachedShot:
    """A shot's renders as the cache holds them: what renders share (`common`: take,
    workflow, price, tags, notes and assets, once per distinct combination) and each
    render's own (id, shot id, fingerprint, output, its `common`, where its fields and body
    lie in the blob); and the render index they started at (None when no template reads
    it)."""

    start: int | None
    common: Sequence[Sequence[Any]]
    renders: Sequence[Sequence[Any]]
    blob: Blob


class UnitKeys:
    """Each shot's identity, for the plan cache and the up-to-date stamp: its source's
    digest, its file and its place there."""

    def __init__(self) -> None:
        self._shown: dict[Path, str] = {}

    def key(self, loaded: LoadedManifest, sourced: SourcedShot | ShotPlace) -> str:
        """`digest|file|index` of one shot."""
        return self.key_at(loaded.root, sourced)

    def key_at(self, root: Path, sourced: SourcedShot | ShotPlace) -> str:
        """`key` of a shot of the manifest in the folder `root`."""
        if isinstance(sourced, ShotPlace) or sourced.digest is not None:
            digest = sourced.digest
        else:  # not read through the TOML parse cache: digest its data
            data = sourced.shot.model_dump(mode="python")
            digest = text_digest(_keyed(data))  # order matters: see `context_key`
        shown = self._shown.get(sourced.file)
        if shown is None:
            shown = self._shown[sourced.file] = display_path(root, sourced.file)
        return f"{digest}|{shown}|{sourced.index}"


class PlanCache:
    """The plan cache of one lockfile's plans (see the module docstring)."""

    def __init__(self, path: Path | None, context: str, root: Path) -> None:
        self.path = path
        self.root = root.resolve()
        cached = read_cache(path, _VERSION) if path is not None else None
        data, blob = cached if cached is not None else ({}, Blob(None, 0))
        if data.get("context") != context or not self._intact(data):
            data = {"units": {}, "partials": {}}
        self.context = context
        self._units: dict[str, Any] = data["units"]
        self._read = set(self._units)
        self._blob = blob
        self.partials: dict[str, str] = data["partials"]
        self._kept: dict[str, tuple[int | None, Sequence[PlannedRender]] | CachedShot] = {}
        self._fresh = 0  # renders planned from scratch
        self._keys = UnitKeys()

    def key(self, loaded: LoadedManifest, sourced: SourcedShot) -> str:
        """A shot's identity in the cache (`UnitKeys`)."""
        return self._keys.key(loaded, sourced)

    def _intact(self, data: Mapping[str, Any]) -> bool:
        units, partials = data.get("units"), data.get("partials")
        if not isinstance(units, dict) or not isinstance(partials, dict):
            return False
        return all(partial_digest(self.root, name) == got for name, got in partials.items())

    def get(self, key: str, start: int) -> CachedShot | None:
        """The cached renders of a shot whose first render would have index `start` (each
        shot is asked for once: its record leaves memory with the answer)."""
        unit = self._units.pop(key, None)
        if not isinstance(unit, dict):
            return None
        first, common, renders = unit.get("start"), unit.get("common"), unit.get("renders")
        if (first is not None and first != start) or not isinstance(renders, list):
            return None
        if not isinstance(common, list):
            return None
        return CachedShot(first, common, renders, self._blob)

    def keep(self, key: str, start: int | None, renders: Sequence[PlannedRender]) -> None:
        """Keep a shot's renders for the next plan: reused (`start` as the cache had it) or
        planned from scratch (`start` None when its templates do not read the index)."""
        self._kept[key] = (start, renders)

    def reuse(self, key: str, shot: CachedShot) -> None:
        """Keep a shot reused whole from the cache for the next plan, as the cache has it
        (copied into the next cache file without re-encoding its renders)."""
        self._kept[key] = shot

    def learn(
        self, key: str, start: int | None, renders: Sequence[PlannedRender], fresh: int
    ) -> None:
        """Remember a shot planned (`fresh` of its renders from scratch)."""
        self.keep(key, start, renders)
        self._fresh += fresh

    def save(self, partials: Mapping[str, str]) -> None:
        """Write the shots of this plan (and only those) when enough renders were planned
        from scratch, or enough cached shots went unused (`cachefile.worth_rewriting`)."""
        if self.path is None:
            return
        merged = {**self.partials, **partials}
        unused = len(self._read.difference(self._kept))
        if not worth_rewriting(self._fresh + unused, self._size()):
            return
        blob, copies = BlobWriter(), _Copies()
        units = {}
        for key, kept in self._kept.items():
            if isinstance(kept, CachedShot):
                units[key] = copies.add(kept, blob)
            else:
                copies.flush(blob)  # its texts go before this shot's
                units[key] = _encode(*kept, blob)
        copies.flush(blob)
        payload = {"context": self.context, "partials": merged, "units": units}
        write_cache(self.path, _VERSION, payload, blob)

    def _size(self) -> int:
        """How many renders the shots kept for the next plan hold."""
        return sum(
            len(kept.renders) if isinstance(kept, CachedShot) else len(kept[1])
            for kept in self._kept.values()
        )


class _Copies:
    """Reused shots copied into a new cache: each keeps its record, its texts' offsets
    moved to where they land in the new blob. Shots read in the order they were written
    lie next to each other in the old blob: their texts are copied in one read per run of
    adjacent bytes (at most `_RUN` bytes), not one per text. Nothing else may be added to
    the new blob while a run is open: `flush` first."""

    _RUN = 8 << 20

    def __init__(self) -> None:
        self._blob: Blob | None = None
        self._start = self._end = self._base = 0  # the run: old [start, end) → new base

    def add(self, shot: CachedShot, blob: BlobWriter) -> dict[str, Any]:
        """`shot`'s record for the new cache; its texts are copied by `flush`."""
        rows = shot.renders
        if not rows:
            return {"start": shot.start, "common": shot.common, "renders": []}
        first = min(min(row[5], row[7]) for row in rows)
        end = max(max(row[5] + row[6], row[7] + row[8]) for row in rows)
        joins = shot.blob is self._blob and first == self._end and end - self._start <= self._RUN
        if not joins:
            self.flush(blob)
            self._blob, self._start, self._base = shot.blob, first, blob.size
        self._end = end
        shift = self._base - self._start
        moved = [[*row[:5], row[5] + shift, row[6], row[7] + shift, row[8]] for row in rows]
        return {"start": shot.start, "common": shot.common, "renders": moved}

    def flush(self, blob: BlobWriter) -> None:
        """Copy the open run's texts into `blob` (where `add` said they would land)."""
        if self._blob is not None:
            assert blob.size == self._base, "the new blob grew while a run was open"
            blob.add(self._blob.read(self._start, self._end - self._start))
        self._blob, self._start, self._end, self._base = None, 0, 0, 0


def _encode(start: int | None, renders: Sequence[PlannedRender], blob: BlobWriter) -> Any:
    """A shot's renders as the cache keeps them (`CachedShot`)."""
    common: dict[tuple[Any, ...], int] = {}
    rows = []
    for render in renders:
        shared = (
            render.take,
            render.workflow,
            str(render.price.cost),
            str(render.price.seconds),
            price_rows().index(render.price.row),
            render.tags,
            render.assumptions,
            render.warnings,
            _assets(render.assets),
            _assets(render.unsent),
        )
        index = common.setdefault(shared, len(common))
        fields, body = blob.add(_text(render.fields_data)), blob.add(_text(render.body_data))
        row = [render.id, render.shot, render.fingerprint, str(render.output), index]
        rows.append([*row, *fields, *body])
    return {"start": start, "common": list(common), "renders": rows}


def _assets(assets: Mapping[str, Asset]) -> tuple[tuple[Any, ...], ...]:
    return tuple((key, a.ref, a.kind, a.sha256, a.size) for key, a in assets.items())


def _text(value: Mapping[str, Any] | Deferred) -> bytes:
    return value.read() if not isinstance(value, Mapping) else json.dumps(value).encode()


def decode(
    shot: CachedShot, store: AssetStore, file: Path
) -> list[PlannedRender | RenderSpec] | None:
    """A cached shot's renders; as a spec to plan again, each render one of whose local
    assets is no longer what it was planned with (what templates made of it does not
    depend on what its assets hold). None for a record this version did not write."""
    try:
        commons = [_common(values, store) for values in shot.common]
        renders: list[PlannedRender | RenderSpec] = []
        shot_ids: dict[str, str] = {}  # one string per shot id, not one per render
        for id_, shot_text, fingerprint, output, index, *where in shot.renders:
            shot_id = shot_ids.setdefault(shot_text, shot_text)
            common = commons[index]
            if common is None:
                take, tags = shot.common[index][0], shot.common[index][5]
                fields = json.loads(Cold(shot.blob, where[0], where[1]).read())
                path = PurePosixPath(output)
                renders.append(RenderSpec(id_, shot_id, take, fields, path, tuple(tags), file))
                continue
            renders.append(
                PlannedRender(
                    id=id_,
                    shot=shot_id,
                    fingerprint=fingerprint,
                    output=PurePosixPath(output),
                    fields_data=Cold(shot.blob, where[0], where[1]),
                    body_data=Cold(shot.blob, where[2], where[3]),
                    **common,
                )
            )
        return renders
    except (TypeError, ValueError, LookupError, ArithmeticError):
        return None  # a cache, not a record: a record of another shape is no record


def _common(values: Sequence[Any], store: AssetStore) -> dict[str, Any] | None:
    """What renders share, as `PlannedRender` fields; None when an asset changed (one
    sent, or one named but not sent: its length and size are still read)."""
    take, workflow, cost, seconds, row, tags, assumptions, warnings, sent, named = values
    assets, unsent = _resolved(sent, store), _resolved(named, store)
    if assets is None or unsent is None:
        return None
    return {
        "take": take,
        "workflow": workflow,
        "price": Price(price_rows()[row], Decimal(seconds), Decimal(cost)),
        "tags": tuple(tags),
        "assumptions": tuple(assumptions),
        "warnings": tuple(warnings),
        "assets": assets,
        "unsent": unsent,
    }


def _resolved(assets: Sequence[Sequence[Any]], store: AssetStore) -> dict[str, Asset] | None:
    """Cached assets resolved again; None when one is no longer what it was."""
    resolved = {}
    for key, ref, kind, sha256, size in assets:
        asset = _asset(store, ref, kind, sha256, size)
        if asset is None:
            return None
        resolved[key] = asset
    return resolved


def _asset(
    store: AssetStore, ref: str, kind: str, sha256: str | None, size: int | None
) -> Asset | None:
    if kind != "local":
        return Asset(ref, "https" if kind == "https" else "bunny")
    try:
        asset = store.resolve_local(ref)
    except AssetProblem:
        return None
    return asset if asset.sha256 == sha256 and asset.size == size else None


def _keyed(value: Any) -> str:
    """A value's text for a cache key: Python's `repr`, which keeps a table's key order and
    tells a TOML date from a string that reads like one (JSON with typed values as tagged
    strings did not: `launch = 2024-06-01` and the string of its tag had one key)."""
    return repr(value)
