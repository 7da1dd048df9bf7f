"""What a plan was made from: every file whose change could change it, with content hashes.

The manifest, the shot files it includes, the template partials its strings `{% include %}`
(found by parsing them, recursively), every local asset a render uses, the lockfile (absent
is a value too) and the model data (`schemas/kling-o3.json`: prices and rules). A saved
plan records these (`kling_batch.saved_plan`) and is refused once any of them differs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta

from kling_batch import safefiles
from kling_batch.canonical import tagged
from kling_batch.errors import UserError
from kling_batch.limits import LOCKFILE_MAX_BYTES, MANIFEST_MAX_BYTES, PARTIAL_MAX_BYTES
from kling_batch.manifest import LoadedManifest
from kling_batch.model_data import model_json_text
from kling_batch.plan import Plan

# Kinds of input, in the order a stale plan names them.
KINDS = ("manifest", "included", "assets", "lockfile", "model_data")
MODEL_DATA_NAME = "schemas/kling-o3.json"

Inputs = dict[str, dict[str, str | None]]


def plan_inputs(plan: Plan) -> Inputs:
    """Kind → {path relative to the manifest's folder → `sha256:` of its content, or None
    when it does not exist}."""
    loaded = plan.loaded
    root = loaded.root
    included = {
        _relative(root, path): _hash(path, MANIFEST_MAX_BYTES) for path in _shot_files(loaded)
    }
    included.update(
        (_relative(root, path), _hash(path, PARTIAL_MAX_BYTES))
        for path in template_partials(loaded)
    )
    assets: dict[str, str | None] = {}
    for item in plan.items:
        for asset in item.render.assets.values():
            if asset.kind == "local" and asset.path is not None:
                assets[_relative(root, asset.path)] = asset.sha256
    return {
        "manifest": {loaded.path.name: _hash(loaded.path, MANIFEST_MAX_BYTES)},
        "included": dict(sorted(included.items())),
        "assets": dict(sorted(assets.items())),
        "lockfile": {plan.lock_path.name: _hash(plan.lock_path, LOCKFILE_MAX_BYTES)},
        "model_data": {MODEL_DATA_NAME: _text_hash(model_json_text())},
    }


def changed_inputs(before: Mapping[str, Mapping[str, str | None]], after: Inputs) -> list[str]:
    """What differs, in words: `launch.toml`, `the included file prompts/style.j2`, ..."""
    found = []
    for kind in KINDS:
        old, new = before.get(kind, {}), after.get(kind, {})
        for name in sorted(set(old) | set(new)):
            if old.get(name) != new.get(name):
                found.append(_describe(kind, name))
    return found


def _describe(kind: str, name: str) -> str:
    if kind == "manifest":
        return name
    if kind == "included":
        return f"the included file {name}"
    if kind == "assets":
        return f"the asset {name}"
    if kind == "lockfile":
        return f"the lockfile {name}"
    return f"the model data ({name})"


def _shot_files(loaded: LoadedManifest) -> list[Path]:
    """The shot files the manifest's `include` brought in (not the manifest itself)."""
    files = {sourced.file for sourced in loaded.shots if sourced.file != loaded.path}
    return sorted(files)


def template_partials(loaded: LoadedManifest) -> list[Path]:
    """Files the manifest's templates `{% include %}` by a literal name, and theirs in turn.

    A name computed at render time cannot be found by parsing; a change to such a file
    still changes the rendered requests, which a saved plan also compares.
    """
    root = loaded.root.resolve()
    env = jinja2.Environment(autoescape=False)
    found: dict[Path, None] = {}
    pending = [text for text in _strings(_documents(loaded)) if "{%" in text]
    while pending:
        for name in _referenced(env, pending.pop()):
            path = (root / name).resolve()
            if path in found or not path.is_relative_to(root) or not path.is_file():
                continue
            found[path] = None
            try:
                pending.append(
                    safefiles.read_text(path, limit=PARTIAL_MAX_BYTES, what="a template")
                )
            except (OSError, UnicodeDecodeError, UserError):
                continue  # planning already refused or would refuse it; hashed as it is
    return sorted(found)


def _documents(loaded: LoadedManifest) -> Iterator[Any]:
    yield loaded.manifest.model_dump()
    for sourced in loaded.shots:
        yield sourced.shot.model_dump()


def _strings(values: Iterator[Any]) -> Iterator[str]:
    stack = list(values)
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            yield value
        elif isinstance(value, Mapping):
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)


def _referenced(env: jinja2.Environment, text: str) -> list[str]:
    try:
        names = meta.find_referenced_templates(env.parse(text))
    except jinja2.TemplateSyntaxError:
        return []
    return [name for name in names if name is not None]


def _relative(root: Path, path: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _hash(path: Path, limit: int) -> str | None:
    try:
        data = safefiles.read_bytes(path, limit=limit, what="a plan input")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UserError(f"cannot read: {exc}", file=path) from None
    return tagged(hashlib.sha256(data).hexdigest())


def _text_hash(text: str) -> str:
    return tagged(hashlib.sha256(text.encode()).hexdigest())
