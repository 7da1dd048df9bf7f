"""Shared store cost: what claims and background pushes add to a run, in time and memory.

1. Makespan. 500 renders (`--renders`) through the real command line against the emulator
   (realistic latency, `--time-scale`, `--jobs 16`, 50 rpm), once rendering alone
   (`--remote none`) and once through an S3 server on loopback (moto's, in a process of
   its own, as a real store would be): every render claimed before it is paid for and
   pushed (bytes and record) in the background. Prints both wall-clock makespans and the
   difference (the issue's bar: under 10%), and checks every render reached the store.
2. Memory. A few renders whose outputs are padded to 20, 100 and 200 MB
   (`--large-output-bytes`), run and pushed: the peak resident memory of the run's process
   (its own `ru_maxrss`, from `wait4`) stays flat as the outputs grow, because downloads,
   render-cache copies and multipart uploads all stream.

    python benchmarks/remote_push.py [--renders 500] [--jobs 16] [--time-scale 0.01]
                                     [--large 3] [--skip-memory] [--skip-makespan]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3

from kling_batch.emulator import EmulatorConfig, RunningEmulator, running

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench-access",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
MB = 1_000_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def s3_server() -> Iterator[str]:
    """moto's S3 server in its own process on a loopback port; yields its endpoint."""
    port = free_port()
    server = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    command = [server] if server else [sys.executable, "-m", "moto.server"]
    process = subprocess.Popen(
        [*command, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        process.terminate()  # ours, by its handle
        process.wait(timeout=30)


def s3_client(endpoint: str) -> object:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )


def write_manifest(root: Path, renders: int, remote: str) -> Path:
    """`renders` distinct standard/pro renders of 5-10 s, naming the store."""
    manifest = root / "bench.toml"
    manifest.write_text(
        f"""version = 1
name = "remote-bench"
output_dir = "renders"
remote = "{remote}"

[[shots]]
id = "r{{{{ n }}}}"
matrix = {{ n = {list(range(renders))} }}
prompt = "shot {{{{ n }}}} of the benchmark"
model_tier = "{{{{ 'standard' if n % 10 < 7 else 'pro' }}}}"
duration = "{{{{ 5 + n % 6 }}}}"
"""
    )
    return manifest


def run_cli(
    manifest: Path, served: RunningEmulator, endpoint: str, scale: float, *args: str
) -> tuple[float, float, str]:
    """`kling-batch run` as a child process: wall seconds, its peak RSS in MB, stderr."""
    env = {
        **os.environ,
        **CREDENTIALS,
        "AWS_ENDPOINT_URL": endpoint,
        "EMPIRIOLABS_API_KEY": served.api_key,
        "NO_COLOR": "1",
    }
    command = [
        sys.executable,
        "-m",
        "kling_batch",
        "run",
        str(manifest),
        "--api-base",
        served.base_url,
        "--time-scale",
        str(scale),
        "--yes",
        *args,
    ]
    started = time.monotonic()
    with tempfile.TemporaryFile() as err:
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL
        )
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - started
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"run failed ({process.returncode}):\n{stderr[-3000:]}")
    return wall, usage.ru_maxrss / 1024, stderr


def records_in(endpoint: str, bucket: str) -> int:
    pages = s3_client(endpoint).get_paginator("list_objects_v2")  # type: ignore[attr-defined]
    return sum(
        1
        for page in pages.paginate(Bucket=bucket, Prefix="bench/renders/")
        for _ in page.get("Contents", [])
    )


def makespan(options: argparse.Namespace, endpoint: str) -> None:
    config = EmulatorConfig(time_scale=options.time_scale, rpm=options.rpm, seed=7)
    print(
        f"\n1. Makespan: {options.renders} renders, --jobs {options.jobs}, {options.rpm} rpm, "
        f"time scale {options.time_scale} (wall-clock seconds of the whole run)"
    )
    results: dict[str, float] = {}
    for name in ("alone (--remote none)", "through the S3 store"):
        bucket = f"bench-{uuid.uuid4().hex[:10]}"
        s3_client(endpoint).create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
        root = Path(tempfile.mkdtemp(prefix="kb-remote-bench-"))
        try:
            manifest = write_manifest(root, options.renders, f"s3://{bucket}/bench")
            extra = ["--remote", "none"] if name.startswith("alone") else []
            with running(config) as served:
                wall, peak, _ = run_cli(
                    manifest,
                    served,
                    endpoint,
                    options.time_scale,
                    "--jobs",
                    str(options.jobs),
                    "--rpm",
                    str(options.rpm),
                    *extra,
                )
            results[name] = wall
            stored = records_in(endpoint, bucket)
            print(f"  {name:26} {wall:8.1f} s   peak {peak:6.1f} MB   records in store: {stored}")
        finally:
            shutil.rmtree(root, ignore_errors=True)
    alone, shared = results.values()
    print(f"  pushing added {100 * (shared - alone) / alone:+.1f}% to the makespan")


def memory(options: argparse.Namespace, endpoint: str) -> None:
    print(
        f"\n2. Memory: {options.large} renders per run, outputs padded to each size, "
        "downloaded, cached and pushed (peak RSS of the run's process)"
    )
    for size in (20 * MB, 100 * MB, 200 * MB):
        bucket = f"bench-{uuid.uuid4().hex[:10]}"
        s3_client(endpoint).create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
        root = Path(tempfile.mkdtemp(prefix="kb-remote-mem-"))
        config = EmulatorConfig(time_scale=0.002, rpm=0, large_output_bytes=size, seed=3)
        try:
            manifest = write_manifest(root, options.large, f"s3://{bucket}/bench")
            with running(config) as served:
                wall, peak, _ = run_cli(manifest, served, endpoint, 0.002, "--jobs", "4")
            stored = records_in(endpoint, bucket)
            print(
                f"  outputs of {size // MB:4d} MB: peak {peak:6.1f} MB   {wall:6.1f} s   "
                f"records in store: {stored}"
            )
        finally:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renders", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--rpm", type=int, default=50)
    parser.add_argument("--time-scale", type=float, default=0.01)
    parser.add_argument("--large", type=int, default=3, help="renders per memory run")
    parser.add_argument("--skip-makespan", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    options = parser.parse_args()
    with s3_server() as endpoint:
        if not options.skip_makespan:
            makespan(options, endpoint)
        if not options.skip_memory:
            memory(options, endpoint)


if __name__ == "__main__":
    main()
