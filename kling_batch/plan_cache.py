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
  cache), compared with the hash the renders were planned with;
- each output path's folder and kind (not a folder; its folder does not lead out).

Any difference plans the shot from scratch, as without a cache. The cache records facts
about renders, never decisions: every action is decided afresh from the lockfile and
the files. Like every cache it may be damaged or missing (`kling_batch.cachefile`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

from kling_batch import __version__
from kling_batch.assets import Asset, AssetStore
from kling_batch.cachefile import read_cache, write_cache
from kling_batch.errors import AssetProblem
from kling_batch.manifest import LoadedManifest, SourcedShot
from kling_batch.model_data import data_file
from kling_batch.partials import partial_digest
from kling_batch.planned import PlannedRender
from kling_batch.pricing import Price, price_rows

_VERSION = "plan-units-2"
_PACKAGE = Path(__file__).resolve().parent


@cache
def tool_identity() -> str:
    """kling-batch's version, the size and time of each of its modules, and the model
    data's hash: what planning itself is made of."""
    modules = sorted(
        (entry.name, entry.stat().st_size, entry.stat().st_mtime_ns)
        for entry in os.scandir(_PACKAGE)
        if entry.name.endswith(".py")
    )
    model = hashlib.sha256(data_file("kling-o3.json").read_bytes()).hexdigest()
    return _digest(json.dumps([__version__, modules, model]))


def context_key(loaded: LoadedManifest) -> str:
    """What every shot's renders depend on besides the shot itself."""
    head = loaded.manifest.model_dump(mode="python", exclude={"shots", "include"})
    shared = {"tool": tool_identity(), "root": str(loaded.root.resolve()), "head": head}
    return _digest(json.dumps(shared, sort_keys=True, default=_typed))


@dataclass(frozen=True, slots=True)
class CachedShot:
    """A shot's renders as the cache holds them, and the render index they started at
    (None when no template of the shot reads it)."""

    start: int | None
    records: Sequence[Sequence[Any]]
    lines: Sequence[bytes]


# A cached shot to write: its first render's index and each render's record with the
# JSON texts of its fields and body.
_Unit = tuple[int | None, list[tuple[list[Any], bytes, bytes]]]


class PlanCache:
    """The plan cache of one lockfile's plans (see the module docstring)."""

    def __init__(self, path: Path | None, context: str, root: Path) -> None:
        self.path = path
        self.root = root.resolve()
        cached = read_cache(path, _VERSION) if path is not None else None
        data, lines = cached if cached is not None else ({}, [])
        if data.get("context") != context or not self._intact(data):
            data, lines = {"units": {}, "partials": {}}, []
        self.context = context
        self._units: dict[str, Any] = data["units"]
        self._lines = lines
        self.partials: dict[str, str] = data["partials"]
        self._kept: dict[str, _Unit] = {}
        self._learnt = False
        self._shown: dict[Path, str] = {}

    def key(self, loaded: LoadedManifest, sourced: SourcedShot) -> str:
        """A shot's identity in the cache: its source's digest, its file and place there."""
        digest = sourced.digest
        if digest is None:  # not read through the TOML parse cache: digest its data
            data = sourced.shot.model_dump(mode="python")
            digest = _digest(json.dumps(data, sort_keys=True, default=_typed))
        shown = self._shown.get(sourced.file)
        if shown is None:
            shown = self._shown[sourced.file] = loaded.display(sourced.file)
        return f"{digest}|{shown}|{sourced.index}"

    def _intact(self, data: Mapping[str, Any]) -> bool:
        units, partials = data.get("units"), data.get("partials")
        if not isinstance(units, dict) or not isinstance(partials, dict):
            return False
        return all(partial_digest(self.root, name) == got for name, got in partials.items())

    def get(self, key: str, start: int) -> CachedShot | None:
        """The cached renders of a shot whose first render would have index `start`."""
        unit = self._units.get(key)
        if not isinstance(unit, dict):
            return None
        first, records = unit.get("start"), unit.get("renders")
        if (first is not None and first != start) or not isinstance(records, list):
            return None
        return CachedShot(first, records, self._lines)

    def keep(self, key: str, shot: CachedShot) -> None:
        """Keep a reused shot for the next plan."""
        records = [(list(r[:-2]), self._lines[r[-2]], self._lines[r[-1]]) for r in shot.records]
        self._kept[key] = (shot.start, records)

    def learn(self, key: str, start: int | None, renders: Sequence[PlannedRender]) -> None:
        """Remember a shot planned from scratch (`start` None: its templates do not read
        the render index)."""
        self._kept[key] = (start, [encode(render) for render in renders])
        self._learnt = True

    def save(self, partials: Mapping[str, str]) -> None:
        """Write the shots of this plan (and only those) when anything changed."""
        if self.path is None:
            return
        merged = {**self.partials, **partials}
        if not self._learnt and len(self._kept) == len(self._units) and merged == self.partials:
            return
        units: dict[str, Any] = {}
        lines: list[bytes] = []
        for key, (start, records) in self._kept.items():
            hot = []
            for record, fields, body in records:
                hot.append([*record, len(lines), len(lines) + 1])
                lines.extend((fields, body))
            units[key] = {"start": start, "renders": hot}
        payload = {"context": self.context, "partials": merged, "units": units}
        write_cache(self.path, _VERSION, payload, lines)


def encode(render: PlannedRender) -> tuple[list[Any], bytes, bytes]:
    """A planned render as a JSON list and the JSON texts of its fields and body."""
    assets = [
        [key, asset.ref, asset.kind, asset.sha256, asset.size]
        for key, asset in render.assets.items()
    ]
    record = [
        render.id,
        render.shot,
        render.take,
        render.workflow,
        render.fingerprint,
        str(render.output),
        str(render.price.cost),
        str(render.price.seconds),
        price_rows().index(render.price.row),
        list(render.tags),
        list(render.assumptions),
        list(render.warnings),
        assets,
    ]
    return record, json.dumps(render.fields).encode(), json.dumps(render.body).encode()


def decode(
    record: Sequence[Any], store: AssetStore, lines: Sequence[bytes]
) -> PlannedRender | None:
    """A cached render, or None when one of its local assets is no longer what it was
    planned with (or the record is not one this version wrote)."""
    try:
        id_, shot, take, workflow, fingerprint, output, cost, seconds, row = record[:9]
        tags, assumptions, warnings, assets, fields, body = record[9:]
        resolved = {}
        for key, ref, kind, sha256, size in assets:
            asset = _asset(store, ref, kind, sha256, size)
            if asset is None:
                return None
            resolved[key] = asset
        return PlannedRender(
            id=id_,
            shot=shot,
            take=take,
            fields_data=lines[fields],
            body_data=lines[body],
            assets=resolved,
            workflow=workflow,
            price=Price(price_rows()[row], Decimal(seconds), Decimal(cost)),
            fingerprint=fingerprint,
            output=PurePosixPath(output),
            tags=tuple(tags) if tags else (),
            assumptions=tuple(assumptions) if assumptions else (),
            warnings=tuple(warnings) if warnings else (),
        )
    except (TypeError, ValueError, LookupError, ArithmeticError):
        return None  # a cache, not a record: a record of another shape is no record


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


def _typed(value: Any) -> str:
    """JSON for values JSON has no type for (TOML dates in vars): type and repr."""
    return f"{type(value).__name__}:{value!r}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
