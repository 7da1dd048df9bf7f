"""`run --resubmit-uncertain` sends a render again only after a complete look at the job list.

Each test loses the answer to one submission (`ambiguous=first1`: the job is created and
billed, the answer dropped; `drop=first1`: nothing is created), then reruns against an
emulator whose job list fails, is not offered, runs past one page, or pages without a way
on. Real CLI subprocesses against the emulator on loopback, as in test_faults.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta

import httpx

from kling_batch.lockfile import load_lockfile
from kling_batch.submission import FINGERPRINT_HEADER
from tests.run.conftest import Project, many_shots

LOST_ANSWER = "ambiguous=first1,on=submit"  # the job exists and is billed; no answer
BLIND_HINT = "--resubmit-uncertain=blind"


def lost_answer(make_project: Callable[..., Project], **config: object) -> tuple[Project, str]:
    """Two renders whose first submission goes unanswered (its job exists and is billed):
    the project and that render's fingerprint. `faults` adds to the lost answer."""
    faults = (LOST_ANSWER, *config.pop("faults", ()))  # type: ignore[misc]
    project = make_project(manifest=many_shots(2), faults=faults, **config)
    first = project.run("--jobs", "1")
    assert first.returncode == 1, first.stderr
    entry = load_lockfile(project.lock).shots["s00"]
    assert entry.state == "uncertain"
    return project, entry.fingerprint


def sent(project: Project, fingerprint: str) -> int:
    """Submissions the emulator received for one render."""
    return project.served.emulator.journal.count_by_header(FINGERPRINT_HEADER)[fingerprint]


def teammate_renders(project: Project, count: int) -> None:
    """Another client on the account submits `count` jobs (newer than the lost one)."""
    headers = {"Authorization": f"Bearer {project.served.api_key}"}
    with httpx.Client(base_url=project.served.base_url, headers=headers) as client:
        for n in range(count):
            body = {"model": "kling-o3", "prompt": f"a teammate's shot {n}"}
            client.post("/v1/videos/generations", json=body).raise_for_status()


def test_unreadable_job_list_never_resends(make_project: Callable[..., Project]) -> None:
    """A job list answering 5xx: the uncertain render is not sent again; the run says why."""
    project, fingerprint = lost_answer(make_project, faults=("5xx=1,on=list",))
    result = project.run("--resubmit-uncertain")
    assert result.returncode == 1
    assert sent(project, fingerprint) == 1
    assert load_lockfile(project.lock).shots["s00"].state == "uncertain"
    assert "job list could not be read" in result.stderr
    assert "EmpirioLabs dashboard" in result.stderr and BLIND_HINT in result.stderr
    assert len(project.served.emulator.ledger.entries()) == 2  # s00's job and s01's


def test_blind_resends_when_the_list_cannot_be_read(make_project: Callable[..., Project]) -> None:
    """--resubmit-uncertain=blind sends the render again (here paying twice) and finishes."""
    project, fingerprint = lost_answer(make_project, faults=("5xx=1,on=list",))
    result = project.run(BLIND_HINT)
    assert result.returncode == 0, result.stderr
    assert sent(project, fingerprint) == 2
    assert load_lockfile(project.lock).shots["s00"].state == "done"


def test_job_list_not_offered_never_resends(make_project: Callable[..., Project]) -> None:
    """An API without a job list (404): the uncertain render is not sent again."""
    project, fingerprint = lost_answer(make_project, job_list="absent")
    result = project.run("--resubmit-uncertain")
    assert result.returncode == 1
    assert sent(project, fingerprint) == 1
    assert load_lockfile(project.lock).shots["s00"].state == "uncertain"
    assert "offers no job list" in result.stderr and BLIND_HINT in result.stderr


def test_job_beyond_the_first_page_is_adopted(make_project: Callable[..., Project]) -> None:
    """With 120 newer jobs on the account the lost job sits on page two: it is adopted."""
    project, fingerprint = lost_answer(make_project, rpm=0)
    (job,) = project.served.emulator.journal.jobs_by_header(FINGERPRINT_HEADER)[fingerprint]
    teammate_renders(project, 120)
    result = project.run("--resubmit-uncertain")
    assert result.returncode == 0, result.stderr
    assert sent(project, fingerprint) == 1
    entry = load_lockfile(project.lock).shots["s00"]
    assert (entry.state, entry.job_id) == ("done", job)
    lists = project.served.emulator.journal.entries(path="/v1/jobs")
    assert any("after=" in e.query for e in lists)


def test_list_with_more_but_no_cursor_never_resends(make_project: Callable[..., Project]) -> None:
    """A list that says has_more but gives no way to the next page: nothing is resent."""
    project, fingerprint = lost_answer(make_project, rpm=0, job_list="no-cursor")
    teammate_renders(project, 120)
    result = project.run("--resubmit-uncertain")
    assert result.returncode == 1
    assert sent(project, fingerprint) == 1
    assert load_lockfile(project.lock).shots["s00"].state == "uncertain"
    assert "no way to read them" in result.stderr and BLIND_HINT in result.stderr


def test_submission_older_than_the_list_keeps_is_not_resent(
    make_project: Callable[..., Project],
) -> None:
    """A lost submission from over an hour ago: the list may have dropped its job; not resent."""
    project = make_project(manifest=many_shots(2), faults=("drop=first1,on=submit",))
    assert project.run("--jobs", "1").returncode == 1
    lock = load_lockfile(project.lock)
    entry = lock.shots["s00"]
    # The test's time scale makes a modelled hour 7.2 real seconds: move the record back 10.
    earlier = timedelta(seconds=10)
    charges = [
        c.model_copy(update={"submitted_at": c.submitted_at - earlier}) for c in entry.submissions
    ]
    assert entry.updated_at is not None
    lock.shots["s00"] = entry.model_copy(
        update={"submissions": charges, "updated_at": entry.updated_at - earlier}
    )
    lock.save(project.lock)
    result = project.run("--resubmit-uncertain")
    assert result.returncode == 1
    assert sent(project, entry.fingerprint) == 1
    assert "over an hour ago" in result.stderr and BLIND_HINT in result.stderr


def test_blind_confirmation_says_it_may_pay_twice(make_project: Callable[..., Project]) -> None:
    """Without --yes, =blind is refused with its price counted and the risk named."""
    project, _ = lost_answer(make_project, job_list="absent")
    before = project.submissions()
    refused = project.run(BLIND_HINT, yes=False)
    assert refused.returncode == 3
    assert "Render 1 shot for $0.896" in refused.stderr
    assert "may be paid twice" in refused.stderr and "--yes" in refused.stderr
    over = project.run(BLIND_HINT, "--max-cost", "0.5")
    assert over.returncode == 3
    assert "cost to run is $0.896" in over.stderr
    assert project.submissions() == before


def test_plan_shows_the_cost_to_run_with_blind(make_project: Callable[..., Project]) -> None:
    """`plan --resubmit-uncertain=blind` shows the cost to run with the uncertain render."""
    project, _ = lost_answer(make_project)
    plan = [sys.executable, "-m", "kling_batch", "plan", str(project.manifest)]
    table = subprocess.run([*plan, BLIND_HINT], capture_output=True, text=True, check=True)
    assert "With --resubmit-uncertain=blind the cost to run is $0.896" in table.stdout
    assert "may be paid twice" in table.stdout
    data = subprocess.run(
        [*plan, "--format", "json", BLIND_HINT], capture_output=True, text=True, check=True
    )
    totals = json.loads(data.stdout)["totals"]
    assert totals["to_run_cost_usd"] == 0
    assert totals["resubmit_uncertain"] == {
        "mode": "blind",
        "renders": ["s00"],
        "cost_usd": 0.896,
        "to_run_cost_usd": 0.896,
    }
