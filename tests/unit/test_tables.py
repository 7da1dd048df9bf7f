"""The reports' fast tables draw the very bytes rich's `Table` draws, or let rich draw them."""

from __future__ import annotations

import io
import random

import pytest
from rich.cells import cell_len
from rich.console import Console
from rich.text import Text

from kling_batch.tables import Columns, Justify

WORDS = ["shot-0001", "i2v", "standard", "9s", "$2.016", "prompt changed", "", "a", "x" * 30]
ODD = ["雨の街角", "café", "e\u0301te\u0301", "✨ hero", "[bold]not markup[/bold]", "$(12.50)"]
STYLES = [None, "", "green", "yellow", "bold red", "dim"]


def draw(renderable: object, *, width: int, colour: bool) -> str:
    out = io.StringIO()
    console = Console(
        file=out,
        width=width,
        force_terminal=colour,
        color_system="truecolor" if colour else None,
        no_color=None if colour else True,
        highlight=False,
        soft_wrap=False,
    )
    console.print(renderable)
    return out.getvalue()


def random_table(rng: random.Random) -> Columns:
    """Up to 7 columns of either justification and up to 6 rows of words of any width and
    style; no column without text (the fast layout leaves those to rich: tested below)."""
    justify: list[Justify] = ["left", "right"]
    count = rng.randint(1, 7)
    rows: list[list[str | Text]] = []
    for _ in range(rng.randint(0, 6)):
        cells: list[str | Text] = []
        for _ in range(count):
            text, style = rng.choice(WORDS + ODD), rng.choice(STYLES)
            cells.append(text if style is None else Text(text, style=style))
        rows.append(cells)
    names = [rng.choice(["", "id", "cost", "notes", "seconds", "雨"]) for _ in range(count)]
    for column, name in enumerate(names):
        if not name and not any(str(row[column]) for row in rows):
            names[column] = "notes"
    table = Columns([(name, rng.choice(justify)) for name in names], overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def natural_width(table: Columns) -> int:
    """The table's width at its columns' natural widths, measured by rich itself."""
    lines = draw(table.table(), width=10_000, colour=False).split("\n")
    return max(cell_len(line) for line in lines)


def fast_only(table: Columns, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if drawing `table` would hand it to rich."""

    def refused() -> None:
        raise AssertionError("drawn by rich's Table, not the fast layout")

    monkeypatch.setattr(table, "table", refused)


@pytest.mark.parametrize("seed", range(60))
@pytest.mark.parametrize("colour", [False, True])
def test_a_table_that_fits_is_drawn_as_rich_draws_it(
    seed: int, colour: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = random_table(random.Random(seed))
    rich_text = draw(table.table(), width=200, colour=colour)
    fit = natural_width(table)  # rich's own width for it, at which it still fits
    rich_at_fit = draw(table.table(), width=fit, colour=colour)
    fast_only(table, monkeypatch)
    assert draw(table, width=200, colour=colour) == rich_text
    assert draw(table, width=fit, colour=colour) == rich_at_fit


@pytest.mark.parametrize("seed", range(20))
def test_a_table_one_cell_too_wide_is_left_to_rich(seed: int) -> None:
    table = random_table(random.Random(seed))
    table.add_row(*["long notes " * 4 for _ in table.columns])
    width = natural_width(table) - 1
    drawn = draw(table, width=width, colour=False)
    assert drawn == draw(table.table(), width=width, colour=False)
    assert all(cell_len(line) <= width for line in drawn.split("\n"))  # folded, not cut


@pytest.mark.parametrize(
    "cell", ["two\nlines", "a\ttab", Text("a") + Text("b", "red"), "", "ab ", " ab"]
)
def test_a_cell_the_fast_layout_cannot_draw_is_left_to_rich(cell: str | Text) -> None:
    table = Columns([("id", "left"), ("", "left"), ("cost", "right")])
    table.add_row("shot-1", cell, "$1.00")
    table.add_row("shot-2", "x", cell)
    expected = draw(table.table(), width=80, colour=True)
    assert draw(table, width=80, colour=True) == expected


def test_a_row_of_the_wrong_length_is_refused() -> None:
    table = Columns([("id", "left"), ("cost", "right")])
    with pytest.raises(ValueError, match="3 cells for 2 columns"):
        table.add_row("a", "b", "c")
