"""`atomic.py`: files are replaced whole or not at all, and leave no temp files behind."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from kling_batch import atomic
from kling_batch.atomic import atomic_write, commit_temp, sweep_temps, temp_beside
from tests.conftest import left_by_killed_writer, temp_in_another_process


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_creates_the_folder_and_file_with_the_default_mode(tmp_path: Path) -> None:
    """A new file lands with its bytes, mode 0644, and nothing else in its folder."""
    target = tmp_path / "deep" / "a.lock"
    atomic_write(target, "hello")
    assert target.read_text() == "hello"
    assert mode(target) == 0o644
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.lock"]


def test_write_keeps_the_mode_of_the_file_it_replaces(tmp_path: Path) -> None:
    """Replacing a 0600 file keeps it 0600 (a user's choice is not undone)."""
    target = tmp_path / "a.lock"
    target.write_text("old")
    target.chmod(0o600)
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new" and mode(target) == 0o600


def test_a_failed_replace_keeps_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the rename fails, the old content stays and the temp file is removed."""
    target = tmp_path / "a.lock"
    target.write_text("old")

    def refuse(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, "new")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.lock"]


def test_temp_beside_is_hidden_and_named_after_its_target(tmp_path: Path) -> None:
    """The temp file sits in the target's folder, hidden, named after the target."""
    temp = temp_beside(tmp_path / "out" / "clip.mp4", suffix=".part")
    assert temp.parent == tmp_path / "out"
    assert temp.name.startswith(".clip.mp4.") and temp.name.endswith(".part")
    assert temp.read_bytes() == b""


def test_commit_temp_moves_the_bytes_with_the_given_mode(tmp_path: Path) -> None:
    """commit_temp renames the temp file over the target and sets its mode."""
    target = tmp_path / "clip.mp4"
    target.write_bytes(b"old")
    temp = temp_beside(target, suffix=".part")
    temp.write_bytes(b"new")
    commit_temp(temp, target, mode=0o640)
    assert target.read_bytes() == b"new" and mode(target) == 0o640
    assert not temp.exists()


def test_sweep_removes_only_temps_of_that_file(tmp_path: Path) -> None:
    """Stale temps of one file go; another file's temps and the file itself stay."""
    target = tmp_path / "a.lock"
    target.write_text("kept")
    stale = [left_by_killed_writer(target, ".tmp") for _ in range(2)]
    other = left_by_killed_writer(tmp_path / "b.lock", ".tmp")
    download = left_by_killed_writer(target, ".part")
    assert sweep_temps(target) == 2
    assert not any(p.exists() for p in stale)
    assert other.exists() and download.exists() and target.exists()
    assert sweep_temps(target, suffix=".part") == 1 and not download.exists()


def test_sweep_treats_glob_characters_in_names_literally(tmp_path: Path) -> None:
    """A lockfile named with `[` and `*` sweeps its own temps, not its neighbours'."""
    odd = tmp_path / "a[1]*.lock"
    mine = left_by_killed_writer(odd, ".tmp")
    neighbour = left_by_killed_writer(tmp_path / "a1x.lock", ".tmp")
    assert sweep_temps(odd) == 1
    assert not mine.exists() and neighbour.exists()
    assert [p.name for p in tmp_path.iterdir()] == [neighbour.name]


@pytest.mark.parametrize(
    ("target", "other", "suffix"),
    [
        ("hero.mp4", "hero.mp4.other-thing", ".part"),
        ("hero.mp4", "hero.mp4.v2.mp4", ".part"),
        ("a.lock", "a.lock.lock", ".tmp"),  # the lockfiles of a.toml and a.lock.toml
        ("a.lock", "a.lock.emulator.lock", ".tmp"),
    ],
)
def test_sweep_leaves_the_temps_of_a_file_whose_name_starts_alike(
    tmp_path: Path, target: str, other: str, suffix: str
) -> None:
    """`hero.mp4`'s sweep leaves `hero.mp4.other-thing`'s temp file: another target's
    download or lockfile save, which may be under way in another run."""
    theirs = left_by_killed_writer(tmp_path / other, suffix)
    mine = left_by_killed_writer(tmp_path / target, suffix)
    assert sweep_temps(tmp_path / target, suffix=suffix) == 1
    assert theirs.exists() and not mine.exists()


def test_sweep_leaves_a_temp_another_process_is_writing(tmp_path: Path) -> None:
    """A download still under way in another process keeps its temp file; once that
    process is gone (killed), the next sweep removes it."""
    target = tmp_path / "hero.mp4"
    with temp_in_another_process(target, ".part") as temp:
        assert sweep_temps(target, suffix=".part") == 0
        assert temp.exists()
    assert sweep_temps(target, suffix=".part") == 1
    assert not temp.exists()
