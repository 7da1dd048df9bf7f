"""The review gallery's model: every planned render as a card, laid out on its shot's matrix.

Pure: built from a `Plan` (manifest, lockfile, files) and the picks; no network, no clock.
`gallery_html` turns it into a page, `sheet` into a contact sheet.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from kling_batch import kling_o3
from kling_batch.errors import UserError
from kling_batch.expand import expand_matrix
from kling_batch.lockfile import UNSETTLED, Entry
from kling_batch.manifest import LoadedManifest, SourcedShot
from kling_batch.plan import Plan, PlanItem
from kling_batch.spend import billed_by_render

CardState = Literal[
    "done", "failed", "cancelled", "pending", "uncertain", "missing", "outdated", "new"
]
STATES: tuple[CardState, ...] = (
    "done",
    "failed",
    "cancelled",
    "pending",
    "uncertain",
    "missing",
    "outdated",
    "new",
)
MISSING_VALUE = "(none)"
"""Heading of a matrix combination that lacks an axis (one added by `include`)."""

_MATRIX_KEYWORDS = ("include", "exclude")
_VIDEO_INPUTS = ("video", "reference_videos")


@dataclass(frozen=True, slots=True)
class InputMedia:
    """An input asset of a render: a local file (maybe linked) or a URL shown as text."""

    field: str
    ref: str
    kind: Literal["image", "video", "remote"]
    path: Path | None = None


@dataclass(frozen=True, slots=True)
class Card:
    """One render as the gallery shows it, whether or not it exists yet."""

    id: str
    shot: str
    take: int
    state: CardState
    reason: str
    scenes: tuple[tuple[str, Decimal | None], ...]
    tier: str
    workflow: str
    aspect: str
    seconds: Decimal
    cost: Decimal
    billed: Decimal | None
    # Every bill on record for this render (earlier submissions too: a cancelled or failed
    # job the API billed, a re-render), each rounded up and each job counted once, on one
    # render, as `spend` counts it (`spend.once_per_job`).
    spent: Decimal
    job_id: str | None
    rendered_at: datetime | None
    inputs: tuple[InputMedia, ...]
    video: Path | None
    output: str
    tags: tuple[str, ...]
    coords: tuple[tuple[str, str], ...]
    picked: bool


@dataclass(frozen=True, slots=True)
class Grid:
    """Cards of one shot on rows × columns; `heading` names the values of further axes."""

    heading: str
    rows: tuple[str, ...]
    cols: tuple[str, ...]
    cells: Mapping[tuple[int, int], tuple[Card, ...]]

    def row_cards(self, row: int) -> list[Card]:
        """Every card of one row, column by column, takes side by side."""
        return [card for col in range(len(self.cols)) for card in self.cells.get((row, col), ())]


@dataclass(frozen=True, slots=True)
class Section:
    """One `[[shots]]` entry: its id as written and its grids."""

    title: str
    source: str
    takes: int
    row_axis: str | None
    col_axis: str | None
    extra_axes: tuple[str, ...]
    grids: tuple[Grid, ...]

    @property
    def cards(self) -> list[Card]:
        """The section's cards in grid order."""
        return [c for grid in self.grids for r in range(len(grid.rows)) for c in grid.row_cards(r)]


@dataclass(frozen=True, slots=True)
class Totals:
    """The counts at the top of the page."""

    renders: int
    done: int
    failed: int  # not counting the cancelled ones
    cancelled: int
    picked: int
    spent: Decimal
    estimate: Decimal
    by_state: Mapping[str, int]


@dataclass(frozen=True)
class Gallery:
    """The whole review: sections in manifest order, plus lockfile entries no longer planned."""

    name: str
    manifest: Path
    lock: Path
    root: Path
    emulator: bool
    sections: tuple[Section, ...]
    orphans: tuple[str, ...]

    @property
    def cards(self) -> list[Card]:
        """Every card, section by section."""
        return [card for section in self.sections for card in section.cards]

    @property
    def tags(self) -> list[str]:
        """Every tag used, sorted."""
        return sorted({tag for card in self.cards for tag in card.tags})

    @property
    def totals(self) -> Totals:
        """Renders, done, failed, cancelled, picked, billed so far and the plan's estimate."""
        cards = self.cards
        by_state: dict[str, int] = {s: sum(1 for c in cards if c.state == s) for s in STATES}
        return Totals(
            renders=len(cards),
            done=by_state["done"],
            failed=by_state["failed"],
            cancelled=by_state["cancelled"],
            picked=sum(1 for c in cards if c.picked),
            spent=sum((c.spent for c in cards), Decimal(0)),
            estimate=sum((c.cost for c in cards), Decimal(0)),
            by_state=by_state,
        )


def build_gallery(
    plan: Plan,
    *,
    picks: frozenset[str] = frozenset(),
    rows: str | None = None,
    cols: str | None = None,
    emulator: bool = False,
) -> Gallery:
    """Lay every render of `plan` out on its shot's matrix; `rows`/`cols` pick the axes."""
    loaded = plan.loaded
    _check_axis_options(loaded, rows, cols)
    placed = list(_placements(loaded))
    if len(placed) != len(plan.items):
        raise RuntimeError("the plan does not cover every render of the manifest")
    by_shot: dict[int, list[tuple[dict[str, Any], Card]]] = {}
    shots: dict[int, SourcedShot] = {}
    orphaned = {orphan.id for orphan in plan.orphans}
    spent = billed_by_render(plan.lock, [key for key in plan.lock.shots if key not in orphaned])
    for (number, sourced, combo, take), item in zip(placed, plan.items, strict=True):
        if item.render.take != take:
            raise RuntimeError(f"render {item.render.id} is out of manifest order")
        entry = plan.lock.shots.get(item.render.id)
        billed = spent.get(item.render.id, Decimal(0))
        card = _card(item, entry, combo, loaded.root, picks, spent=billed)
        shots[number] = sourced
        by_shot.setdefault(number, []).append((combo, card))
    sections = tuple(
        _section(loaded, shots[number], placed_cards, rows, cols)
        for number, placed_cards in by_shot.items()
    )
    return Gallery(
        name=loaded.manifest.name,
        manifest=loaded.path,
        lock=plan.lock_path,
        root=loaded.root,
        emulator=emulator,
        sections=sections,
        orphans=tuple(orphan.id for orphan in plan.orphans),
    )


def _placements(
    loaded: LoadedManifest,
) -> Iterator[tuple[int, SourcedShot, dict[str, Any], int]]:
    """(shot number, shot, matrix combination, take) per render, in `expand_shots` order."""
    for number, sourced in enumerate(loaded.shots):
        if not sourced.shot.enabled:
            continue
        for combo in expand_matrix(sourced):
            for take in range(1, sourced.shot.takes + 1):
                yield number, sourced, combo, take


def card_state(item: PlanItem, entry: Entry | None) -> tuple[CardState, str]:
    """The card's state and the reason shown beside a placeholder."""
    reasons = "; ".join(item.reasons)
    if item.action == "unchanged":
        return "done", ""
    if entry is None:
        return "new", reasons or "not rendered yet"
    if entry.fingerprint != item.render.fingerprint and entry.state not in UNSETTLED:
        since = "it rendered" if entry.state == "done" else "its last attempt failed"
        if entry.cancelled:
            since = "its last attempt was cancelled"
        return "outdated", f"changed since {since}: {reasons}"
    if entry.state == "failed":
        # A cancelled job is said apart from a failure, as `spend` and `status` say it.
        state: CardState = "cancelled" if entry.cancelled else "failed"
        return state, entry.error or "failed (no reason recorded)"
    if entry.state in ("uncertain", "submitting"):
        return "uncertain", reasons
    if entry.state in ("submitted", "completed"):
        return "pending", reasons
    return "missing", reasons


def _card(
    item: PlanItem,
    entry: Entry | None,
    combo: Mapping[str, Any],
    root: Path,
    picks: frozenset[str],
    *,
    spent: Decimal,
) -> Card:
    render = item.render
    state, reason = card_state(item, entry)
    request = render.request
    # An edit lasts as long as its source video (the card's seconds), whatever `duration` says.
    default = None if render.workflow == "video_edit" else Decimal(str(request.duration))
    scenes = tuple(
        (scene.text, Decimal(scene.seconds) if scene.seconds is not None else default)
        for scene in kling_o3.parse_scenes(request.prompt)
    )
    return Card(
        id=render.id,
        shot=render.shot,
        take=render.take,
        state=state,
        reason=reason,
        scenes=scenes,
        tier=request.model_tier,
        workflow=render.workflow,
        aspect=request.aspect_ratio,
        seconds=render.seconds,
        cost=render.cost,
        billed=entry.billed_usd if entry is not None else None,
        spent=spent,
        job_id=entry.job_id if entry is not None else None,
        rendered_at=entry.completed_at if entry is not None else None,
        inputs=_inputs(item),
        video=_video(state, item, entry, root),
        output=str(render.output),
        tags=render.tags,
        coords=tuple((key, label(value)) for key, value in combo.items()),
        picked=render.id in picks,
    )


def _video(state: CardState, item: PlanItem, entry: Entry | None, root: Path) -> Path | None:
    """The file to play: the render when done; an outdated render's earlier file if present."""
    if state == "done":
        return root / str(item.render.output)
    if state == "outdated" and entry is not None and entry.state == "done":
        earlier = root / entry.output
        return earlier if earlier.is_file() else None
    return None


def _inputs(item: PlanItem) -> tuple[InputMedia, ...]:
    media: list[InputMedia] = []
    for key, asset in item.render.assets.items():
        name, _, index = key.partition(".")
        field = f"{name}[{index}]" if index else name
        if asset.kind != "local" or asset.path is None:
            media.append(InputMedia(field, asset.ref, "remote"))
            continue
        kind: Literal["image", "video"] = "video" if name in _VIDEO_INPUTS else "image"
        media.append(InputMedia(field, asset.ref, kind, asset.path))
    return tuple(media)


def label(value: Any) -> str:
    """A matrix value as a heading: strings as written, other values as TOML/JSON shows them."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


# -- layout ------------------------------------------------------------------------------


def matrix_axes(sourced: SourcedShot, combos: Sequence[Mapping[str, Any]]) -> list[str]:
    """A shot's matrix axes in declared order (the keys of an include-only matrix)."""
    matrix = sourced.shot.matrix or {}
    axes = [key for key in matrix if key not in _MATRIX_KEYWORDS]
    if axes or not matrix:
        return axes
    return list(dict.fromkeys(key for combo in combos for key in combo))


def choose_axes(
    counts: Mapping[str, int], rows: str | None, cols: str | None
) -> tuple[str | None, str | None, tuple[str, ...]]:
    """(row axis, column axis, further axes): the axis with more values as rows unless told.

    `counts` maps each axis, in declared order, to its number of values; ties keep that order.
    """
    ranked = sorted(counts, key=lambda axis: -counts[axis])
    row = rows if rows in counts else None
    col = cols if cols in counts and cols != row else None
    rest = [axis for axis in ranked if axis not in (row, col)]
    if row is None and rest:
        row = rest.pop(0)
    if col is None and rest:
        col = rest.pop(0)
    return row, col, tuple(rest)


def _check_axis_options(loaded: LoadedManifest, rows: str | None, cols: str | None) -> None:
    """`--rows`/`--cols` must name an axis of some shot's matrix, and not the same one."""
    if rows is not None and rows == cols:
        raise UserError(f"--rows and --cols both name {rows!r}; give two different axes")
    known: list[str] = []
    for sourced in loaded.shots:
        if sourced.shot.enabled and sourced.shot.matrix is not None:
            known.extend(matrix_axes(sourced, expand_matrix(sourced)))
    axes = list(dict.fromkeys(known))
    for option, axis in (("--rows", rows), ("--cols", cols)):
        if axis is not None and axis not in axes:
            listed = ", ".join(axes) if axes else "none: no shot has a matrix"
            raise UserError(
                f"{option} {axis!r} is not a matrix axis of any shot (axes: {listed})",
                file=loaded.path,
            )


def _section(
    loaded: LoadedManifest,
    sourced: SourcedShot,
    placed: list[tuple[dict[str, Any], Card]],
    rows: str | None,
    cols: str | None,
) -> Section:
    combos = [combo for combo, _ in placed]
    axes = matrix_axes(sourced, combos)
    values = {axis: _distinct(combos, axis) for axis in axes}
    row, col, extra = choose_axes({axis: len(v) for axis, v in values.items()}, rows, cols)
    groups: dict[tuple[str, ...], list[tuple[dict[str, Any], Card]]] = {}
    for combo, card in placed:
        key = tuple(_value_label(combo, axis) for axis in extra)
        groups.setdefault(key, []).append((combo, card))
    grids = tuple(
        _grid(_heading(extra, key), members, values, row, col) for key, members in groups.items()
    )
    return Section(
        title=sourced.shot.id,
        source=loaded.display(sourced.file),
        takes=sourced.shot.takes,
        row_axis=row,
        col_axis=col,
        extra_axes=extra,
        grids=grids,
    )


def _grid(
    heading: str,
    members: list[tuple[dict[str, Any], Card]],
    values: Mapping[str, list[str]],
    row: str | None,
    col: str | None,
) -> Grid:
    present_rows = {_value_label(combo, row) for combo, _ in members}
    present_cols = {_value_label(combo, col) for combo, _ in members}
    row_values = [v for v in values.get(row or "", [""]) if v in present_rows]
    col_values = [v for v in values.get(col or "", [""]) if v in present_cols]
    cells: dict[tuple[int, int], list[Card]] = {}
    for combo, card in members:
        r, c = _value_label(combo, row), _value_label(combo, col)
        at = (row_values.index(r), col_values.index(c))
        cells.setdefault(at, []).append(card)
    return Grid(
        heading=heading,
        rows=tuple(row_values),
        cols=tuple(col_values),
        cells={at: tuple(cards) for at, cards in cells.items()},
    )


def _distinct(combos: Sequence[Mapping[str, Any]], axis: str) -> list[str]:
    return list(dict.fromkeys(_value_label(combo, axis) for combo in combos))


def _value_label(combo: Mapping[str, Any], axis: str | None) -> str:
    if axis is None:
        return ""
    return label(combo[axis]) if axis in combo else MISSING_VALUE


def _heading(axes: tuple[str, ...], values: tuple[str, ...]) -> str:
    return " · ".join(f"{axis}: {value}" for axis, value in zip(axes, values, strict=True))
