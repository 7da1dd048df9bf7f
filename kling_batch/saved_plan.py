"""Saved plans: `plan --out PLAN.json` writes one; `run PLAN.json` renders exactly it, or refuses.

A saved plan is a JSON file whose first key is `kling_batch_plan` (its format version):
that key is how `run` tells a saved plan from a JSON manifest, which can never carry it
(a manifest's unknown keys are errors). It holds the manifest's path relative to the plan
file's folder, the options the plan was made with (`--only`, `--force`, `--emulator`,
`--max-renders`), the inputs it was made from (`kling_batch.plan_inputs`: manifest,
included files, assets, lockfile, model data, each by content hash) with one `digest` of
them all (a plan whose inputs no longer match its digest is damaged), and the plan itself
(the `plan --format json` object, each render with its assets' hashes).

`run PLAN.json` plans again under the run lock, with the saved options, and goes on only
when the inputs are the same and every render's action, fingerprint and cost are too;
otherwise it exits 2: "stale plan: launch.toml changed since the plan was made; plan again".
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kling_batch import safefiles
from kling_batch.atomic import atomic_write
from kling_batch.canonical import fingerprint_of
from kling_batch.errors import UserError, validation_error
from kling_batch.limits import LOCKFILE_MAX_BYTES, MAX_RENDERS
from kling_batch.plan import Plan
from kling_batch.plan_inputs import changed_inputs, plan_inputs
from kling_batch.reports import plan_json
from kling_batch.runner import RunRequest

MARKER = "kling_batch_plan"
FORMAT_VERSION = 1


class PlanOptions(BaseModel):
    """The options a plan was made with; `run PLAN.json` uses these, not its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    only: tuple[str, ...] = ()
    force: tuple[str, ...] = ()
    emulator: bool = False
    max_renders: int = Field(MAX_RENDERS, ge=1)


class _PlanFile(BaseModel):
    """The saved plan file as JSON."""

    model_config = ConfigDict(extra="forbid")

    kling_batch_plan: int = Field(ge=1)
    manifest: str
    options: PlanOptions
    digest: str
    inputs: dict[str, dict[str, str | None]]
    plan: dict[str, Any]


@dataclass(frozen=True)
class SavedPlan:
    """A plan read back from its file."""

    path: Path
    manifest: Path
    options: PlanOptions
    inputs: Mapping[str, Mapping[str, str | None]]
    plan: Mapping[str, Any]

    @property
    def renders(self) -> Sequence[Mapping[str, Any]]:
        """The plan's renders as saved (`plan --format json` items, with `assets`)."""
        shots: Sequence[Mapping[str, Any]] = self.plan.get("shots", [])
        return shots

    def check(self, plan: Plan) -> None:
        """Refuse (exit 2) when `plan`, made now, is not the plan that was saved."""
        changed = changed_inputs(self.inputs, plan_inputs(plan))
        if changed:
            raise self._stale(f"{_joined(changed)} changed")
        difference = _first_difference(self.renders, plan_json(plan)["shots"])
        if difference is not None:
            raise self._stale(difference)

    def _stale(self, what: str) -> UserError:
        return UserError(f"stale plan: {what} since the plan was made; plan again", file=self.path)


def save_plan(plan: Plan, options: PlanOptions, out: Path) -> None:
    """Write `plan` to `out` with what it was made from (atomically)."""
    document = plan_json(plan)
    for shot, item in zip(document["shots"], plan.items, strict=True):
        shot["assets"] = dict(sorted(item.render.asset_hashes.items()))
    try:
        manifest = os.path.relpath(plan.loaded.path.resolve(), out.resolve().parent)
    except ValueError:  # another drive (Windows): no relative path leads there
        manifest = str(plan.loaded.path.resolve())
    inputs = plan_inputs(plan)
    saved = {
        MARKER: FORMAT_VERSION,
        "manifest": Path(manifest).as_posix(),
        "options": options.model_dump(mode="json"),
        "digest": fingerprint_of(inputs),
        "inputs": inputs,
        "plan": document,
    }
    try:
        atomic_write(out, json.dumps(saved, indent=2, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise UserError(f"cannot write the plan: {exc}", file=out, field="--out") from None


def is_saved_plan(path: Path) -> bool:
    """True when `path` is a JSON file whose top level carries the saved-plan marker."""
    if path.suffix.lower() != ".json":
        return False
    try:
        data = json.loads(safefiles.read_text(path, limit=LOCKFILE_MAX_BYTES, what="a plan"))
    except (OSError, ValueError, RecursionError, UserError):
        return False  # not readable as a plan: loading it as a manifest says why
    return isinstance(data, dict) and MARKER in data


def load_plan(path: Path) -> SavedPlan:
    """Read a saved plan; a damaged or newer one is a `UserError`."""
    try:
        data = json.loads(safefiles.read_text(path, limit=LOCKFILE_MAX_BYTES, what="a plan"))
    except FileNotFoundError:
        raise UserError("file not found", file=path) from None
    except (OSError, ValueError, RecursionError) as exc:
        raise UserError(f"cannot read the saved plan: {exc}", file=path) from None
    version = data.get(MARKER) if isinstance(data, dict) else None
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise UserError(
            f"plan format {version} was written by a newer kling-batch; upgrade kling-batch",
            file=path,
            field=MARKER,
        )
    try:
        parsed = _PlanFile.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, file=path, template="damaged saved plan: {}") from None
    if fingerprint_of(parsed.inputs) != parsed.digest:
        raise UserError(
            "damaged saved plan: its digest does not match the inputs it lists; plan again",
            file=path,
            field="digest",
        )
    return SavedPlan(
        path=path,
        manifest=path.parent / parsed.manifest,
        options=parsed.options,
        inputs=parsed.inputs,
        plan=parsed.plan,
    )


def for_run(request: RunRequest) -> RunRequest:
    """`request` as is for a manifest; for a saved plan, the run of exactly that plan."""
    if not is_saved_plan(request.manifest):
        return request
    saved = load_plan(request.manifest)
    for flag, given in (("--only", request.only), ("--force", request.force)):
        if given:
            raise UserError(
                f"a saved plan fixes which renders run; plan again with {flag} instead",
                file=request.manifest,
                field=flag,
            )
    if request.resubmit_uncertain != "off":
        raise UserError(
            "a saved plan runs as it was priced, with no uncertain render sent again; run "
            "the manifest with --resubmit-uncertain instead (it prices the resends first)",
            file=request.manifest,
            field="--resubmit-uncertain",
        )
    if request.emulator and not saved.options.emulator:
        raise UserError(
            "this plan was made without --emulator; plan again with it",
            file=request.manifest,
            field="--emulator",
        )
    return replace(
        request,
        manifest=saved.manifest,
        only=saved.options.only,
        force=saved.options.force,
        emulator=saved.options.emulator,
        max_renders=saved.options.max_renders,
        check_plan=saved.check,
    )


def _first_difference(
    saved: Sequence[Mapping[str, Any]], now: Sequence[Mapping[str, Any]]
) -> str | None:
    """How the renders planned now differ from the saved ones, in words (first difference)."""
    before = {shot.get("id"): shot for shot in saved}
    after = {shot["id"]: shot for shot in now}
    for render_id in [*after, *(key for key in before if key not in after)]:
        old, new = before.get(render_id), after.get(render_id)
        if old is None or new is None:
            return f"the render {render_id} was {'added' if old is None else 'removed'}"
        for key in ("action", "fingerprint", "cost_usd"):
            if old.get(key) != new.get(key):
                change = f"{key}: {old.get(key)} → {new[key]}"
                return f"what the run does with {render_id} changed ({change})"
    return None


def _joined(things: Sequence[str]) -> str:
    if len(things) == 1:
        return things[0]
    return ", ".join(things[:-1]) + " and " + things[-1]
