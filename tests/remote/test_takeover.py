"""A machine dies holding claims: once their leases run out, another machine takes them
over and adopts the jobs, so nothing is paid twice. Real command line, one emulator."""

from __future__ import annotations

import signal
import subprocess
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kling_batch.emulator import JournalEntry, Latency
from kling_batch.emulator.faults import classify
from kling_batch.lockfile import load_lockfile
from tests.remote.conftest import Store, finish, jobs_per_render, machine, wait_until
from tests.run.conftest import MANIFEST, emulator

RENDERS = 4
# Jobs wait 1,500 modelled seconds (3 real seconds) in the queue, and the API keeps a
# finished job's state for ten modelled hours: the jobs outlive the machine that paid for
# them, and are still there for the one that adopts them, however loaded the test machine.
# (The adopter's job deadline is raised to match the slow queue.)
SLOW = Latency(queue_seconds=(1500.0, 1500.0), jitter=0.0)
PATIENT = ("--job-timeout", "36000")
RETAINED = 36_000.0
LEASE = "2"  # seconds: the dead machine's claims run out soon


def expired(store: Store) -> bool:
    """True when every claim in the store has run out."""
    claims = store.claims().values()
    now = datetime.now(UTC)
    return bool(claims) and all(datetime.fromisoformat(c["expires_at"]) < now for c in claims)


def kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)  # ours, by its handle
    process.communicate()


@pytest.mark.timeout(300)
def test_the_jobs_of_a_killed_machine_are_adopted_once_its_lease_runs_out(
    tmp_path: Path, store: Store
) -> None:
    """SIGKILL while every render's claim holds its job id; after the lease, the other
    machine takes the claims over and follows those jobs: one charge per render."""
    with emulator(latency=SLOW, job_retention_seconds=RETAINED) as served:
        doomed = machine(tmp_path / "alice", served, store, MANIFEST)
        process = doomed.start("--claim-lease", LEASE)

        def with_jobs() -> int:
            return sum(1 for c in store.claims().values() if c.get("job_id"))

        wait_until(lambda: with_jobs() == RENDERS, "every claim to name its job")
        claimed = {c["fingerprint"]: c["job_id"] for c in store.claims().values()}
        kill(process)
        wait_until(lambda: expired(store), "the dead machine's leases to run out")
        heir = machine(tmp_path / "bob", served, store, MANIFEST)
        result = heir.run(*PATIENT)
        assert result.returncode == 0, result.stderr
        assert result.stderr.count("taken over from run") == RENDERS
        jobs = jobs_per_render(served)
        assert jobs == {fingerprint: [job] for fingerprint, job in claimed.items()}
        assert len(served.emulator.ledger.entries()) == RENDERS
    lock = load_lockfile(heir.project.lock)
    assert {e.fingerprint: e.job_id for e in lock.shots.values()} == claimed
    assert {e.state for e in lock.shots.values()} == {"done"}
    # The dead machine's lockfile may never come back: the adopted charges are kept here.
    assert sorted(c.job_id for e in lock.shots.values() for c in e.submissions) == sorted(
        claimed.values()
    )
    assert len(heir.outputs()) == RENDERS


@pytest.mark.timeout(300)
def test_a_claim_without_a_job_id_is_uncertain_and_found_in_the_job_list(
    tmp_path: Path, store: Store
) -> None:
    """Killed after its POST reached the API but before the answer came back: the claim
    names no job. The next machine treats the render as uncertain, finds the job in the
    job list by the body the claim recorded, and adopts it: still one charge."""
    with emulator(job_retention_seconds=RETAINED) as served:
        doomed = machine(tmp_path / "alice", served, store, MANIFEST)
        process = doomed.start("--claim-lease", LEASE, "--jobs", "1")
        posted = threading.Event()

        def on_request(entry: JournalEntry) -> None:
            if classify(entry.method, entry.path) == "submit" and not posted.is_set():
                posted.set()
                process.send_signal(signal.SIGKILL)  # before the answer goes out

        unsubscribe = served.emulator.journal.subscribe(on_request)
        try:
            finish(process)
        finally:
            unsubscribe()
        assert posted.is_set()
        (claim,) = store.claims().values()
        assert claim["job_id"] is None
        wait_until(lambda: expired(store), "the dead machine's lease to run out")
        heir = machine(tmp_path / "bob", served, store, MANIFEST)
        result = heir.run("--resubmit-uncertain")
        assert result.returncode == 0, result.stderr
        assert "found" in result.stderr and "in the job list" in result.stderr
        jobs = jobs_per_render(served)
        assert len(jobs) == RENDERS and all(len(ids) == 1 for ids in jobs.values()), jobs
    lock = load_lockfile(heir.project.lock)
    (adopted,) = [e for e in lock.shots.values() if e.fingerprint == claim["fingerprint"]]
    assert adopted.state == "done" and adopted.job_id == jobs[claim["fingerprint"]][0]


@pytest.mark.timeout(300)
def test_a_claim_without_a_job_id_is_not_sent_again_without_the_flag(
    tmp_path: Path, store: Store
) -> None:
    """The same death, and a run without --resubmit-uncertain: the render whose POST may
    have gone out stays uncertain and is not sent; the rest render as usual."""
    with emulator(job_retention_seconds=RETAINED, job_list="absent") as served:
        doomed = machine(tmp_path / "alice", served, store, MANIFEST)
        process = doomed.start("--claim-lease", LEASE, "--jobs", "1")
        posted = threading.Event()

        def on_request(entry: JournalEntry) -> None:
            if classify(entry.method, entry.path) == "submit" and not posted.is_set():
                posted.set()
                process.send_signal(signal.SIGKILL)

        unsubscribe = served.emulator.journal.subscribe(on_request)
        try:
            finish(process)
        finally:
            unsubscribe()
        (claim,) = store.claims().values()
        wait_until(lambda: expired(store), "the dead machine's lease to run out")
        heir = machine(tmp_path / "bob", served, store, MANIFEST)
        result = heir.run()
        assert result.returncode == 1
        assert "uncertain" in result.stdout
        jobs = jobs_per_render(served)
        assert len(jobs) == RENDERS and all(len(ids) == 1 for ids in jobs.values()), jobs
    lock = load_lockfile(heir.project.lock)
    states = {e.fingerprint: e.state for e in lock.shots.values()}
    assert states.pop(claim["fingerprint"]) == "uncertain"
    assert set(states.values()) == {"done"}


STILL = """\
version = 1
name = "still"
output_dir = "renders"

[[shots]]
id = "still"
prompt = "The harbour wakes"
image = "still.png"
model_tier = "standard"
duration = 4
"""


@pytest.mark.timeout(300)
def test_a_dead_runs_upload_paths_are_what_later_looks_compare_with(
    tmp_path: Path, store: Store
) -> None:
    """Left uncertain (no job list to look in), the render keeps the dead run's upload of
    its image on record: a later look compares with what that run sent, not with an
    upload of this machine's."""
    with emulator(job_retention_seconds=RETAINED, job_list="absent") as served:
        doomed = machine(tmp_path / "alice", served, store, STILL)
        process = doomed.start("--claim-lease", LEASE)
        posted = threading.Event()

        def on_request(entry: JournalEntry) -> None:
            if classify(entry.method, entry.path) == "submit" and not posted.is_set():
                posted.set()
                process.send_signal(signal.SIGKILL)

        unsubscribe = served.emulator.journal.subscribe(on_request)
        try:
            finish(process)
        finally:
            unsubscribe()
        (claim,) = store.claims().values()
        wait_until(lambda: expired(store), "the dead machine's lease to run out")
        heir = machine(tmp_path / "bob", served, store, STILL)
        result = heir.run()
        assert result.returncode == 1 and "uncertain" in result.stdout
        assert len(jobs_per_render(served)[claim["fingerprint"]]) == 1
    lock = load_lockfile(heir.project.lock)
    (entry,) = lock.shots.values()
    assert entry.state == "uncertain"
    recorded = {u.path for table in lock.uploads.values() for u in table.values()}
    assert claim["body"]["image"] in recorded
