"""A job in flight follows its request, not its id (issue 8, point 1), and the render cache
remembers what the lockfile forgets (point 10). Real CLI against the emulator."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable

from kling_batch.emulator import Latency
from kling_batch.lockfile import load_lockfile
from tests.run.conftest import TIME_SCALE, Project

# Jobs wait 450 modelled seconds (0.9 real seconds) in the queue: a run with a 1-second job
# deadline always leaves its job in flight, however loaded the machine is.
SLOW = Latency(queue_seconds=(450.0, 450.0), jitter=0.0)

HEADER = 'version = 1\nname = "adopt"\noutput_dir = "renders"\n'
HERO = HEADER + '\n[[shots]]\nid = "hero"\nprompt = "the hero lands"\nmodel_tier = "standard"\n'


def leave_in_flight(project: Project) -> str:
    """Run with a 1-second job deadline: the job is submitted and left in flight."""
    result = project.run("--job-timeout", "1")
    assert result.returncode == 1, result.stderr
    (entry,) = load_lockfile(project.lock).shots.values()
    assert entry.state == "submitted" and entry.job_id
    return entry.job_id


def plan_text(project: Project, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "kling_batch", "plan", str(project.manifest), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout


def test_a_renamed_shot_adopts_its_job_in_flight(make_project: Callable[..., Project]) -> None:
    """Renamed while its job renders: the new id resumes that job; nothing is paid twice."""
    project = make_project(HERO, latency=SLOW)
    job = leave_in_flight(project)
    project.edit('id = "hero"', 'id = "hero-landing"')
    (shot,) = project.plan_json()["shots"]  # type: ignore[misc]
    assert shot["action"] == "resume"
    assert shot["reasons"] == ["job of renamed shot hero, in flight: no new cost"]
    result = project.run()
    assert result.returncode == 0, result.stderr
    assert project.submissions() == 1
    lock = load_lockfile(project.lock)
    assert list(lock.shots) == ["hero-landing"]
    entry = lock.shots["hero-landing"]
    assert entry.state == "done" and entry.job_id == job
    assert (project.root / "renders" / "hero-landing.mp4").is_file()


def test_one_take_adopts_and_only_the_new_one_is_paid(
    make_project: Callable[..., Project],
) -> None:
    """`takes = 1` → `2` while in flight: take 1 adopts the job, take 2 is the only new POST."""
    project = make_project(HERO, latency=SLOW)
    leave_in_flight(project)
    project.edit('model_tier = "standard"', 'model_tier = "standard"\ntakes = 2')
    actions = {s["id"]: s["action"] for s in project.plan_json()["shots"]}  # type: ignore[attr-defined]
    assert actions == {"hero-take1": "resume", "hero-take2": "new"}
    assert project.run().returncode == 0
    assert project.submissions() == 2
    ledger = project.served.emulator.ledger.total
    assert ledger == 2 * load_lockfile(project.lock).shots["hero-take1"].cost_usd


def test_an_output_moved_while_in_flight_lands_at_its_new_path(
    make_project: Callable[..., Project],
) -> None:
    """Only the output changed: the same job is followed and its video lands at the new path."""
    project = make_project(HERO, latency=SLOW)
    leave_in_flight(project)
    project.edit('id = "hero"', 'id = "hero"\noutput = "finals/hero.mp4"')
    assert project.run().returncode == 0
    assert project.submissions() == 1
    assert (project.root / "renders" / "finals" / "hero.mp4").is_file()
    assert not (project.root / "renders" / "hero.mp4").exists()


def test_a_removed_shot_in_flight_is_followed_and_kept_in_the_cache(
    make_project: Callable[..., Project],
) -> None:
    """Removed while rendering: plan and run say so, the video lands in the render cache."""
    other = '\n[[shots]]\nid = "bay"\nprompt = "a calm bay"\nmodel_tier = "standard"\n'
    # Hero's job must still be kept by the API when the second run follows it: at the
    # suite's pace its hour of keeping is 7 real seconds, which a loaded machine overran.
    project = make_project(HERO + other, latency=SLOW, time_scale=TIME_SCALE * 10)
    project.run("--only", "hero", "--job-timeout", "1")
    project.edit('id = "hero"\nprompt = "the hero lands"', 'id = "gone"\nprompt = "elsewhere"')
    table, markdown = plan_text(project), plan_text(project, "--format", "markdown")
    for report in (table, markdown):
        assert "hero: removed from the manifest while its job is submitted" in report
        assert "keeps the video in the render cache" in report
    result = project.run("--only", "bay")
    assert result.returncode == 0, result.stderr
    assert "kept in the render cache" in result.stdout + result.stderr
    entry = load_lockfile(project.lock).shots["hero"]
    assert entry.state == "done" and entry.output_sha256
    cached = project.root / ".kling-batch" / "cache" / entry.output_sha256.removeprefix("sha256:")
    assert cached.is_file()
    assert project.submissions() == 2  # hero once, bay once; nothing paid twice


def test_a_lost_lockfile_restores_renders_the_cache_holds(
    make_project: Callable[..., Project],
) -> None:
    """The lockfile deleted after a run: the next plan restores from the cache for free."""
    project = make_project(HERO)
    assert project.run().returncode == 0
    project.lock.unlink()
    (project.root / "renders" / "hero.mp4").unlink()
    (shot,) = project.plan_json()["shots"]  # type: ignore[misc]
    assert shot["action"] == "restore"
    assert project.run().returncode == 0
    assert project.submissions() == 1
    assert (project.root / "renders" / "hero.mp4").is_file()


def test_an_id_reused_while_its_job_is_in_flight_pays_each_request_once(
    make_project: Callable[..., Project],
) -> None:
    """`hero` renamed `hero-wide` mid-flight and a new `hero` added with another prompt: the
    job goes to `hero-wide`, only the new `hero` is paid: two requests, two charges."""
    project = make_project(HERO, latency=SLOW)
    job = leave_in_flight(project)
    project.edit('id = "hero"', 'id = "hero-wide"')
    with project.manifest.open("a") as f:
        f.write(
            '\n[[shots]]\nid = "hero"\nprompt = "the hero takes off"\nmodel_tier = "standard"\n'
        )
    actions = {s["id"]: s["action"] for s in project.plan_json()["shots"]}  # type: ignore[attr-defined]
    assert actions == {"hero-wide": "resume", "hero": "new"}
    assert project.run().returncode == 0
    lock = load_lockfile(project.lock)
    assert lock.shots["hero-wide"].job_id == job
    assert project.submissions() == 2
    assert project.served.emulator.ledger.total == sum(e.cost_usd for e in lock.shots.values())


def test_shots_renumbered_in_a_chain_in_flight_pay_each_request_once(
    make_project: Callable[..., Project],
) -> None:
    """`b` and `c` in flight, then renumbered `a` and `b` (a scene deleted before them):
    each resumes the job of its request; two requests, two charges, both videos landed."""
    shot = '\n[[shots]]\nid = "{}"\nprompt = "request {}"\nmodel_tier = "standard"\n'
    project = make_project(HEADER + shot.format("b", "P") + shot.format("c", "Q"), latency=SLOW)
    assert project.run("--job-timeout", "1").returncode == 1
    before = {key: entry.job_id for key, entry in load_lockfile(project.lock).shots.items()}
    assert set(before) == {"b", "c"} and all(before.values())
    project.manifest.write_text(HEADER + shot.format("a", "P") + shot.format("b", "Q"))
    actions = {s["id"]: s["action"] for s in project.plan_json()["shots"]}  # type: ignore[attr-defined]
    assert actions == {"a": "resume", "b": "resume"}
    result = project.run()
    assert result.returncode == 0, result.stderr
    lock = load_lockfile(project.lock)
    assert {key: entry.job_id for key, entry in lock.shots.items()} == {
        "a": before["b"],
        "b": before["c"],
    }
    assert project.submissions() == 2
    assert project.served.emulator.ledger.total == sum(e.cost_usd for e in lock.shots.values())
    assert all((project.root / "renders" / f"{key}.mp4").is_file() for key in ("a", "b"))


def test_two_shots_swapping_names_keep_both_renders(
    make_project: Callable[..., Project],
) -> None:
    """`a` and `b` swap ids on a clone without the render cache: each is restored from the
    other's output, free, and neither copy reads a file the other has just replaced."""
    shots = HEADER + (
        '\n[[shots]]\nid = "a"\nprompt = "four seconds"\nduration = 4\nmodel_tier = "standard"\n'
        '\n[[shots]]\nid = "b"\nprompt = "six seconds"\nduration = 6\nmodel_tier = "standard"\n'
    )
    project = make_project(shots)
    assert project.run().returncode == 0
    renders = project.root / "renders"
    before = {name: (renders / f"{name}.mp4").read_bytes() for name in ("a", "b")}
    for _ in range(3):  # the copies race: a few rounds make a lost one likely without staging
        swapped = project.manifest.read_text()
        swapped = swapped.replace('id = "a"', 'id = "tmp"').replace('id = "b"', 'id = "a"')
        project.manifest.write_text(swapped.replace('id = "tmp"', 'id = "b"'))
        shutil.rmtree(project.root / ".kling-batch")  # as on a fresh clone: no cache
        result = project.run()
        assert result.returncode == 0, result.stdout + result.stderr
        before = {"a": before["b"], "b": before["a"]}
        after = {name: (renders / f"{name}.mp4").read_bytes() for name in ("a", "b")}
        assert after == before
    assert project.submissions() == 2


def test_an_orphaned_unanswered_submission_settles_after_a_complete_look(
    make_project: Callable[..., Project],
) -> None:
    """A shot whose POST went unanswered, then removed: once the job list proves no job was
    made, the record settles (nothing paid) and the plan has nothing left to do."""
    other = '\n[[shots]]\nid = "bay"\nprompt = "a calm bay"\nmodel_tier = "standard"\n'
    project = make_project(HERO + other, faults=("drop=first1,on=submit",))
    assert project.run("--only", "hero").returncode == 1
    assert load_lockfile(project.lock).shots["hero"].state == "uncertain"
    project.manifest.write_text(HEADER + other)  # hero removed
    result = project.run()
    assert result.returncode == 0, result.stdout + result.stderr
    entry = load_lockfile(project.lock).shots["hero"]
    assert entry.state == "failed" and "made no job" in (entry.error or "")
    (charge,) = entry.submissions
    assert charge.no_job and charge.job_id is None
    check = subprocess.run(
        [sys.executable, "-m", "kling_batch", "plan", str(project.manifest), "--check"],
        capture_output=True,
        text=True,
        check=False,
        env={**project.env(), "EMPIRIOLABS_BASE_URL": project.served.base_url},
    )
    assert check.returncode == 0, check.stdout
    assert (
        project.served.emulator.ledger.total
        == entry.cost_usd * 0 + load_lockfile(project.lock).shots["bay"].cost_usd
    )
