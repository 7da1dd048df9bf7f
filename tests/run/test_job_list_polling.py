"""Jobs in flight followed through the API's job list (issue 13), through the real command
line against the emulator; requests counted from the emulator's journal."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from kling_batch.lockfile import load_lockfile
from tests.run.conftest import Project, many_shots

RENDERS = 12


def requests(project: Project) -> Counter[str]:
    """Counted API requests by kind: submit, list, poll (one job), other."""
    kinds: Counter[str] = Counter()
    for entry in project.served.emulator.journal.entries():
        if not entry.counted:
            continue
        if entry.method == "POST" and entry.path == "/v1/videos/generations":
            kinds["submit"] += 1
        elif entry.method == "GET" and entry.path == "/v1/jobs":
            kinds["list"] += 1
        elif entry.method == "GET" and entry.path.startswith("/v1/jobs/"):
            kinds["poll"] += 1
        else:
            kinds["other"] += 1
    return kinds


def all_done(project: Project) -> bool:
    """Every render of the manifest is done in the lockfile."""
    shots = load_lockfile(project.lock).shots
    return len(shots) == RENDERS and all(e.state == "done" for e in shots.values())


def test_jobs_in_flight_are_followed_through_the_list(
    make_project: Callable[..., Project],
) -> None:
    """With a job list, jobs are polled through it: no job is asked about on its own, and
    the run costs fewer than two requests per render."""
    project = make_project(many_shots(RENDERS), rpm=0)
    result = project.run("--jobs", "6")
    assert result.returncode == 0, result.stderr
    assert all_done(project)
    kinds = requests(project)
    assert kinds["submit"] == RENDERS
    assert kinds["poll"] == 0
    assert 1 <= kinds["list"] < RENDERS
    assert sum(kinds.values()) < 2 * RENDERS


def test_without_a_job_list_each_job_is_polled_on_its_own(
    make_project: Callable[..., Project],
) -> None:
    """An API without a job list is probed once, then every job is polled on its own."""
    project = make_project(many_shots(RENDERS), rpm=0, job_list="absent")
    result = project.run("--jobs", "6")
    assert result.returncode == 0, result.stderr
    assert all_done(project)
    kinds = requests(project)
    assert kinds["submit"] == RENDERS
    assert kinds["list"] == 1
    assert kinds["poll"] >= RENDERS


def test_a_list_that_pages_without_a_cursor_still_serves(
    make_project: Callable[..., Project],
) -> None:
    """A list without a cursor still shows the newest jobs: they are followed through it."""
    project = make_project(many_shots(RENDERS), rpm=0, job_list="no-cursor")
    result = project.run("--jobs", "4")
    assert result.returncode == 0, result.stderr
    assert all_done(project)
    kinds = requests(project)
    assert kinds["poll"] == 0
    assert kinds["list"] >= 1
