"""Run efficiency: makespan and requests per render against a realistic emulator.

500 renders (60% standard, 30% pro, 10% 4k; 5-10 s each; a fifth animate one of five local
images) at `--jobs 16` under a 50-requests-per-minute budget, against the emulator's
realistic latency model (queue 5-20 s, then 8/14/36 s of rendering per video second for
standard/pro/4k, ±20% jitter). Both sides run on one scaled clock (`--time-scale`), so
minutes of modelled render time pass in seconds; every number below is in modelled time.

Prints, for kling-batch's progress-paced poller and for a naive fixed-5-second poller run the
same way: makespan, the lower bound (the larger of: total job time / jobs, the longest job,
and 2 requests per render / rpm), the ratio, API requests per completed render (submits +
polls + uploads), 429s received, and peak memory (RSS of this process, emulator included).

    python benchmarks/run_efficiency.py [--renders 500] [--jobs 16] [--rpm 50] [--time-scale 0.01]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import anyio

from kling_batch.client import EmpirioClient
from kling_batch.clock import ScaledClock
from kling_batch.emulator import EmulatorConfig, running
from kling_batch.executor import Executor
from kling_batch.following import RunOptions
from kling_batch.lockfile import LockWriter
from kling_batch.outcomes import Quiet
from kling_batch.pacing import PollPacing
from kling_batch.plan import build_plan

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d4944415478da636460f80f0001040100a5f1d1b70000000049454e44ae426082"
)


class FixedPoller(PollPacing):
    """The naive baseline: poll every `interval` seconds, whatever the job says."""

    def __init__(self, interval: float = 5.0) -> None:
        super().__init__()
        self.interval = interval

    def next_delay(
        self,
        tier: str,
        seconds: Decimal,
        elapsed: float,
        readings: Sequence[tuple[float, float]],
    ) -> float:
        return self.interval


@dataclass
class Result:
    name: str
    makespan: float
    bound: float
    requests_per_render: float
    polls_per_render: float
    rate_limited: int
    done: int
    peak_mb: float


def write_manifest(root: Path, renders: int) -> Path:
    """A matrix of `renders` renders with a realistic tier and length mix."""
    for n in range(5):
        (root / f"still-{n}.png").write_bytes(PNG + bytes([n]))
    manifest = root / "bench.toml"
    manifest.write_text(
        f"""version = 1
name = "efficiency"
output_dir = "renders"

[[shots]]
id = "r{{{{ n }}}}"
matrix = {{ n = {list(range(renders))} }}
prompt = "shot {{{{ n }}}} of the benchmark"
model_tier = "{{{{ 'standard' if n % 10 < 6 else ('pro' if n % 10 < 9 else '4k') }}}}"
duration = "{{{{ 5 + n % 6 }}}}"
image = "{{{{ 'still-' ~ (n // 5 % 5) ~ '.png' if n % 5 == 0 else '' }}}}"
"""
    )
    return manifest


def run_once(name: str, pacer: PollPacing, options: argparse.Namespace) -> Result:
    root = Path(tempfile.mkdtemp(prefix="kb-run-eff-"))
    try:
        manifest = write_manifest(root, options.renders)
        plan = build_plan(manifest, now=datetime.now(UTC))
        config = EmulatorConfig(time_scale=options.time_scale, rpm=options.rpm, seed=7)
        with running(config) as served:
            emulator = served.emulator
            writer = LockWriter(plan.lock_path, plan.lock)
            started = time.monotonic()

            async def main() -> None:
                client = EmpirioClient(
                    api_key=served.api_key,
                    base_url=served.base_url,
                    rpm=options.rpm,
                    clock=ScaledClock(options.time_scale),
                )
                async with client:
                    executor = Executor(
                        root=root,
                        client=client,
                        writer=writer,
                        events=Quiet(),
                        options=RunOptions(jobs=options.jobs, pacer=pacer),
                    )
                    await executor.run(list(plan.items))

            anyio.run(main)
            makespan = (time.monotonic() - started) / options.time_scale
            entries = [e for e in emulator.journal.entries() if e.counted]
            now = emulator.clock.now()
            durations = []
            for entry in writer.lock.shots.values():
                job = emulator.jobs.get(entry.job_id, now) if entry.job_id else None
                if job is not None:
                    durations.append((job.finishes - job.created) / options.time_scale)
        done = sum(1 for e in writer.lock.shots.values() if e.state == "done")
        bound = max(
            sum(durations) / options.jobs,
            max(durations, default=0.0),
            2 * options.renders / options.rpm * 60,
        )
        polls = sum(1 for e in entries if e.method == "GET" and e.path.startswith("/v1/jobs/"))
        return Result(
            name=name,
            makespan=makespan,
            bound=bound,
            requests_per_render=len(entries) / max(done, 1),
            polls_per_render=polls / max(done, 1),
            rate_limited=sum(1 for e in entries if e.status == 429),
            done=done,
            peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renders", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--rpm", type=int, default=50)
    parser.add_argument("--time-scale", type=float, default=0.01)
    parser.add_argument("--skip-naive", action="store_true")
    options = parser.parse_args()
    runs = [("kling-batch (progress-paced)", PollPacing())]
    if not options.skip_naive:
        runs.append(("naive fixed 5 s poller", FixedPoller(5.0)))
    print(
        f"{options.renders} renders, --jobs {options.jobs}, {options.rpm} rpm, "
        f"time scale {options.time_scale} (all times in modelled seconds)"
    )
    header = (
        f"{'poller':30} {'done':>5} {'makespan':>9} {'bound':>8} {'ratio':>6} "
        f"{'req/render':>10} {'polls/r':>8} {'429s':>5} {'peak MB':>8}"
    )
    print(header)
    for name, pacer in runs:
        r = run_once(name, pacer, options)
        print(
            f"{r.name:30} {r.done:5d} {r.makespan:9.0f} {r.bound:8.0f} "
            f"{r.makespan / r.bound:6.3f} {r.requests_per_render:10.2f} "
            f"{r.polls_per_render:8.2f} {r.rate_limited:5d} {r.peak_mb:8.1f}"
        )


if __name__ == "__main__":
    main()
