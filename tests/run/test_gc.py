"""`kling-batch gc` through the real CLI, in a folder left by real runs against the emulator.

The emulator's videos differ only by aspect ratio and length, so every render here has a
length of its own: no two share a file in the render cache.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import av
import filelock

from kling_batch.emulator.media import render_mp4
from kling_batch.lockfile import load_lockfile
from kling_batch.recall import RememberedJob, longest_window
from tests.conftest import left_by_killed_writer, temp_in_another_process
from tests.run.conftest import Project

HEADER = 'version = 1\nname = "gc"\noutput_dir = "renders"\n'
SHOTS = {
    "dawn": 'prompt = "dawn over the bay"\nduration = 3',
    "cut": 'prompt = "make it snow"\nvideo = "renders/src.mp4"',
    "night": 'prompt = "night over the bay"\nduration = 4',
    "lone": 'prompt = "a lone boat"\nduration = 5',
    "fog": 'prompt = "fog rolls in"\nduration = 6',
    "wave": 'prompt = "a wave breaks"\nduration = 7',
}
KEPT_IN_MANIFEST = ("dawn", "cut")


def manifest(*ids: str) -> str:
    """A manifest of the named shots (standard tier)."""
    shots = "".join(f'\n[[shots]]\nid = "{i}"\nmodel_tier = "standard"\n{SHOTS[i]}\n' for i in ids)
    return HEADER + shots


def gc(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    """`kling-batch gc MANIFEST ARGS`, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "kling_batch", "gc", str(project.manifest), *args],
        capture_output=True,
        text=True,
        env=project.env(),
        check=False,
        timeout=60,
    )


def files(root: Path) -> dict[str, bytes]:
    """Every file under `root` (run locks aside) with its bytes, by relative POSIX path."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.name.endswith(".run-lock")
    }


def sha_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Scene:
    """A folder after runs and edits, and which of its files gc must remove."""

    project: Project
    garbage: set[str]  # files gc must remove, relative to the project folder
    night_cache: str  # the render cache file of `night`'s video
    night_index: str  # its index file, deleted by hand: gc writes it back


def scene(make_project: Callable[..., Project]) -> Scene:
    """Runs leave `dawn`, `cut`, `night`, `lone` done, `fog` failed and `wave` in flight; then
    all but `dawn` and `cut` leave the manifest, `lone`'s cached copy is lost, and strays
    are dropped in the output folder and the render cache."""
    # One emulator: the first job fails, every job after the fifth stalls (wave's).
    project = make_project(manifest(*SHOTS), faults=("fail=first1", "stall=after5"))
    (project.root / "renders").mkdir()
    (project.root / "renders" / "src.mp4").write_bytes(render_mp4("16:9", Decimal("3.5")))
    assert project.run("--only", "fog").returncode == 1
    only = [arg for i in ("dawn", "cut", "night", "lone") for arg in ("--only", i)]
    assert project.run(*only).returncode == 0
    assert project.run("--only", "wave", "--job-timeout", "30").returncode == 1
    lock = load_lockfile(project.lock)
    assert {k: e.state for k, e in lock.shots.items() if k in ("fog", "wave")} == {
        "fog": "failed",
        "wave": "submitted",
    }
    project.manifest.write_text(manifest(*KEPT_IN_MANIFEST))
    state = project.root / ".kling-batch"
    renders = project.root / "renders"

    def cached(key: str) -> str:
        sha = lock.shots[key].output_sha256
        assert sha is not None
        return f".kling-batch/cache/{sha.removeprefix('sha256:')}"

    def index(key: str) -> str:
        return f".kling-batch/cache-index/shots.lock/{lock.shots[key].fingerprint[7:]}"

    (project.root / cached("lone")).unlink()  # lone's only copy is now renders/lone.mp4
    (project.root / index("night")).unlink()
    (renders / "old").mkdir()
    (renders / "old" / "extra.mp4").write_bytes(render_mp4("1:1", Decimal(8)))
    (renders / "notes.txt").write_text("shot list for the edit\n")
    (renders / "review").mkdir()
    (renders / "review" / "clip.mp4").write_bytes(render_mp4("9:16", Decimal(3)))
    unused = render_mp4("1:1", Decimal(9))
    (state / "cache" / sha_hex(unused)).write_bytes(unused)
    kept_by_index = render_mp4("1:1", Decimal(10))  # indexed for a lockfile now gone
    (state / "cache" / sha_hex(kept_by_index)).write_bytes(kept_by_index)
    (state / "cache-index" / "gone.lock").mkdir()
    (state / "cache-index" / "gone.lock" / ("ab" * 32)).write_text(
        f"sha256:{sha_hex(kept_by_index)} {len(kept_by_index)}\n"
    )
    dangling = state / "cache-index" / "shots.lock" / ("cd" * 32)
    dangling.write_text(f"sha256:{'ef' * 32} 10\n")
    garbage = {
        "renders/night.mp4",
        "renders/old/extra.mp4",
        f".kling-batch/cache/{sha_hex(unused)}",
        f".kling-batch/cache-index/shots.lock/{'cd' * 32}",
        index("lone"),  # its cached render is gone
    }
    return Scene(project, garbage, cached("night"), index("night"))


def test_gc_lists_the_garbage_and_removes_nothing(make_project: Callable[..., Project]) -> None:
    """Without --yes: each file, entry and what is kept is listed; nothing changes."""
    setup = scene(make_project)
    before = files(setup.project.root)
    result = gc(setup.project)
    assert result.returncode == 0, result.stderr
    assert files(setup.project.root) == before
    for path in setup.garbage:
        assert path in result.stdout
    assert "  night (done)" in result.stdout and "  fog (failed)" in result.stdout
    assert "Kept: lone (done)" in result.stdout and "renders/lone.mp4" in result.stdout
    assert "Kept: wave (submitted)" in result.stdout
    size = sum(len(before[path]) for path in setup.garbage)
    assert f"Would remove 5 files ({size / 1000:.1f} kB) and 2 lockfile entries." in result.stdout
    assert "kling-batch gc" in result.stdout and "--yes" in result.stdout


def test_gc_yes_removes_exactly_the_garbage(make_project: Callable[..., Project]) -> None:
    """With --yes: exactly the orphaned outputs, settled orphan entries, unreferenced cache
    and dangling index files go; the total reclaimed is said."""
    setup = scene(make_project)
    before = files(setup.project.root)
    result = gc(setup.project, "--yes")
    assert result.returncode == 0, result.stderr
    after = files(setup.project.root)
    gone = set(before) - set(after)
    assert gone == setup.garbage
    assert set(after) - set(before) == {setup.night_index}  # written back
    changed = {path for path in after if path in before and after[path] != before[path]}
    assert changed == {"shots.lock"}
    assert not (setup.project.root / "renders" / "old").exists()
    assert sorted(load_lockfile(setup.project.lock).shots) == ["cut", "dawn", "lone", "wave"]
    reclaimed = sum(len(before[path]) for path in setup.garbage)
    assert f"Removed 5 files: reclaimed {reclaimed / 1000:.1f} kB." in result.stdout
    again = gc(setup.project)
    assert "Would remove" not in again.stdout


def test_gc_keeps_a_copy_of_every_render_recorded_done(
    make_project: Callable[..., Project],
) -> None:
    """After gc --yes nothing in the manifest is paid for again, and a removed shot put back
    is restored from the render cache for free."""
    setup = scene(make_project)
    project = setup.project
    assert gc(project, "--yes").returncode == 0
    assert (project.root / setup.night_cache).is_file()
    plan = project.plan_json()
    assert {item["action"] for item in plan["shots"]} == {"unchanged"}  # type: ignore[index]
    project.manifest.write_text(manifest(*KEPT_IN_MANIFEST, "night", "lone"))
    plan = project.plan_json()
    actions = {item["id"]: item["action"] for item in plan["shots"]}  # type: ignore[index]
    assert actions == {
        "dawn": "unchanged",
        "cut": "unchanged",
        "night": "restore",
        "lone": "unchanged",
    }
    assert plan["totals"]["to_run"] == 0  # type: ignore[index]


def test_gc_waits_for_a_run_holding_the_lock(make_project: Callable[..., Project]) -> None:
    """While a run holds the run lock, gc --yes refuses (exit 1) and removes nothing."""
    setup = scene(make_project)
    before = files(setup.project.root)
    guard = filelock.FileLock(setup.project.root / ".kling-batch" / "shots.lock.run-lock")
    with guard.acquire(timeout=5):
        result = gc(setup.project, "--yes")
    assert result.returncode == 1
    assert "another kling-batch run is using shots.lock" in result.stderr
    assert files(setup.project.root) == before


def test_gc_refuses_a_manifest_it_cannot_read(make_project: Callable[..., Project]) -> None:
    """A manifest that does not load: exit 2, one line naming the file and field, nothing
    removed (gc cannot tell what is still in it)."""
    project = make_project(manifest("dawn"))
    assert project.run().returncode == 0
    project.manifest.write_text(manifest("dawn").replace("duration = 3", "duraton = 3"))
    before = files(project.root)
    result = gc(project, "--yes")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "shots.toml" in line and "duraton" in line
    assert files(project.root) == before


def test_gc_says_when_there_is_nothing_to_clean_up(make_project: Callable[..., Project]) -> None:
    """Right after a run, gc --yes finds nothing and changes nothing."""
    project = make_project(manifest("dawn"))
    assert project.run().returncode == 0
    before = files(project.root)
    result = gc(project, "--yes")
    assert result.returncode == 0, result.stderr
    assert "Nothing to clean up for shots.toml." in result.stdout
    assert files(project.root) == before


def test_gc_leaves_a_temp_file_another_process_is_writing(
    make_project: Callable[..., Project],
) -> None:
    """A download into the render cache still under way in another process (a first run
    of a manifest with no lockfile yet, whose run lock gc did not take) keeps its temp
    file; one a killed run left is removed."""
    project = make_project(manifest("dawn"))
    assert project.run().returncode == 0
    download = project.root / ".kling-batch" / "cache" / "download"
    stale = left_by_killed_writer(download, ".part")
    with temp_in_another_process(download, ".part") as writing:
        result = gc(project, "--yes")
        assert result.returncode == 0, result.stderr
        assert writing.exists() and not stale.exists()
    assert f"left .kling-batch/cache/{writing.name}: another process is writing it" in (
        result.stderr
    )
    assert "Removed 1 file" in result.stdout


def test_gc_leaves_a_disabled_shot_alone(make_project: Callable[..., Project]) -> None:
    """A shot turned off with `enabled = false` is still in the manifest: not an orphan."""
    project = make_project(manifest("dawn", "night"))
    assert project.run().returncode == 0
    project.edit('id = "night"', 'id = "night"\nenabled = false')
    before = files(project.root)
    result = gc(project, "--yes")
    assert result.returncode == 0, result.stderr
    assert "Nothing to clean up for shots.toml." in result.stdout
    assert files(project.root) == before


def test_gc_treats_no_output_as_orphaned_without_a_lockfile(
    make_project: Callable[..., Project],
) -> None:
    """With the lockfile lost, nothing records the renders: gc removes none of them."""
    project = make_project(manifest("dawn", "night"))
    assert project.run().returncode == 0
    project.lock.unlink()
    before = files(project.root)
    result = gc(project, "--yes")
    assert result.returncode == 0, result.stderr
    assert "no shots.lock beside the manifest" in result.stdout
    assert files(project.root) == before


def test_gc_keeps_the_only_copy_of_a_paid_render_behind_a_failed_re_render(
    make_project: Callable[..., Project],
) -> None:
    """`night` rendered, edited, its re-render's job failed (or was cancelled), then the
    shot removed, on a clone without the render cache: its output is the only copy of the
    paid render its entry's history records. gc keeps the entry and the file, twice over."""
    project = make_project(manifest("dawn", "night"), faults=("fail=after2",))
    assert project.run().returncode == 0
    output = project.root / load_lockfile(project.lock).shots["night"].output
    paid = output.read_bytes()
    project.edit("night over the bay", "night over the harbour")
    assert project.run().returncode == 1  # the re-render's job fails
    assert load_lockfile(project.lock).shots["night"].state == "failed"
    shutil.rmtree(project.root / ".kling-batch")
    project.manifest.write_text(manifest("dawn"))
    for _ in range(2):
        result = gc(project, "--yes")
        assert result.returncode == 0, result.stderr
        assert "night (failed): no longer in the manifest, but its only copy is" in result.stdout
    assert output.read_bytes() == paid
    assert "night" in load_lockfile(project.lock).shots


def test_gc_emulator_never_follows_its_output_folder_out_of_the_project(
    make_project: Callable[..., Project], tmp_path: Path
) -> None:
    """A repository shipping `renders-emulator` as a link to the user's videos: gc says it
    does not look there, and removes nothing there."""
    project = make_project(manifest("dawn"))
    assert project.run().returncode == 0
    videos = tmp_path / "Videos"
    videos.mkdir()
    (videos / "holiday.mp4").write_bytes(render_mp4("16:9", Decimal(2)))
    (project.root / "renders-emulator").symlink_to(videos)
    (project.root / "shots.emulator.lock").write_text(project.lock.read_text())
    result = gc(project, "--yes", "--emulator")
    assert result.returncode == 0, result.stderr
    assert "renders-emulator is a link or leads out of the manifest's folder" in result.stdout
    assert (videos / "holiday.mp4").is_file()


def test_gc_takes_no_sound_file_or_picture_for_an_orphaned_video(
    make_project: Callable[..., Project],
) -> None:
    """Files of the MP4 box format that are no video (a voice-over `.m4a`, a `.heic`
    still) in the output folder are the user's: gc lists and removes none of them."""
    project = make_project(manifest("dawn"))
    assert project.run().returncode == 0
    renders = project.root / "renders"
    sound = av_sound(renders / "voiceover.m4a")
    still = renders / "cover.heic"
    still.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))
    result = gc(project, "--yes")
    assert result.returncode == 0, result.stderr
    assert "voiceover" not in result.stdout and "cover.heic" not in result.stdout
    assert sound.is_file() and still.is_file()


def av_sound(path: Path) -> Path:
    """A one-second AAC `.m4a` (an MP4 file with a sound track and no picture)."""
    with av.open(str(path), mode="w", format="mp4") as out:
        audio = out.add_stream("aac", rate=8000)
        audio.layout = "mono"
        for start in range(0, 8000, 1024):
            samples = av.AudioFrame(format="fltp", layout="mono", samples=1024)
            for plane in samples.planes:
                plane.update(bytes(plane.buffer_size))
            samples.sample_rate, samples.pts = 8000, start
            samples.time_base = Fraction(1, 8000)
            out.mux(audio.encode(samples))
        out.mux(audio.encode(None))
    return path


def remembered(project: Project, lock_name: str, hexdigest: str, age: timedelta) -> str:
    """A job remembered for `lock_name`, submitted `age` ago; its path, as gc shows it."""
    job = RememberedJob(f"sha256:{hexdigest}", "emulator", datetime.now(UTC) - age, "job_x")
    path = project.root / ".kling-batch" / "jobs" / lock_name / hexdigest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(job.dumps())
    return path.relative_to(project.root).as_posix()


def memo_scene(make_project: Callable[..., Project]) -> tuple[Project, set[str], set[str]]:
    """After a run: jobs remembered past the longest recall window (of this lockfile and of
    one that is gone), one unreadable, and two within the window (likewise). Returns the
    project, the memos gc must remove and those it must keep."""
    project = make_project(manifest("dawn"))
    assert project.run().returncode == 0
    old, recent = longest_window() + timedelta(minutes=5), timedelta(minutes=5)
    expired = {
        remembered(project, "shots.lock", "a1" * 32, old),
        remembered(project, "gone.lock", "a2" * 32, old),
    }
    damaged = project.root / ".kling-batch" / "jobs" / "shots.lock" / ("a3" * 32)
    damaged.write_text("{not json")
    expired.add(damaged.relative_to(project.root).as_posix())
    kept = {
        remembered(project, "shots.lock", "b1" * 32, recent),
        remembered(project, "gone.lock", "b2" * 32, recent),
    }
    return project, expired, kept


def test_gc_lists_remembered_jobs_past_their_window_and_removes_nothing(
    make_project: Callable[..., Project],
) -> None:
    """Without --yes: the remembered jobs past the recall window (and the unreadable one)
    are listed, those within it are not, and a lockfile that is gone is said to keep its
    recent one; nothing changes."""
    project, expired, kept = memo_scene(make_project)
    before = files(project.root)
    result = gc(project)
    assert result.returncode == 0, result.stderr
    assert files(project.root) == before
    assert "Remembered jobs past their recall window, or unreadable (3," in result.stdout
    assert all(path in result.stdout for path in expired)
    assert not any(path in result.stdout for path in kept)
    assert "Kept: .kling-batch/jobs/gone.lock/: 1 remembered job of gone.lock" in result.stdout
    assert "Would remove 3 files" in result.stdout


def test_gc_yes_removes_remembered_jobs_past_their_window_only(
    make_project: Callable[..., Project],
) -> None:
    """With --yes: the remembered jobs past the recall window and the unreadable one are
    removed, whatever their lockfile; every one within the window stays."""
    project, _, kept = memo_scene(make_project)
    result = gc(project, "--yes")
    assert result.returncode == 0, result.stderr
    left = {path for path in files(project.root) if path.startswith(".kling-batch/jobs/")}
    assert left == kept
    assert "Removed 3 files" in result.stdout
