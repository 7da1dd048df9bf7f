"""`plan --format markdown` as a pull-request comment, after renders are on record."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

from tests.run.conftest import Project


def markdown(project: Project, *args: str) -> str:
    """`kling-batch plan MANIFEST --format markdown ARGS` (stdout)."""
    argv = [sys.executable, "-m", "kling_batch", "plan", str(project.manifest)]
    result = subprocess.run(
        [*argv, "--format", "markdown", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_only_changes_are_listed_with_the_prompt_diff(make_project: Callable[..., Project]) -> None:
    """After a run and one prompt edit: one row, the rest counted, the diff collapsed, and the
    hidden marker last."""
    project = make_project()
    assert project.run().returncode == 0
    project.edit("Dawn over", "Sunrise over")
    text = markdown(project)
    rows = [line for line in text.splitlines() if line.startswith("| ~ changed |")]
    assert len(rows) == 1 and "`dawn`" in rows[0]
    assert "| = unchanged |" not in text
    assert "3 unchanged renders." in text
    details = text[text.index("<details><summary>Prompt of <code>dawn</code>") :]
    assert "[-Dawn-] {+Sunrise+} over a harbour" in details.split("</details>")[0]
    assert text.splitlines()[-1] == f"<!-- kling-batch-plan: {project.manifest.as_posix()} -->"
    assert "Emulator" not in text


def test_an_emulator_plan_is_marked(make_project: Callable[..., Project]) -> None:
    """A plan against the emulator's lockfile says so at the top."""
    project = make_project()
    text = markdown(project, "--emulator")
    head = text.split("**Plan:")[0]
    assert "**Emulator**" in head and "`shots.emulator.lock`" in head
    assert "nothing here is rendered or billed by the real API" in head
