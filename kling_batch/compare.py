"""`plan --compare BASE`: the manifest's renders at a base and now, Infracost-style.

BASE is a saved plan (`plan --out`) or a git ref, where the manifest's folder is read from
git and planned in a temporary folder (`kling_batch.gitref`). The comparison is of the
manifest, not of the lockfile: the cost of every render it asks for at the base and now,
the difference, and each render added, removed or changed (its fingerprint or price moved)
with its cost change and the request fields that changed; a changed prompt comes with a
word-level diff. `--only` chooses renders on both sides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from kling_batch.canonical import plain_numbers
from kling_batch.errors import UserError
from kling_batch.gitref import Checkout, checkout_at
from kling_batch.lockname import lock_path
from kling_batch.plan import Plan, PlannedRender, build_plan
from kling_batch.saved_plan import PlanOptions, is_saved_plan, load_plan
from kling_batch.selection import matches_any
from kling_batch.worddiff import Piece, word_diff

ChangeKind = Literal["added", "removed", "changed"]


@dataclass(frozen=True, slots=True)
class RenderFacts:
    """What the comparison knows of one render, from a plan or a saved plan."""

    id: str
    fingerprint: str
    cost: Decimal
    rate: Decimal
    seconds: Decimal
    model_tier: str
    workflow: str
    request: Mapping[str, Any]
    assets: Mapping[str, str]

    @classmethod
    def of(cls, render: PlannedRender) -> RenderFacts:
        """The facts of a render planned here."""
        return cls(
            id=render.id,
            fingerprint=render.fingerprint,
            cost=render.cost,
            rate=render.price.rate,
            seconds=render.seconds,
            model_tier=render.tier,
            workflow=render.workflow,
            request=render.body,
            assets=render.asset_hashes,
        )

    @classmethod
    def saved(cls, shot: Mapping[str, Any]) -> RenderFacts:
        """The facts of a render as a saved plan holds it."""
        return cls(
            id=str(shot["id"]),
            fingerprint=str(shot["fingerprint"]),
            cost=Decimal(str(shot["cost_usd"])),
            rate=Decimal(str(shot["rate_usd_per_s"])),
            seconds=Decimal(str(shot["seconds"])),
            model_tier=str(shot["model_tier"]),
            workflow=str(shot["workflow"]),
            request=dict(shot["request"]),
            assets=dict(shot.get("assets") or {}),
        )


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One request field that differs; `content` when only a local file's content did."""

    field: str
    base: Any
    head: Any
    content: bool = False


@dataclass(frozen=True, slots=True)
class RenderChange:
    """A render added, removed or changed between the base and now."""

    id: str
    kind: ChangeKind
    base: RenderFacts | None
    head: RenderFacts | None
    fields: tuple[FieldChange, ...] = ()

    @property
    def base_cost(self) -> Decimal:
        """Its cost at the base (0 when added)."""
        return self.base.cost if self.base is not None else Decimal(0)

    @property
    def head_cost(self) -> Decimal:
        """Its cost now (0 when removed)."""
        return self.head.cost if self.head is not None else Decimal(0)

    @property
    def cost_change(self) -> Decimal:
        """Now minus base."""
        return self.head_cost - self.base_cost

    @property
    def prompt_diff(self) -> list[Piece] | None:
        """The word-level diff of a changed prompt, else None."""
        for change in self.fields:
            if change.field == "prompt" and not change.content:
                return word_diff(str(change.base or ""), str(change.head or ""))
        return None


@dataclass(frozen=True)
class Comparison:
    """The manifest at a base and now."""

    plan: Plan
    base: str
    base_kind: Literal["git", "plan"]
    base_cost: Decimal
    changes: Sequence[RenderChange]
    unchanged: int
    note: str | None = None

    @property
    def head_cost(self) -> Decimal:
        """Cost of every render the manifest asks for now."""
        return self.plan.totals.cost

    @property
    def cost_change(self) -> Decimal:
        """Now minus base."""
        return self.head_cost - self.base_cost

    @property
    def emulator(self) -> bool:
        """True when planned against the emulator's lockfile."""
        return self.plan.lock_path == lock_path(self.plan.loaded.path, emulator=True)

    def of_kind(self, kind: ChangeKind) -> list[RenderChange]:
        """The changes of one kind, in report order."""
        return [change for change in self.changes if change.kind == kind]


def compare_with(base: str, plan: Plan, options: PlanOptions) -> Comparison:
    """Compare `plan` with BASE: a saved plan's file, else a git ref."""
    head = [RenderFacts.of(item.render) for item in plan.items]
    candidate = Path(base)
    if candidate.is_file() and is_saved_plan(candidate):
        saved = load_plan(candidate)
        renders = [RenderFacts.saved(shot) for shot in saved.renders]
        note = None
        if saved.manifest.resolve() != plan.loaded.path.resolve():
            note = f"{base} was made from {saved.manifest}, not {plan.loaded.path}"
        return _comparison(plan, base, "plan", renders, head, note)
    with checkout_at(base, plan.loaded.path) as checkout:
        if checkout.manifest is None:
            note = f"{checkout.name} is not in {checkout.label}: every render is added"
            return _comparison(plan, checkout.label, "git", [], head, note)
        renders = _renders_at(checkout, options, _followed(plan, options))
    return _comparison(plan, checkout.label, "git", renders, head)


def _followed(plan: Plan, options: PlanOptions) -> set[str]:
    """The renders the plan has beyond what `--only` chooses: those whose job may be paid
    for, which a plan always follows."""
    if not options.only:
        return set()
    return {
        item.render.id
        for item in plan.items
        if not matches_any(item.render.id, item.render.tags, options.only)
    }


def _renders_at(checkout: Checkout, options: PlanOptions, followed: set[str]) -> list[RenderFacts]:
    """The manifest's renders planned at the ref: those `--only` chooses, and those the plan
    made now follows beyond it (`followed`), so that both sides price the same renders."""
    assert checkout.manifest is not None
    try:
        plan = build_plan(
            checkout.manifest,
            now=datetime.now(UTC),
            emulator=options.emulator,
            max_renders=options.max_renders,
        )
    except UserError as exc:
        raise UserError(
            f"at {checkout.label}: {exc.message}",
            file=_at_ref(exc.file, checkout),
            shot=exc.shot,
            field=exc.field,
            line=exc.line,
        ) from None
    return [
        RenderFacts.of(item.render)
        for item in plan.items
        if not options.only
        or matches_any(item.render.id, item.render.tags, options.only)
        or item.render.id in followed
    ]


def _at_ref(file: str | None, checkout: Checkout) -> str | None:
    """A file of the temporary checkout, as `<ref>:<path in the repository>`."""
    if file is None or checkout.manifest is None:
        return file
    top = checkout.manifest
    for _ in checkout.name.parts:
        top = top.parent
    try:
        return f"{checkout.ref}:{Path(file).relative_to(top).as_posix()}"
    except ValueError:
        return file


def _comparison(
    plan: Plan,
    label: str,
    kind: Literal["git", "plan"],
    base: Sequence[RenderFacts],
    head: Sequence[RenderFacts],
    note: str | None = None,
) -> Comparison:
    changes, unchanged = diff_renders(base, head)
    cost = sum((render.cost for render in base), Decimal(0))
    return Comparison(plan, label, kind, cost, changes, unchanged, note)


def diff_renders(
    base: Sequence[RenderFacts], head: Sequence[RenderFacts]
) -> tuple[list[RenderChange], int]:
    """Renders added, changed (manifest order) and removed (base order); and how many are
    the same on both sides."""
    before = {render.id: render for render in base}
    now = {render.id for render in head}
    changes: list[RenderChange] = []
    unchanged = 0
    for render in head:
        old = before.get(render.id)
        if old is None:
            changes.append(RenderChange(render.id, "added", None, render))
        elif old.fingerprint != render.fingerprint or old.cost != render.cost:
            changes.append(
                RenderChange(render.id, "changed", old, render, field_changes(old, render))
            )
        else:
            unchanged += 1
    changes.extend(RenderChange(r.id, "removed", r, None) for r in base if r.id not in now)
    return changes, unchanged


def field_changes(old: RenderFacts, new: RenderFacts) -> tuple[FieldChange, ...]:
    """The request fields that differ, then the local files whose content differs."""
    found = []
    for name in sorted(set(old.request) | set(new.request)):
        before, after = plain_numbers(old.request.get(name)), plain_numbers(new.request.get(name))
        if before != after:
            found.append(FieldChange(name, before, after))
    for key in sorted(set(old.assets) & set(new.assets)):
        if old.assets[key] != new.assets[key]:
            found.append(FieldChange(key, old.assets[key], new.assets[key], content=True))
    if not found and old.rate != new.rate:
        found.append(FieldChange("rate_usd_per_s", old.rate, new.rate))
    return tuple(found)
