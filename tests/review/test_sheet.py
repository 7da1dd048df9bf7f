"""`review --sheet`: one PNG with a tile per render, each drawn from that render's video."""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import av
import pytest
from PIL import Image, ImageStat

from kling_batch import sheet
from kling_batch.gallery import Gallery, build_gallery
from kling_batch.plan import build_plan
from kling_batch.posters import POSTER_AT
from tests.review.conftest import Reviewed, kling_batch

COLOUR_TOLERANCE = 12


def frame_colour(video: Path) -> tuple[float, ...]:
    """Mean RGB of the frame at POSTER_AT of the video's length, decoded from the start."""
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        length = Fraction(stream.duration) * Fraction(stream.time_base)
        target = length * POSTER_AT
        chosen = None
        for frame in container.decode(stream):
            chosen = frame
            if Fraction(frame.time) >= target:
                break
        assert chosen is not None
        image = chosen.to_image().convert("RGB")
    return tuple(ImageStat.Stat(image).mean)


def inner(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The middle half of a tile: clear of outlines and resampling at its edges."""
    left, top, right, bottom = box
    w, h = right - left, bottom - top
    return (left + w // 4, top + h // 4, right - w // 4, bottom - h // 4)


def emulator_gallery(reviewed: Reviewed) -> Gallery:
    plan = build_plan(reviewed.manifest, now=datetime.now(UTC), emulator=True)
    return build_gallery(plan, emulator=True)


def test_sheet_has_one_tile_per_render_drawn_from_it(reviewed: Reviewed, tmp_path: Path) -> None:
    """The PNG fits a comment, holds one tile per render, each showing that render's frame."""
    png = tmp_path / "sheet.png"
    result = kling_batch(
        "review", str(reviewed.manifest), "--emulator", "--out", str(tmp_path / "g"),
        "--sheet", str(png),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    gallery = emulator_gallery(reviewed)
    with Image.open(png) as opened:
        assert opened.format == "PNG"
        image = opened.convert("RGB")
    layout = sheet.layout_sheet(gallery, sheet.label_font().getlength)
    assert image.size == layout.size
    assert image.width <= sheet.MAX_WIDTH
    planned = reviewed.plan(emulator=True)
    assert sorted(tile.card.id for tile in layout.tiles) == sorted(planned)
    for tile in layout.tiles:
        left, top, right, bottom = tile.box
        assert 0 <= left < right <= image.width and 0 <= top < bottom <= image.height
        got = ImageStat.Stat(image.crop(inner(tile.box))).mean
        want = frame_colour(reviewed.root / planned[tile.card.id]["output"])
        assert all(abs(g - w) <= COLOUR_TOLERANCE for g, w in zip(got, want, strict=True)), (
            tile.card.id
        )
        assert any(
            abs(g - b) > COLOUR_TOLERANCE for g, b in zip(got, sheet.BACKGROUND, strict=True)
        )


def test_sheet_tiles_follow_the_grid(reviewed: Reviewed) -> None:
    """Tiles sit on the gallery's grid: columns left to right, rows top to bottom, no overlap."""
    gallery = emulator_gallery(reviewed)
    layout = sheet.layout_sheet(gallery, lambda text: 7.0 * len(text))
    boxes = {tile.card.id: tile.box for tile in layout.tiles}
    teaser = gallery.sections[0].grids[0]
    for r in range(len(teaser.rows)):
        row = teaser.row_cards(r)
        lefts = [boxes[card.id][0] for card in row]
        assert lefts == sorted(lefts) and len(set(lefts)) == len(row)
        assert len({boxes[card.id][1] for card in row}) == 1
    tops = [boxes[teaser.row_cards(r)[0].id][1] for r in range(len(teaser.rows))]
    assert tops == sorted(tops) and len(set(tops)) == len(tops)
    for a, b in itertools.combinations(boxes.values(), 2):
        overlap = a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
        assert not overlap


def test_each_frame_lands_in_its_own_tile(reviewed: Reviewed) -> None:
    """Distinct frames each fill their own tile; a render without a frame is a placeholder."""
    gallery = emulator_gallery(reviewed)
    cards = gallery.cards
    colours = {card.id: (20 * n % 256, 255 - 15 * n % 256, 90) for n, card in enumerate(cards)}
    without = cards[-1].id
    frames = {i: Image.new("RGB", (9, 16), c) for i, c in colours.items() if i != without}
    image, layout = sheet.draw_sheet(gallery, frames)
    for tile in layout.tiles:
        left, top, right, bottom = tile.box
        centre = image.getpixel(((left + right) // 2, top + (bottom - top) // 4))
        if tile.card.id == without:
            assert centre == sheet.PLACEHOLDER
        else:
            assert centre == colours[tile.card.id], tile.card.id


def test_frames_are_held_one_at_a_time(
    reviewed: Reviewed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each frame is read when its tile is drawn and dropped once pasted: a sheet of many
    renders holds one full-size frame at a time (a 1080p frame is 6 MB; a thousand renders
    held 6 GB before the first tile was drawn)."""
    gallery = emulator_gallery(reviewed)
    alive: set[int] = set()
    most = 0

    def full_size_frame(video: Path) -> Image.Image:
        nonlocal most
        image = Image.new("RGB", (1920, 1080), (90, 40, 30))
        alive.add(id(image))
        weakref.finalize(image, alive.discard, id(image))
        most = max(most, len(alive))
        return image

    monkeypatch.setattr(sheet, "poster_frame", full_size_frame)
    videos = {card.id: reviewed.root / card.output for card in gallery.cards}
    sheet.write_sheet(gallery, videos, tmp_path / "sheet.png")
    assert len(videos) > 2
    assert most == 1


def test_a_sheet_too_large_to_open_is_refused_before_any_work(
    project: Callable[..., Path], tmp_path: Path
) -> None:
    """1,500 shots (a band of the sheet each): `--sheet` exits 2 in one line saying how
    large the sheet would be, and writes neither the sheet nor the gallery. Before, it drew
    a PNG of about 352 × 369,000 pixels (a plan's 100,000 renders: 26 GB in memory)."""
    shots = "".join(
        f'[[shots]]\nid = "s{n}"\nprompt = "a harbour, take {n}"\n' for n in range(1500)
    )
    manifest = project(shots)
    png = tmp_path / "sheet.png"
    result = kling_batch("review", str(manifest), "--sheet", str(png))
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "1,500 renders" in line and "pixels" in line
    assert not png.exists()
    assert not (manifest.parent / "renders" / "review").exists()
