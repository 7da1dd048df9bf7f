"""`run` applies the planning limits before it sends anything (issue 9)."""

from __future__ import annotations

from collections.abc import Callable

from tests.run.conftest import Project


def test_run_refuses_more_renders_than_max_renders(make_project: Callable[..., Project]) -> None:
    """The project's four renders are refused under `--max-renders 3`, with no request."""
    project = make_project()

    result = project.run("--max-renders", "3")

    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"error: {project.manifest}, shot 'still', field 'takes': the manifest expands to 4 "
        "renders (2 from this shot), over the limit of 3; raise it with --max-renders"
    ]
    assert project.requests() == 0
    assert not project.lock.exists()


def test_run_renders_up_to_max_renders(make_project: Callable[..., Project]) -> None:
    """At exactly the limit, the run goes ahead."""
    project = make_project()
    assert project.run("--max-renders", "4").returncode == 0
    assert project.submissions() == 4
