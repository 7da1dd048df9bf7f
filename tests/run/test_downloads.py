"""`kling-batch run`: a downloaded file is verified before it is placed or cached (issue 8).

Real CLI subprocesses against the emulator on loopback. The emulator's `truncate` and
`swap` faults with `length=none` serve a download chunked, without a Content-Length, so
only the file itself can tell that it is cut short or the wrong video.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import mutagen

from kling_batch.emulator import parse_fault
from kling_batch.emulator.faults import FaultPlan
from kling_batch.lockfile import load_lockfile
from tests.run.conftest import Project, many_shots
from tests.run.harness import part_files, sha256_of


def set_faults(project: Project, *specs: str) -> None:
    """Replace the running emulator's faults (an empty list: it recovers)."""
    faults = tuple(parse_fault(spec) for spec in specs)
    project.served.emulator.app.faults = FaultPlan(faults, seed=0)


def downloads(project: Project) -> int:
    """Result downloads the emulator has served (or started to serve) so far."""
    return sum(1 for e in project.served.emulator.journal.entries() if e.path.startswith("/cdn/"))


def cache_files(project: Project) -> list[Path]:
    """Files in the render cache."""
    folder = project.root / ".kling-batch" / "cache"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def plan_check(project: Project) -> int:
    """Exit code of `kling-batch plan --check`."""
    argv = [sys.executable, "-m", "kling_batch", "plan", str(project.manifest), "--check"]
    return subprocess.run(argv, capture_output=True, check=False).returncode


def assert_done_and_whole(project: Project, render_id: str, seconds: float) -> None:
    """The render is done; its output is the recorded file and plays `seconds`."""
    entry = load_lockfile(project.lock).shots[render_id]
    assert entry.state == "done"
    output = project.root / entry.output
    assert sha256_of(output) == entry.output_sha256
    assert mutagen.File(output).info.length == seconds


def test_a_cut_download_without_content_length_is_never_done_or_cached(
    make_project: Callable[..., Project],
) -> None:
    """A chunked result cut short is refused, not cached; the render waits, paid, for a rerun."""
    project = make_project(manifest=many_shots(1), faults=("truncate=1,length=none",))
    first = project.run()
    assert first.returncode == 1, first.stdout
    entry = load_lockfile(project.lock).shots["s00"]
    assert entry.state == "completed"
    assert entry.error and "cut short" in entry.error
    assert "pending s00" in first.stdout
    assert not (project.root / "renders" / "s00.mp4").exists()
    assert part_files(project) == []
    assert cache_files(project) == []
    submitted = project.submissions()
    set_faults(project)  # the CDN recovers
    second = project.run()
    assert second.returncode == 0, second.stderr
    assert project.submissions() == submitted
    assert_done_and_whole(project, "s00", 4.0)
    assert load_lockfile(project.lock).shots["s00"].error is None
    (cached,) = cache_files(project)
    assert sha256_of(cached) == "sha256:" + cached.name


def test_a_wrong_length_video_without_content_length_is_refused_and_fetched_again(
    make_project: Callable[..., Project],
) -> None:
    """A whole 3 s video served chunked for a 4 s render is refused; the retry gets the render."""
    project = make_project(manifest=many_shots(1), faults=("swap=first1,seconds=3,length=none",))
    result = project.run()
    assert result.returncode == 0, result.stdout
    assert downloads(project) == 2
    assert_done_and_whole(project, "s00", 4.0)
    assert [p.name for p in cache_files(project)] == [
        load_lockfile(project.lock).shots["s00"].output_sha256.removeprefix("sha256:")
    ]


def test_a_restore_that_downloads_other_bytes_places_and_records_nothing(
    make_project: Callable[..., Project],
) -> None:
    """Restoring from the result URL refuses a file whose hash is not the recorded one."""
    project = make_project(manifest=many_shots(1))
    assert project.run().returncode == 0
    recorded = load_lockfile(project.lock).shots["s00"].output_sha256
    output = project.root / "renders" / "s00.mp4"
    output.unlink()
    for cached in cache_files(project):
        cached.unlink()  # only the result URL is left to restore from
    set_faults(project, "swap=1,seconds=4.2")  # a whole video, but not this render
    restore = project.run()
    assert restore.returncode == 1, restore.stdout
    assert "not the recorded render" in restore.stdout
    assert not output.exists()
    assert cache_files(project) == []
    assert load_lockfile(project.lock).shots["s00"].output_sha256 == recorded
    set_faults(project)
    assert project.run().returncode == 0
    assert sha256_of(output) == recorded
    assert plan_check(project) == 0
