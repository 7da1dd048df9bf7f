"""Client overhead: what `EmpirioClient` itself costs per request, and its memory while streaming.

Part 1 (throughput): `--cycles` submit → poll → download cycles, `--inflight` at once (an
anyio task group behind a `CapacityLimiter`), against an emulator with instant jobs
(`Latency.zero()`), no RPM limit and `time_scale=1`; the client's own limiter is off
(`rpm=None`). Prints wall time, requests per second (counted in the emulator's journal),
CPU time per request and peak memory.

Part 2 (streaming memory): `--downloads` results of `--large-mb` MB each
(`EmulatorConfig(large_output_bytes=...)`), downloaded in parallel to files in a temporary
folder (deleted afterwards). Prints the peak RSS over the baseline taken just before the
downloads start; streaming should keep it flat (target: under 100 MB however large the files).

By default the emulator runs in a separate process (`multiprocessing`, spawn), so the CPU
time (`time.process_time()`) and RSS measured here are the client's alone; the emulator's
CPU and peak RSS are read from `/proc/<pid>` and printed beside them. `--emulator thread`
serves it from a thread of this process instead (then every number includes the emulator).
RSS is sampled every few milliseconds from `/proc/self/status` (`VmRSS`) by a background
thread. Numbers only: nothing here asserts on timing.

    python benchmarks/client_overhead.py [--cycles 2000] [--inflight 64]
        [--large-mb 200] [--downloads 8] [--emulator process|thread]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import anyio
import httpx

from kling_batch.client import EmpirioClient, JobState
from kling_batch.emulator import DEFAULT_API_KEY, EmulatorConfig, Latency, running

BODY = {"model": "kling-o3", "prompt": "a fox runs through snow", "model_tier": "standard"}
MB = 1_000_000
WARMUP_CYCLES = 32
RSS_EVERY = 0.005  # seconds between RSS samples
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- measuring ------------------------------------------------------------------------------


def rss_bytes(pid: int | str = "self") -> int:
    """Current resident set size of a process, from /proc/<pid>/status."""
    return _status_kb(pid, "VmRSS") * 1024


def peak_rss_bytes(pid: int | str = "self") -> int:
    """Peak resident set size of a process so far (VmHWM)."""
    return _status_kb(pid, "VmHWM") * 1024


def _status_kb(pid: int | str, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(f"{field} not in /proc/{pid}/status")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class RssSampler:
    """Samples this process's RSS in a background thread; `peak` is the highest seen."""

    def __init__(self, every: float = RSS_EVERY) -> None:
        self.every = every
        self.baseline = rss_bytes()
        self.peak = self.baseline
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self.samples += 1
            self._stop.wait(self.every)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def over_baseline(self) -> int:
        """Peak RSS minus the RSS when sampling started."""
        return self.peak - self.baseline


# -- the emulator, in a child process or a thread -------------------------------------------


@dataclass
class Served:
    """A running emulator: where it listens, and its pid when it is another process."""

    base_url: str
    pid: int | None
    api_key: str = DEFAULT_API_KEY

    async def journal(self, since: int = 0) -> list[dict[str, Any]]:
        """Journal entries after seq `since`, read over HTTP (works for either kind)."""
        async with httpx.AsyncClient(timeout=120) as plain:
            response = await plain.get(f"{self.base_url}/_emulator/journal?since={since}")
            response.raise_for_status()
            entries: list[dict[str, Any]] = response.json()["data"]
        return entries

    async def last_seq(self) -> int:
        entries = await self.journal()
        return int(entries[-1]["seq"]) if entries else 0


def _child(options: dict[str, Any], conn: Connection, stop: Event) -> None:
    """Serve an emulator until `stop` is set; send its base URL through `conn`."""
    config = EmulatorConfig(latency=Latency.zero(), **options)
    with running(config) as served:
        conn.send(served.base_url)
        conn.close()
        stop.wait()


@contextlib.contextmanager
def emulator(mode: str, **options: Any) -> Iterator[Served]:
    """An emulator with instant jobs and `options`, in a child process or a thread."""
    if mode == "thread":
        with running(EmulatorConfig(latency=Latency.zero(), **options)) as served:
            yield Served(served.base_url, pid=None, api_key=served.api_key)
        return
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    stop = ctx.Event()
    process = ctx.Process(target=_child, args=(options, send, stop), name="emulator")
    process.start()
    send.close()
    try:
        if not receive.poll(60):
            raise RuntimeError("the emulator process did not start")
        yield Served(receive.recv(), pid=process.pid)
    finally:
        stop.set()
        process.join(30)
        if process.is_alive():
            process.terminate()
            process.join()


# -- part 1: throughput -------------------------------------------------------------------


async def one_cycle(client: EmpirioClient, folder: Path, n: int) -> None:
    """Submit, poll until done, download the result."""
    submission = await client.submit({**BODY, "seed": n})
    while True:
        state: JobState = await client.get_job(submission.job_id, submission.poll_url)
        if state.status != "pending":
            break
        await anyio.sleep(0.01)
    if state.status != "succeeded" or state.video_url is None:
        raise RuntimeError(f"job {state.job_id} ended {state.raw_status}")
    await client.download(state.video_url, folder / f"{n}.mp4")


async def run_cycles(
    client: EmpirioClient, folder: Path, cycles: int, inflight: int, first: int = 0
) -> None:
    limiter = anyio.CapacityLimiter(inflight)

    async def guarded(n: int) -> None:
        async with limiter:
            await one_cycle(client, folder, n)

    async with anyio.create_task_group() as tg:
        for n in range(first, first + cycles):
            tg.start_soon(guarded, n)


async def part1(args: argparse.Namespace) -> None:
    print(f"== Part 1: {args.cycles:,} submit + poll + download cycles, {args.inflight} in flight")
    with (
        emulator(args.emulator, rpm=0, time_scale=1.0) as served,
        tempfile.TemporaryDirectory(prefix="kling-bench-") as tmp,
    ):
        folder = Path(tmp)
        async with EmpirioClient(
            api_key=served.api_key, base_url=served.base_url, rpm=None
        ) as client:
            await run_cycles(client, folder, WARMUP_CYCLES, args.inflight, first=10**6)
            since = await served.last_seq()
            pid = served.pid
            emu_cpu0 = cpu_seconds(pid) if pid is not None else None
            with RssSampler() as rss:
                cpu0, wall0 = time.process_time(), time.perf_counter()
                await run_cycles(client, folder, args.cycles, args.inflight)
                wall = time.perf_counter() - wall0
                cpu = time.process_time() - cpu0
            emu_cpu = None if pid is None or emu_cpu0 is None else cpu_seconds(pid) - emu_cpu0
        entries = await served.journal(since)
        emu_peak = peak_rss_bytes(served.pid) if served.pid else None
    kinds = Counter(_kind(e["path"]) for e in entries)
    bad = sum(1 for e in entries if e["status"] != 200)
    requests = len(entries)
    where = (
        "emulator in a separate process: CPU and RSS below are the client's alone"
        if served.pid
        else "emulator in a thread of THIS process: CPU and RSS include the emulator"
    )
    who = "client" if served.pid else "process"
    kinds_text = ", ".join(f"{k} {v:,}" for k, v in sorted(kinds.items()))
    print(f"  ({where})")
    row("warm-up cycles (not counted)", WARMUP_CYCLES)
    row("requests (emulator journal)", f"{requests:,}  ({kinds_text}; non-200: {bad})")
    row("total wall time", f"{wall:.2f} s")
    row("cycles per second", f"{args.cycles / wall:,.0f}")
    row("requests per second", f"{requests / wall:,.0f}")
    row(f"{who} CPU time", f"{cpu:.2f} s ({cpu / wall:.0%} of one core)")
    row(f"{who} CPU per request", f"{cpu / requests * 1e6:,.0f} µs")
    row(f"{who} CPU per cycle", f"{cpu / args.cycles * 1e3:.2f} ms")
    if emu_cpu is not None:
        row("emulator CPU per request", f"{emu_cpu / requests * 1e6:,.0f} µs (its own process)")
    row(
        f"{who} peak RSS",
        f"{_mb(rss.peak)} (+{_mb(rss.over_baseline)} over {_mb(rss.baseline)} at start; "
        f"{rss.samples} samples)",
    )
    row(f"{who} ru_maxrss (lifetime)", _mb(_maxrss()))
    if emu_peak is not None:
        row("emulator peak RSS (VmHWM)", _mb(emu_peak))


def _kind(path: str) -> str:
    if path.startswith("/cdn/"):
        return "download"
    if path == "/v1/videos/generations":
        return "submit"
    if path.startswith("/v1/jobs/"):
        return "poll"
    return "other"


# -- part 2: large downloads ----------------------------------------------------------------


async def part2(args: argparse.Namespace) -> None:
    size = args.large_mb * MB
    total_mb = args.large_mb * args.downloads
    print(
        f"\n== Part 2: {args.downloads} parallel downloads of {args.large_mb} MB results "
        f"({total_mb:,} MB in all), streamed to files"
    )
    with (
        emulator(args.emulator, rpm=0, time_scale=1.0, large_output_bytes=size) as served,
        _scratch() as folder,
    ):
        async with EmpirioClient(
            api_key=served.api_key, base_url=served.base_url, rpm=None
        ) as client:
            urls = await _render_urls(client, args.downloads)
            with RssSampler() as rss:
                wall0 = time.perf_counter()
                async with anyio.create_task_group() as tg:
                    for n, url in enumerate(urls):
                        tg.start_soon(client.download, url, folder / f"large-{n}.mp4")
                wall = time.perf_counter() - wall0
        sizes = [p.stat().st_size for p in folder.iterdir()]
        emu_peak = peak_rss_bytes(served.pid) if served.pid else None
    if sizes != [size] * args.downloads:
        raise RuntimeError(f"downloaded sizes {sizes} are not {args.downloads} × {size}")
    where = (
        "emulator in a separate process: RSS below is the client's alone"
        if served.pid
        else "emulator in a thread of THIS process: RSS includes the emulator"
    )
    verdict = "flat: under the 100 MB target" if rss.over_baseline < 100 * MB else "OVER 100 MB"
    print(f"  ({where})")
    row("files written", f"{len(sizes)} × {size:,} bytes (deleted afterwards)")
    row("wall time", f"{wall:.2f} s ({total_mb / wall:,.0f} MB/s)")
    row("RSS baseline", _mb(rss.baseline))
    row("RSS peak", f"{_mb(rss.peak)} ({rss.samples} samples)")
    row("peak over baseline", f"{_mb(rss.over_baseline)} ({verdict})")
    if emu_peak is not None:
        row("emulator peak RSS (VmHWM)", _mb(emu_peak))


async def _render_urls(client: EmpirioClient, count: int) -> list[str]:
    urls = []
    for n in range(count):
        submission = await client.submit({**BODY, "seed": n})
        state = await client.get_job(submission.job_id, submission.poll_url)
        if state.video_url is None:
            raise RuntimeError(f"job {state.job_id} has no result ({state.raw_status})")
        urls.append(state.video_url)
    return urls


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="kling-bench-large-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- entry point ------------------------------------------------------------------------------


def row(label: str, value: object) -> None:
    """One aligned line of the report."""
    print(f"  {label:<30}{value}")


def _mb(value: int) -> str:
    return f"{value / MB:,.1f} MB"


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


async def main(args: argparse.Namespace) -> None:
    print(
        json.dumps(
            {
                "python": sys.version.split()[0],
                "httpx": httpx.__version__,
                # httpcore tries `import sniffio` on every pool operation; a failed import
                # is not cached, so its absence costs measurable CPU per request.
                "sniffio_installed": importlib.util.find_spec("sniffio") is not None,
                "cpus": os.cpu_count(),
                "emulator": args.emulator,
                "cycles": args.cycles,
                "inflight": args.inflight,
                "large_mb": args.large_mb,
                "downloads": args.downloads,
            }
        )
    )
    if args.cycles:
        await part1(args)
    if args.downloads and args.large_mb:
        await part2(args)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=2000, help="part 1 cycles (0 skips it)")
    parser.add_argument("--inflight", type=int, default=64, help="part 1 cycles in flight")
    parser.add_argument("--large-mb", type=int, default=200, help="part 2 result size, MB")
    parser.add_argument("--downloads", type=int, default=8, help="part 2 parallel downloads")
    parser.add_argument(
        "--emulator",
        choices=("process", "thread"),
        default="process",
        help="run the emulator in a child process (default) or a thread of this one",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    anyio.run(main, parse_args())
