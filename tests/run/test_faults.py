"""`kling-batch run` against an emulator that misbehaves: storms, 5xx, drops, cut downloads.

Real CLI subprocesses against the emulator on loopback, as in test_run_basics. Faults are
seeded, so each test sees the same draws; no assertion depends on timing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import mutagen
import pytest

from kling_batch.emulator.faults import FaultPlan
from kling_batch.lockfile import Lockfile, load_lockfile
from kling_batch.submission import FINGERPRINT_HEADER
from tests.run.conftest import TIME_SCALE, Project, emulator, many_shots, write_project
from tests.run.harness import part_files, sha256_of

# Every fault at once. The storm starts with the emulator and lasts five real seconds, so it
# covers the run's first requests; drops hit polls and downloads (a dropped submit is an
# `uncertain` one, which has tests of its own below).
ALL_FAULTS = (
    "storm=2500",
    "5xx=0.1",
    "drop=0.1,on=poll",
    "drop=0.1,on=download",
    "truncate=0.3",
    "fail=0.1",
)
IN_FLIGHT = {"submitted", "completed"}


def submits_per_fingerprint(project: Project) -> dict[str, int]:
    """POSTs the emulator received per fingerprint header."""
    return project.served.emulator.journal.count_by_header(FINGERPRINT_HEADER)


def renders_dir(project: Project) -> Path:
    """The run's output folder."""
    return project.root / "renders"


# -- every fault together ----------------------------------------------------------------


@dataclass
class FaultyRun:
    """A 12-render run under ALL_FAULTS, then a plain rerun on the same emulator."""

    project: Project
    first_code: int
    first_lock: Lockfile
    first_submits: dict[str, int]
    storm_answers: int
    rerun_code: int
    rerun_lock: Lockfile
    rerun_submits: dict[str, int]


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultyRun]:
    """Run once under every fault, record the lockfile, then rerun plainly."""
    with emulator(faults=ALL_FAULTS, seed=7) as served:
        project = write_project(tmp_path_factory.mktemp("faults"), served, many_shots(12))
        first = project.run("--jobs", "4")
        assert first.returncode in (0, 1), first.stderr
        journal = served.emulator.journal
        storms = sum(1 for e in journal.entries() if e.fault == "storm" and e.status == 429)
        first_lock = load_lockfile(project.lock)
        first_submits = submits_per_fingerprint(project)
        rerun = project.run("--jobs", "4")
        yield FaultyRun(
            project=project,
            first_code=first.returncode,
            first_lock=first_lock,
            first_submits=first_submits,
            storm_answers=storms,
            rerun_code=rerun.returncode,
            rerun_lock=load_lockfile(project.lock),
            rerun_submits=submits_per_fingerprint(project),
        )


def test_every_fault_together_ends_each_render_done_or_failed_with_a_reason(
    faulty_run: FaultyRun,
) -> None:
    """Under every fault at once each render ends done, or failed/in flight with its reason."""
    assert faulty_run.storm_answers > 0, "the 429 storm did not reach the run"
    lock = faulty_run.first_lock
    assert len(lock.shots) == 12
    states = {key: entry.state for key, entry in lock.shots.items()}
    assert set(states.values()) <= {"done", "failed"} | IN_FLIGHT, states
    for key, entry in lock.shots.items():
        if entry.state != "done":
            assert entry.error, f"{key} is {entry.state} without a reason"
    expected = 0 if set(states.values()) == {"done"} else 1
    assert faulty_run.first_code == expected


def test_every_fault_together_leaves_no_corrupt_output(faulty_run: FaultyRun) -> None:
    """Every MP4 left under renders/ is complete and is the file the lockfile records."""
    project = faulty_run.project
    by_output = {e.output: e for e in faulty_run.rerun_lock.shots.values()}
    files = sorted(renders_dir(project).rglob("*.mp4"))
    assert files
    for path in files:
        entry = by_output[path.relative_to(project.root).as_posix()]
        assert entry.state == "done"
        assert sha256_of(path) == entry.output_sha256
        assert mutagen.File(path).info.length == 4  # every shot of many_shots lasts 4 s
    assert part_files(project) == []


def test_rerun_after_faults_never_resubmits_a_paid_render(faulty_run: FaultyRun) -> None:
    """A rerun retries failed renders only: done and in-flight ones get no new submission."""
    first, after = faulty_run.first_lock, faulty_run.rerun_lock
    for key, entry in first.shots.items():
        sent_before = faulty_run.first_submits.get(entry.fingerprint, 0)
        sent_after = faulty_run.rerun_submits.get(entry.fingerprint, 0)
        if entry.state == "failed":
            continue  # planned as `retry`: a new, paid submission is what it asks for
        assert sent_after == sent_before, f"{key} ({entry.state}) was submitted again"
        assert after.shots[key].state == "done", key
        if entry.state == "done":
            assert after.shots[key].output_sha256 == entry.output_sha256


# -- rate limit --------------------------------------------------------------------------


def test_run_at_the_account_rpm_causes_no_429(make_project: Callable[..., Project]) -> None:
    """Twenty renders at --rpm 50 against a 50 RPM account are never answered 429."""
    project = make_project(manifest=many_shots(20), rpm=50)
    result = project.run("--jobs", "20", "--rpm", "50")
    assert result.returncode == 0, result.stderr
    statuses = [e.status for e in project.served.emulator.journal.entries()]
    assert len(statuses) >= 41  # a submit and a download per render, a job list read at least
    assert 429 not in statuses


# -- downloads that keep failing ---------------------------------------------------------


def test_download_that_keeps_failing_leaves_the_render_for_a_free_rerun(
    make_project: Callable[..., Project],
) -> None:
    """Every download cut short: the render stays `completed`; a rerun fetches it, unpaid."""
    project = make_project(manifest=many_shots(1), faults=("truncate=1",))
    first = project.run()
    assert first.returncode == 1
    entry = load_lockfile(project.lock).shots["s00"]
    assert entry.state == "completed"
    assert entry.error and "download failed" in entry.error
    assert "pending s00" in first.stdout
    assert list(renders_dir(project).rglob("*")) == []  # no partial file, no temp file
    submitted = project.submissions()
    project.served.emulator.app.faults = FaultPlan((), seed=0)  # the CDN recovers
    second = project.run()
    assert second.returncode == 0, second.stderr
    assert project.submissions() == submitted
    entry = load_lockfile(project.lock).shots["s00"]
    assert entry.state == "done"
    assert sha256_of(project.root / entry.output) == entry.output_sha256


# -- ambiguous submissions ---------------------------------------------------------------


def test_ambiguous_submit_is_recorded_uncertain_and_reported(
    make_project: Callable[..., Project],
) -> None:
    """A submit whose answer never comes is `uncertain` in the lockfile and in the summary."""
    project = make_project(manifest=many_shots(3), faults=("ambiguous=first1,on=submit",))
    result = project.run("--jobs", "1")
    assert result.returncode == 1
    lock = load_lockfile(project.lock)
    assert lock.shots["s00"].state == "uncertain"
    assert lock.shots["s00"].error and "may have been billed" in lock.shots["s00"].error
    assert {lock.shots[k].state for k in ("s01", "s02")} == {"done"}
    assert "may have reached the API" in result.stdout
    assert "s00" in result.stdout.split("may have reached the API")[1]


def test_a_job_named_by_location_alone_is_followed_and_downloaded(
    make_project: Callable[..., Project],
) -> None:
    """A 201 naming its job only in Location: each render is recorded with that job,
    polled and downloaded in one run, never left uncertain."""
    project = make_project(manifest=many_shots(2), poll_url_style="location", submit_status=201)
    result = project.run("--jobs", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    lock = load_lockfile(project.lock)
    jobs = project.served.emulator.journal.jobs_by_header(FINGERPRINT_HEADER)
    for entry in lock.shots.values():
        assert (entry.state, [entry.job_id]) == ("done", jobs[entry.fingerprint])
    assert sum(submits_per_fingerprint(project).values()) == 2


def test_plain_rerun_adopts_the_ambiguous_job_without_submitting(
    make_project: Callable[..., Project],
) -> None:
    """A rerun without --resubmit-uncertain finds the job in the list; no second job exists."""
    project = make_project(manifest=many_shots(3), faults=("ambiguous=first1,on=submit",))
    assert project.run("--jobs", "1").returncode == 1
    fingerprint = load_lockfile(project.lock).shots["s00"].fingerprint
    (job,) = project.served.emulator.journal.jobs_by_header(FINGERPRINT_HEADER)[fingerprint]
    result = project.run()
    assert result.returncode == 0, result.stderr
    assert submits_per_fingerprint(project)[fingerprint] == 1
    assert project.served.emulator.journal.jobs_by_header(FINGERPRINT_HEADER)[fingerprint] == [job]
    entry = load_lockfile(project.lock).shots["s00"]
    assert (entry.state, entry.job_id) == ("done", job)


def test_uncertain_submit_is_resent_only_with_the_flag(
    make_project: Callable[..., Project],
) -> None:
    """A dropped submit the job list does not show stays uncertain until --resubmit-uncertain.

    At a tenth of the tests' pace: the resend must come within the model hour the list
    keeps a job (past it the list cannot rule the job out, and nothing is resent), and at
    their pace an hour is 7 real seconds, which three runs on a busy machine can take."""
    project = make_project(
        manifest=many_shots(2), faults=("drop=first1,on=submit",), time_scale=TIME_SCALE * 10
    )
    assert project.run("--jobs", "1").returncode == 1
    entry = load_lockfile(project.lock).shots["s00"]
    assert entry.state == "uncertain"
    assert submits_per_fingerprint(project)[entry.fingerprint] == 1
    plain = project.run()
    assert plain.returncode == 1
    assert submits_per_fingerprint(project)[entry.fingerprint] == 1
    assert load_lockfile(project.lock).shots["s00"].state == "uncertain"
    assert "may have reached the API" in plain.stdout
    flagged = project.run("--resubmit-uncertain")
    assert flagged.returncode == 0, flagged.stderr
    assert submits_per_fingerprint(project)[entry.fingerprint] == 2
    jobs = project.served.emulator.journal.jobs_by_header(FINGERPRINT_HEADER)
    assert len(jobs[entry.fingerprint]) == 1
    assert load_lockfile(project.lock).shots["s00"].state == "done"


def test_a_submit_answered_with_an_error_stops_submitting_and_stays_uncertain(
    make_project: Callable[..., Project],
) -> None:
    """A 200 carrying an error envelope and no job id: that render stays uncertain (failed,
    the next plan would send it again without looking for its job), nothing more is
    submitted, the job already in flight is downloaded, and the run says why in one line."""
    project = make_project(manifest=many_shots(3), faults=("error-200=after1",))
    result = project.run("--jobs", "2")
    assert result.returncode == 1
    assert len(project.served.emulator.journal.submissions()) == 2
    states = {key: entry.state for key, entry in load_lockfile(project.lock).shots.items()}
    assert sorted(states.values()) == ["done", "uncertain"]
    (errored,) = [key for key, state in states.items() if state == "uncertain"]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("Stopped early")]
    assert errored in line and "content_moderation" in line and "nothing more" in line


# -- account and request refusals --------------------------------------------------------


def test_out_of_credits_stops_every_further_submission(
    make_project: Callable[..., Project],
) -> None:
    """After the first 402 nothing more is submitted; paid renders finish; exit 1."""
    project = make_project(manifest=many_shots(6), credits=Decimal("2.00"))  # 2 of $0.896
    result = project.run("--jobs", "3")
    assert result.returncode == 1
    submits = project.served.emulator.journal.submissions()
    refused = [e.seq for e in submits if e.status == 402]
    assert refused
    assert [e.seq for e in submits if e.seq > refused[0]] == []
    lock = load_lockfile(project.lock)
    states = sorted(entry.state for entry in lock.shots.values())
    assert states == ["done", "done", "failed"]
    assert "Stopped early" in result.stdout and "402" in result.stdout


def test_api_400_fails_only_that_render(make_project: Callable[..., Project]) -> None:
    """A request the planner allows but the API rejects (400) fails alone, with its message."""
    ghost = '\n[[shots]]\nid = "ghost"\nprompt = "a ghost"\nimage = "bunny://acct/none/x.png"\n'
    project = make_project(manifest=many_shots(2) + ghost)
    assert "ghost" in str(project.plan_json())  # planned, so the 400 comes from the API
    result = project.run("--jobs", "3")
    assert result.returncode == 1
    lock = load_lockfile(project.lock)
    assert {k: e.state for k, e in lock.shots.items()} == {
        "ghost": "failed",
        "s00": "done",
        "s01": "done",
    }
    error = lock.shots["ghost"].error or ""
    assert "HTTP 400" in error and "unknown or expired upload path" in error
    assert submits_per_fingerprint(project)[lock.shots["ghost"].fingerprint] == 1
    assert "failed ghost" in result.stdout


def test_a_rejected_render_is_reported_once(make_project: Callable[..., Project]) -> None:
    """The run's log has one `failed` line for a render the API rejected."""
    ghost = '\n[[shots]]\nid = "ghost"\nprompt = "a ghost"\nimage = "bunny://acct/none/x.png"\n'
    project = make_project(manifest=many_shots(1) + ghost)
    result = project.run()
    assert result.returncode == 1
    assert len(re.findall(r"^\S+ failed\s+ghost\b", result.stderr, re.MULTILINE)) == 1
