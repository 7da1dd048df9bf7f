"""`kling-batch spend` through the real CLI, after real runs against the emulator.

Expected amounts are worked out here from the model card's rates (per second: standard
with sound $0.224, standard silent $0.168, pro silent $0.224), never read from the output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from kling_batch.lockfile import Charge, Lockfile, new_entry
from kling_batch.lockname import lock_path
from kling_batch.plan import build_plan
from tests.conftest import NOW
from tests.run.conftest import Project

MANIFEST = """\
version = 1
name = "spend"
output_dir = "renders"

[[shots]]
id = "bay"
prompt = "a bay at noon"
model_tier = "standard"
duration = 5
tags = ["sea"]

[[shots]]
id = "night"
prompt = "night over the harbour"
model_tier = "pro"
sound = false
duration = 4
tags = ["sea", "dark"]

[[shots]]
id = "fog"
prompt = "fog rolls in"
model_tier = "standard"
sound = false
duration = 3
"""
BAY = Decimal("0.224") * 5  # 1.12
NIGHT = Decimal("0.224") * 4  # 0.896
FOG = Decimal("0.168") * 3  # 0.504


def spend(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    """`kling-batch spend MANIFEST ARGS`, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "kling_batch", "spend", str(project.manifest), *args],
        capture_output=True,
        text=True,
        env=project.env({"COLUMNS": "200"}),  # tables as wide as their rows
        check=False,
        timeout=60,
    )


def spend_json(project: Project) -> dict[str, Any]:
    result = spend(project, "--format", "json")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def money(value: Any) -> Decimal:
    """A JSON amount as an exact Decimal."""
    return Decimal(str(value))


def rendered_three_ways(make_project: Callable[..., Project]) -> Project:
    """`fog` failed once then retried, `bay` and `night` rendered, then `bay` forced again."""
    project = make_project(MANIFEST, faults=("fail=first1",))
    assert project.run("--only", "fog").returncode == 1
    result = project.run()
    assert result.returncode == 0, result.stderr
    assert project.run("--force", "bay").returncode == 0
    return project


def test_spend_lists_every_submission_with_its_bill(
    make_project: Callable[..., Project],
) -> None:
    """A failed-then-retried, a forced and a plain render: five submissions, four bills."""
    project = rendered_three_ways(make_project)
    data = spend_json(project)
    renders = {render["id"]: render for render in data["renders"]}
    jobs = {s["job_id"] for render in data["renders"] for s in render["submissions"]}
    assert jobs == {entry.job_id for entry in project.served.emulator.journal.submissions()}
    billed_jobs = {entry.job_id for entry in project.served.emulator.ledger.entries()}
    statuses = {
        s["job_id"]: s["status"] for render in data["renders"] for s in render["submissions"]
    }
    assert {job for job, status in statuses.items() if status == "billed"} == billed_jobs
    failed, retried = renders["fog"]["submissions"]
    assert failed["billed_usd"] is None and failed["status"] == "no bill"
    assert money(retried["billed_usd"]) == FOG
    assert [money(s["billed_usd"]) for s in renders["bay"]["submissions"]] == [BAY, BAY]
    assert money(renders["night"]["totals"]["billed_usd"]) == NIGHT


def test_spend_totals_per_shot_tag_and_day(make_project: Callable[..., Project]) -> None:
    """Totals: billed sums the four bills, estimated all five jobs, one without a bill."""
    before = datetime.now(UTC).date().isoformat()
    project = rendered_three_ways(make_project)
    data = spend_json(project)
    totals = data["totals"]
    assert money(totals["billed_usd"]) == 2 * BAY + NIGHT + FOG == Decimal("3.64")
    assert money(totals["estimated_usd"]) == 2 * BAY + NIGHT + 2 * FOG
    assert (totals["submissions"], totals["bills"], totals["missing_bills"]) == (5, 4, 1)
    assert totals["uncertain"] == 0 and money(totals["may_be_billed_usd"]) == 0
    assert money(totals["billed_usd"]) == project.served.emulator.ledger.total
    shots = {row["shot"]: row for row in data["shots"]}
    assert money(shots["fog"]["estimated_usd"]) == 2 * FOG
    assert money(shots["fog"]["billed_usd"]) == FOG
    tags = {row["tag"]: money(row["billed_usd"]) for row in data["tags"]}
    assert tags == {"sea": 2 * BAY + NIGHT, "dark": NIGHT}
    days = data["days"]
    assert before <= days[0]["day"] <= days[-1]["day"] <= datetime.now(UTC).date().isoformat()
    assert sum(money(day["billed_usd"]) for day in days) == money(totals["billed_usd"])


def test_spend_table_says_the_totals_and_shows_each_job(
    make_project: Callable[..., Project],
) -> None:
    """The table's summary line and one row per job, a missing bill shown as missing."""
    project = rendered_three_ways(make_project)
    result = spend(project)
    assert result.returncode == 0, result.stderr
    expected = 2 * BAY + NIGHT + 2 * FOG  # $4.144
    assert (
        "Spend recorded in shots.lock: $3.64 billed by the API (4 bills); "
        f"${expected} estimated for 5 jobs, 1 without a bill"
    ) in result.stdout
    for entry in project.served.emulator.journal.submissions():
        assert entry.job_id is not None and entry.job_id in result.stdout
    (failed,) = [line for line in result.stdout.splitlines() if "no bill" in line]
    assert "$0.504" in failed and "$0.00" not in failed and "$0 " not in failed


def test_spend_keeps_counting_a_shot_removed_from_the_manifest(
    make_project: Callable[..., Project],
) -> None:
    """Money spent is spent: a render no longer in the manifest still counts, marked."""
    project = make_project(MANIFEST)
    assert project.run().returncode == 0
    project.edit('id = "night"', 'id = "evening"')
    data = spend_json(project)
    night = next(render for render in data["renders"] if render["id"] == "night")
    assert night["in_manifest"] is False
    assert money(data["totals"]["billed_usd"]) == BAY + NIGHT + FOG
    assert "no longer in the manifest" in spend(project).stdout


def test_spend_reads_the_lockfile_when_the_manifest_is_broken(
    make_project: Callable[..., Project],
) -> None:
    """A manifest that no longer loads is a warning; the lockfile's spend is still shown."""
    project = make_project(MANIFEST)
    assert project.run().returncode == 0
    project.edit('model_tier = "pro"', 'model_tier = "pro"\nbogus = 1')
    result = spend(project, "--format", "json")
    assert result.returncode == 0, result.stderr
    assert "warning:" in result.stderr and "bogus" in result.stderr
    data = json.loads(result.stdout)
    assert money(data["totals"]["billed_usd"]) == BAY + NIGHT + FOG
    assert {render["in_manifest"] for render in data["renders"]} == {None}


def test_spend_counts_an_uncertain_submission_apart(
    make_project: Callable[..., Project],
) -> None:
    """A submission whose answer was lost is 'may be billed' with its estimate, not billed."""
    project = make_project(MANIFEST, faults=("ambiguous=first1",))
    assert project.run("--only", "night").returncode == 1
    data = spend_json(project)
    (submission,) = data["renders"][0]["submissions"]
    assert submission["status"] == "uncertain" and submission["job_id"] is None
    totals = data["totals"]
    assert (totals["uncertain"], money(totals["may_be_billed_usd"])) == (1, NIGHT)
    assert money(totals["billed_usd"]) == 0 and money(totals["estimated_usd"]) == 0
    assert "May be billed: $0.896 estimated for 1 uncertain submission" in spend(project).stdout


def test_spend_refuses_a_damaged_lockfile(make_project: Callable[..., Project]) -> None:
    """A lockfile that cannot be parsed is exit 2, one line naming it."""
    project = make_project(MANIFEST)
    project.lock.write_text("version = 2\n[shots.bay\n")
    result = spend(project)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "shots.lock" in line


def test_spend_reads_the_emulator_lockfile_with_emulator(
    make_project: Callable[..., Project],
) -> None:
    """`--emulator` reads `<stem>.emulator.lock`; without it, spend says where renders are."""
    project = make_project(MANIFEST)
    assert project.run().returncode == 0
    project.lock.rename(project.root / "shots.emulator.lock")
    plain = spend(project)
    assert plain.returncode == 0
    assert "No submissions recorded in shots.lock." in plain.stdout
    assert "--emulator" in plain.stderr
    data = json.loads(spend(project, "--emulator", "--format", "json").stdout)
    assert data["lockfile"] == "shots.emulator.lock"
    assert money(data["totals"]["billed_usd"]) == BAY + NIGHT + FOG


def test_spend_shows_a_cancelled_job_as_cancelled(tmp_path: Path) -> None:
    """Jobs cancelled by `kling-batch cancel` or on the API's side are `cancelled`, not
    `failed`; one whose bill was recorded is billed; totals count them as jobs as before."""
    manifest = tmp_path / "shots.toml"
    dusk = 'id = "dusk"\nprompt = "dusk"\nmodel_tier = "standard"\nsound = false\nduration = 3'
    manifest.write_text(f"{MANIFEST}\n[[shots]]\n{dusk}\n")
    errors = {
        "bay": "cancelled by the user (job job_bay)",
        "night": "job job_night canceled: the job was canceled",
        "fog": "job job_fog cancelled: cancelled after rendering",
        "dusk": "job job_dusk failed: content policy [policy]",
    }
    lock = Lockfile()
    for item in build_plan(manifest, now=NOW).items:
        render = item.render
        job = f"job_{render.id}"
        bill = FOG if render.id == "fog" else None
        charge = Charge(
            fingerprint=render.fingerprint,
            submitted_at=NOW,
            cost_usd=render.cost,
            job_id=job,
            billed_usd=bill,
        )
        lock.shots[render.id] = new_entry(
            render, "failed", job_id=job, error=errors[render.id], submissions=[charge]
        )
    lock.save(lock_path(manifest))
    argv = [sys.executable, "-m", "kling_batch", "spend", str(manifest)]
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    done = subprocess.run([*argv, "--format", "json"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    statuses = {r["id"]: [s["status"] for s in r["submissions"]] for r in data["renders"]}
    assert statuses == {
        "bay": ["cancelled"],
        "night": ["cancelled"],
        "fog": ["billed"],
        "dusk": ["failed"],
    }
    totals = data["totals"]
    assert money(totals["billed_usd"]) == FOG
    assert money(totals["estimated_usd"]) == BAY + NIGHT + 2 * FOG
    assert (totals["bills"], totals["missing_bills"]) == (1, 3)
    table = subprocess.run(argv, capture_output=True, text=True, env=env).stdout
    (row,) = [line for line in table.splitlines() if "job_bay" in line]
    assert "cancelled" in row and "failed" not in row and "$1.12" in row
