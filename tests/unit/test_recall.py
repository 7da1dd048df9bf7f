"""The jobs remembered outside the lockfile (`kling_batch.recall`), kept in step by the
lockfile's writer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio

from kling_batch.lockfile import LockWriter, new_entry
from kling_batch.plan import build_plan
from kling_batch.recall import JobMemory, read_job
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
