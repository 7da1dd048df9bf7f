"""Plan at scale: 10,000 renders over 50 local assets, all done in the lockfile.

Prints wall time and peak memory (max RSS of the child process) of a cold plan (no hash
cache), a warm plan (hash cache filled) and `plan --check`, each a fresh
`python -m kling_batch` process as a user would run it.

    python benchmarks/plan_scale.py [--renders 10000] [--assets 50] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from kling_batch.lockfile import lock_path, new_entry
from kling_batch.plan import build_plan

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d4944415478da636460f80f0001040100a5f1d1b70000000049454e44ae426082"
)


def build_project(root: Path, renders: int, assets: int) -> Path:
    """A manifest whose matrix expands to `renders` renders over `assets` images."""
    variants = renders // assets
    (root / "assets").mkdir(parents=True)
    for n in range(assets):
        # Distinct content per asset, ~200 KB each, so cold hashing does real work.
        (root / "assets" / f"product-{n:02d}.png").write_bytes(PNG + os.urandom(200_000))
    products = ", ".join(f'"{n:02d}"' for n in range(assets))
    manifest = root / "big.toml"
    manifest.write_text(
        f"""version = 1
name = "scale"
output_dir = "renders"

[vars]
brand = "Northwind"

[defaults]
model_tier = "standard"
aspect_ratio = "9:16"

[[shots]]
id = "p{{{{ product }}}}-v{{{{ variant }}}}"
matrix = {{ product = [{products}], variant = {list(range(variants))} }}
prompt = "{{{{ brand }}}} product {{{{ product }}}} in scene {{{{ variant }}}} | 4s: close-up"
image = "assets/product-{{{{ product }}}}.png"
output = "{{{{ product }}}}/{{{{ variant }}}}.mp4"
"""
    )
    return manifest


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


def measure(args: list[str]) -> tuple[float, float, float, int]:
    """Wall and CPU seconds, peak RSS in MB and exit code of one `python -m kling_batch`."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kling_batch", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):
        sys.exit(f"plan failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renders", type=int, default=10_000)
    parser.add_argument("--assets", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kb-plan-scale-"))
    try:
        manifest = build_project(root, options.renders, options.assets)
        count = mark_all_done(manifest)
        lock_size = lock_path(manifest).stat().st_size
        print(f"{count:,} renders, {options.assets} assets, lockfile {lock_size / 1e6:.1f} MB")
        shutil.rmtree(root / ".kling-batch")
        rows = [("cold plan (no hash cache)", *measure(["plan", str(manifest)]))]
        for name, args in [
            ("warm plan", ["plan", str(manifest)]),
            ("plan --check", ["plan", str(manifest), "--check"]),
            ("plan --format json", ["plan", str(manifest), "--format", "json"]),
        ]:
            rows.extend((name, *measure(args)) for _ in range(options.repeat))
        print(f"{'':28} {'wall s':>7} {'cpu s':>6} {'peak MB':>8} {'exit':>4}")
        for name, wall, cpu, rss, code in rows:
            print(f"{name:28} {wall:7.2f} {cpu:6.2f} {rss:8.1f} {code:4d}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
