"""Run efficiency: makespan and requests per render against a realistic emulator.

500 renders (60% standard, 30% pro, 10% 4k; 5-10 s each; a fifth animate one of five local
images) at `--jobs 16` and `--jobs 64` under a 50-requests-per-minute budget, against the
emulator's realistic latency model (queue 5-20 s, then 8/14/36 s of rendering per video
second for standard/pro/4k, ±20% jitter). Both sides run on one scaled clock
(`--time-scale`), so minutes of modelled render time pass in seconds; every number below
is in modelled time.

Each setting runs against an API that lists jobs (polled through the list, issue 13) and
one that does not (`job_list="absent"`: each job polled on its own), and optionally a naive
fixed-5-second poller. Prints the makespan; its two lower bounds, render latency (the
larger of total job time / jobs and the longest job) and the request budget (the run's
requests / rpm); the ratio to the larger, and beside it the ratio the jobs' own durations
would give packed in the run's order with no time lost between them (`packed`: the gap
between the two is time spent noticing ends and waiting for the budget); API requests
per completed render (submits, list reads, job polls and uploads) with list reads and job
polls apart; 429s received; and peak memory (RSS of this process, emulator included).

`--memory` instead runs `kling-batch run` of 1,000 and 10,000 renders (the command line,
against an emulator in a process of its own, no request budget, a faster clock) and prints
the peak memory of each: it should stay flat.

    python benchmarks/run_efficiency.py [--renders 500] [--jobs 16 64] [--rpm 50]
                                        [--time-scale 0.01] [--api both|list|no-list]
                                        [--naive] [--memory]

The time scale sets how much the client's own work weighs: at 0.01 each real millisecond
it spends (saving the lockfile before each submission, Python) counts as 0.1 modelled
seconds, so makespans there run longer than the same run would in real time; 0.1 weighs
it ten times less.
"""

from __future__ import annotations

import argparse
import heapq
import os
import resource
import shutil
import socket
import subprocess
import sys
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
    latency_bound: float
    budget_bound: float
    requests_per_render: float
    lists_per_render: float
    polls_per_render: float
    rate_limited: int
    done: int
    peak_mb: float
    packed: float = 0.0

    @property
    def bound(self) -> float:
        """The larger lower bound."""
        return max(self.latency_bound, self.budget_bound)


def packed(priced: Sequence[tuple[Decimal, float]], jobs: int) -> float:
    """The makespan of the jobs' real durations packed into `jobs` slots in the order the
    run starts them (dearest first: `pacing.longest_first`), each started the moment a slot
    frees: what the run would take with no time lost between one job's end and the next's
    start (noticing the end, the request budget). Its ratio to the makespan's bound shows
    how much of the gap is packing."""
    slots = [0.0] * jobs
    for _, seconds in sorted(priced, key=lambda pair: pair[0], reverse=True):
        heapq.heappush(slots, heapq.heappop(slots) + seconds)
    return max(slots, default=0.0)


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


def run_once(
    name: str, pacer: PollPacing, options: argparse.Namespace, *, jobs: int, job_list: str
) -> Result:
    root = Path(tempfile.mkdtemp(prefix="kb-run-eff-"))
    try:
        manifest = write_manifest(root, options.renders)
        plan = build_plan(manifest, now=datetime.now(UTC))
        config = EmulatorConfig(
            time_scale=options.time_scale,
            rpm=options.rpm,
            seed=7,
            job_list=job_list,  # type: ignore[arg-type]
        )
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
                        options=RunOptions(jobs=jobs, pacer=pacer),
                    )
                    await executor.run(list(plan.items))

            anyio.run(main)
            makespan = (time.monotonic() - started) / options.time_scale
            entries = [e for e in emulator.journal.entries() if e.counted]
            now = emulator.clock.now()
            durations, priced = [], []
            for entry in writer.lock.shots.values():
                job = emulator.jobs.get(entry.job_id, now) if entry.job_id else None
                if job is not None:
                    durations.append((job.finishes - job.created) / options.time_scale)
                    priced.append((entry.cost_usd, durations[-1]))
        done = sum(1 for e in writer.lock.shots.values() if e.state == "done")
        polls = sum(1 for e in entries if e.method == "GET" and e.path.startswith("/v1/jobs/"))
        lists = sum(1 for e in entries if e.method == "GET" and e.path == "/v1/jobs")
        budget = len(entries) / options.rpm * 60 if options.rpm else 0.0
        return Result(
            name=name,
            makespan=makespan,
            latency_bound=max(sum(durations) / jobs, max(durations, default=0.0)),
            packed=packed(priced, jobs),
            budget_bound=budget,
            requests_per_render=len(entries) / max(done, 1),
            lists_per_render=lists / max(done, 1),
            polls_per_render=polls / max(done, 1),
            rate_limited=sum(1 for e in entries if e.status == 429),
            done=done,
            peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def memory(options: argparse.Namespace) -> None:
    """Peak memory of `kling-batch run` of 1,000 and 10,000 renders (the command line, as a
    user runs it, against an emulator in a process of its own; no request budget)."""
    scale = options.time_scale / 20
    print(f"peak memory of `kling-batch run --jobs 64` (time scale {scale}):")
    for renders in (1_000, 10_000):
        root = Path(tempfile.mkdtemp(prefix="kb-run-mem-"))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        serve = [sys.executable, "-m", "kling_batch", "emulator", "--port", str(port)]
        serve += ["--time-scale", str(scale), "--rpm", "0"]
        emulator = subprocess.Popen(serve, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            manifest = write_manifest(root, renders)
            time.sleep(2)  # the emulator starts listening
            argv = ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "kling_batch", "run"]
            argv += [str(manifest), "--api-base", f"http://127.0.0.1:{port}", "--yes"]
            argv += ["--jobs", "64", "--rpm", "100000", "--time-scale", str(scale)]
            env = {**os.environ, "EMPIRIOLABS_API_KEY": "sk-empiriolabs-emulator"}
            done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
            peak = int(done.stderr.strip().splitlines()[-1]) / 1024
            print(f"  {renders:6,} renders: exit {done.returncode}, peak {peak:.1f} MB")
            if done.returncode != 0:  # say why: a number from a failed run means little
                print("    " + "\n    ".join(done.stdout.strip().splitlines()[-4:]))
        finally:
            emulator.terminate()
            emulator.wait()
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renders", type=int, default=500)
    parser.add_argument("--jobs", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--rpm", type=int, default=50)
    parser.add_argument("--time-scale", type=float, default=0.01)
    parser.add_argument("--naive", action="store_true", help="also a fixed 5 s poller")
    parser.add_argument("--memory", action="store_true", help="peak memory at 1k and 10k")
    parser.add_argument(
        "--api", choices=["both", "list", "no-list"], default="both", help="which APIs to run"
    )
    options = parser.parse_args()
    if options.memory:
        memory(options)
        return
    runs = []
    if options.api != "no-list":
        runs.append(("job list", PollPacing(), "cursor"))
    if options.api != "list":
        runs.append(("no job list", PollPacing(), "absent"))
    if options.naive:
        runs.append(("naive fixed 5 s poller", FixedPoller(5.0), "absent"))
    print(
        f"{options.renders} renders, {options.rpm} rpm, time scale {options.time_scale} "
        "(all times in modelled seconds)"
    )
    header = (
        f"{'jobs':>4} {'API':24} {'done':>5} {'makespan':>9} {'latency':>8} {'budget':>7} "
        f"{'ratio':>6} {'packed':>6} {'req/r':>6} {'lists/r':>7} {'polls/r':>7} {'429s':>5} "
        f"{'peak MB':>8}"
    )
    print(header)
    for jobs in options.jobs:
        for name, pacer, job_list in runs:
            r = run_once(name, pacer, options, jobs=jobs, job_list=job_list)
            print(
                f"{jobs:4d} {r.name:24} {r.done:5d} {r.makespan:9.0f} {r.latency_bound:8.0f} "
                f"{r.budget_bound:7.0f} {r.makespan / r.bound:6.3f} {r.packed / r.bound:6.3f} "
                f"{r.requests_per_render:6.3f} {r.lists_per_render:7.3f} "
                f"{r.polls_per_render:7.3f} {r.rate_limited:5d} {r.peak_mb:8.1f}"
            )


if __name__ == "__main__":
    main()
