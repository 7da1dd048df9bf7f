"""`mp4check`: a whole MP4 passes; a file cut anywhere, padded or foreign does not."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from kling_batch.emulator.media import render_mp4
from kling_batch.mp4check import mp4_problem, mp4_seconds

VIDEO = render_mp4("16:9", Decimal(4))  # ftyp, free, mdat, moov: moov last, as PyAV writes


def box(kind: bytes, payload: bytes = b"") -> bytes:
    """A box with a 32-bit size."""
    return (len(payload) + 8).to_bytes(4, "big") + kind + payload


def large_box(kind: bytes, payload: bytes) -> bytes:
    """A box with `size == 1` and a 64-bit `largesize`."""
    return (1).to_bytes(4, "big") + kind + (len(payload) + 16).to_bytes(8, "big") + payload


FTYP = box(b"ftyp", b"isom\x00\x00\x02\x00isom")


def written(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "video.mp4"
    path.write_bytes(data)
    return path


def test_a_whole_rendered_video_passes_and_has_its_length(tmp_path: Path) -> None:
    """The emulator's 4-second H.264 MP4 is whole and plays 4 seconds."""
    path = written(tmp_path, VIDEO)
    assert mp4_problem(path) is None
    assert mp4_seconds(path) == pytest.approx(4.0)


def test_a_video_cut_at_any_byte_is_refused(tmp_path: Path) -> None:
    """Every prefix of a video, cut inside a box or at a box boundary, is refused."""
    for keep in range(len(VIDEO)):
        assert mp4_problem(written(tmp_path, VIDEO[:keep])) is not None, keep


def test_bytes_after_the_last_box_are_refused(tmp_path: Path) -> None:
    """A trailing fragment that is not a whole box means the sizes do not add up."""
    problem = mp4_problem(written(tmp_path, VIDEO + b"\x00\x00\x01\x00free"))
    assert problem is not None and "cut short" in problem


def test_64_bit_sizes_and_a_last_box_to_the_end_of_file_are_understood(tmp_path: Path) -> None:
    """`size == 1` reads a 64-bit size; `size == 0` runs to the end of the file."""
    to_end = (0).to_bytes(4, "big") + b"mdat" + bytes(100)
    data = FTYP + large_box(b"moov", bytes(40)) + large_box(b"free", bytes(10)) + to_end
    assert mp4_problem(written(tmp_path, data)) is None


def test_a_file_without_moov_is_refused(tmp_path: Path) -> None:
    """Boxes that add up but hold no `moov` are not a playable video."""
    problem = mp4_problem(written(tmp_path, FTYP + box(b"mdat", bytes(64))))
    assert problem is not None and "moov" in problem


def test_a_file_that_does_not_start_with_ftyp_is_not_an_mp4(tmp_path: Path) -> None:
    """An HTML page, an empty file, or boxes without `ftyp` first are not MP4 files."""
    for data in (b"<html>gone</html>", b"", box(b"moov") + FTYP):
        problem = mp4_problem(written(tmp_path, data))
        assert problem is not None and "not an MP4" in problem


def test_a_box_smaller_than_its_header_is_refused(tmp_path: Path) -> None:
    """A size of 4 (less than the 8-byte header) cannot be walked past."""
    data = FTYP + (4).to_bytes(4, "big") + b"moov" + bytes(8)
    problem = mp4_problem(written(tmp_path, data))
    assert problem is not None and "smaller than its own header" in problem


def test_length_of_a_file_mutagen_cannot_read_is_none(tmp_path: Path) -> None:
    """A structurally whole file without a readable movie header has no length."""
    assert mp4_seconds(written(tmp_path, FTYP + box(b"moov") + box(b"mdat"))) is None


def top_level_boxes(data: bytes) -> dict[bytes, bytes]:
    """The emulator video's top-level boxes by type (all have 32-bit sizes)."""
    boxes, offset = {}, 0
    while offset < len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        boxes[data[offset + 4 : offset + 8]] = data[offset : offset + size]
        offset += size
    return boxes


def test_a_fast_start_video_cut_anywhere_is_refused(tmp_path: Path) -> None:
    """With `moov` before `mdat`, a cut right after `moov` leaves sizes that add up: the
    missing media is refused all the same, as is every other cut."""
    boxes = top_level_boxes(VIDEO)
    fast_start = boxes[b"ftyp"] + boxes[b"moov"] + boxes[b"mdat"]
    assert mp4_problem(written(tmp_path, fast_start)) is None
    cut_after_moov = len(boxes[b"ftyp"]) + len(boxes[b"moov"])
    problem = mp4_problem(written(tmp_path, fast_start[:cut_after_moov]))
    assert problem is not None and "no mdat" in problem
    for keep in range(len(fast_start)):
        assert mp4_problem(written(tmp_path, fast_start[:keep])) is not None, keep
