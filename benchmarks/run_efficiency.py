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
polls apart; 429s received; and peak memory (RSS of this process: the emulator runs in a
process of its own, as the API runs on machines of its own; `--emulator-thread` runs it
in a thread of this one, sharing the client's interpreter lock, as earlier versions did).

`--memory` instead runs `kling-batch run` of 1,000 and 10,000 renders (the command line,
against an emulator in a process of its own, no request budget, a faster clock) and prints
the peak memory of each: it should stay flat.

    python benchmarks/run_efficiency.py [--renders 500] [--jobs 16 64] [--rpm 50]
                                        [--time-scale 0.04] [--api both|list|no-list]
                                        [--naive] [--memory] [--emulator-thread]

The time scale sets how much the client's own work weighs. Between a job's end and the
next submission the client spends some 15-20 real milliseconds of its own (reading the
list's answer, recording the end, saving the lockfile before the submission, the request
itself: the makespans at 0.01 and 0.1 differ by that much); at time scale s each real
millisecond counts as 1/s modelled ones. In
real time (s = 1) that work is a few thousandths of a percent of a batch of minutes-long
jobs; at the default 0.04 (about 2.5 minutes per setting) it is 0.4 modelled seconds,
25 times its real weight, still counted against the client; at 0.01 (a quick look, 40
seconds a setting) 1.5 s, which adds about 1.5% to the makespan at `--jobs 16`; at 0.1
ten times less than at 0.01.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import multiprocessing
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path

import anyio

from kling_batch.client import EmpirioClient
from kling_batch.clock import ScaledClock
from kling_batch.emulator import Emulator, EmulatorConfig, running
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


@dataclass
class Observed:
    """What the emulator recorded of a run: each request it counted (method, path,
    status), and each job's real seconds from its creation to its end."""

    requests: list[tuple[str, str, int]]
    durations: dict[str, float]


def observed(emulator: Emulator, job_ids: list[str]) -> Observed:
    """`Observed` of these jobs, from the emulator's journal and job table."""
    requests = [(e.method, e.path, e.status) for e in emulator.journal.entries() if e.counted]
    now = emulator.clock.now()
    durations = {}
    for job_id in job_ids:
        job = emulator.jobs.get(job_id, now)
        if job is not None:
            durations[job_id] = job.finishes - job.created
    return Observed(requests, durations)


def serve_apart(config: EmulatorConfig, conn: Connection) -> None:
    """The emulator in a process of its own: its address and key, then, once sent the
    run's job ids, what it observed of the run."""
    with running(config) as served:
        conn.send((served.base_url, served.api_key))
        conn.send(observed(served.emulator, conn.recv()))


Observe = Callable[[list[str]], Observed]


@contextlib.contextmanager
def serving(config: EmulatorConfig, *, apart: bool) -> Iterator[tuple[str, str, Observe]]:
    """An emulator for one run: (its URL, its API key, what tells what it observed).

    `apart` (the default): in a process of its own, as the API runs on machines of its
    own, so its work (answering job lists of hundreds of jobs, encoding each MP4) never
    holds the client's interpreter lock: at a time scale of 0.01 each real millisecond of
    it counted as a tenth of a modelled second of the client's. Else in a thread of this
    process (`--emulator-thread`, how the benchmark ran before).
    """
    if not apart:
        with running(config) as served:
            yield served.base_url, served.api_key, partial(observed, served.emulator)
        return
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=serve_apart, args=(config, theirs), daemon=True)
    process.start()
    try:
        base_url, api_key = ours.recv()

        def observe(job_ids: list[str]) -> Observed:
            ours.send(job_ids)
            seen: Observed = ours.recv()
            return seen

        yield base_url, api_key, observe
    finally:
        process.terminate()
        process.join()


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
        with serving(config, apart=not options.emulator_thread) as (base_url, api_key, observe):
            writer = LockWriter(plan.lock_path, plan.lock)
            started = time.monotonic()

            async def main() -> None:
                client = EmpirioClient(
                    api_key=api_key,
                    base_url=base_url,
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
            seen = observe([e.job_id for e in writer.lock.shots.values() if e.job_id])
        durations, priced = [], []
        for entry in writer.lock.shots.values():
            lasted = seen.durations.get(entry.job_id) if entry.job_id else None
            if lasted is not None:
                durations.append(lasted / options.time_scale)
                priced.append((entry.cost_usd, durations[-1]))
        entries = seen.requests
        done = sum(1 for e in writer.lock.shots.values() if e.state == "done")
        gets = [path for method, path, _ in entries if method == "GET"]
        polls = sum(1 for path in gets if path.startswith("/v1/jobs/"))
        lists = sum(1 for path in gets if path == "/v1/jobs")
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
            rate_limited=sum(1 for _, _, status in entries if status == 429),
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
    parser.add_argument("--time-scale", type=float, default=0.04)
    parser.add_argument("--naive", action="store_true", help="also a fixed 5 s poller")
    parser.add_argument("--memory", action="store_true", help="peak memory at 1k and 10k")
    parser.add_argument(
        "--api", choices=["both", "list", "no-list"], default="both", help="which APIs to run"
    )
    parser.add_argument(
        "--emulator-thread",
        action="store_true",
        help="run the emulator in a thread of this process (sharing its interpreter lock)",
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
