"""Crash safety: SIGKILL `kling-batch run` at many points; reruns never pay twice or lose a render.

Each scenario of `harness.scenarios` plays in a fresh project against a fresh emulator: the
first run (`--jobs 3`, seven renders, one uploaded image, two pairs of identical takes) is
killed at a chosen request, then `run --resubmit-uncertain` is repeated until it exits 0
(some scenarios kill that rerun too). The trials run once for the module; each test below
checks one property over all of them and names the kill point that broke it.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

from tests.run.harness import (
    MAX_RERUNS,
    RENDERS,
    Trial,
    run_trial,
    scenarios,
    summary,
)

SEED = 20261125

# The trials take about a minute in all (each kills and reruns real processes).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def trials(tmp_path_factory: pytest.TempPathFactory) -> list[Trial]:
    """Every scenario played to the end, each in its own project and emulator."""
    base = tmp_path_factory.mktemp("crash")
    played = [run_trial(base / f"trial{n:02d}", s) for n, s in enumerate(scenarios(SEED))]
    print("\n" + summary(played))  # shown with -s: where the kills landed
    return played


def test_kills_land_at_24_distinct_points_in_every_phase(trials: list[Trial]) -> None:
    """At least 24 distinct kill points land, covering submit, answer, poll and download."""
    landed = {trial.scenario for trial in trials if trial.kills}
    assert len(landed) >= 24, summary(trials)
    phases = {kill.phase for trial in trials for kill in trial.kills}
    expected = {"before submit (upload)", "between POST and answer", "polling", "download"}
    assert expected <= phases, summary(trials)
    assert any(kill.evidence for trial in trials for kill in trial.kills), summary(trials)


def test_lockfile_parses_after_every_kill(trials: list[Trial]) -> None:
    """Whatever instant the run dies at, the lockfile it leaves loads."""
    broken = [
        f"{trial.scenario}: {kill.lock_error}"
        for trial in trials
        for kill in trial.kills
        if kill.lock_error is not None
    ]
    assert not broken, "\n".join(broken)


def test_reruns_finish_every_render(trials: list[Trial]) -> None:
    """A bounded number of reruns exits 0 with every render `done`: nothing is lost."""
    unfinished = [
        f"{trial.scenario}: exit codes {trial.exit_codes}, states {trial.final_states}, "
        f"errors {trial.rerun_errors}\n{trial.last_stderr[-1500:]}"
        for trial in trials
        if not trial.done
        or len(trial.final_states) != RENDERS
        or set(trial.final_states.values()) != {"done"}
    ]
    assert not unfinished, f"not finished within {MAX_RERUNS} reruns:\n" + "\n".join(unfinished)


def test_no_fingerprint_gets_a_second_job(trials: list[Trial]) -> None:
    """Every fingerprint sent in the header has exactly one job created for it.

    Takes of an identical request cannot be told apart in the API's job list, so a rerun
    adopting a lost job may give it to the sibling take; their fingerprints are pooled.
    """
    problems = []
    for trial in trials:
        takes: dict[str, list[str]] = defaultdict(list)
        for render, fingerprint in trial.fingerprints.items():
            takes[trial.requests[render]].append(fingerprint)
        for fingerprints in takes.values():
            jobs = [j for fp in fingerprints for j in trial.jobs_by_fingerprint.get(fp, [])]
            if len(jobs) != len(fingerprints):
                problems.append(f"{trial.scenario}: {len(jobs)} jobs for {fingerprints}")
        strangers = set(trial.jobs_by_fingerprint) - set(trial.fingerprints.values())
        if strangers:
            problems.append(f"{trial.scenario}: jobs for unplanned fingerprints {strangers}")
    assert not problems, "\n".join(problems)


def test_lost_submit_answers_are_adopted_not_resubmitted(trials: list[Trial]) -> None:
    """A job whose submit answer died with the run ends up recorded, never paid again."""
    lost = [trial for trial in trials if trial.lost_answers]
    assert len(lost) >= 6, "too few kills between a submit's POST and its answer"
    problems = []
    for trial in trials:
        recorded = {job for job in trial.final_job_ids.values() if job}
        created = {job for jobs in trial.jobs_by_fingerprint.values() for job in jobs}
        if not trial.lost_answers <= recorded:
            problems.append(f"{trial.scenario}: lost {trial.lost_answers - recorded} unused")
        if created != recorded or len(recorded) != RENDERS:
            problems.append(
                f"{trial.scenario}: {len(created)} jobs created, {len(recorded)} recorded"
            )
    assert not problems, "\n".join(problems)


def test_nothing_is_billed_twice(trials: list[Trial]) -> None:
    """The emulator's ledger after all the kills equals the plan's cost of one render each."""
    wrong = [
        f"{trial.scenario}: billed {trial.billed}, planned {trial.planned_cost}"
        for trial in trials
        if trial.billed != trial.planned_cost
    ]
    assert not wrong, "\n".join(wrong)


def test_outputs_are_playable_and_match_the_lockfile(trials: list[Trial]) -> None:
    """Every final output is an MP4 of its planned length whose sha256 the lockfile records."""
    bad = [
        f"{trial.scenario}: {out.path}: exists={out.exists} seconds={out.seconds} "
        f"(planned {out.planned_seconds}) sha256 {out.sha256} vs lock {out.locked_sha256}"
        for trial in trials
        for out in trial.outputs
        if not out.exists
        or out.seconds != out.planned_seconds
        or out.sha256 is None
        or out.sha256 != out.locked_sha256
    ]
    assert not bad, "\n".join(bad)
    assert all(len(trial.outputs) == RENDERS for trial in trials)


def test_no_part_files_remain_after_the_final_run(trials: list[Trial]) -> None:
    """After the final successful run, no `*.part` download temp file is left in renders/."""
    stray = {str(trial.scenario): trial.part_files for trial in trials if trial.part_files}
    assert not stray, "\n".join(f"{k}: {v}" for k, v in stray.items())
