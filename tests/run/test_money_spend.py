"""Spend is never forgotten: every submission stays on record, and bills round as the
estimates do (issue 8, point 10). Real CLI against the emulator."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from kling_batch.emulator.media import render_mp4
from kling_batch.lockfile import load_lockfile
from tests.run.conftest import Project

HEADER = 'version = 1\nname = "spend"\noutput_dir = "renders"\n'
ONE = HEADER + '\n[[shots]]\nid = "bay"\nprompt = "a bay at noon"\nmodel_tier = "standard"\n'


def test_a_forced_rerender_keeps_the_first_submission_on_record(
    make_project: Callable[..., Project],
) -> None:
    """After `--force`, the entry lists both jobs with their estimates and bills."""
    project = make_project(ONE)
    assert project.run().returncode == 0
    first = load_lockfile(project.lock).shots["bay"]
    assert project.run("--force", "bay").returncode == 0
    entry = load_lockfile(project.lock).shots["bay"]
    assert project.submissions() == 2
    jobs = [charge.job_id for charge in entry.submissions]
    assert jobs == [first.job_id, entry.job_id] and jobs[0] != jobs[1]
    ledger = project.served.emulator.ledger.total
    assert sum(c.billed_usd or 0 for c in entry.submissions) == ledger == Decimal("2.240")
    assert all(c.cost_usd == Decimal("1.120") for c in entry.submissions)


def test_a_retried_failure_keeps_the_failed_submission(
    make_project: Callable[..., Project],
) -> None:
    """A job that failed and its paid retry are both recorded, with their job ids."""
    project = make_project(ONE, faults=("fail=first1",))
    assert project.run().returncode == 1
    assert project.run().returncode == 0
    entry = load_lockfile(project.lock).shots["bay"]
    assert len(entry.submissions) == 2
    failed, done = entry.submissions
    assert failed.job_id and failed.billed_usd is None  # a failed job is not billed
    assert done.job_id == entry.job_id and done.billed_usd == Decimal("1.12")


def test_bills_of_fractional_seconds_round_like_their_estimates(
    make_project: Callable[..., Project],
) -> None:
    """Three edits of clips with millisecond lengths: the billed total equals the estimate."""
    clips = {"a": "5.042", "b": "6.333", "c": "4.777"}
    shots = "".join(
        f'\n[[shots]]\nid = "{name}"\nprompt = "make it snow"\nvideo = "{name}.mp4"\n'
        f'model_tier = "standard"\n'
        for name in clips
    )
    project = make_project(HEADER + shots)
    for name, seconds in clips.items():
        (project.root / f"{name}.mp4").write_bytes(render_mp4("16:9", Decimal(seconds)))
    result = project.run()
    assert result.returncode == 0, result.stderr
    # 0.252/s: 1.270584 → 1.271, 1.595916 → 1.596, 1.203804 → 1.204 (each rounded up).
    assert "Estimated cost of renders submitted: $4.071" in result.stdout
    assert "Billed by the API: $4.071" in result.stdout
    assert project.served.emulator.ledger.total == Decimal("4.070304")
