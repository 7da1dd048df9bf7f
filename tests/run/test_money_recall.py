"""A job in flight whose lockfile record git took away (a `git checkout` of another branch, a
stash, a revert) is resumed from the state folder, not paid again. Real CLI against the
emulator."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from kling_batch.emulator import Latency
from kling_batch.lockfile import load_lockfile
from kling_batch.submission import FINGERPRINT_HEADER
from tests.run.conftest import Project, emulator, write_project

# Jobs wait 450 modelled seconds (0.9 real seconds) in the queue: a run with a 1-second job
# deadline always leaves its job in flight.
SLOW = Latency(queue_seconds=(450.0, 450.0), jitter=0.0)

HEADER = 'version = 1\nname = "recall"\noutput_dir = "renders"\n'
SHOT = '\n[[shots]]\nid = "{}"\nprompt = "{}"\nmodel_tier = "standard"\n'
BAY = HEADER + SHOT.format("bay", "a calm bay")
BOTH = BAY + SHOT.format("hero", "the hero lands")


def checkout_in_flight(project: Project) -> str:
    """Branch B renders `bay`; branch A adds `hero` and runs, stopped while hero's job
    renders; then `git checkout B` puts B's lockfile back (no `hero`). Returns hero's job."""
    project.manifest.write_text(BAY)
    assert project.run().returncode == 0
    branch_b = project.lock.read_bytes()
    project.manifest.write_text(BOTH)
    assert project.run("--job-timeout", "1").returncode == 1
    entry = load_lockfile(project.lock).shots["hero"]
    assert entry.state == "submitted" and entry.job_id
    project.lock.write_bytes(branch_b)  # the checkout: the lockfile is B's again
    return entry.job_id


def cancel(project: Project, *args: str, code: int = 0) -> str:
    """`kling-batch cancel` of the project's jobs in flight, which must exit with `code`;
    what it said."""
    argv = [sys.executable, "-m", "kling_batch", "cancel", str(project.manifest)]
    cancelled = subprocess.run(
        [*argv, "--api-base", project.served.base_url, *args],
        capture_output=True,
        text=True,
        env=project.env(),
        check=False,
    )
    assert cancelled.returncode == code, cancelled.stdout + cancelled.stderr
    return cancelled.stderr


def billed_total(project: Project) -> Decimal:
    """What `kling-batch spend --format json` says was billed in all."""
    argv = [sys.executable, "-m", "kling_batch", "spend", str(project.manifest)]
    done = subprocess.run(
        [*argv, "--format", "json"], capture_output=True, text=True, check=True, timeout=60
    )
    return Decimal(str(json.loads(done.stdout)["totals"]["billed_usd"]))


def hero_plan(project: Project) -> tuple[dict[str, object], dict[str, object]]:
    """hero's item of the plan, and the plan's totals."""
    plan = project.plan_json()
    shots = {shot["id"]: shot for shot in plan["shots"]}  # type: ignore[attr-defined]
    return shots["hero"], plan["totals"]  # type: ignore[return-value]


def test_a_job_in_flight_lost_by_a_checkout_is_resumed_not_paid_again(
    make_project: Callable[..., Project],
) -> None:
    """The lockfile lost hero's job in flight: plan resumes it at $0, the run follows it to
    its end and downloads it; the API saw one submit for hero."""
    project = make_project(BAY, latency=SLOW)
    job = checkout_in_flight(project)
    shot, totals = hero_plan(project)
    assert shot["action"] == "resume"
    (reason,) = shot["reasons"]  # type: ignore[misc]
    assert f"job {job}" in reason and "earlier run, not in this lockfile" in reason
    assert totals["to_run_cost_usd"] == 0
    result = project.run()
    assert result.returncode == 0, result.stderr
    assert project.submissions() == 2  # bay once, hero once
    entry = load_lockfile(project.lock).shots["hero"]
    jobs = project.served.emulator.journal.jobs_by_header(FINGERPRINT_HEADER)
    assert jobs[entry.fingerprint] == [job]
    assert entry.state == "done" and entry.job_id == job
    assert [charge.job_id for charge in entry.submissions] == [job]
    assert (project.root / "renders" / "hero.mp4").is_file()
    assert not list((project.root / ".kling-batch" / "jobs").glob("*/*"))  # it ended
    lock = load_lockfile(project.lock)
    assert project.served.emulator.ledger.total == sum(e.cost_usd for e in lock.shots.values())


def test_an_older_record_of_the_shot_does_not_hide_the_job_in_flight(
    make_project: Callable[..., Project],
) -> None:
    """The checkout brings back an older render of hero (another prompt): the new request's
    job in flight is resumed; the older render stays in the entry's history."""
    project = make_project(BOTH.replace("the hero lands", "the hero waits"), latency=SLOW)
    assert project.run().returncode == 0
    older = project.lock.read_bytes()
    project.manifest.write_text(BOTH)
    assert project.run("--job-timeout", "1").returncode == 1
    job = load_lockfile(project.lock).shots["hero"].job_id
    project.lock.write_bytes(older)
    shot, totals = hero_plan(project)
    assert (shot["action"], totals["to_run_cost_usd"]) == ("resume", 0)
    assert project.run().returncode == 0
    assert project.submissions() == 3  # bay, the older hero, the new hero: once each
    entry = load_lockfile(project.lock).shots["hero"]
    assert entry.state == "done" and entry.job_id == job and len(entry.history) == 1


def test_only_the_same_request_resumes_the_remembered_job(
    make_project: Callable[..., Project],
) -> None:
    """Two jobs in flight lost by the checkout, one shot's prompt edited since: the same
    request resumes its job, the edited one is new and paid (its old job is not its own)."""
    project = make_project(BAY, latency=SLOW)
    checkout_in_flight(project)
    project.edit('prompt = "the hero lands"', 'prompt = "the hero takes off"')
    with project.manifest.open("a") as f:
        f.write(SHOT.format("hero-two", "the hero lands"))
    actions = {s["id"]: s["action"] for s in project.plan_json()["shots"]}  # type: ignore[attr-defined]
    assert actions == {"bay": "unchanged", "hero": "new", "hero-two": "resume"}
    assert project.run().returncode == 0
    assert project.submissions() == 3  # bay, "the hero lands" once, "takes off" once


def test_a_job_remembered_from_another_api_is_not_resumed(
    make_project: Callable[..., Project], tmp_path: Path
) -> None:
    """The job was submitted to one API (emulator): planned for another, the render is
    new, as the other API has no such job; planned for the first, it resumes."""
    project = make_project(BAY, latency=SLOW)
    checkout_in_flight(project)
    assert hero_plan(project)[0]["action"] == "resume"
    with emulator() as other:
        elsewhere = write_project(tmp_path, other, BOTH)
        assert hero_plan(elsewhere)[0]["action"] == "new"


def test_without_the_state_folder_the_plan_is_as_before(
    make_project: Callable[..., Project],
) -> None:
    """The state folder removed (a fresh clone) or its entry damaged: nothing is
    remembered, the render is planned new and paid as before."""
    project = make_project(BAY, latency=SLOW)
    checkout_in_flight(project)
    assert hero_plan(project)[0]["action"] == "resume"
    (remembered,) = (project.root / ".kling-batch" / "jobs").glob("*/*")
    data = json.loads(remembered.read_text())
    remembered.write_text(json.dumps({**data, "submitted_at": "yesterday"}))
    assert hero_plan(project)[0]["action"] == "new"
    shutil.rmtree(project.root / ".kling-batch")
    assert hero_plan(project)[0]["action"] == "new"


def test_an_unanswered_submission_lost_by_a_checkout_is_looked_for_not_resent(
    make_project: Callable[..., Project],
) -> None:
    """hero's submit went unanswered (the job was made), then the checkout lost the record:
    the plan says uncertain, not new, and the run finds the job in the job list."""
    project = make_project(BAY, faults=("ambiguous=first1,on=submit",))
    project.manifest.write_text(BOTH)
    assert project.run("--only", "hero").returncode == 1
    assert load_lockfile(project.lock).shots["hero"].state == "uncertain"
    project.lock.unlink()  # the checkout of a branch that never ran
    plan = project.plan_json()
    shots = {shot["id"]: shot for shot in plan["shots"]}  # type: ignore[attr-defined]
    assert shots["hero"]["action"] == "uncertain"
    assert "earlier run" in shots["hero"]["reasons"][0]
    assert plan["totals"]["to_run_cost_usd"] == shots["bay"]["cost_usd"]  # type: ignore[index]
    result = project.run()
    assert result.returncode == 0, result.stdout + result.stderr
    assert project.submissions() == 2  # hero once (unanswered), bay once
    entry = load_lockfile(project.lock).shots["hero"]
    assert entry.state == "done" and entry.job_id
    assert (project.root / "renders" / "hero.mp4").is_file()


def test_a_job_cancelled_by_the_user_is_not_resumed_after_a_checkout(
    make_project: Callable[..., Project],
) -> None:
    """hero's job in flight is cancelled with `kling-batch cancel`, then the lockfile is
    reverted (no hero): the plan prices hero as new, not a resume of the cancelled job
    (a run would follow it to its cancellation and fail hero, rendering nothing)."""
    project = make_project(BAY, latency=Latency(queue_seconds=(1e6, 1e6), jitter=0.0))
    project.manifest.write_text(BOTH)
    assert project.run("--only", "hero", "--job-timeout", "1").returncode == 1
    assert load_lockfile(project.lock).shots["hero"].state == "submitted"
    cancel(project)
    assert load_lockfile(project.lock).shots["hero"].state == "failed"
    project.lock.unlink()  # the checkout of a branch that never ran
    shot, totals = hero_plan(project)
    assert shot["action"] == "new"
    assert totals["to_run_cost_usd"] == 2 * shot["cost_usd"]  # type: ignore[operator]  # bay too


def leave_behind_a_memo_of_a_job_on_record(project: Project) -> tuple[Path, str]:
    """hero's job lost by a checkout is resumed to its end, then hero is re-rendered under
    an edited prompt; the memo of its first job is put back (as if its removal had failed).
    Returns the memo and that job."""
    job = checkout_in_flight(project)
    (memo,) = (project.root / ".kling-batch" / "jobs").glob("*/*")
    left = memo.read_bytes()
    assert project.run().returncode == 0
    project.edit("the hero lands", "the hero waits")
    assert project.run().returncode == 0
    memo.write_bytes(left)
    return memo, job


def test_a_memo_of_a_job_on_record_is_not_resumed_or_charged_again(
    make_project: Callable[..., Project],
) -> None:
    """hero's first job is on record (among its past submissions) and its memo was left
    behind: hero put back to that request, with no copy to restore, is paid anew, and spend
    counts the first job once."""
    project = make_project(BAY, latency=SLOW)
    _, job = leave_behind_a_memo_of_a_job_on_record(project)
    project.edit("the hero waits", "the hero lands")
    state = project.root / ".kling-batch"
    shutil.rmtree(state / "cache")  # no free copy of the first render left anywhere
    shutil.rmtree(state / "cache-index")
    (state / "shots.lock.urls.jsonl").unlink()
    for _ in range(2):  # the lockfile read in full, then its facts from the cache
        assert hero_plan(project)[0]["action"] == "changed"
    assert project.run().returncode == 0
    jobs = [charge.job_id for charge in load_lockfile(project.lock).shots["hero"].submissions]
    assert jobs.count(job) == 1 and len(jobs) == len(set(jobs)) == 3


def test_a_run_removes_the_memo_of_a_job_on_record(
    make_project: Callable[..., Project],
) -> None:
    """The memo left behind of a job the lockfile records as ended is removed by the next
    run, whatever it renders."""
    project = make_project(BAY, latency=SLOW)
    memo, _ = leave_behind_a_memo_of_a_job_on_record(project)
    assert project.run("--force", "bay").returncode == 0
    assert not memo.exists()


def test_a_job_cancel_found_failed_is_not_resumed_after_a_checkout(
    make_project: Callable[..., Project],
) -> None:
    """hero's job failed while no run followed it and `kling-batch cancel` recorded the
    failure; the lockfile then reverted (no hero), the plan prices hero as new, not a
    resume of the failed job (a run would fail hero again, rendering nothing)."""
    project = make_project(BAY, latency=SLOW, faults=("fail=1",))
    project.manifest.write_text(BOTH)
    assert project.run("--only", "hero", "--job-timeout", "1").returncode == 1
    project.served.emulator.advance(1000)  # past the job's failure
    cancel(project)
    assert load_lockfile(project.lock).shots["hero"].state == "failed"
    project.lock.unlink()  # the checkout of a branch that never ran
    assert hero_plan(project)[0]["action"] == "new"


def memos(project: Project) -> list[Path]:
    """The jobs remembered in the project's state folder."""
    return list((project.root / ".kling-batch" / "jobs").glob("*/*"))


def test_cancel_stops_a_job_only_a_memo_remembers(
    make_project: Callable[..., Project],
) -> None:
    """hero's job keeps rendering after the checkout lost its record: `cancel` cancels it on
    the API, records it in the lockfile as cancelled with its bill, `spend` reports that
    bill, the memo is gone and the next plan prices hero as a retry (once)."""
    project = make_project(BAY, faults=("stall=after1",), bill_cancelled=True)  # hero never ends
    job = checkout_in_flight(project)
    assert hero_plan(project)[0]["action"] == "resume"
    said = cancel(project)
    emu = project.served.emulator
    found = emu.jobs.get(job, emu.clock.now())
    assert found is not None and found.view(emu.clock.now()).status == "cancelled"
    assert f"hero: cancelled by the user (job {job}) (billed $" in said
    assert "Cancelled 1 of 1 job(s) in flight; recorded in shots.lock." in said
    entry = load_lockfile(project.lock).shots["hero"]
    assert entry.cancelled and entry.job_id == job
    assert [(c.job_id, c.billed_usd) for c in entry.submissions] == [(job, entry.billed_usd)]
    assert (
        billed_total(project)
        == emu.ledger.total
        > load_lockfile(project.lock).shots["bay"].billed_usd
    )
    assert not memos(project)
    shot, totals = hero_plan(project)
    assert shot["action"] == "retry"
    assert shot["reasons"] == [f"last attempt was cancelled by the user (job {job})"]
    assert totals["to_run_cost_usd"] == shot["cost_usd"]


def test_cancel_only_chooses_a_render_only_a_memo_remembers(
    make_project: Callable[..., Project],
) -> None:
    """`--only hero` chooses hero's remembered job though the lockfile has no hero."""
    project = make_project(BAY, faults=("stall=after1",))
    job = checkout_in_flight(project)
    assert f"hero: cancelled by the user (job {job})" in cancel(project, "--only", "hero")
    assert load_lockfile(project.lock).shots["hero"].cancelled


def test_a_memo_job_cancel_finds_completed_is_downloaded_without_paying_again(
    make_project: Callable[..., Project],
) -> None:
    """hero's remembered job had finished when `cancel` asked: it is written into the
    lockfile `completed` with its result URL, so the next run, after the API forgot the
    job, downloads hero without asking for the job or submitting it again."""
    hour = 3600.0  # the API keeps the job long enough for the cancel to find it
    project = make_project(BAY, latency=SLOW, job_retention_seconds=100 * hour)
    job = checkout_in_flight(project)
    emu = project.served.emulator
    emu.advance(1000)  # past the job's end
    said = cancel(project)
    assert f"hero: job {job} finished before it could be cancelled" in said
    entry = load_lockfile(project.lock).shots["hero"]
    assert (entry.state, entry.job_id) == ("completed", job) and entry.result_url
    assert hero_plan(project)[0]["action"] == "resume"
    emu.advance(101 * hour)  # past the job's retention: the API forgets it
    assert emu.jobs.get(job, emu.clock.now()) is None
    seen = emu.journal.entries()[-1].seq
    ran = project.run()
    assert ran.returncode == 0, ran.stderr
    assert load_lockfile(project.lock).shots["hero"].state == "done"
    assert (project.root / "renders" / "hero.mp4").is_file()
    assert f"/v1/jobs/{job}" not in {e.path for e in emu.journal.entries(since=seen)}
    assert project.submissions() == 2  # bay once, hero once
    assert not memos(project)


def test_cancel_says_an_unanswered_memo_cannot_be_cancelled(
    make_project: Callable[..., Project],
) -> None:
    """A remembered submission that went unanswered has no job id: `cancel` says so for its
    render, cancels nothing and leaves it to the next run's look in the job list."""
    project = make_project(BAY, faults=("ambiguous=first1,on=submit",))
    project.manifest.write_text(BOTH)
    assert project.run("--only", "hero").returncode == 1
    project.lock.unlink()  # the checkout of a branch that never ran
    said = cancel(project)
    (line,) = [line for line in said.splitlines() if line.startswith("hero: ")]
    assert "unanswered, not in shots.lock: no job id is known, so it cannot be cancelled" in line
    assert not project.lock.exists() and memos(project)
    assert hero_plan(project)[0]["action"] == "uncertain"


def test_cancel_says_when_remembered_jobs_could_not_be_looked_for(
    make_project: Callable[..., Project],
) -> None:
    """With a job remembered and a manifest that does not plan, `cancel` warns that the
    remembered jobs were not looked for and exits 1, never a quiet "nothing to cancel"."""
    project = make_project(BAY, faults=("stall=after1",))
    checkout_in_flight(project)
    project.edit("the hero lands", "the hero {{ nowhere }}")
    said = cancel(project, code=1)
    assert "warning: jobs remembered from earlier runs were not looked for" in said
    assert "nowhere" in said


def test_cancel_keeps_the_job_a_renamed_shot_takes_over_beside_a_memo_job(
    make_project: Callable[..., Project],
) -> None:
    """Shot a's job in flight (prompt one) goes to b, renamed to ask for it, while a now asks
    for prompt two, whose job only a memo remembers. Both jobs have finished when `cancel`
    asks: recording a's remembered job must not drop the job b takes over, which is paid
    for and downloaded by the next run, never submitted again."""
    hour = 3600.0
    project = make_project(BAY, latency=SLOW, job_retention_seconds=100 * hour)
    assert project.run().returncode == 0
    branch_b = project.lock.read_bytes()
    one, two = SHOT.format("a", "prompt one"), SHOT.format("a", "prompt two")
    project.manifest.write_text(BAY + two)
    assert project.run("--job-timeout", "1").returncode == 1  # a's job for prompt two
    remembered = load_lockfile(project.lock).shots["a"].job_id
    project.lock.write_bytes(branch_b)  # a checkout takes its record away
    project.manifest.write_text(BAY + one)
    assert project.run("--job-timeout", "1").returncode == 1  # a's job for prompt one
    taken = load_lockfile(project.lock).shots["a"].job_id
    project.manifest.write_text(BAY + SHOT.format("b", "prompt one") + two)
    shots = {shot["id"]: shot for shot in project.plan_json()["shots"]}  # type: ignore[attr-defined]
    assert (shots["a"]["action"], shots["b"]["action"]) == ("resume", "resume")
    project.served.emulator.advance(1000)  # past both jobs' end
    said = cancel(project)
    assert f"job {taken} finished" in said and f"job {remembered} finished" in said
    jobs = {e.job_id for e in load_lockfile(project.lock).shots.values()}
    assert {taken, remembered} <= jobs
    shots = {shot["id"]: shot for shot in project.plan_json()["shots"]}  # type: ignore[attr-defined]
    assert (shots["a"]["action"], shots["b"]["action"]) == ("resume", "resume")
    assert project.run().returncode == 0
    assert project.submissions() == 3  # bay, and a's two jobs: none paid again
