"""`kling-batch push` and `pull`, and what `plan` does with a store: real command line."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from kling_batch.canonical import untagged
from kling_batch.lockfile import load_lockfile
from tests.remote.conftest import Folder, Store, clone, machine
from tests.run.conftest import MANIFEST, emulator

RENDERS = 4


@pytest.mark.timeout(300)
def test_push_uploads_renders_made_before_the_store_existed_and_is_idempotent(
    tmp_path: Path, store: Store
) -> None:
    """Rendered with `--remote none`, then `push`: every render and record goes up once;
    a second `push` finds nothing missing."""
    with emulator() as served:
        team = machine(tmp_path / "alice", served, store, MANIFEST)
        assert team.run("--remote", "none").returncode == 0
        assert store.keys() == []
        first = team.cli("push")
        assert first.returncode == 0, first.stderr
        assert "Pushed 4 render(s)" in first.stderr
        again = team.cli("push")
        assert again.returncode == 0, again.stderr
        assert "Pushed 0 render(s) (0 B)" in again.stderr and "4 already there" in again.stderr
    lock = load_lockfile(team.project.lock)
    for entry in lock.shots.values():
        assert entry.in_remote and entry.output_sha256
        record = store.record(entry.fingerprint)
        assert record is not None and record["job_id"] == entry.job_id
        data = store.read(f"objects/sha256/{untagged(entry.output_sha256)}")
        assert "sha256:" + hashlib.sha256(data).hexdigest() == entry.output_sha256


@pytest.mark.timeout(300)
def test_pull_fetches_every_done_render_into_a_fresh_clone(tmp_path: Path, store: Store) -> None:
    """A teammate's first command: `pull` puts every output in place, verified; again, it
    finds them in place and fetches nothing."""
    with emulator() as served:
        first = machine(tmp_path / "alice", served, store, MANIFEST)
        assert first.run().returncode == 0
        teammate = clone(first, tmp_path / "bob")
        pulled = teammate.cli("pull")
        assert pulled.returncode == 0, pulled.stderr
        assert "Pulled 4 render(s)" in pulled.stderr
        assert teammate.outputs() == first.outputs()
        again = teammate.cli("pull")
        assert "Pulled 0 render(s)" in again.stderr and "4 already in place" in again.stderr
        assert teammate.project.requests() == first.project.requests()  # no API call at all


@pytest.mark.timeout(300)
@pytest.mark.parametrize("linked", ["a folder in it", "the output folder"])
def test_pull_never_writes_through_a_link_out_of_the_output_folder(
    tmp_path: Path, linked: str
) -> None:
    """A lockfile from someone else (a pull request) records an output under a folder
    that is a link leading out of the project, or the output folder is one: `pull` refuses
    those renders and the file out there keeps its bytes."""
    store = Folder(tmp_path / "shared")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "dawn.mp4").write_bytes(b"irreplaceable")
    with emulator() as served:
        first = machine(tmp_path / "alice", served, store, MANIFEST)
        assert first.run().returncode == 0
    teammate = clone(first, tmp_path / "bob")
    lock = load_lockfile(teammate.project.lock)
    if linked == "a folder in it":
        lock.shots["dawn"] = lock.shots["dawn"].model_copy(update={"output": "renders/x/dawn.mp4"})
        teammate.project.lock.write_text(lock.dumps())
        (teammate.root / "renders").mkdir()
        (teammate.root / "renders" / "x").symlink_to(victim)
    else:
        (teammate.root / "renders").symlink_to(victim)
    pulled = teammate.cli("pull")
    assert (victim / "dawn.mp4").read_bytes() == b"irreplaceable"
    assert pulled.returncode != 0
    assert "dawn: its output path is outside the output folder" in pulled.stderr
    assert sorted(p.name for p in victim.iterdir()) == ["dawn.mp4"]  # nothing else placed


@pytest.mark.timeout(300)
def test_a_damaged_copy_in_the_store_is_refused_and_never_placed(
    tmp_path: Path, store: Store
) -> None:
    """The store's bytes no longer hash to the recorded render: `pull` and `run` refuse
    them; no output appears and nothing is paid."""
    with emulator() as served:
        first = machine(tmp_path / "alice", served, store, MANIFEST)
        assert first.run().returncode == 0
        entry = load_lockfile(first.project.lock).shots["dawn"]
        assert entry.output_sha256 is not None
        key = f"objects/sha256/{untagged(entry.output_sha256)}"
        store.write(key, store.read(key)[:-100] + b"\0" * 100)
        teammate = clone(first, tmp_path / "bob")
        pulled = teammate.cli("pull")
        assert pulled.returncode == 1
        assert "- not pulled: dawn: the remote store's copy is not the recorded render" in (
            pulled.stderr
        )
        assert not (teammate.root / "renders" / "dawn.mp4").exists()
        paid = first.project.submissions()
        result = teammate.run("--only", "dawn")
        assert result.returncode == 1
        assert not (teammate.root / "renders" / "dawn.mp4").exists()
        assert teammate.project.submissions() == paid
        # Forgotten: the next plan prices a re-render honestly instead of promising it.
        (shot,) = [s for s in teammate.plan_json()["shots"] if s["id"] == "dawn"]
        assert shot["action"] == "changed"


@pytest.mark.timeout(300)
def test_plan_never_touches_the_store(tmp_path: Path) -> None:
    """`plan` reads what was pushed from the lockfile: a store that does not exist any more
    changes nothing in it (and `plan` sends no request anywhere)."""
    with emulator() as served:
        first = machine(tmp_path / "alice", served, Folder(tmp_path / "shared"), MANIFEST)
        assert first.run().returncode == 0
        teammate = clone(first, tmp_path / "bob")
        (tmp_path / "shared").rename(tmp_path / "gone")
        plan = teammate.plan_json()
        assert [s["action"] for s in plan["shots"]] == ["restore"] * RENDERS
        off = teammate.cli("plan", "--format", "json", "--remote", "none")
        assert '"action": "restore"' not in off.stdout


@pytest.mark.timeout(300)
def test_emulator_renders_are_kept_apart_in_the_store(tmp_path: Path) -> None:
    """`--emulator` runs push under `emulator/`, never where paid renders are restored from."""
    with emulator() as served:
        shared = Folder(tmp_path / "shared")
        team = machine(tmp_path / "alice", served, shared, MANIFEST)
        result = team.cli("run", "--emulator", "--yes")
        assert result.returncode == 0, result.stderr
        keys = shared.keys()
        assert keys and all(key.startswith("emulator/") for key in keys)
        assert any(key.startswith("emulator/renders/") for key in keys)
