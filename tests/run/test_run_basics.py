"""`kling-batch run` end to end against the emulator: renders, reruns, money, exit codes."""

from __future__ import annotations

import signal
import subprocess
import time
import tomllib
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import mutagen

from kling_batch.lockfile import load_lockfile
from tests.run.conftest import Project, many_shots


def outputs(project: Project) -> dict[str, bytes]:
    """Rendered files under renders/, by relative path."""
    folder = project.root / "renders"
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.mp4"))}


def test_fresh_run_renders_everything_and_bills_the_plan(
    make_project: Callable[..., Project],
) -> None:
    """Every planned render lands as a playable MP4 of its planned length; ledger == plan."""
    project = make_project()
    plan = project.plan_json()
    result = project.run()
    assert result.returncode == 0, result.stderr
    lock = load_lockfile(project.lock)
    assert {k: e.state for k, e in lock.shots.items()} == {
        "dawn": "done",
        "night": "done",
        "still-take1": "done",
        "still-take2": "done",
    }
    for shot in plan["shots"]:  # type: ignore[attr-defined]
        path = project.root / shot["output"]
        assert mutagen.File(path).info.length == shot["seconds"]
    ledger = project.served.emulator.ledger
    assert ledger.total == Decimal(str(plan["totals"]["to_run_cost_usd"]))  # type: ignore[index]
    assert len(project.served.emulator.journal.submissions()) == 4


def test_image_is_uploaded_once_for_two_takes(make_project: Callable[..., Project]) -> None:
    """Two takes sharing one local image upload it once and send its bunny:// path."""
    project = make_project()
    assert project.run().returncode == 0
    uploads = project.served.emulator.journal.entries(path="/v1/files/upload")
    assert len(uploads) == 1
    lock = load_lockfile(project.lock)
    ((upload,),) = (table.values() for table in lock.uploads.values())
    assert upload.path.startswith("bunny://")
    emulator = project.served.emulator
    jobs = [
        emulator.jobs.get(e.job_id, emulator.clock.now())
        for e in lock.shots.values()
        if e.shot == "still"
    ]
    assert len(jobs) == 2
    assert all(j is not None and j.submission.request["image"] == upload.path for j in jobs)


def test_rerun_without_change_makes_no_request(make_project: Callable[..., Project]) -> None:
    """A second run with nothing changed sends zero requests and exits 0."""
    project = make_project()
    assert project.run().returncode == 0
    before = project.requests()
    result = project.run()
    assert result.returncode == 0
    assert project.requests() == before
    assert "Nothing to do" in result.stderr


def test_editing_one_prompt_submits_once(make_project: Callable[..., Project]) -> None:
    """Changing one prompt renders exactly that shot again."""
    project = make_project()
    assert project.run().returncode == 0
    before = project.submissions()
    project.edit("Dawn over", "Sunrise over")
    assert project.run().returncode == 0
    assert project.submissions() == before + 1


def test_renaming_a_shot_costs_nothing(make_project: Callable[..., Project]) -> None:
    """A renamed shot keeps its fingerprint: its file is copied, nothing is submitted."""
    project = make_project()
    assert project.run().returncode == 0
    first = outputs(project)
    before = project.submissions()
    project.edit('id = "dawn"', 'id = "sunrise"')
    result = project.run()
    assert result.returncode == 0, result.stderr
    assert project.submissions() == before
    assert outputs(project)["sunrise.mp4"] == first["dawn.mp4"]


def test_reverting_an_edit_restores_the_earlier_render(
    make_project: Callable[..., Project],
) -> None:
    """Edit, render, revert: the revert submits nothing and puts the earlier file back."""
    project = make_project()
    assert project.run().returncode == 0
    original = outputs(project)["dawn.mp4"]
    project.edit("Dawn over", "Sunrise over")
    assert project.run().returncode == 0
    before = project.submissions()
    project.edit("Sunrise over", "Dawn over")
    result = project.run()
    assert result.returncode == 0, result.stderr
    assert project.submissions() == before
    assert outputs(project)["dawn.mp4"] == original
    assert load_lockfile(project.lock).shots["dawn"].state == "done"


def test_changing_only_the_output_path_moves_the_file(
    make_project: Callable[..., Project],
) -> None:
    """A new output path for an unchanged request costs nothing."""
    project = make_project()
    assert project.run().returncode == 0
    before = project.submissions()
    project.edit('id = "dawn"', 'id = "dawn"\noutput = "morning/dawn.mp4"')
    assert project.run().returncode == 0
    assert project.submissions() == before
    assert (project.root / "renders" / "morning" / "dawn.mp4").is_file()


def test_budget_refusal_exits_3_before_any_request(make_project: Callable[..., Project]) -> None:
    """--max-cost below the plan's cost refuses with exit 3 and sends nothing."""
    project = make_project()
    result = project.run("--max-cost", "1.00")
    assert result.returncode == 3
    assert "over --max-cost" in result.stderr
    assert project.requests() == 0
    assert not project.lock.exists()


def test_manifest_budget_refuses_too(make_project: Callable[..., Project]) -> None:
    """budget_usd in the manifest refuses an over-budget run with exit 3."""
    project = make_project()
    project.edit('output_dir = "renders"', 'output_dir = "renders"\nbudget_usd = 2')
    result = project.run()
    assert result.returncode == 3 and "budget_usd" in result.stderr
    assert project.requests() == 0


def test_no_tty_without_yes_is_refused(make_project: Callable[..., Project]) -> None:
    """Without a terminal, a run that would spend needs --yes (exit 3 otherwise)."""
    project = make_project()
    result = project.run(yes=False)
    assert result.returncode == 3
    assert "--yes" in result.stderr
    assert project.requests() == 0


def test_confirmation_prompt_on_a_terminal(make_project: Callable[..., Project]) -> None:
    """On a TTY the run asks "Render N shots for $X?" and a "n" refuses with exit 3."""
    import pty

    project = make_project()
    pid, fd = pty.fork()
    if pid == 0:  # child: stdin/stdout/stderr are the pty
        import os

        os.execvpe(project.command(yes=False)[0], project.command(yes=False), project.env())
    import os

    seen = b""
    while b"[y/N]" not in seen:
        seen += os.read(fd, 1024)
    os.write(fd, b"n\n")
    _, status = os.waitpid(pid, 0)
    assert b"Render 4 shots for $" in seen
    assert os.waitstatus_to_exitcode(status) == 3
    assert project.submissions() == 0


def test_failed_job_exits_1_and_plans_a_retry(make_project: Callable[..., Project]) -> None:
    """A job the API fails ends the run with exit 1; the next plan retries it."""
    project = make_project(faults=("fail=first1",))
    result = project.run("--jobs", "1")
    assert result.returncode == 1
    lock = load_lockfile(project.lock)
    failed = [e for e in lock.shots.values() if e.state == "failed"]
    assert len(failed) == 1 and "content_moderation" in (failed[0].error or "")
    actions = {s["id"]: s["action"] for s in project.plan_json()["shots"]}  # type: ignore[attr-defined]
    assert sorted(actions.values()).count("retry") == 1


def test_second_run_on_the_same_lockfile_is_refused(
    make_project: Callable[..., Project],
) -> None:
    """While one run holds the lockfile, another is refused with a clear message."""
    import filelock

    project = make_project()
    guard = filelock.FileLock(project.root / ".kling-batch" / "shots.lock.run-lock")
    (project.root / ".kling-batch").mkdir(exist_ok=True)
    with guard:
        result = project.run()
    assert result.returncode == 1
    assert "another kling-batch run is using shots.lock" in result.stderr
    assert project.requests() == 0


def test_ctrl_c_drains_in_flight_and_exits_130(make_project: Callable[..., Project]) -> None:
    """SIGINT stops new submissions, lets submitted renders finish, and exits 130."""
    project = make_project(manifest=many_shots(12, tier="pro", duration=10))
    proc = subprocess.Popen(
        project.command("--jobs", "3"),
        env=project.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(lambda: project.submissions() >= 3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lock = tomllib.loads(project.lock.read_text())
    states = [entry["state"] for entry in lock["shots"].values()]
    assert set(states) <= {"done", "submitting", "submitted", "completed"}
    assert states.count("done") >= 3
    assert project.submissions() < 12


def test_second_ctrl_c_leaves_jobs_recorded_for_resume(
    make_project: Callable[..., Project],
) -> None:
    """Two SIGINTs exit 130 at once; a rerun resumes the recorded jobs without resubmitting."""
    project = make_project(manifest=many_shots(4, tier="pro", duration=10))
    proc = subprocess.Popen(
        project.command("--jobs", "4"),
        env=project.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(lambda: project.submissions() >= 4)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    submitted = project.submissions()
    result = project.run()
    assert result.returncode == 0, result.stderr
    assert project.submissions() == submitted
    assert {e.state for e in load_lockfile(project.lock).shots.values()} == {"done"}


def _wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_status_shows_states_without_network(make_project: Callable[..., Project]) -> None:
    """`kling-batch status` lists each render's state and whether its file is intact."""
    import sys

    project = make_project()
    assert project.run().returncode == 0
    (project.root / "renders" / "dawn.mp4").unlink()
    result = subprocess.run(
        [sys.executable, "-m", "kling_batch", "status", str(project.manifest)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    rows = {line.split()[0]: line.split()[1:3] for line in result.stdout.splitlines()[2:]}
    assert rows["dawn"] == ["done", "missing"]
    assert rows["night"] == ["done", "ok"]


def test_keys_never_reach_files_or_output(
    make_project: Callable[..., Project], tmp_path: Path
) -> None:
    """The API key appears in no file the run wrote and in none of its output."""
    project = make_project()
    result = project.run()
    key = project.served.api_key
    assert key not in result.stdout + result.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path
