"""Resuming recorded jobs: downloads from a recorded URL, and what happens once it expires."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from kling_batch.lockfile import load_lockfile
from kling_batch.state import StateDir
from kling_batch.urls import ResultUrls
from tests.run.conftest import TIME_SCALE, Project

HOUR = 3600.0
DAY = 24 * HOUR


def rewind(project: Project, shot: str, state: str) -> None:
    """Make a finished render look as if the run had died at `state`, output not yet saved."""
    lock = load_lockfile(project.lock)
    entry = lock.shots[shot]
    update: dict[str, object] = {"state": state, "output_sha256": None, "output_size": None}
    if state == "submitted":
        update.update(result_url=None, result_expires_at=None, completed_at=None)
    else:  # a completed job's URL is in the lockfile until its video is downloaded
        assert entry.output_sha256 is not None and entry.result_url is None
        stored = ResultUrls(StateDir(project.root).result_urls(project.lock))
        known = stored.get(entry.output_sha256)
        assert known is not None
        update.update(result_url=known.url, result_expires_at=known.expires_at)
    lock.shots[shot] = entry.model_copy(update=update)
    lock.save(project.lock)
    (project.root / entry.output).unlink()
    for cached in (project.root / ".kling-batch" / "cache").iterdir():
        cached.unlink()


def age_submission(project: Project, shot: str, seconds: float) -> None:
    """The lockfile records real submission times: age one by `seconds` modelled seconds,
    as the emulator was advanced."""
    lock = load_lockfile(project.lock)
    entry = lock.shots[shot]
    assert entry.submitted_at is not None
    aged = entry.submitted_at - timedelta(seconds=seconds * TIME_SCALE)
    lock.shots[shot] = entry.model_copy(update={"submitted_at": aged})
    lock.save(project.lock)


def test_completed_job_forgotten_by_api_downloads_from_recorded_url(
    make_project: Callable[..., Project],
) -> None:
    """Two hours later the API has dropped the job, but its URL still serves the video."""
    project = make_project()
    assert project.run().returncode == 0
    rewind(project, "dawn", "completed")
    project.served.emulator.advance(2 * HOUR)
    before = project.submissions()
    result = project.run()
    assert result.returncode == 0, result.stderr
    assert project.submissions() == before
    entry = load_lockfile(project.lock).shots["dawn"]
    assert entry.state == "done"
    assert (project.root / entry.output).is_file()


def test_expired_url_of_forgotten_job_fails_and_replans_at_full_price(
    make_project: Callable[..., Project],
) -> None:
    """Eight days later the URL is gone too: the render fails, explained, and is priced again."""
    project = make_project()
    assert project.run().returncode == 0
    rewind(project, "dawn", "completed")
    project.served.emulator.advance(8 * DAY)
    age_submission(project, "dawn", 8 * DAY)
    before = project.submissions()
    result = project.run()
    assert result.returncode == 1
    assert project.submissions() == before
    entry = load_lockfile(project.lock).shots["dawn"]
    assert entry.state == "failed"
    assert "expired" in (entry.error or "") and "re-render" in (entry.error or "")
    plan = project.plan_json()
    dawn = next(s for s in plan["shots"] if s["id"] == "dawn")  # type: ignore[attr-defined]
    assert dawn["action"] == "retry"
    assert plan["totals"]["to_run_cost_usd"] == dawn["cost_usd"] > 0  # type: ignore[index]


def test_submitted_job_forgotten_without_url_fails_with_explanation(
    make_project: Callable[..., Project],
) -> None:
    """A job the API forgot before its result URL was recorded cannot be recovered."""
    project = make_project()
    assert project.run().returncode == 0
    rewind(project, "night", "submitted")
    project.served.emulator.advance(2 * HOUR)
    age_submission(project, "night", 2 * HOUR)
    result = project.run()
    assert result.returncode == 1
    entry = load_lockfile(project.lock).shots["night"]
    assert entry.state == "failed"
    assert "no longer knows job" in (entry.error or "")


def test_submitted_job_still_known_is_polled_not_resubmitted(
    make_project: Callable[..., Project],
) -> None:
    """A recorded in-flight job is polled and downloaded on the next run, never resubmitted."""
    project = make_project()
    assert project.run().returncode == 0
    rewind(project, "night", "submitted")
    before = project.submissions()
    result = project.run()
    assert result.returncode == 0, result.stderr
    assert project.submissions() == before
    assert load_lockfile(project.lock).shots["night"].state == "done"
