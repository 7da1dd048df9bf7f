"""The API's first 401 stops every further request of the run; nothing paid is lost.

Real CLI subprocesses against an emulator whose key works for a few requests, then is
refused (`revoke=afterN`). A low `--rpm` keeps later submits and polls queued behind the
rate limiter when the 401 comes back; the run's own `--time-scale` is raised so the queue
spacing (0.6 s) is far longer than one loopback round trip.
"""

from __future__ import annotations

from collections.abc import Callable

from kling_batch.emulator.faults import FaultPlan
from kling_batch.lockfile import load_lockfile
from kling_batch.submission import FINGERPRINT_HEADER
from tests.run.conftest import Project, many_shots

QUEUED = ("--jobs", "6", "--rpm", "1", "--time-scale", "0.01")


def refused_run(make_project: Callable[..., Project]) -> tuple[Project, str, str]:
    """Six renders, the key refused after two requests: the project, stdout and stderr."""
    project = make_project(manifest=many_shots(6), faults=("revoke=after2",))
    result = project.run(*QUEUED)
    assert result.returncode == 1, result.stderr
    return project, result.stdout, result.stderr


def test_first_401_is_the_last_request(make_project: Callable[..., Project]) -> None:
    """After the first 401 the emulator sees no request at all: queued submits never go out."""
    project, _, _ = refused_run(make_project)
    entries = project.served.emulator.journal.entries()
    statuses = [entry.status for entry in entries]
    assert statuses.count(401) == 1, statuses
    assert statuses[-1] == 401, statuses


def test_refused_key_stops_in_one_line_and_loses_nothing(
    make_project: Callable[..., Project],
) -> None:
    """One line says why the run stopped; jobs submitted before the 401 stay recorded, and
    a rerun with the key accepted again finishes every render, each submitted once."""
    project, stdout, _ = refused_run(make_project)
    stops = [line for line in stdout.splitlines() if line.startswith("Stopped early")]
    assert len(stops) == 1
    assert "refused the API key" in stops[0] and "no request was sent after" in stops[0]
    lock = load_lockfile(project.lock)
    submitted = {
        key: entry.job_id for key, entry in lock.shots.items() if entry.state == "submitted"
    }
    assert submitted and all(submitted.values())
    assert "submitting" not in {entry.state for entry in lock.shots.values()}
    project.served.emulator.app.faults = FaultPlan((), seed=0)  # the key works again
    rerun = project.run()
    assert rerun.returncode == 0, rerun.stderr
    lock = load_lockfile(project.lock)
    assert {entry.state for entry in lock.shots.values()} == {"done"}
    assert all(lock.shots[key].job_id == job for key, job in submitted.items())
    jobs = project.served.emulator.journal.jobs_by_header(FINGERPRINT_HEADER)
    assert sorted(len(jobs[entry.fingerprint]) for entry in lock.shots.values()) == [1] * 6
