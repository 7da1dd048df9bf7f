"""A job recorded twice by a git merge is counted once: by `spend` (text and JSON), the
review gallery's "spent" and `gc`'s note of what leaves `spend`. Real CLI, no network.

Each lockfile is built as a merge leaves it: one entry whose conflict was resolved by
keeping both branches' submissions, or two entries of one job (a renamed shot that adopted
or recalled the job on one branch, the old id kept on the other).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from kling_batch.lockfile import Charge, Entry, Lockfile, new_entry
from kling_batch.lockname import lock_path
from kling_batch.plan import PlannedRender, build_plan
from kling_batch.reports import usd
from tests.conftest import NOW
from tests.run.test_spend import money

HEADER = 'version = 1\nname = "merged"\noutput_dir = "renders"\n'
SHOTS = {
    "bay": 'prompt = "a bay at noon"\nmodel_tier = "standard"\nduration = 5',
    "cove": 'prompt = "a bay at noon"\nmodel_tier = "standard"\nduration = 5',
    "fog": 'prompt = "fog rolls in"\nmodel_tier = "standard"\nsound = false\nduration = 3',
}
BAY = Decimal("0.224") * 5  # 1.12: `bay` and `cove` render one request
FOG = Decimal("0.168") * 3  # 0.504


def kling_batch(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command line, output captured, tables as wide as their rows."""
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-m", "kling_batch", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )


def charge(render: PlannedRender, job: str, bill: Decimal | None = None) -> Charge:
    """One submission of `render` answered with `job`, billed `bill` (None: no bill yet)."""
    return Charge(
        fingerprint=render.fingerprint,
        submitted_at=NOW,
        cost_usd=render.cost,
        job_id=job,
        billed_usd=bill,
    )


def record(render: PlannedRender, state: str, *charges: Charge, **fields: Any) -> Entry:
    """`render`'s entry in `state`, following its last charge's job."""
    last = charges[-1]
    return new_entry(
        render,
        state,  # type: ignore[arg-type]
        job_id=last.job_id,
        submitted_at=NOW,
        billed_usd=last.billed_usd,
        submissions=list(charges),
        **fields,
    )


def done_with(shot: str, bill: Decimal) -> Callable[[dict[str, PlannedRender]], Entry]:
    """`merged`'s maker of `shot`'s entry: done, its one submission (job_J) billed `bill`."""
    return lambda renders: record(renders[shot], "done", charge(renders[shot], "job_J", bill))


def merged(tmp_path: Path, recorded: list[str], kept: list[str], entries: dict[str, Any]) -> Path:
    """A manifest of the shots `kept` beside a lockfile of `entries` (id → a function of the
    planned renders of every shot `recorded`, giving its entry); the manifest's path."""
    manifest = tmp_path / "shots.toml"
    manifest.write_text(shots(recorded))
    renders = {item.render.id: item.render for item in build_plan(manifest, now=NOW).items}
    lock = Lockfile(api="emulator")
    for key, make in entries.items():
        lock.shots[key] = make(renders)
    lock.save(lock_path(manifest))
    manifest.write_text(shots(kept))
    return manifest


def shots(ids: list[str]) -> str:
    """A manifest of the named shots."""
    return HEADER + "".join(f'\n[[shots]]\nid = "{i}"\n{SHOTS[i]}\n' for i in ids)


def fog_done(renders: dict[str, PlannedRender]) -> Entry:
    """`fog`, rendered and billed once: a job no merge touched."""
    return record(renders["fog"], "done", charge(renders["fog"], "job_fog", FOG))


def spend_json(manifest: Path) -> tuple[dict[str, Any], str]:
    """`spend --format json`: the object, and what it said on stderr."""
    result = kling_batch("spend", str(manifest), "--format", "json")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data, result.stderr


def test_spend_counts_once_a_job_both_sides_of_a_conflict_kept(tmp_path: Path) -> None:
    """One entry whose conflict was resolved keeping both submission lists (one branch saw
    the job in flight, the other billed): one job, billed once, its estimate counted once."""
    manifest = merged(
        tmp_path,
        ["cove", "fog"],
        ["cove", "fog"],
        {
            "cove": lambda r: record(
                r["cove"], "done", charge(r["cove"], "job_J"), charge(r["cove"], "job_J", BAY)
            ),
            "fog": fog_done,
        },
    )
    data, said = spend_json(manifest)
    totals = data["totals"]
    assert (totals["submissions"], totals["bills"], totals["missing_bills"]) == (2, 2, 0)
    assert money(totals["billed_usd"]) == BAY + FOG
    assert money(totals["estimated_usd"]) == BAY + FOG
    cove = next(render for render in data["renders"] if render["id"] == "cove")
    assert [s["counted"] for s in cove["submissions"]] == [True, False]
    assert cove["submissions"][0]["status"] == "billed"
    assert data["duplicates"] == [
        {"job_id": "job_J", "renders": ["cove", "cove"], "counted_under": "cove"}
    ]
    assert "job job_J is recorded twice under cove: counted once" in said


def test_spend_counts_once_a_job_recorded_under_an_old_and_a_renamed_id(
    tmp_path: Path,
) -> None:
    """A shot renamed on one branch (its job adopted under the new id) and rendered under
    the old one on the other, both entries kept: the job's bill is counted once, under the
    id still in the manifest, and a note names both so the lockfile can be cleaned."""
    manifest = merged(
        tmp_path,
        ["bay", "cove", "fog"],
        ["cove", "fog"],
        {
            "bay": done_with("bay", BAY),
            "cove": done_with("cove", BAY),
            "fog": fog_done,
        },
    )
    result = kling_batch("spend", str(manifest))
    assert result.returncode == 0, result.stderr
    assert (
        f"Spend recorded in shots.lock: {usd(BAY + FOG)} billed by the API (2 bills); "
        f"{usd(BAY + FOG)} estimated for 2 jobs, 0 without a bill"
    ) in result.stdout
    assert "Note: job job_J is recorded under bay and cove: counted once, under cove." in (
        result.stdout
    )
    (bay,) = [
        row for row in result.stdout.splitlines() if row.startswith("bay ") and "job_J" in row
    ]
    assert "counted under cove" in bay
    data, _ = spend_json(manifest)
    assert money(data["totals"]["billed_usd"]) == BAY + FOG
    shots = {row["shot"]: money(row["billed_usd"]) for row in data["shots"]}
    assert shots == {"bay": 0, "cove": BAY, "fog": FOG}


def test_spend_counts_a_job_recorded_with_two_bills_at_the_higher(tmp_path: Path) -> None:
    """Two records of one job with different bills count once, at the higher bill: never
    less than the API charged, never the two added up."""
    higher = Decimal("1.2")
    manifest = merged(
        tmp_path,
        ["bay", "cove"],
        ["bay", "cove"],
        {
            "bay": done_with("bay", higher),
            "cove": done_with("cove", BAY),
        },
    )
    data, _ = spend_json(manifest)
    totals = data["totals"]
    assert money(totals["billed_usd"]) == higher
    assert (totals["bills"], totals["submissions"]) == (1, 1)


def gallery_spent(manifest: Path, out: Path) -> str:
    """The review gallery's "spent" total as its page shows it."""
    result = kling_batch("review", str(manifest), "--out", str(out))
    assert result.returncode == 0, result.stderr
    page = (out / "index.html").read_text()
    marker = 'data-total="spent">'
    return page.split(marker, 1)[1].split("<", 1)[0]


def test_the_gallery_counts_a_job_two_shots_record_once(tmp_path: Path) -> None:
    """Two shots of one request both record its job (one branch recalled the other's job
    under its own id): the gallery's "spent" counts that bill once, as `spend` does."""
    manifest = merged(
        tmp_path,
        ["bay", "cove"],
        ["bay", "cove"],
        {
            "bay": done_with("bay", BAY),
            "cove": done_with("cove", BAY),
        },
    )
    data, _ = spend_json(manifest)
    assert money(data["totals"]["billed_usd"]) == BAY
    assert gallery_spent(manifest, tmp_path / "page") == usd(BAY)


def test_the_gallery_counts_a_renamed_shots_job_billed_under_its_old_id(
    tmp_path: Path,
) -> None:
    """The old id (no longer in the manifest) holds the job's bill, the renamed shot's
    record only saw it in flight: the renamed shot's card counts the bill, as `spend`
    counts it under that shot."""
    manifest = merged(
        tmp_path,
        ["bay", "cove", "fog"],
        ["cove", "fog"],
        {
            "bay": done_with("bay", BAY),
            "cove": lambda r: record(r["cove"], "submitted", charge(r["cove"], "job_J")),
            "fog": fog_done,
        },
    )
    data, _ = spend_json(manifest)
    cove = next(render for render in data["renders"] if render["id"] == "cove")
    assert money(cove["totals"]["billed_usd"]) == BAY
    assert gallery_spent(manifest, tmp_path / "page") == usd(BAY + FOG)


def test_gc_says_no_spend_leaves_with_an_entry_whose_job_another_records(
    tmp_path: Path,
) -> None:
    """Removing an old id's entry whose job the renamed shot's entry records too takes
    nothing out of `spend`: gc says no spend leaves, and spend's total is unchanged."""
    manifest = merged(
        tmp_path,
        ["bay", "cove"],
        ["cove"],
        {
            "bay": lambda r: record(
                r["bay"], "failed", charge(r["bay"], "job_J", BAY), error="download failed"
            ),
            "cove": done_with("cove", BAY),
        },
    )
    before, _ = spend_json(manifest)
    listed = kling_batch("gc", str(manifest))
    assert listed.returncode == 0, listed.stderr
    assert "  bay (failed)" in listed.stdout
    assert "leave `kling-batch spend`" not in listed.stdout
    assert kling_batch("gc", str(manifest), "--yes").returncode == 0
    after, _ = spend_json(manifest)
    assert money(before["totals"]["billed_usd"]) == money(after["totals"]["billed_usd"]) == BAY


def test_spend_counts_two_requests_whose_jobs_share_an_id_apart(tmp_path: Path) -> None:
    """Two entries record one job id for two different requests (a merge of branches that
    rendered on other accounts or APIs, whose ids are only theirs): no job is made for two
    requests, so these are two jobs, both billed and both counted."""
    manifest = merged(
        tmp_path,
        ["bay", "fog"],
        ["bay", "fog"],
        {
            "bay": done_with("bay", BAY),
            "fog": done_with("fog", FOG),
        },
    )
    data, said = spend_json(manifest)
    totals = data["totals"]
    assert money(totals["billed_usd"]) == BAY + FOG
    assert (totals["bills"], totals["submissions"]) == (2, 2)
    assert data["duplicates"] == [] and "counted once" not in said
