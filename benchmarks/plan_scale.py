"""Plan at scale: a make-style no-op check of 10,000 and 100,000 renders, beside GNU make's.

Two shapes of project, every render done in the lockfile with its output on disk:

- matrix: one shot whose matrix expands to N renders over 50 local images;
- listed: N `[[shots]]`, each with its own prompt and its own local image (at 100,000,
  spread over ten included shot files: a manifest holds at most 10 MB).

For each, each a fresh `python -m kling_batch` process as a user would run it: a cold
plan (no `.kling-batch/` caches), then with warm caches `plan --check` (nothing to do:
answered from the up-to-date stamp; then the same with the stamp removed before each, so
planned in full with every other cache warm), and a one-edit `plan` (matrix: one of the
50 images edited, its renders flagged; listed: one shot's prompt edited, it alone
flagged, planned as an edit against the stamp, then again in full without it), each
restored afterwards; and a plan with every render new (the lockfile moved
away: a table of N rows, as on a project's first plan). Wall time and peak
memory (max RSS of the child). Beside them, GNU make's no-op check of N up-to-date
targets made from N sources (generated here), and the ratio of kling-batch's warm check
to make's (issue 13: at most 0.2 at 10,000).

    python benchmarks/plan_scale.py [--renders 10000 100000] [--shapes matrix listed]
                                    [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from kling_batch.lockfile import new_entry
from kling_batch.lockname import lock_path
from kling_batch.plan import build_plan

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d4944415478da636460f80f0001040100a5f1d1b70000000049454e44ae426082"
)
HEAD = """version = 1
name = "scale"
output_dir = "renders"

[vars]
brand = "Northwind"

[defaults]
model_tier = "standard"
aspect_ratio = "9:16"
"""
# Listed shots per included file at 100,000 (a manifest holds at most 10 MB).
PER_FILE = 10_000
AN_HOUR = 3600 * 1_000_000_000
SETTLE_SECONDS = 2.1
# Children keep Python's compiled modules (`__pycache__`) as an installation does: a
# machine set to write none (PYTHONDONTWRITEBYTECODE) would compile every module of
# kling-batch from source in each process, which no user's installation does.
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def matrix_project(root: Path, renders: int) -> tuple[Path, Callable[[], None]]:
    """One matrix shot of `renders` renders over 50 images (~200 KB each); the edit
    rewrites one image."""
    assets, variants = 50, renders // 50
    (root / "assets").mkdir(parents=True)
    for n in range(assets):
        (root / "assets" / f"product-{n:02d}.png").write_bytes(PNG + os.urandom(200_000))
    products = ", ".join(f'"{n:02d}"' for n in range(assets))
    manifest = root / "big.toml"
    manifest.write_text(
        HEAD
        + f"""
[[shots]]
id = "p{{{{ product }}}}-v{{{{ variant }}}}"
matrix = {{ product = [{products}], variant = {list(range(variants))} }}
prompt = "{{{{ brand }}}} product {{{{ product }}}} in scene {{{{ variant }}}} | 4s: close-up"
image = "assets/product-{{{{ product }}}}.png"
output = "{{{{ product }}}}/{{{{ variant }}}}.mp4"
"""
    )
    image = root / "assets" / "product-07.png"
    return manifest, lambda: image.write_bytes(PNG + os.urandom(200_000))


def listed_project(root: Path, renders: int) -> tuple[Path, Callable[[], None]]:
    """`renders` listed shots, each with its own prompt and image (~1 KB); the edit
    rewrites one shot's prompt."""
    (root / "assets").mkdir(parents=True)
    files = [root / "big.toml"]
    if renders > PER_FILE:
        (root / "shots").mkdir()
        files = [root / "shots" / f"part-{n:02d}.toml" for n in range(renders // PER_FILE)]
    per_file = renders // len(files)
    for number, path in enumerate(files):
        shots = []
        for n in range(number * per_file, (number + 1) * per_file):
            (root / "assets" / f"shot-{n:06d}.png").write_bytes(PNG + os.urandom(1000))
            shots.append(
                f'[[shots]]\nid = "shot-{n:06d}"\n'
                f'prompt = "{{{{ brand }}}} shot {n} on a misty ridge | 4s: close-up"\n'
                f'image = "assets/shot-{n:06d}.png"\n'
            )
        path.write_text(("" if path.parent.name == "shots" else HEAD) + "\n".join(shots))
    manifest = root / "big.toml"
    if renders > PER_FILE:
        top = 'output_dir = "renders"\ninclude = ["shots/*.toml"]\n'
        manifest.write_text(HEAD.replace('output_dir = "renders"\n', top))
    edited = files[len(files) // 2]
    target = f"shot {len(files) // 2 * per_file + per_file // 2} on a misty ridge"

    def edit() -> None:
        edited.write_text(edited.read_text().replace(target, target + " at dawn"))

    return manifest, edit


def mark_all_done(manifest: Path) -> int:
    """Write a lockfile with every render done and its output file present."""
    plan = build_plan(manifest, now=datetime.now(UTC))
    for item in plan.items:
        render = item.render
        content = render.id.encode()
        target = manifest.parent / render.output
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        plan.lock.shots[render.id] = new_entry(
            render,
            "done",
            job_id=f"job-{render.id}",
            output_sha256="sha256:" + hashlib.sha256(content).hexdigest(),
            output_size=len(content),
        )
    plan.lock.save(lock_path(manifest))
    return len(plan.items)


def backdate(root: Path) -> None:
    """Move every file's mtime an hour back and let its change time settle, as a checkout
    is by the time anyone plans: the hash cache and the up-to-date stamp trust no stat of a
    file changed within two seconds of reading it (a change time cannot be set back, so
    this waits those two seconds)."""
    files = [Path(folder) / name for folder, _, names in os.walk(root) for name in names]
    settle(files)


def settle(files: list[Path]) -> None:
    """`backdate` these files only."""
    for path in files:
        mtime = path.stat().st_mtime_ns - AN_HOUR
        os.utime(path, ns=(mtime, mtime))
    time.sleep(SETTLE_SECONDS)


def measure(argv: list[str]) -> tuple[float, float, int]:
    """Wall seconds, peak RSS in MB and exit code of one child process.

    The peak comes from GNU time when there is one: a child forked from this (large)
    process would count this process's memory as its own until it execs.
    """
    timer = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)
    prefix = [timer, "-f", "%M"] if timer else []
    start = time.perf_counter()
    proc = subprocess.Popen(
        [*prefix, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=CHILD_ENV
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        sys.exit(f"{' '.join(argv)} failed: {err}")
    lines = err.strip().splitlines()
    peak = int(lines[-1]) / 1024 if timer and lines and lines[-1].isdigit() else None
    return wall, peak if peak is not None else usage.ru_maxrss / 1024, code


def plan(manifest: Path, *args: str) -> tuple[float, float, int]:
    """One `python -m kling_batch plan MANIFEST ...`."""
    return measure([sys.executable, "-m", "kling_batch", "plan", str(manifest), *args])


def make_check(root: Path, files: int) -> list[tuple[float, float, int]] | None:
    """GNU make's no-op check of `files` up-to-date targets (each made from its own
    source), three times; None without make."""
    make = shutil.which("make")
    if make is None:
        return None
    folder = root / "make"
    (folder / "src").mkdir(parents=True)
    (folder / "out").mkdir()
    for n in range(files):
        (folder / "src" / f"{n}.txt").write_text("x")
        (folder / "out" / f"{n}.txt").write_text("x")
    rules = "\n".join(f"out/{n}.txt: src/{n}.txt\n\tcp $< $@" for n in range(files))
    outputs = " ".join(f"out/{n}.txt" for n in range(files))
    (folder / "Makefile").write_text(f"all: {outputs}\n\n{rules}\n")
    backdate(folder / "src")
    return [measure([make, "-q", "-C", str(folder)]) for _ in range(3)]


def row(name: str, runs: list[tuple[float, float, int]]) -> str:
    walls = [wall for wall, _, _ in runs]
    shown = f"{min(walls):6.2f} {statistics.median(walls):6.2f} {max(walls):6.2f}"
    return f"{name:34} {shown} {max(rss for _, rss, _ in runs):8.1f} {runs[-1][2]:4d}"


def bench(shape: str, renders: int, repeat: int) -> float:
    """Print one shape at one size; returns the median warm `plan --check` wall time."""
    root = Path(tempfile.mkdtemp(prefix=f"kb-plan-{shape}-"))
    try:
        build = matrix_project if shape == "matrix" else listed_project
        manifest, edit = build(root, renders)
        count = mark_all_done(manifest)
        shutil.rmtree(root / ".kling-batch")
        backdate(root)
        size = lock_path(manifest).stat().st_size / 1e6
        print(f"\n{shape}: {count:,} renders, lockfile {size:.1f} MB")
        print(f"{'':34} {'min':>6} {'median':>6} {'max':>6} {'peak MB':>8} {'exit':>4}")
        print(row("cold plan (no caches)", [plan(manifest)]))
        plan(manifest, "--check")  # the caches now hold the done state
        checks = [plan(manifest, "--check") for _ in range(repeat)]
        print(row("warm plan --check (no-op)", checks))
        stamp = next((root / ".kling-batch").glob("*.uptodate.json"), None)
        if stamp is not None:  # the same check planned in full: what a stamp saves
            full = []
            for _ in range(repeat):
                stamp.unlink(missing_ok=True)
                full.append(plan(manifest, "--check"))
            print(row("  the same, planned in full", full))
        else:
            print("  (no up-to-date stamp was written: every check above planned in full)")
        saved = {path: path.read_bytes() for path in root.rglob("*.toml")}
        saved.update({path: path.read_bytes() for path in (root / "assets").glob("*-07.png")})
        edits, full_edits = [], []
        for _ in range(repeat):
            edit()
            edits.append(plan(manifest))
            if stamp is not None and stamp.exists():  # the same edit without the stamp
                kept = stamp.read_bytes()
                stamp.unlink()
                full_edits.append(plan(manifest))
                stamp.write_bytes(kept)
            for path, data in saved.items():
                path.write_bytes(data)
            settle(list(saved))
            plan(manifest, "--check")  # back to the warm no-op state
        print(row("warm one-edit plan", edits))
        if full_edits:
            print(row("  the same, planned in full", full_edits))
        print(row("warm plan, every render new", all_new(manifest, repeat)))
        return statistics.median(wall for wall, _, _ in checks)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def all_new(manifest: Path, repeat: int) -> list[tuple[float, float, int]]:
    """`plan` with the lockfile moved away (caches warm): every render new, each listed in
    the table, as on a project's first plan; the lockfile put back after."""
    lock = lock_path(manifest)
    aside = lock.with_name(lock.name + ".aside")
    lock.rename(aside)
    try:
        return [plan(manifest) for _ in range(repeat)]
    finally:
        aside.rename(lock)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renders", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--shapes", nargs="+", default=["matrix", "listed"])
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    for renders in options.renders:
        checks = [bench(shape, renders, options.repeat) for shape in options.shapes]
        root = Path(tempfile.mkdtemp(prefix="kb-make-"))
        try:
            made = make_check(root, renders)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        if made is None:
            print("\nGNU make not found: no comparison")
            continue
        print(f"\nGNU make -q, {renders:,} up-to-date targets")
        print(row("make no-op check", made))
        make_wall = statistics.median(wall for wall, _, _ in made)
        ratios = ", ".join(
            f"{shape} {check / make_wall:.2f}"
            for shape, check in zip(options.shapes, checks, strict=True)
        )
        print(f"warm plan --check / make (medians): {ratios}")


if __name__ == "__main__":
    main()
