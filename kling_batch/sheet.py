"""The contact sheet: one PNG of poster frames on the gallery's grid, with labels (Pillow).

Sized for a pull-request comment or a chat message: tiles shrink (down to a floor) until the
widest grid fits `MAX_WIDTH`.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from kling_batch.atomic import atomic_write
from kling_batch.errors import PosterError, RunError, UserError
from kling_batch.gallery import Card, Gallery, Grid, Section
from kling_batch.posters import poster_frame

if TYPE_CHECKING:
    from PIL.Image import Image
    from PIL.ImageFont import FreeTypeFont, ImageFont

TILE_HEIGHT = 180
MIN_TILE_HEIGHT = 72
MAX_WIDTH = 1200
PAD = 16
GAP = 6
CELL_GAP = 14
LINE = 18
TITLE = 26
MAX_LABEL_WIDTH = 220
MAX_PIXELS = 89_478_485
"""The largest sheet drawn: Pillow's own decompression-bomb threshold (`MAX_IMAGE_PIXELS`),
past which image tools refuse or warn. Sheets grow down, a band per shot: 1,000 shots of one
render each are about 87 million pixels, 100,000 (a plan's limit) would need 26 GB."""

BACKGROUND = (24, 24, 27)
TEXT = (231, 231, 234)
MUTED = (154, 154, 166)
PLACEHOLDER = (52, 52, 58)
PICK = (242, 201, 76)

_RATIOS = {"16:9": Fraction(16, 9), "1:1": Fraction(1), "9:16": Fraction(9, 16)}

Measure = Callable[[str], float]


@dataclass(frozen=True, slots=True)
class Tile:
    """Where one render's poster goes: (left, top, right, bottom), right and bottom exclusive."""

    card: Card
    box: tuple[int, int, int, int]
    label: str


@dataclass(frozen=True, slots=True)
class Label:
    """A line of text at (left, top), cut to `width` pixels."""

    xy: tuple[int, int]
    text: str
    colour: tuple[int, int, int]
    width: int


@dataclass(frozen=True)
class SheetLayout:
    """The sheet's size, a tile per render and every label."""

    size: tuple[int, int]
    tiles: tuple[Tile, ...]
    labels: tuple[Label, ...]


def layout_sheet(gallery: Gallery, measure: Measure) -> SheetLayout:
    """Place every card: the largest tiles (up to TILE_HEIGHT) whose sheet fits MAX_WIDTH."""
    height = TILE_HEIGHT
    while True:
        layout = _Layout(measure, height).place(gallery)
        if layout.size[0] <= MAX_WIDTH or height <= MIN_TILE_HEIGHT:
            return layout
        height = max(MIN_TILE_HEIGHT, height - 12)


class _Layout:
    """One pass of placement at a given tile height."""

    def __init__(self, measure: Measure, height: int) -> None:
        self.measure = measure
        self.height = height
        self.tiles: list[Tile] = []
        self.labels: list[Label] = []
        self.y = PAD
        self.width = 0

    def place(self, gallery: Gallery) -> SheetLayout:
        for section in gallery.sections:
            self._section(section)
        size = (max(self.width, 2 * PAD + 200), self.y)
        return SheetLayout(size, tuple(self.tiles), tuple(self.labels))

    def _section(self, section: Section) -> None:
        cards = section.cards
        ratio = max((_RATIOS.get(card.aspect, Fraction(16, 9)) for card in cards), default=1)
        box = round(self.height * ratio)
        heads = [row for grid in section.grids for row in grid.rows if row]
        label_w = 0
        if heads:
            label_w = min(MAX_LABEL_WIDTH, round(max(self.measure(h) for h in heads)) + 12)
        takes = max(len(cell) for grid in section.grids for cell in grid.cells.values())
        cell_w = takes * box + (takes - 1) * GAP
        title = section.title
        if section.row_axis or section.col_axis:
            axes = " by ".join(a for a in (section.row_axis, section.col_axis) if a)
            title = f"{title}   ({axes})"
        self._text(PAD, title, TEXT, MAX_WIDTH - 2 * PAD)
        self.y += TITLE - LINE
        for grid in section.grids:
            self._grid(section, grid, label_w, cell_w, box)
        self.y += PAD

    def _grid(self, section: Section, grid: Grid, label_w: int, cell_w: int, box: int) -> None:
        left = PAD + label_w
        if grid.heading:
            self._text(PAD, grid.heading, MUTED, MAX_WIDTH - 2 * PAD)
        if section.col_axis:
            for col, text in enumerate(grid.cols):
                self.labels.append(
                    Label((left + col * (cell_w + CELL_GAP), self.y), text, TEXT, cell_w)
                )
            self.y += LINE
        for row, text in enumerate(grid.rows):
            top = self.y
            self.labels.append(
                Label((PAD, top + self.height // 2 - LINE // 2), text, TEXT, label_w - 8)
            )
            for col in range(len(grid.cols)):
                for take, card in enumerate(grid.cells.get((row, col), ())):
                    x = left + col * (cell_w + CELL_GAP) + take * (box + GAP)
                    tile = Tile(
                        card, (x, top, x + box, top + self.height), _tile_label(section, card)
                    )
                    self.tiles.append(tile)
                    self.labels.append(Label((x, top + self.height + 2), tile.label, MUTED, box))
            self.y = top + self.height + LINE + GAP
        right = left + len(grid.cols) * (cell_w + CELL_GAP) - CELL_GAP + PAD
        self.width = max(self.width, right)

    def _text(self, x: int, text: str, colour: tuple[int, int, int], width: int) -> None:
        self.labels.append(Label((x, self.y), text, colour, width))
        self.y += LINE


def _tile_label(section: Section, card: Card) -> str:
    parts = [f"take {card.take}"] if section.takes > 1 else []
    if card.state != "done":
        parts.append(card.state)
    text = " · ".join(parts)
    # Pillow's bundled font has no star: the word, and a gold outline on the tile.
    return f"picked · {text}" if card.picked and text else "picked" if card.picked else text


def check_sheet_size(gallery: Gallery) -> None:
    """Refuse, before anything is drawn or written, a sheet larger than MAX_PIXELS."""
    width, height = layout_sheet(gallery, label_font().getlength).size
    if width * height > MAX_PIXELS:
        raise UserError(
            f"--sheet: a contact sheet of {len(gallery.cards):,} renders would be {width:,} × "
            f"{height:,} pixels, over the {MAX_PIXELS:,} image tools open; review without "
            "--sheet (the gallery shows every render)"
        )


def draw_sheet(gallery: Gallery, frames: Mapping[str, Image]) -> tuple[Image, SheetLayout]:
    """The sheet as an image: each render's frame in its tile, a placeholder where none."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    font = label_font()
    layout = layout_sheet(gallery, font.getlength)
    sheet = PILImage.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for tile in layout.tiles:
        _draw_tile(sheet, draw, tile, frames.get(tile.card.id), font)
    for label in layout.labels:
        draw.text(label.xy, _fit(label.text, label.width, font), fill=label.colour, font=font)
    return sheet, layout


def _draw_tile(
    sheet: Image, draw: object, tile: Tile, frame: Image | None, font: FreeTypeFont | ImageFont
) -> None:
    from PIL import Image as PILImage
    from PIL import ImageDraw

    assert isinstance(draw, ImageDraw.ImageDraw)
    left, top, right, bottom = tile.box
    width, height = right - left, bottom - top
    outline = PICK if tile.card.picked else None
    draw.rectangle((left, top, right - 1, bottom - 1), fill=PLACEHOLDER, outline=outline)
    if frame is None:
        text = _fit(tile.card.state, width - 8, font)
        draw.text((left + 4, top + height // 2 - 7), text, fill=MUTED, font=font)
        return
    scale = min(width / frame.width, height / frame.height)
    size = (max(1, round(frame.width * scale)), max(1, round(frame.height * scale)))
    picture = frame.resize(size, PILImage.Resampling.LANCZOS)
    sheet.paste(picture, (left + (width - size[0]) // 2, top + (height - size[1]) // 2))


def _fit(text: str, width: int, font: FreeTypeFont | ImageFont) -> str:
    """`text`, cut with an ellipsis to fit `width` pixels."""
    if width <= 0 or font.getlength(text) <= width:
        return text if width > 0 else ""
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def label_font() -> FreeTypeFont | ImageFont:
    """Pillow's bundled font, so a sheet looks the same on every machine."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=13)
    except (ImportError, OSError):  # Pillow built without FreeType: the bitmap font
        return ImageFont.load_default()


class _Frames(Mapping[str, "Image"]):
    """Each video's frame, read when its tile is drawn and dropped once pasted: one frame in
    memory at a time (a 1080p frame is 6 MB, so a thousand renders held 6 GB)."""

    def __init__(self, videos: Mapping[str, Path]) -> None:
        self.videos = videos

    def __getitem__(self, render_id: str) -> Image:
        try:
            return poster_frame(self.videos[render_id])
        except PosterError:  # drawn as a placeholder; the gallery run already warned about it
            raise KeyError(render_id) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.videos)

    def __len__(self) -> int:
        return len(self.videos)


def write_sheet(gallery: Gallery, videos: Mapping[str, Path], path: Path) -> SheetLayout:
    """Read a frame of each video, draw the sheet and write it as a PNG at `path`."""
    sheet, layout = draw_sheet(gallery, _Frames(videos))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", optimize=True)
    try:
        atomic_write(path, buffer.getvalue())
    except OSError as exc:
        raise RunError(f"cannot write the contact sheet {path}: {exc}") from None
    return layout
