"""The jobs remembered outside the lockfile (`kling_batch.recall`), kept in step by the
lockfile's writer."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import anyio

from kling_batch.lockfile import Lockfile, LockWriter, new_entry
from kling_batch.plan import build_plan
from kling_batch.recall import JobMemory, RememberedJob, read_job, recall_window
from kling_batch.state import StateDir
from tests.conftest import NOW

# One request under two ids: the job of "old" is adopted by "new".
TWO = "".join(f'[[shots]]\nid = "{name}"\nprompt = "a lighthouse"\n' for name in ("old", "new"))


def test_a_job_moved_to_another_id_stays_remembered(project: Callable[..., Path]) -> None:
    """A job in flight moved under another id (a renamed shot's job adopted) is still in
    flight: the commit that moves it keeps it remembered, whichever entry it reads first."""
    path = project(TWO)
    plan = build_plan(path, now=NOW)
    old, new = (item.render for item in plan.items)
    state = StateDir(path.parent)
    state.ensure()
    lock = plan.lock
    lock.api = "https://api.example.test"
    writer = LockWriter(plan.lock_path, lock)
    writer.jobs = JobMemory(state, plan.lock_path)
    entry = new_entry(old, "submitted", job_id="job_1", submitted_at=NOW, updated_at=NOW)

    async def main() -> None:
        writer.set("old", entry)
        await writer.commit()
        assert read_job(state, plan.lock_path, old.fingerprint) is not None
        writer.move("old", "new", new)
        await writer.commit()

    anyio.run(main)
    kept = read_job(state, plan.lock_path, old.fingerprint)
    assert kept is not None and kept.job_id == "job_1"


API = "https://api.example.test"
ONE = '[[shots]]\nid = "a"\nprompt = "a lighthouse"\n'


def remember_ahead(path: Path, ahead: timedelta) -> tuple[JobMemory, timedelta]:
    """A job of shot "a" remembered with a date `ahead` of NOW, its file's time too (both
    written while the clock was ahead); the memory of its lockfile and the render's window."""
    plan = build_plan(path, now=NOW, api=API)
    render = plan.items[0].render
    state = StateDir(path.parent)
    state.ensure()
    memo = state.remembered_job(plan.lock_path, render.fingerprint)
    memo.parent.mkdir(parents=True)
    memo.write_text(RememberedJob(render.fingerprint, API, NOW + ahead, "job_1").dumps())
    stamp = (NOW + ahead).timestamp()
    os.utime(memo, (stamp, stamp))
    return JobMemory(state, plan.lock_path), recall_window(render.tier, render.seconds)


def action_at(path: Path, now: datetime) -> str:
    """The action planned for shot "a" at `now`."""
    return build_plan(path, now=now, api=API).items[0].action


def test_a_job_dated_ahead_is_resumed_while_no_run_has_seen_it(
    project: Callable[..., Path],
) -> None:
    """A memo dated a day ahead, never seen by a run: its age is unknown, so the plan
    resumes its job rather than pay again, even a window after NOW."""
    path = project(ONE)
    _, window = remember_ahead(path, timedelta(days=1))
    assert action_at(path, NOW) == "resume"
    assert action_at(path, NOW + window + timedelta(minutes=1)) == "resume"


def test_a_job_dated_ahead_is_kept_one_window_from_when_a_run_saw_it(
    project: Callable[..., Path],
) -> None:
    """A memo dated a day ahead is first seen by a run at NOW: it is resumed within a
    window of NOW and planned new after, not kept until the clock reaches its date."""
    path = project(ONE)
    memory, window = remember_ahead(path, timedelta(days=1))
    memory.tidy(Lockfile(api=API), NOW)
    assert action_at(path, NOW + window - timedelta(minutes=1)) == "resume"
    assert action_at(path, NOW + window + timedelta(minutes=1)) == "new"


def test_a_job_dated_a_little_ahead_counts_from_its_date(project: Callable[..., Path]) -> None:
    """Clocks a minute apart: a memo dated a minute ahead counts from its date, its window
    ending a minute later than NOW's would."""
    path = project(ONE)
    memory, window = remember_ahead(path, timedelta(minutes=1))
    memory.tidy(Lockfile(api=API), NOW)
    assert action_at(path, NOW + window + timedelta(seconds=30)) == "resume"
    assert action_at(path, NOW + window + timedelta(minutes=2)) == "new"
