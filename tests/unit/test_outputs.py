"""`outputs.py`: only a verified MP4 reaches its output path or the cache, each file its own."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from kling_batch.emulator.media import render_mp4
from kling_batch.errors import BadOutput
from kling_batch.outputs import (
    clone_or_copy,
    detach_cache,
    keep_in_cache,
    place_copy,
    temp_beside,
    verify_and_place,
)
from kling_batch.payloads import Download
from tests.conftest import left_by_killed_writer

MP4 = render_mp4("16:9", Decimal(4))
OTHER = render_mp4("1:1", Decimal(4))


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def downloaded(target: Path, data: bytes, *, declared: bool = True) -> tuple[Path, Download]:
    """A temp file beside `target` holding `data`, as the client leaves a download."""
    temp = temp_beside(target)
    temp.write_bytes(data)
    return temp, Download(len(data), digest(data), length_declared=declared)


def cache_in(folder: Path) -> Callable[[str], Path]:
    return lambda sha256: folder / sha256.removeprefix("sha256:")


def cached(folder: Path, data: bytes) -> Path:
    return cache_in(folder)(digest(data))


def test_a_verified_download_is_placed_and_cached_as_separate_files(tmp_path: Path) -> None:
    """An MP4 whose bytes match lands in place and in a read-only cache copy of its own."""
    target = tmp_path / "renders" / "a.mp4"
    temp, download = downloaded(target, MP4)
    verify_and_place(temp, target, download, cache_in(tmp_path / "cache"))
    copy = cached(tmp_path / "cache", MP4)
    assert target.read_bytes() == MP4 and copy.read_bytes() == MP4
    assert target.stat().st_mode & 0o777 == 0o644
    assert copy.stat().st_mode & 0o777 == 0o444
    assert target.stat().st_ino != copy.stat().st_ino
    assert target.stat().st_nlink == copy.stat().st_nlink == 1
    assert not temp.exists()


def test_a_file_that_is_not_an_mp4_is_never_placed(tmp_path: Path) -> None:
    """An HTML error page served as the video is refused; the old output stays."""
    target = tmp_path / "a.mp4"
    target.write_bytes(MP4)
    page = b"<html>expired</html>" + b" " * 40
    temp, download = downloaded(target, page)
    with pytest.raises(BadOutput, match="not an MP4"):
        verify_and_place(temp, target, download, cache_in(tmp_path / "cache"))
    assert target.read_bytes() == MP4
    assert not (tmp_path / "cache").exists()


def test_a_download_cut_short_is_neither_placed_nor_cached(tmp_path: Path) -> None:
    """Bytes that stop inside a box (all the server sent, without a length) are refused."""
    target = tmp_path / "a.mp4"
    temp, download = downloaded(target, MP4[: len(MP4) // 2], declared=False)
    with pytest.raises(BadOutput, match="cut short"):
        verify_and_place(temp, target, download, cache_in(tmp_path / "cache"))
    assert not target.exists()
    assert not (tmp_path / "cache").exists()


def test_bytes_that_differ_from_what_was_received_are_refused(tmp_path: Path) -> None:
    """A temp file changed after the download (hash mismatch) is refused."""
    target = tmp_path / "a.mp4"
    temp, download = downloaded(target, MP4)
    temp.write_bytes(OTHER)
    with pytest.raises(BadOutput, match="does not match"):
        verify_and_place(temp, target, download, cache_in(tmp_path / "cache"))
    assert not target.exists()


def test_a_download_of_another_hash_than_expected_is_neither_placed_nor_cached(
    tmp_path: Path,
) -> None:
    """A restore expecting one render's hash refuses a whole, valid video of another."""
    target = tmp_path / "a.mp4"
    temp, download = downloaded(target, OTHER)
    with pytest.raises(BadOutput, match="not the recorded render"):
        verify_and_place(temp, target, download, cache_in(tmp_path / "cache"), expected=digest(MP4))
    assert not target.exists()
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("seconds", ["3", "5", "8"])
def test_an_undeclared_length_must_match_the_planned_seconds(tmp_path: Path, seconds: str) -> None:
    """Without a Content-Length, a 4-second video planned at another length is refused."""
    target = tmp_path / "a.mp4"
    temp, download = downloaded(target, MP4, declared=False)
    with pytest.raises(BadOutput, match=r"lasts 4\.00 s, not the planned"):
        verify_and_place(
            temp, target, download, cache_in(tmp_path / "cache"), seconds=Decimal(seconds)
        )
    assert not target.exists()
    assert not (tmp_path / "cache").exists()


def test_an_undeclared_length_within_half_a_second_is_accepted(tmp_path: Path) -> None:
    """Frame rounding (4.04 s for a planned 4 s) is not a wrong render."""
    target = tmp_path / "a.mp4"
    data = render_mp4("16:9", Decimal("4.04"))
    temp, download = downloaded(target, data, declared=False)
    verify_and_place(temp, target, download, cache_in(tmp_path / "cache"), seconds=Decimal(4))
    assert target.read_bytes() == data


def test_a_declared_length_is_never_second_guessed_by_the_video_length(tmp_path: Path) -> None:
    """A body whose Content-Length was checked is not failed for lasting 4 s instead of 5 s."""
    target = tmp_path / "a.mp4"
    temp, download = downloaded(target, MP4, declared=True)
    verify_and_place(temp, target, download, cache_in(tmp_path / "cache"), seconds=Decimal(5))
    assert target.read_bytes() == MP4


def test_temp_beside_sweeps_stale_downloads_of_that_target(tmp_path: Path) -> None:
    """A killed run's partial download of the same output is removed; others stay."""
    target = tmp_path / "a.mp4"
    stale = left_by_killed_writer(target, ".part")
    other = left_by_killed_writer(tmp_path / "b.mp4", ".part")
    longer = left_by_killed_writer(tmp_path / "a.mp4.v2.mp4", ".part")
    fresh = temp_beside(target)
    assert not stale.exists() and other.exists() and longer.exists() and fresh.exists()


def test_place_copy_checks_the_source_hash(tmp_path: Path) -> None:
    """A source that no longer holds the recorded render is refused, nothing placed."""
    source = tmp_path / "cached"
    source.write_bytes(MP4)
    with pytest.raises(BadOutput, match="no longer holds"):
        place_copy(source, tmp_path / "out.mp4", digest(b"something else"))
    assert not (tmp_path / "out.mp4").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["cached"]


def test_place_copy_puts_a_separate_copy_in_place_and_in_the_cache(tmp_path: Path) -> None:
    """A matching source is copied (never linked) to the target, and cached if missing."""
    source = tmp_path / "twin.mp4"
    source.write_bytes(MP4)
    target = tmp_path / "renders" / "out.mp4"
    place_copy(source, target, digest(MP4), cache_in(tmp_path / "cache"))
    assert target.read_bytes() == MP4
    assert [p.name for p in target.parent.iterdir()] == ["out.mp4"]
    inodes = {p.stat().st_ino for p in (source, target, cached(tmp_path / "cache", MP4))}
    assert len(inodes) == 3
    assert source.stat().st_nlink == target.stat().st_nlink == 1


def test_a_cache_file_that_lost_its_content_is_replaced(tmp_path: Path) -> None:
    """A cache entry not holding the hash it is named after is rewritten from a good copy."""
    source = tmp_path / "a.mp4"
    source.write_bytes(MP4)
    copy = cached(tmp_path / "cache", MP4)
    copy.parent.mkdir()
    copy.write_bytes(OTHER)
    keep_in_cache(source, copy, digest(MP4))
    assert copy.read_bytes() == MP4
    assert copy.stat().st_mode & 0o777 == 0o444


def test_detach_cache_unlinks_old_hardlinks_and_drops_edited_copies(tmp_path: Path) -> None:
    """Cache files an older version hardlinked to outputs get inodes of their own."""
    cache, renders = tmp_path / "cache", tmp_path / "renders"
    cache.mkdir()
    renders.mkdir()
    kept, edited = cached(cache, MP4), cached(cache, OTHER)
    kept.write_bytes(MP4)
    edited.write_bytes(OTHER)
    os.link(kept, renders / "a.mp4")
    os.link(edited, renders / "b.mp4")
    (renders / "b.mp4").write_bytes(b"edited in place")  # changes the linked cache file too
    assert detach_cache(cache) == 2
    assert kept.read_bytes() == MP4 and kept.stat().st_nlink == 1
    assert kept.stat().st_mode & 0o777 == 0o444
    assert not edited.exists()
    assert (renders / "a.mp4").read_bytes() == MP4


def test_clone_or_copy_makes_a_new_file_whose_edits_stay_its_own(tmp_path: Path) -> None:
    """Writing the clone (or copy) in place leaves the source unchanged."""
    source, dest = tmp_path / "source.mp4", tmp_path / "dest.mp4"
    source.write_bytes(MP4)
    dest.touch()
    clone_or_copy(source, dest)
    assert dest.read_bytes() == MP4
    with open(dest, "r+b") as f:
        f.write(b"XXXX")
    assert source.read_bytes() == MP4


def test_clone_or_copy_copies_where_clones_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system without copy-on-write clones (the ioctl fails) gets a plain copy."""
    import fcntl

    def refuse(*args: object) -> None:
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(fcntl, "ioctl", refuse)
    source, dest = tmp_path / "source.mp4", tmp_path / "dest.mp4"
    source.write_bytes(MP4)
    dest.touch()
    clone_or_copy(source, dest)
    assert dest.read_bytes() == MP4
    assert dest.stat().st_ino != source.stat().st_ino
