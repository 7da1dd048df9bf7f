"""Tags and `--only`/`--force` through the real CLI: selection by tag, refusal of no match."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from kling_batch.lockfile import load_lockfile
from tests.run.conftest import Project

TAGGED = """\
version = 1
name = "tagged"
output_dir = "renders"

[defaults]
model_tier = "standard"
duration = 3

[[shots]]
id = "dawn"
prompt = "Dawn over the harbour"
tags = ["hero", "morning"]

[[shots]]
id = "dusk"
prompt = "Dusk over the harbour"
tags = ["evening"]

[[shots]]
id = "night"
prompt = "Night over the harbour"
"""


def kb(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m kling_batch ARGS`, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "kling_batch", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def plan_ids(project: Project, *args: str) -> list[str]:
    """Render ids of `plan --format json ARGS`."""
    result = kb("plan", project.manifest, "--format", "json", *args)
    assert result.returncode == 0, result.stderr
    return [shot["id"] for shot in json.loads(result.stdout)["shots"]]


def test_plan_json_shows_each_renders_tags(make_project: Callable[..., Project]) -> None:
    """Every render in the plan JSON carries its shot's tags."""
    project = make_project(TAGGED)
    data = json.loads(kb("plan", project.manifest, "--format", "json").stdout)
    assert {s["id"]: s["tags"] for s in data["shots"]} == {
        "dawn": ["hero", "morning"],
        "dusk": ["evening"],
        "night": [],
    }


def test_only_tag_selects_by_tag_in_plan(make_project: Callable[..., Project]) -> None:
    """`--only tag:NAME` plans the renders whose shot has that tag; tag globs work too."""
    project = make_project(TAGGED)
    assert plan_ids(project, "--only", "tag:evening") == ["dusk"]
    assert plan_ids(project, "--only", "tag:*ing") == ["dawn", "dusk"]
    assert plan_ids(project, "--only", "tag:hero", "--only", "night") == ["dawn", "night"]


def test_run_only_tag_renders_those_and_records_tags(make_project: Callable[..., Project]) -> None:
    """`run --only tag:hero` submits only the tagged render; its lockfile entry keeps the tags,
    and `status` shows them."""
    project = make_project(TAGGED)
    result = project.run("--only", "tag:hero")
    assert result.returncode == 0, result.stderr
    assert project.submissions() == 1
    lock = load_lockfile(project.lock)
    assert list(lock.shots) == ["dawn"] and lock.shots["dawn"].tags == ["hero", "morning"]
    assert "tags = [" in project.lock.read_text()
    status = json.loads(kb("status", project.manifest, "--format", "json").stdout)
    assert [(r["id"], r["tags"]) for r in status["renders"]] == [("dawn", ["hero", "morning"])]
    table = kb("status", project.manifest, env={"COLUMNS": "200", "NO_COLOR": "1"}).stdout
    row = next(line for line in table.splitlines() if line.startswith("dawn"))
    assert row.rstrip().endswith("hero, morning")


def test_force_tag_rerenders_the_tagged_render(make_project: Callable[..., Project]) -> None:
    """`--force tag:evening` re-renders just the tagged render of a finished manifest."""
    project = make_project(TAGGED)
    assert project.run().returncode == 0
    before = project.submissions()
    result = project.run("--force", "tag:evening")
    assert result.returncode == 0, result.stderr
    assert project.submissions() == before + 1


def test_only_matching_nothing_names_the_closest_ids(make_project: Callable[..., Project]) -> None:
    """A misspelt `--only` exits 2 naming the closest ids and tags, and plans nothing."""
    project = make_project(TAGGED)
    result = kb("plan", project.manifest, "--only", "dwan")
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "--only 'dwan' matches no render" in line
    assert "closest ids: dawn" in line and "tag:" in line


def test_tag_matching_nothing_names_the_closest_tags(make_project: Callable[..., Project]) -> None:
    """A `--force tag:` naming no tag exits 2 and names the closest tags."""
    project = make_project(TAGGED)
    result = kb("plan", project.manifest, "--force", "tag:heros")
    assert result.returncode == 2
    assert "--force 'tag:heros' matches no render; closest tags: tag:hero" in result.stderr


def test_run_with_a_pattern_matching_nothing_sends_nothing(
    make_project: Callable[..., Project],
) -> None:
    """`run --only` that matches nothing exits 2 before any request or lockfile."""
    project = make_project(TAGGED)
    result = project.run("--only", "tag:nobody")
    assert result.returncode == 2
    assert "matches no render" in result.stderr
    assert project.requests() == 0 and not project.lock.exists()


def test_emulator_only_renders_are_pointed_out(tmp_path: Path) -> None:
    """`status` and `plan` on a manifest rendered only with --emulator say so and suggest it."""
    manifest = tmp_path / "shots.toml"
    manifest.write_text(TAGGED)
    result = kb("run", manifest, "--emulator", "--only", "night")
    assert result.returncode == 0, result.stderr
    assert manifest.with_name("shots.emulator.lock").is_file()
    for command in ("status", "plan"):
        result = kb(command, manifest)
        assert result.returncode == 0, result.stderr
        assert "has only emulator renders (shots.emulator.lock, no shots.lock)" in result.stderr
        assert f"kling-batch {command} {manifest} --emulator" in result.stderr
    status = kb("status", manifest, "--emulator")
    assert "note:" not in status.stderr and "night" in status.stdout
