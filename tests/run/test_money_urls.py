"""Signed result URLs stay out of the committed lockfile (issue 9), and a free restore that
fails stops being free (issue 8, point 9). Real CLI against the emulator."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from datetime import datetime, timedelta

from kling_batch.lockfile import load_lockfile
from kling_batch.state import StateDir
from tests.run.conftest import Project
from tests.run.harness import Kill, KillPoint
from tests.run.harness import _run_and_kill as run_and_kill

HOUR = 3600.0
HEADER = 'version = 1\nname = "urls"\noutput_dir = "renders"\n'
ONE = HEADER + '\n[[shots]]\nid = "bay"\nprompt = "a bay"\nmodel_tier = "standard"\n'


def url_store(project: Project) -> dict[str, dict[str, str]]:
    """The URL journal read as the store reads it: the last line on a hash wins."""
    path = StateDir(project.root).result_urls(project.lock)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return {line["sha256"]: line for line in lines}


def lose_output_and_cache(project: Project) -> str:
    """Delete the rendered file and its cached copy; returns its content hash."""
    entry = load_lockfile(project.lock).shots["bay"]
    assert entry.output_sha256 is not None
    (project.root / entry.output).unlink()
    cached = StateDir(project.root).cached_render(entry.output_sha256)
    cached.chmod(0o644)
    cached.unlink()
    return entry.output_sha256


def break_signature(project: Project, sha256: str) -> None:
    """Make the stored URL one the API refuses long before its expiry (a bad signature)."""
    path = StateDir(project.root).result_urls(project.lock)
    stored = url_store(project)[sha256]
    broken = {**stored, "url": stored["url"].replace("/cdn/", "/cdn/0000", 1)}
    with path.open("a") as journal:
        journal.write(json.dumps(broken) + "\n")


def test_the_committed_lockfile_holds_no_signed_url(make_project: Callable[..., Project]) -> None:
    """After a run the lockfile names no result URL; the user-only URL store does."""
    project = make_project(ONE)
    assert project.run().returncode == 0
    text = project.lock.read_text()
    assert "result_url" not in text and "/cdn/" not in text
    entry = load_lockfile(project.lock).shots["bay"]
    assert entry.output_sha256 in url_store(project)
    mode = StateDir(project.root).result_urls(project.lock).stat().st_mode
    assert stat.S_IMODE(mode) == 0o600


def test_a_restore_from_the_stored_url_is_free(make_project: Callable[..., Project]) -> None:
    """Output and cache gone: the plan restores from the stored URL; the run pays nothing."""
    project = make_project(ONE)
    assert project.run().returncode == 0
    lose_output_and_cache(project)
    (shot,) = project.plan_json()["shots"]  # type: ignore[misc]
    assert shot["action"] == "restore" and "result URL" in shot["reasons"][0]
    assert project.run().returncode == 0
    assert project.submissions() == 1
    assert (project.root / "renders" / "bay.mp4").is_file()


def test_a_refused_url_asks_its_job_for_a_fresh_one(make_project: Callable[..., Project]) -> None:
    """A URL refused before its expiry, the job still kept: a fresh URL restores it, free."""
    project = make_project(ONE)
    assert project.run().returncode == 0
    break_signature(project, lose_output_and_cache(project))
    result = project.run()
    assert result.returncode == 0, result.stderr
    assert project.submissions() == 1
    assert (project.root / "renders" / "bay.mp4").is_file()


def test_a_dead_url_stops_being_a_free_restore(make_project: Callable[..., Project]) -> None:
    """The job gone and its URL refused: the run says so once, and the plan prices a render."""
    project = make_project(ONE)
    assert project.run().returncode == 0
    break_signature(project, lose_output_and_cache(project))
    project.served.emulator.advance(2 * HOUR)  # the job's state is kept one hour
    failed = project.run()
    assert failed.returncode == 1
    assert "the URL is forgotten and the next plan prices a re-render" in failed.stdout
    (shot,) = project.plan_json()["shots"]  # type: ignore[misc]
    assert shot["action"] == "changed" and shot["cost_usd"] > 0
    assert project.run().returncode == 0
    assert project.submissions() == 2


def test_a_killed_run_keeps_the_urls_it_learnt(make_project: Callable[..., Project]) -> None:
    """Each URL is journaled as its video lands: a run SIGKILLed before its end still
    leaves the URL of every render it had downloaded."""
    two = ONE + '\n[[shots]]\nid = "cove"\nprompt = "a cove"\nmodel_tier = "standard"\n'
    project = make_project(two)
    killed = run_and_kill(project, ("--jobs", "1"), KillPoint(2, "download"))
    assert isinstance(killed, Kill), killed
    lock = load_lockfile(project.lock)
    done = [entry for entry in lock.shots.values() if entry.state == "done"]
    assert len(done) == 1 and done[0].output_sha256 is not None
    assert done[0].output_sha256 in url_store(project)


def test_a_fresh_url_got_for_a_download_is_kept_with_its_own_expiry(
    make_project: Callable[..., Project],
) -> None:
    """A run killed while downloading; the next finds the recorded URL refused, asks the
    job for a fresh one and downloads: the URL store keeps the fresh URL with the expiry
    the job gave, not the refused URL's (a later plan would stop offering it too soon)."""
    project = make_project(ONE)
    killed = run_and_kill(project, (), KillPoint(1, "download"))
    assert isinstance(killed, Kill), killed
    lock = load_lockfile(project.lock)
    entry = lock.shots["bay"]
    assert entry.state == "completed" and entry.result_url and entry.result_expires_at
    soon = entry.result_expires_at - timedelta(days=6)  # distinct from any fresh expiry
    broken = entry.result_url.replace("/cdn/", "/cdn/0000", 1)
    lock.shots["bay"] = entry.model_copy(update={"result_url": broken, "result_expires_at": soon})
    lock.save(project.lock)
    result = project.run()
    assert result.returncode == 0, result.stdout + result.stderr
    done = load_lockfile(project.lock).shots["bay"]
    assert done.state == "done" and done.output_sha256 is not None
    stored = url_store(project)[done.output_sha256]
    assert stored["url"] != broken
    assert datetime.fromisoformat(stored["expires_at"]) > soon + timedelta(days=5)
