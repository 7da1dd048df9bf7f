"""The reports' tables: rich's box-less layout, drawn without its layout engine when it fits.

`plan` lists every render it would run, so the first plan of 10,000 new renders is a table
of 10,000 rows, and rich's `Table` measures, pads and crops every cell through its general
layout engine: about half a millisecond a row, five seconds for that plan (issue 13).

The reports use one kind of table only: no box, no padding at its outer edges, a bold
header, each cell one `Text` of one style. When every cell is one line of printable text
and the columns at their natural widths fit the console, rich lays such a table out simply:
each column as wide as its widest cell, one space of padding each side of a cell (none at
the outer edges), each cell justified in its column, and the header row's style over its
padding too. `Columns` draws exactly those segments, so the same bytes come out, coloured
or not (`tests/unit/test_tables.py` compares the two). Anything else is drawn by a rich
`Table` of the same columns and rows: a table too wide (which rich folds or cuts), a cell
with a line break, tab or control character, space at either end or more than one style,
a column with no text at all.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.segment import Segment
from rich.style import Style
from rich.table import Table
from rich.text import Text

Justify = Literal["left", "right"]
Overflow = Literal["fold", "ellipsis"]
HEADER_STYLE = "bold"


class Columns:
    """A box-less table of named columns, drawn by the fast layout when it fits (above)."""

    def __init__(
        self, columns: Sequence[tuple[str, Justify]], *, overflow: Overflow = "ellipsis"
    ) -> None:
        self.columns = list(columns)
        self.overflow: Overflow = overflow
        self.rows: list[tuple[str | Text, ...]] = []

    def add_row(self, *cells: str | Text) -> None:
        """One row; a `str` cell is its text as it is (no markup read in it)."""
        if len(cells) != len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(cells)

    def table(self) -> Table:
        """The same table as a rich `Table` (how it is drawn when the fast layout cannot)."""
        table = Table(box=None, pad_edge=False, show_edge=False, header_style=HEADER_STYLE)
        for name, justify in self.columns:
            table.add_column(name, justify=justify, overflow=self.overflow)
        for row in self.rows:
            table.add_row(*(cell if isinstance(cell, Text) else Text(cell) for cell in row))
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        header: list[_Cell] = [(name, "") for name, _ in self.columns]
        rows = _cells(self.rows)
        widths = _widths([header, *rows], options.max_width) if rows is not None else None
        if rows is None or widths is None:
            yield self.table()
            return
        justify = [justify for _, justify in self.columns]
        yield from _header(header, widths, justify, console.get_style(HEADER_STYLE))
        # Without colour no style shows: a row is one segment (the same bytes, sooner).
        styled = console.color_system is not None
        for row in rows:
            yield from _row(console, row, widths, justify, styled)


# A cell as the fast layout draws it: its text and its style (a rich style's name or one).
_Cell = tuple[str, str | Style]


def _cells(rows: Sequence[Sequence[str | Text]]) -> list[list[_Cell]] | None:
    """Each row's cells as text and style; None when a cell holds more than one style."""
    cells: list[list[_Cell]] = []
    for row in rows:
        if any(isinstance(cell, Text) and cell.spans for cell in row):
            return None
        cells.append([(c, "") if isinstance(c, str) else (c.plain, c.style) for c in row])
    return cells


def _widths(rows: Sequence[Sequence[_Cell]], room: int) -> list[int] | None:
    """Each column's width, when every cell is one printable line, no column is empty and
    the table fits `room` cells (its columns and the two spaces between each two); else
    None."""
    widths = [0] * len(rows[0])
    for row in rows:
        for column, (text, _) in enumerate(row):
            if not text.isprintable() or text != text.strip():  # rich trims some of it
                return None
            widths[column] = max(widths[column], _cell_len(text))
    if 0 in widths:  # rich pads an empty column otherwise
        return None
    return widths if sum(widths) + 2 * (len(widths) - 1) <= room else None


def _cell_len(text: str) -> int:
    return len(text) if text.isascii() else cell_len(text)


def _padded(text: str, width: int, justify: Justify) -> str:
    gap = " " * (width - _cell_len(text))
    return gap + text if justify == "right" else text + gap


def _header(
    cells: Sequence[_Cell], widths: Sequence[int], justify: Sequence[Justify], style: Style
) -> Iterator[Segment]:
    """The header row as rich draws it: each cell and each space of padding between cells
    a segment of its own in the header's style."""
    last = len(cells) - 1
    for column, (text, _) in enumerate(cells):
        if column:
            yield Segment(" ", style)
        yield Segment(_padded(text, widths[column], justify[column]), style)
        if column < last:
            yield Segment(" ", style)
    yield Segment.line()


def _row(
    console: Console,
    cells: Sequence[_Cell],
    widths: Sequence[int],
    justify: Sequence[Justify],
    styled: bool,
) -> Iterator[Segment]:
    """A row as rich draws it: each cell padded to its column in its own style, two plain
    spaces between cells; plain text next to plain text goes in one segment."""
    plain: list[str] = []
    for column, (text, style) in enumerate(cells):
        if column:
            plain.append("  ")
        padded = _padded(text, widths[column], justify[column])
        look = console.get_style(style) if styled and style else None
        if not look:  # no style, or one that draws nothing
            plain.append(padded)
            continue
        if plain:
            yield Segment("".join(plain))
            plain = []
        yield Segment(padded, look)
    plain.append("\n")
    yield Segment("".join(plain))
