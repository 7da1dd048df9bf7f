"""What a manifest holds, as `spend` and `gc` need it: render ids and local inputs, unplanned.

No assets are hashed and no request is validated: a manifest whose image went missing
still says which renders it has. A shot turned off with `enabled = false` is still in the
manifest (it is left out for now, not removed), so its renders count as present.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from kling_batch import kling_o3, safefiles
from kling_batch.expand import RenderSpec, expand_shots
from kling_batch.manifest import LoadedManifest, SourcedShot, load_manifest


@dataclass(frozen=True, slots=True)
class Inventory:
    """A manifest's render ids, the local files its renders read, and its output folder."""

    root: Path
    ids: frozenset[str]
    inputs: frozenset[Path]  # resolved paths of local media
    output_dir: str  # relative to `root`; `<output_dir>-emulator` for emulator renders


def read_inventory(manifest: Path, *, emulator: bool = False) -> Inventory:
    """The manifest's inventory; a manifest that does not load is a `UserError`."""
    loaded = load_manifest(manifest)
    specs = [*expand_shots(loaded), *_disabled_specs(loaded)]
    output_dir = loaded.manifest.output_dir
    if emulator:
        output_dir = output_dir.rstrip("/") + "-emulator"
    root = loaded.root.resolve()
    return Inventory(
        root=loaded.root,
        ids=frozenset(spec.id for spec in specs),
        inputs=frozenset((root / ref).resolve() for ref in _local_refs(specs)),
        output_dir=output_dir,
    )


def _disabled_specs(loaded: LoadedManifest) -> Iterator[RenderSpec]:
    """The renders of each disabled shot, expanded alone as if it were enabled (alone: a
    disabled shot may share its ids with an enabled alternative)."""
    for sourced in loaded.shots:
        if sourced.shot.enabled:
            continue
        shot = sourced.shot.model_copy(update={"enabled": True})
        alone = replace(loaded, shots=(SourcedShot(shot, sourced.file, sourced.index),))
        yield from expand_shots(alone)


def _local_refs(specs: Iterable[RenderSpec]) -> Iterator[str]:
    """Every media reference of `specs` that names a local file."""
    for spec in specs:
        for name in (*kling_o3.MEDIA_FIELDS, *kling_o3.MEDIA_LIST_FIELDS):
            value = spec.fields.get(name)
            if isinstance(value, str) and name in kling_o3.MEDIA_LIST_FIELDS:
                value = value.split(",")
            refs = value if isinstance(value, list) else [value]
            for ref in refs:
                if isinstance(ref, str) and _local(ref.strip()):
                    yield ref.strip()


def _local(ref: str) -> bool:
    """True for a reference that can name a file under the manifest's folder."""
    return bool(ref) and "://" not in ref and safefiles.path_problem(ref) is None
