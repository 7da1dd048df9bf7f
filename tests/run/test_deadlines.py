"""`kling-batch run`: every job ends, even one the API never finishes (issue 8).

Real CLI subprocesses against the emulator on loopback. `stall` keeps a job processing
forever; `status-word` makes a job answer a status no client knows. Past its deadline a
render stays `submitted` (resumable, no new cost), with the reason in its entry, and the
run exits 1 naming it. A run that kept polling would end in the subprocess timeout.
"""

from __future__ import annotations

from collections.abc import Callable

from kling_batch.lockfile import load_lockfile
from tests.run.conftest import Project, many_shots

# Far below the 60 s test timeout: a run that polls forever fails here, not by hanging.
PATIENCE = 30


def test_a_job_that_never_finishes_is_left_submitted_past_its_deadline(
    make_project: Callable[..., Project],
) -> None:
    """At the default deadline the stalled render is pending; the other one is done."""
    project = make_project(manifest=many_shots(2), faults=("stall=first1",))
    result = project.run("--jobs", "1", timeout=PATIENCE)
    assert result.returncode == 1, result.stdout
    lock = load_lockfile(project.lock)
    stalled = lock.shots["s00"]
    assert stalled.state == "submitted"
    assert stalled.error and "is still 'processing'" in stalled.error
    assert "past its deadline" in stalled.error
    assert lock.shots["s01"].state == "done"
    assert "pending s00" in result.stdout and "deadline" in result.stdout
    submitted = project.submissions()
    again = project.run(timeout=PATIENCE)
    assert again.returncode == 1, again.stdout
    assert project.submissions() == submitted  # resumed, not paid for again
    entry = load_lockfile(project.lock).shots["s00"]
    assert (entry.state, entry.job_id) == ("submitted", stalled.job_id)


def test_a_job_with_an_unknown_status_word_is_given_up_at_job_timeout(
    make_project: Callable[..., Project],
) -> None:
    """`--job-timeout` bounds a job answering a word no client knows; the reason names it."""
    faults = ("stall=first1", "status-word=1,word=rendering")
    project = make_project(manifest=many_shots(1), faults=faults)
    result = project.run("--job-timeout", "300", timeout=PATIENCE)
    assert result.returncode == 1, result.stdout
    entry = load_lockfile(project.lock).shots["s00"]
    assert entry.state == "submitted"
    assert entry.error and "'rendering', a status kling-batch does not know" in entry.error
    assert "deadline of 300 s" in entry.error
    assert "pending s00" in result.stdout
    assert project.submissions() == 1


def test_a_video_offered_under_an_unknown_status_word_is_collected(
    make_project: Callable[..., Project],
) -> None:
    """A job that says `finished` (a word no client knows) but offers its video: the paid
    video is downloaded at once, not left to be lost when the API drops the job."""
    project = make_project(manifest=many_shots(1), faults=("status-word=1,word=finished",))
    result = project.run(timeout=PATIENCE)
    assert result.returncode == 0, result.stdout
    entry = load_lockfile(project.lock).shots["s00"]
    assert entry.state == "done" and (project.root / entry.output).is_file()
    assert project.submissions() == 1
