"""Two machines, one manifest, one store: nobody pays twice, everybody gets the videos.
Real command line, one emulator, the store on moto's S3 server or a shared folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from kling_batch.lockfile import load_lockfile
from tests.remote.conftest import Store, clone, finish, jobs_per_render, machine
from tests.run.conftest import MANIFEST, emulator

RENDERS = 4  # dawn, night, still-take1, still-take2


@pytest.mark.timeout(300)
def test_two_machines_running_at_once_pay_for_each_render_once(
    tmp_path: Path, store: Store
) -> None:
    """Both run the whole manifest at the same moment: one submission per render in the
    emulator's journal and ledger, and both folders end with the same videos."""
    with emulator() as served:
        first = machine(tmp_path / "alice", served, store, MANIFEST)
        second = machine(tmp_path / "bob", served, store, MANIFEST)
        runs = [first.start(), second.start()]
        results = [finish(run) for run in runs]
        for code, stderr in results:
            assert code == 0, stderr
        jobs = jobs_per_render(served)
        assert len(jobs) == RENDERS
        assert all(len(ids) == 1 for ids in jobs.values()), jobs
        assert len(served.emulator.ledger.entries()) == RENDERS
    assert first.outputs() == second.outputs()
    assert len(first.outputs()) == RENDERS
    for folder in (first, second):
        lock = load_lockfile(folder.project.lock)
        assert {e.state for e in lock.shots.values()} == {"done"}
        assert all(e.in_remote for e in lock.shots.values())


@pytest.mark.timeout(300)
def test_a_fresh_clone_restores_every_render_from_the_store_for_free(
    tmp_path: Path, store: Store
) -> None:
    """Lockfile but no outputs, no render cache and expired result URLs: `plan` shows every
    render as a free restore from the store, and `run` submits nothing."""
    with emulator() as served:
        first = machine(tmp_path / "alice", served, store, MANIFEST)
        assert first.run().returncode == 0
        paid = first.project.submissions()
        served.emulator.advance(8 * 24 * 3600)  # every result URL has expired
        teammate = clone(first, tmp_path / "bob")
        plan = teammate.plan_json()
        assert [s["action"] for s in plan["shots"]] == ["restore"] * RENDERS
        for shot in plan["shots"]:
            assert shot["reasons"][-1].endswith("restored from the remote store (free)")
        assert plan["totals"]["to_run_cost_usd"] == 0
        result = teammate.run()
        assert result.returncode == 0, result.stderr
        assert teammate.project.submissions() == paid
    assert teammate.outputs() == first.outputs()


@pytest.mark.timeout(300)
def test_a_render_made_elsewhere_and_not_yet_merged_is_restored_not_paid(
    tmp_path: Path, store: Store
) -> None:
    """The teammate's lockfile does not know it yet, so the plan prices it; the run finds
    its record in the store before paying and restores it instead."""
    with emulator() as served:
        first = machine(tmp_path / "alice", served, store, MANIFEST)
        assert first.run().returncode == 0
        paid = first.project.submissions()
        second = machine(tmp_path / "bob", served, store, MANIFEST)
        assert second.plan_json()["totals"]["to_run"] == RENDERS
        result = second.run()
        assert result.returncode == 0, result.stderr
        assert result.stderr.count("restored from remote") == RENDERS
        assert second.project.submissions() == paid
    assert second.outputs() == first.outputs()
