"""`kling-batch cancel` through the real CLI against the emulator."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import filelock
import httpx
import pytest

from kling_batch.canonical import json_default
from kling_batch.emulator import EmulatorConfig, RunningEmulator, running
from kling_batch.emulator.faults import Fault
from kling_batch.endpoint import api_identity
from kling_batch.lockfile import Charge, Lockfile, load_lockfile, new_entry
from kling_batch.plan import build_plan
from kling_batch.reports import usd
from tests.run.conftest import many_shots

# Real time: a job waits 5 to 20 s in the queue, so it is still in flight when cancelled.
IN_FLIGHT = {"time_scale": 1.0, "rpm": 0}


@pytest.fixture
def serve() -> Iterator[Callable[..., RunningEmulator]]:
    """Start emulators whose jobs stay in flight; each stops at teardown."""
    with contextlib.ExitStack() as stack:

        def start(**fields: object) -> RunningEmulator:
            return stack.enter_context(running(EmulatorConfig(**{**IN_FLIGHT, **fields})))

        yield start


def in_flight(
    root: Path, served: RunningEmulator, count: int = 3, *, recorded: bool = False
) -> Path:
    """A manifest whose renders were submitted to `served` and recorded as `submitted` with
    their charge, as a run stopped by two Ctrl-C leaves them; the manifest's path."""
    manifest = root / "shots.toml"
    manifest.write_text(many_shots(count).replace('output_dir = "renders"', 'output_dir = "r"'))
    plan = build_plan(manifest, now=datetime.now(UTC))
    headers = {"Authorization": f"Bearer {served.api_key}", "Content-Type": "application/json"}
    lock = Lockfile(
        api=api_identity(emulator=False, api_base=served.base_url) if recorded else None
    )
    for item in plan.items:
        body = json.dumps(dict(item.render.body), default=json_default)
        answer = httpx.post(
            f"{served.base_url}/v1/videos/generations", content=body, headers=headers
        )
        job_id = answer.json()["job_id"]
        render = item.render
        sent = datetime.now(UTC)
        charge = Charge(
            fingerprint=render.fingerprint, submitted_at=sent, cost_usd=render.cost, job_id=job_id
        )
        lock.shots[render.id] = new_entry(
            render, "submitted", job_id=job_id, submitted_at=sent, submissions=[charge]
        )
    lock.save(manifest.with_suffix(".lock"))
    return manifest


def cancel(manifest: Path, served: RunningEmulator, *args: str) -> subprocess.CompletedProcess[str]:
    """`kling-batch cancel MANIFEST --api-base <emulator> ARGS`."""
    env = {**os.environ, "EMPIRIOLABS_API_KEY": served.api_key, "NO_COLOR": "1"}
    argv = [sys.executable, "-m", "kling_batch", "cancel", str(manifest), "--api-base"]
    return subprocess.run(
        [*argv, served.base_url, *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )


def run(manifest: Path, served: RunningEmulator) -> subprocess.CompletedProcess[str]:
    """`kling-batch run MANIFEST --yes` against the emulator, at its time scale."""
    env = {**os.environ, "EMPIRIOLABS_API_KEY": served.api_key, "NO_COLOR": "1"}
    argv = [sys.executable, "-m", "kling_batch", "run", str(manifest), "--yes", "--api-base"]
    scale = str(served.emulator.config.time_scale)
    return subprocess.run(
        [*argv, served.base_url, "--time-scale", scale],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def billed_total(manifest: Path) -> Decimal:
    """What `kling-batch spend --format json` says was billed in all."""
    argv = [sys.executable, "-m", "kling_batch", "spend", str(manifest), "--format", "json"]
    done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60)
    return Decimal(str(json.loads(done.stdout)["totals"]["billed_usd"]))


def kling_batch(*args: str) -> subprocess.CompletedProcess[str]:
    """`kling-batch ARGS` (no network), output captured."""
    argv = [sys.executable, "-m", "kling_batch", *args]
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run(argv, capture_output=True, text=True, env=env, check=True, timeout=60)


def job_status(served: RunningEmulator, job_id: str | None) -> str:
    emu = served.emulator
    job = emu.jobs.get(job_id or "", emu.clock.now())
    assert job is not None
    return job.view(emu.clock.now()).status


def test_cancel_stops_every_job_in_flight_and_records_it(
    serve: Callable[..., RunningEmulator], tmp_path: Path
) -> None:
    """Each submitted job is cancelled on the API, its hold released, and recorded as failed
    "cancelled by the user"; the next plan prices them as retries."""
    served = serve()
    manifest = in_flight(tmp_path, served)
    assert served.emulator.ledger.held > 0
    result = cancel(manifest, served)
    assert result.returncode == 0, result.stderr
    lock = load_lockfile(manifest.with_suffix(".lock"))
    for entry in lock.shots.values():
        assert entry.state == "failed"
        assert entry.error == f"cancelled by the user (job {entry.job_id})"
        assert job_status(served, entry.job_id) == "cancelled"
    assert served.emulator.ledger.held == 0 and served.emulator.ledger.total == 0
    assert "Cancelled 3 of 3 job(s) in flight; recorded in shots.lock." in result.stderr
    plan = build_plan(manifest, now=datetime.now(UTC))
    assert {item.action for item in plan.items} == {"retry"}


def test_a_cancelled_job_billed_by_the_api_is_recorded_with_its_bill(
    serve: Callable[..., RunningEmulator], tmp_path: Path
) -> None:
    """When the API's cancel answer carries a bill, the entry and its submission record it as a
    run records a poll's bill, and `spend` reports what the API charged."""
    served = serve(bill_cancelled=True)
    manifest = in_flight(tmp_path, served, count=2)
    result = cancel(manifest, served)
    assert result.returncode == 0, result.stderr
    charged = served.emulator.ledger.total
    assert charged > 0
    lock = load_lockfile(manifest.with_suffix(".lock"))
    bills = [entry.billed_usd for entry in lock.shots.values()]
    assert all(entry.cancelled for entry in lock.shots.values())
    assert [entry.submissions[-1].billed_usd for entry in lock.shots.values()] == bills
    assert sum(bill or 0 for bill in bills) == charged
    assert billed_total(manifest) == charged
    assert "s00: cancelled by the user" in result.stderr and "(billed $" in result.stderr


def test_a_job_that_had_failed_with_a_bill_has_its_bill_recorded(
    serve: Callable[..., RunningEmulator], tmp_path: Path
) -> None:
    """A cancel answer saying the job had already failed, billed, records that bill (the job's
    state may be gone before the next run polls it)."""
    served = serve(bill_failed=True, faults=(Fault("fail"),))
    manifest = in_flight(tmp_path, served, count=1)
    served.emulator.advance(1000)  # past the job's failure, within its retention
    result = cancel(manifest, served)
    assert result.returncode == 0, result.stderr
    assert "had already failed" in result.stderr
    entry = load_lockfile(manifest.with_suffix(".lock")).shots["s00"]
    assert entry.billed_usd == served.emulator.ledger.total > 0
    assert billed_total(manifest) == served.emulator.ledger.total


def test_a_job_that_had_failed_is_recorded_failed_and_retried(
    serve: Callable[..., RunningEmulator], tmp_path: Path
) -> None:
    """A cancel answer saying the job had already failed records the failure with its error,
    as a run's poll would, so the next plan prices a retry rather than resume a job the API
    forgets an hour later."""
    served = serve(faults=(Fault("fail"),))
    manifest = in_flight(tmp_path, served, count=1)
    served.emulator.advance(1000)  # past the job's failure, within its retention
    result = cancel(manifest, served)
    assert result.returncode == 0, result.stderr
    entry = load_lockfile(manifest.with_suffix(".lock")).shots["s00"]
    assert (entry.state, entry.cancelled) == ("failed", False)
    assert entry.error == (
        f"job {entry.job_id} failed: The request was rejected by content moderation. "
        "[content_moderation]"
    )
    (item,) = build_plan(manifest, now=datetime.now(UTC)).items
    assert (item.action, item.reasons) == ("retry", (f"last attempt failed: {entry.error}",))


def test_a_job_that_had_completed_is_downloaded_after_the_api_forgot_it(
    serve: Callable[..., RunningEmulator], tmp_path: Path
) -> None:
    """A cancel answer saying the job had already completed records it `completed` with its
    result URL, so a run after the API forgot the job downloads the video without asking
    for the job or paying again."""
    served = serve()
    manifest = in_flight(tmp_path, served, count=1, recorded=True)
    served.emulator.advance(1000)  # past the job's end, within its retention
    result = cancel(manifest, served)
    assert result.returncode == 0, result.stderr
    assert "finished before it could be cancelled" in result.stderr
    entry = load_lockfile(manifest.with_suffix(".lock")).shots["s00"]
    assert entry.state == "completed" and entry.result_url
    served.emulator.advance(3 * 3600)  # past the job's retention: the API forgets it
    assert served.emulator.jobs.get(entry.job_id or "", served.emulator.clock.now()) is None
    seen = served.emulator.journal.entries()[-1].seq
    ran = run(manifest, served)
    assert ran.returncode == 0, ran.stderr
    assert load_lockfile(manifest.with_suffix(".lock")).shots["s00"].state == "done"
    assert (tmp_path / "r" / "s00.mp4").is_file()
    paths = {e.path for e in served.emulator.journal.entries(since=seen)}
    assert f"/v1/jobs/{entry.job_id}" not in paths
    assert len(served.emulator.journal.submissions()) == 1
    assert billed_total(manifest) == served.emulator.ledger.total > 0


def test_status_says_a_cancelled_render_is_cancelled(
    serve: Callable[..., RunningEmulator], tmp_path: Path
) -> None:
    """`status` shows and counts a render whose job was cancelled as `cancelled`, as `spend`
    does, not as failed."""
    served = serve()
    manifest = in_flight(tmp_path, served, count=2)
    assert cancel(manifest, served, "--only", "s01").returncode == 0
    table = kling_batch("status", str(manifest)).stdout.splitlines()
    assert table[0] == "shots.toml: 1 cancelled, 1 submitted"
    rows = {line.split()[0]: line.split()[1] for line in table[2:]}
    assert rows == {"s00": "submitted", "s01": "cancelled"}


def test_status_json_marks_a_cancelled_render(
    serve: Callable[..., RunningEmulator], tmp_path: Path
) -> None:
    """`status --format json` keeps each render's lockfile `state` and adds `cancelled`, true
    for the render whose job was cancelled."""
    served = serve()
    manifest = in_flight(tmp_path, served, count=2)
    assert cancel(manifest, served, "--only", "s01").returncode == 0
    data = json.loads(kling_batch("status", str(manifest), "--format", "json").stdout)
    said = {row["id"]: (row["state"], row["cancelled"]) for row in data["renders"]}
    assert said == {"s00": ("submitted", False), "s01": ("failed", True)}


def test_the_review_gallery_says_a_cancelled_render_is_cancelled(
    serve: Callable[..., RunningEmulator], tmp_path: Path
) -> None:
    """The review gallery shows a render whose job was cancelled as `cancelled` and counts it
    apart from the failed ones."""
    served = serve()
    manifest = in_flight(tmp_path, served, count=2)
    assert cancel(manifest, served, "--only", "s01").returncode == 0
    said = kling_batch("review", str(manifest), "--out", str(tmp_path / "page")).stderr
    assert "(0 done, 0 failed, 1 cancelled, 0 picked)" in said
    page = (tmp_path / "page" / "index.html").read_text()
    assert 'data-total="cancelled">1<' in page and 'data-total="failed">0<' in page
    assert '<option value="cancelled">cancelled (1)</option>' in page
    assert '<option value="failed">' not in page


def test_the_review_gallery_counts_a_cancelled_jobs_bill_after_its_retry(
    serve: Callable[..., RunningEmulator], tmp_path: Path
) -> None:
    """After a cancel the API billed and a run that rendered the shot again, the review
    gallery's "spent" is what `spend` reports: both bills, not the retry's alone."""
    # The first job never ends (until cancelled); the retry renders at once.
    stall = Fault("stall", first=1, on="submit")
    served = serve(bill_cancelled=True, time_scale=0.001, faults=(stall,))
    manifest = in_flight(tmp_path, served, count=1, recorded=True)
    assert cancel(manifest, served).returncode == 0
    ran = run(manifest, served)
    assert ran.returncode == 0, ran.stderr
    assert len(served.emulator.journal.submissions()) == 2
    billed = billed_total(manifest)
    assert billed == served.emulator.ledger.total > 0
    assert kling_batch("review", str(manifest), "--out", str(tmp_path / "page")).returncode == 0
    page = (tmp_path / "page" / "index.html").read_text()
    assert f'data-total="spent">{usd(billed)}<' in page


def test_only_cancels_the_chosen_renders(
    serve: Callable[..., RunningEmulator], tmp_path: Path
) -> None:
    """`--only s01` cancels that job alone; the others keep rendering and stay recorded."""
    served = serve()
    manifest = in_flight(tmp_path, served)
    result = cancel(manifest, served, "--only", "s01")
    assert result.returncode == 0, result.stderr
    lock = load_lockfile(manifest.with_suffix(".lock"))
    assert {k: e.state for k, e in lock.shots.items()} == {
        "s00": "submitted",
        "s01": "failed",
        "s02": "submitted",
    }
    assert job_status(served, lock.shots["s00"].job_id) in {"queued", "processing"}


def test_a_completed_job_is_not_cancelled(
    serve: Callable[..., RunningEmulator], tmp_path: Path
) -> None:
    """An entry whose job finished rendering is left alone, and the command says why."""
    served = serve()
    manifest = in_flight(tmp_path, served, count=1)
    lock_file = manifest.with_suffix(".lock")
    lock = load_lockfile(lock_file)
    lock.shots["s00"] = lock.shots["s00"].model_copy(update={"state": "completed"})
    lock.save(lock_file)
    result = cancel(manifest, served)
    assert result.returncode == 0, result.stderr
    assert "s00: job" in result.stderr and "has finished rendering" in result.stderr
    assert "Nothing to cancel" in result.stderr
    assert load_lockfile(lock_file).shots["s00"].state == "completed"


def test_an_api_without_cancelling_is_said_plainly(
    serve: Callable[..., RunningEmulator], tmp_path: Path
) -> None:
    """When the API has no cancel route: exit 1, a plain sentence, the lockfile untouched."""
    served = serve(cancel_route=False)
    manifest = in_flight(tmp_path, served)
    before = manifest.with_suffix(".lock").read_bytes()
    result = cancel(manifest, served)
    assert result.returncode == 1
    assert "The API does not offer cancelling jobs" in result.stderr
    assert manifest.with_suffix(".lock").read_bytes() == before
    lock = load_lockfile(manifest.with_suffix(".lock"))
    assert all(job_status(served, e.job_id) != "cancelled" for e in lock.shots.values())


def test_cancel_waits_for_no_run(serve: Callable[..., RunningEmulator], tmp_path: Path) -> None:
    """While a run holds the lockfile's run lock, cancel is refused and asks nothing of the API."""
    served = serve()
    manifest = in_flight(tmp_path, served)
    requests = len(served.emulator.journal.entries())
    (tmp_path / ".kling-batch").mkdir(exist_ok=True)
    with filelock.FileLock(tmp_path / ".kling-batch" / "shots.lock.run-lock"):
        result = cancel(manifest, served)
    assert result.returncode == 1
    assert "another kling-batch run is using shots.lock" in result.stderr
    assert len(served.emulator.journal.entries()) == requests


def test_plain_http_off_this_machine_is_refused(
    serve: Callable[..., RunningEmulator], tmp_path: Path
) -> None:
    """The key is never sent over plain http to another host: exit 2 before any request."""
    served = serve()
    manifest = in_flight(tmp_path, served, count=1)
    env = {**os.environ, "EMPIRIOLABS_API_KEY": served.api_key}
    argv = [sys.executable, "-m", "kling_batch", "cancel", str(manifest)]
    result = subprocess.run(
        [*argv, "--api-base", "http://api.example.com"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 2
    assert "plain http would send the API key unencrypted" in result.stderr


def test_only_matching_nothing_exits_2(
    serve: Callable[..., RunningEmulator], tmp_path: Path
) -> None:
    """A cancel `--only` that matches no recorded render is refused, naming the closest."""
    served = serve()
    manifest = in_flight(tmp_path, served, count=2)
    result = cancel(manifest, served, "--only", "s1")
    assert result.returncode == 2
    assert "--only 's1' matches no render; closest ids: s01" in result.stderr


def test_jobs_of_another_api_are_not_sent_to_this_one(
    serve: Callable[..., RunningEmulator], tmp_path: Path
) -> None:
    """Job ids mean something only to the API that made them: a lockfile recorded against
    one API is refused (exit 2) when cancel is pointed at another, and nothing changes."""
    served, other = serve(), serve()
    manifest = in_flight(tmp_path, served, count=2, recorded=True)
    before = manifest.with_suffix(".lock").read_bytes()
    result = cancel(manifest, other)
    assert result.returncode == 2, result.stderr
    assert f"records renders of {served.base_url}; cancelling against {other.base_url}" in (
        result.stderr
    )
    assert manifest.with_suffix(".lock").read_bytes() == before
    assert not other.emulator.journal.entries()  # refused before any request
    lock = load_lockfile(manifest.with_suffix(".lock"))
    assert "cancelled" not in {job_status(served, entry.job_id) for entry in lock.shots.values()}


def test_a_missing_manifest_is_refused(
    serve: Callable[..., RunningEmulator], tmp_path: Path
) -> None:
    """A mistyped manifest name is an error (exit 2), not "nothing to cancel"."""
    served = serve()
    result = cancel(tmp_path / "shots.toml", served)
    assert result.returncode == 2
    assert "shots.toml" in result.stderr and "file not found" in result.stderr
    assert not (tmp_path / ".kling-batch").exists()
