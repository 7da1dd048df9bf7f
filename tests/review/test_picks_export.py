"""`kling-batch pick` (the picks file) and `kling-batch export` (real copies, readable names)."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from kling_batch import picks
from kling_batch.lockfile import PastRender, load_lockfile
from kling_batch.lockname import lock_path
from kling_batch.picks import read_picks
from tests.review.conftest import Reviewed, kling_batch

Project = Callable[..., Path]

SHOTS = """
[[shots]]
id = "teaser-{{ tier }}"
prompt = "a trail shoe on a ridge"
matrix = { tier = ["standard", "pro"] }
model_tier = "{{ tier }}"
takes = 2

[[shots]]
id = "story"
prompt = "4s: rain | 5s: sun"
"""


def picks_file(manifest: Path) -> Path:
    return manifest.with_name(manifest.stem + ".picks.toml")


def test_pick_writes_a_sorted_stable_file(project: Project) -> None:
    """Picks are stored sorted, one a line; picking them again changes no byte."""
    manifest = project(SHOTS)
    result = kling_batch("pick", str(manifest), "story", "teaser-pro-take2", "teaser-pro-take1")
    assert result.returncode == 0, result.stderr
    text = picks_file(manifest).read_text()
    assert text.endswith(
        'picks = [\n    "story",\n    "teaser-pro-take1",\n    "teaser-pro-take2",\n]\n'
    )
    again = kling_batch("pick", str(manifest), "teaser-pro-take1", "story")
    assert again.returncode == 0 and "Already picked" in again.stderr
    assert picks_file(manifest).read_text() == text


def test_pick_accepts_globs(project: Project) -> None:
    """A glob picks every render id it matches."""
    manifest = project(SHOTS)
    assert kling_batch("pick", str(manifest), "teaser-*-take1").returncode == 0
    assert read_picks(manifest) == {"teaser-standard-take1", "teaser-pro-take1"}


def test_pick_of_an_unknown_id_is_refused_in_one_line(project: Project) -> None:
    """An id matching no render exits 2, one line, with the closest id; nothing is written."""
    manifest = project(SHOTS)
    result = kling_batch("pick", str(manifest), "teaser-pro-tak1")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "'teaser-pro-tak1'" in line and "did you mean 'teaser-pro-take1'" in line
    assert not picks_file(manifest).exists()


def test_unpick_removes_only_its_ids(project: Project) -> None:
    """--unpick drops matching picks, even ones no longer in the manifest, and keeps the rest."""
    manifest = project(SHOTS)
    picks_file(manifest).write_text('version = 1\npicks = ["story", "gone", "teaser-pro-take1"]\n')
    result = kling_batch("pick", "--unpick", str(manifest), "gone", "teaser-*")
    assert result.returncode == 0, result.stderr
    assert read_picks(manifest) == {"story"}
    listed = kling_batch("pick", str(manifest))
    assert listed.stdout.split() == ["story"]


def test_damaged_picks_file_is_refused_in_one_line(project: Project) -> None:
    """A picks file with an unknown key exits 2 naming the file and the key."""
    manifest = project(SHOTS)
    picks_file(manifest).write_text('version = 1\npick = ["story"]\n')
    result = kling_batch("pick", str(manifest), "story")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "manifest.picks.toml" in line and "'pick'" in line


def test_a_pick_rewrites_any_picks_file_it_reads_as_one_it_reads_again(project: Project) -> None:
    """A picks file (from a pull request) holding a pick with an escaped control character
    (DEL, which TOML allows only escaped): after `pick story` the file still reads, with
    both picks. Before, DEL was written raw and every later pick, review and export refused
    the file as invalid TOML."""
    manifest = project(SHOTS)
    picks_file(manifest).write_text('version = 1\npicks = ["old\\u007fpick"]\n')
    assert kling_batch("pick", str(manifest), "story").returncode == 0
    listed = kling_batch("pick", str(manifest))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == ["old\x7fpick", "story"]


def test_two_picks_at_once_keep_both(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second `pick` running while the first has read the picks file waits for it, then
    adds to what it wrote: both picks are kept. Before, the first wrote what it had read
    plus its own pick over the second's, which was lost."""
    manifest = project(SHOTS)
    load = picks._load
    others: list[threading.Thread] = []

    def load_then_pick_elsewhere(path: Path) -> picks.PicksFile:
        loaded = load(path)
        if not others:  # the first read only: another process picks `story` meanwhile
            other = threading.Thread(target=picks.pick, args=(manifest, ["story"]))
            others.append(other)
            other.start()
            other.join(timeout=2)  # done by now unless it waits for this pick
        return loaded

    monkeypatch.setattr(picks, "_load", load_then_pick_elsewhere)
    picks.pick(manifest, ["teaser-pro-take1"])
    others[0].join()
    assert read_picks(manifest) == {"story", "teaser-pro-take1"}


@pytest.mark.parametrize(
    "hostile",
    ["a = " + "[" * 100_000, "x" + ".x" * 1_500 + " = 1"],
    ids=["nested-arrays", "long-dotted-key"],
)
def test_a_hostile_picks_file_is_refused_in_one_line(project: Project, hostile: str) -> None:
    """A picks file nested too deeply, or with a key of thousands of parts, exits 2 in one
    line naming the file (no traceback)."""
    manifest = project(SHOTS)
    picks_file(manifest).write_text(f"version = 1\npicks = []\n{hostile}\n")
    result = kling_batch("pick", str(manifest), "story")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "manifest.picks.toml" in line


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
@pytest.mark.parametrize("command", ["review", "pick"])
def test_a_picks_file_that_is_no_regular_file_is_refused_in_one_line(
    project: Project, kind: str, command: str
) -> None:
    """A picks file shipped as a FIFO (a read would wait forever) or a link to /dev/zero (a
    read would fill memory): exit 2 in one line naming the file, at once."""
    manifest = project(SHOTS)
    if kind == "fifo":
        os.mkfifo(picks_file(manifest))
    else:
        picks_file(manifest).symlink_to(kind)
    result = kling_batch(command, str(manifest), *(["story"] if command == "pick" else []))
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "manifest.picks.toml" in line and "must be a regular file" in line


@pytest.fixture
def rendered(reviewed: Reviewed, tmp_path: Path) -> Path:
    """A private copy of the rendered example (its manifest path), free to pick in."""
    copy = tmp_path / "project"
    shutil.copytree(reviewed.root, copy, symlinks=True)
    return copy / reviewed.manifest.name


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_export_copies_every_finished_render_with_readable_names(
    rendered: Path, reviewed: Reviewed, tmp_path: Path
) -> None:
    """Each finished render lands as `<id>.mp4` with its bytes, as a new file, not a link."""
    dest = tmp_path / "out"
    result = kling_batch("export", str(rendered), str(dest), "--emulator")
    assert result.returncode == 0, result.stderr
    planned = reviewed.plan(emulator=True)
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{i}.mp4" for i in planned)
    for render_id, shot in planned.items():
        source, copy = rendered.parent / shot["output"], dest / f"{render_id}.mp4"
        assert sha256(copy) == sha256(source)
        assert copy.stat().st_ino != source.stat().st_ino
        assert copy.stat().st_nlink == 1
    again = kling_batch("export", str(rendered), str(dest), "--emulator")
    assert "0 copied" in again.stderr


def test_export_replaces_a_hardlink_with_a_copy(rendered: Path, tmp_path: Path) -> None:
    """A destination file hardlinked to the render becomes a copy: editing it spares the render."""
    dest = tmp_path / "out"
    dest.mkdir()
    source = rendered.parent / "renders-emulator" / "hero-trail-shoe.mp4"
    before = sha256(source)
    (dest / "hero-trail-shoe.mp4").hardlink_to(source)
    result = kling_batch("export", str(rendered), str(dest), "--emulator")
    assert result.returncode == 0, result.stderr
    with open(dest / "hero-trail-shoe.mp4", "ab") as f:
        f.write(b"edited")
    assert sha256(source) == before


def test_export_picked_copies_only_the_picks(rendered: Path, tmp_path: Path) -> None:
    """--picked exports the picked renders and nothing else."""
    picks = ["hero-rain-jacket", "teaser-trail-shoe-pro-take2"]
    assert kling_batch("pick", str(rendered), *picks).returncode == 0
    dest = tmp_path / "picked"
    result = kling_batch("export", str(rendered), str(dest), "--picked", "--emulator")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in dest.iterdir()) == [f"{p}.mp4" for p in sorted(picks)]


def test_export_picked_reports_picks_it_cannot_copy(rendered: Path, tmp_path: Path) -> None:
    """A pick that did not render (failed, or not rendered yet) fails the export (exit 1)."""
    assert kling_batch("pick", str(rendered), "doomed", "hero-trail-shoe").returncode == 0
    dest = tmp_path / "picked"
    result = kling_batch("export", str(rendered), str(dest), "--picked")
    assert result.returncode == 1
    assert "doomed (failed" in result.stderr and "hero-trail-shoe (new" in result.stderr
    assert not dest.exists() or list(dest.iterdir()) == []


def test_export_picked_without_picks_is_refused(rendered: Path, tmp_path: Path) -> None:
    """--picked with nothing picked exits 2 and says how to pick."""
    result = kling_batch("export", str(rendered), str(tmp_path / "x"), "--picked")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "kling-batch pick" in line


def test_export_keeps_an_edited_file_and_says_so(rendered: Path, tmp_path: Path) -> None:
    """An exported file the user edited is kept (exit 1, named on stderr); once removed, the
    next export copies the render again."""
    dest = tmp_path / "out"
    assert kling_batch("export", str(rendered), str(dest), "--emulator").returncode == 0
    edited = dest / "hero-trail-shoe.mp4"
    edited.write_text("my graded edit\n")
    result = kling_batch("export", str(rendered), str(dest), "--emulator")
    assert result.returncode == 1, result.stderr
    assert edited.read_text() == "my graded edit\n"
    assert "0 copied" in result.stderr and "1 kept" in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("kept:")]
    assert f"{edited} differs from every render of hero-trail-shoe" in line
    assert "remove it to export again" in line
    assert str(edited) not in result.stdout.splitlines()
    edited.unlink()
    again = kling_batch("export", str(rendered), str(dest), "--emulator")
    assert again.returncode == 0, again.stderr
    source = rendered.parent / "renders-emulator" / "hero-trail-shoe.mp4"
    assert sha256(edited) == sha256(source)


def test_export_keeps_another_renders_video_at_a_target(rendered: Path, tmp_path: Path) -> None:
    """A target holding a different render's video (outputs swapped, or files renamed by
    hand) is no render of that id: it is kept, not overwritten."""
    dest = tmp_path / "out"
    dest.mkdir()
    other = rendered.parent / "renders-emulator" / "teasers" / "teaser-trail-shoe-pro" / "take1.mp4"
    shutil.copyfile(other, dest / "hero-trail-shoe.mp4")
    result = kling_batch("export", str(rendered), str(dest), "--emulator")
    assert result.returncode == 1, result.stderr
    assert sha256(dest / "hero-trail-shoe.mp4") == sha256(other)
    assert "kept: " in result.stderr and "render of hero-trail-shoe" in result.stderr


def test_export_replaces_an_earlier_render_of_the_same_id(rendered: Path, tmp_path: Path) -> None:
    """A target holding an earlier render of that id on record (an earlier export, before
    the shot was re-rendered) is replaced by the current render."""
    earlier = b"an earlier take of the hero shot"
    lock_file = lock_path(rendered, emulator=True)
    lock = load_lockfile(lock_file)
    entry = lock.shots["hero-trail-shoe"]
    past = PastRender(
        fingerprint="sha256:" + "0" * 64,
        output_sha256="sha256:" + hashlib.sha256(earlier).hexdigest(),
        output_size=len(earlier),
    )
    lock.shots["hero-trail-shoe"] = entry.model_copy(update={"history": [past]})
    lock.save(lock_file)
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "hero-trail-shoe.mp4").write_bytes(earlier)
    result = kling_batch("export", str(rendered), str(dest), "--emulator")
    assert result.returncode == 0, result.stderr
    source = rendered.parent / "renders-emulator" / "hero-trail-shoe.mp4"
    assert sha256(dest / "hero-trail-shoe.mp4") == sha256(source)
    assert "kept" not in result.stderr


@pytest.mark.parametrize(
    "where", ["renders-emulator", "renders-emulator/sub", "renders", ".kling-batch", "link"]
)
def test_export_into_the_projects_own_folders_is_refused(rendered: Path, where: str) -> None:
    """An output folder (either one, or a link to it) or the state folder as destination:
    exit 2 in one line, nothing written (a target there may be another render's file)."""
    root = rendered.parent
    (root / "link").symlink_to("renders-emulator")
    (root / "renders").mkdir(exist_ok=True)
    before = {p: sha256(p) for p in (root / "renders-emulator").glob("*.mp4")}
    result = kling_batch("export", str(rendered), str(root / where), "--emulator")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "in the project's own folder" in line
    assert {p: sha256(p) for p in (root / "renders-emulator").glob("*.mp4")} == before


def test_export_beside_the_project_folders_is_allowed(rendered: Path) -> None:
    """The project's own folder holds the output folder but is no output folder: allowed."""
    result = kling_batch("export", str(rendered), str(rendered.parent / "exports"), "--emulator")
    assert result.returncode == 0, result.stderr
