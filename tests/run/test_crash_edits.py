"""Crash, then edit: SIGKILL `kling-batch run` while renders are in flight, then rename a
shot, give one a second take and move an output before rerunning. Jobs follow their
requests, not their ids: the emulator's ledger charges each render once, every render ends
done, and no paid render is lost (issue 8, acceptance)."""

from __future__ import annotations

from collections import defaultdict

import pytest

from tests.run.harness import (
    MAX_RERUNS,
    RENDERS_AFTER_EDITS,
    KillPoint,
    Scenario,
    Trial,
    run_trial,
    summary,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# In flight: between a submit's POST and its answer, while polling, while downloading, and
# just after answers (in the lockfile write that follows). A first run polls its jobs in
# flight through reads of the job list (`kling_batch.jobboard`), so polling is killed there.
POINTS = (
    KillPoint(2, "submit"),
    KillPoint(5, "submit"),
    KillPoint(1, "list"),
    KillPoint(3, "list"),
    KillPoint(1, "download"),
    KillPoint(4, "download"),
    KillPoint(3, "submit", 0.004),
    KillPoint(2, "list", 0.008),
)


@pytest.fixture(scope="module")
def trials(tmp_path_factory: pytest.TempPathFactory) -> list[Trial]:
    """Every kill point played to the end with the edits applied before the reruns."""
    base = tmp_path_factory.mktemp("crash-edits")
    played = [
        run_trial(base / f"trial{n:02d}", Scenario(point, edit=True))
        for n, point in enumerate(POINTS)
    ]
    print("\n" + summary(played))
    return played


def test_every_render_ends_done(trials: list[Trial]) -> None:
    """Bounded reruns exit 0 with all eight renders of the edited manifest `done`; what the
    old ids left behind (a render done before the rename) is settled, never in flight."""

    def finished(trial: Trial) -> bool:
        ours = {trial.final_states.get(render) for render in trial.fingerprints}
        return len(trial.fingerprints) == RENDERS_AFTER_EDITS and ours == {"done"}

    unfinished = [
        f"{trial.scenario}: exit codes {trial.exit_codes}, states {trial.final_states}\n"
        f"{trial.last_stderr[-1500:]}"
        for trial in trials
        if not trial.done
        or not finished(trial)
        or not set(trial.final_states.values()) <= {"done", "failed"}
    ]
    assert not unfinished, f"not finished within {MAX_RERUNS} reruns:\n" + "\n".join(unfinished)


def test_the_ledger_charges_each_render_once(trials: list[Trial]) -> None:
    """Renamed, re-taken, moved: billed equals the edited plan's cost of one render each."""
    wrong = [
        f"{trial.scenario}: billed {trial.billed}, planned {trial.planned_cost}"
        for trial in trials
        if trial.billed != trial.planned_cost
    ]
    assert not wrong, "\n".join(wrong)
    assert all(trial.kills for trial in trials), summary(trials)


def test_no_request_gets_a_second_job(trials: list[Trial]) -> None:
    """Each request of the edited plan has exactly one job (takes of one request pooled)."""
    problems = []
    for trial in trials:
        takes: dict[str, list[str]] = defaultdict(list)
        for render, fingerprint in trial.fingerprints.items():
            takes[trial.requests[render]].append(fingerprint)
        for fingerprints in takes.values():
            jobs = [j for fp in fingerprints for j in trial.jobs_by_fingerprint.get(fp, [])]
            if len(jobs) != len(fingerprints):
                problems.append(f"{trial.scenario}: {len(jobs)} jobs for {fingerprints}")
    assert not problems, "\n".join(problems)


def test_no_paid_render_is_lost(trials: list[Trial]) -> None:
    """Every output exists where the edited manifest puts it, matching the lockfile's hash."""
    bad = [
        f"{trial.scenario}: {out.path}: exists={out.exists} sha256 {out.sha256} "
        f"vs lock {out.locked_sha256}"
        for trial in trials
        for out in trial.outputs
        if not out.exists or out.sha256 is None or out.sha256 != out.locked_sha256
    ]
    assert not bad, "\n".join(bad)
    moved = {out.path for trial in trials for out in trial.outputs}
    assert "renders/moved/night.mp4" in moved and "renders/dawn-renamed.mp4" in moved
