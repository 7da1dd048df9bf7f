"""`kling-batch run`: every output and every cached render is a file of its own (issue 8).

Real CLI subprocesses against the emulator on loopback. Two shots with the same request
are twins: one is rendered and paid, the other copied from it.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

from kling_batch.lockfile import load_lockfile
from tests.run.conftest import Project
from tests.run.harness import sha256_of

TWINS = """\
version = 1
name = "twins"
output_dir = "renders"

[defaults]
model_tier = "standard"
duration = 4

[[shots]]
id = "a"
prompt = "A lighthouse at dusk"

[[shots]]
id = "twin"
prompt = "A lighthouse at dusk"

[[shots]]
id = "solo"
prompt = "A harbour at noon"
aspect_ratio = "1:1"  # the emulator's video differs by aspect and length only
"""


def outputs(project: Project) -> dict[str, Path]:
    """Each render's output file, by render id."""
    lock = load_lockfile(project.lock)
    return {key: project.root / entry.output for key, entry in lock.shots.items()}


def cache_files(project: Project) -> list[Path]:
    """Files in the render cache."""
    return sorted((project.root / ".kling-batch" / "cache").iterdir())


def edit_in_place(path: Path) -> None:
    """Overwrite a few bytes inside the file, as ffmpeg or an editor writing in place does."""
    with open(path, "r+b") as f:
        f.seek(40)
        f.write(b"edited in place")


def rendered_twins(make_project: Callable[..., Project]) -> Project:
    project = make_project(manifest=TWINS)
    result = project.run()
    assert result.returncode == 0, result.stdout
    assert project.submissions() == 2  # `twin` was copied from `a`, not rendered
    return project


def test_outputs_and_cache_files_never_share_an_inode(
    make_project: Callable[..., Project],
) -> None:
    """After a run with twins, each output and cache file has one link and its own inode."""
    project = rendered_twins(make_project)
    files = [*outputs(project).values(), *cache_files(project)]
    assert len(cache_files(project)) == 2  # one per distinct render
    assert all(path.stat().st_nlink == 1 for path in files)
    assert len({path.stat().st_ino for path in files}) == len(files)
    out = outputs(project)
    assert out["a"].read_bytes() == out["twin"].read_bytes()


def test_cache_files_are_read_only(make_project: Callable[..., Project]) -> None:
    """Cached renders are 0444, so a stray write cannot change what free restores rely on."""
    project = rendered_twins(make_project)
    for cached in cache_files(project):
        assert stat.S_IMODE(cached.stat().st_mode) == 0o444, cached
    for output in outputs(project).values():
        assert stat.S_IMODE(output.stat().st_mode) == 0o644, output


def test_editing_an_output_in_place_leaves_its_twin_and_the_cache_intact(
    make_project: Callable[..., Project],
) -> None:
    """An output written in place changes nothing else; the next run restores it for free."""
    project = rendered_twins(make_project)
    lock = load_lockfile(project.lock)
    out = outputs(project)
    edit_in_place(out["a"])
    edit_in_place(out["solo"])
    assert sha256_of(out["twin"]) == lock.shots["twin"].output_sha256
    for cached in cache_files(project):
        assert sha256_of(cached) == "sha256:" + cached.name
    plan = {item["id"]: item for item in project.plan_json()["shots"]}  # type: ignore[union-attr]
    assert plan["a"]["action"] == plan["solo"]["action"] == "restore"
    assert "local cache" in " ".join(plan["solo"]["reasons"])
    submitted = project.submissions()
    result = project.run()
    assert result.returncode == 0, result.stdout
    assert project.submissions() == submitted
    for key in ("a", "solo"):
        assert sha256_of(out[key]) == lock.shots[key].output_sha256
        assert out[key].stat().st_nlink == 1
