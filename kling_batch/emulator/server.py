"""Serving: `serve` for `kling-batch emulator`, and `running`/`running_async` for in-process use.

Both bind a loopback socket first (port 0 picks a free one) and run uvicorn's h11 server on
it; the in-process helpers run it in a daemon thread with its own event loop, like a
separate process would, and stop it on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import anyio.to_thread
import uvicorn
from uvicorn.config import LOGGING_CONFIG

from kling_batch.emulator.app import Emulator
from kling_batch.emulator.config import EmulatorConfig, JobListStyle, Latency, PollUrlStyle
from kling_batch.emulator.faults import Fault, parse_fault
from kling_batch.errors import UserError

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class RunningEmulator:
    """A served emulator: where it listens and its state."""

    base_url: str
    emulator: Emulator

    @property
    def api_key(self) -> str:
        """The key clients must send."""
        return self.emulator.api_key


def _credits(credits: str | Decimal | None) -> Decimal | None:
    try:
        return None if credits is None else Decimal(str(credits))
    except InvalidOperation:
        raise UserError(f"not an amount in USD: {credits!r}", field="--credits") from None


def _faults(faults: Sequence[str]) -> tuple[Fault, ...]:
    try:
        return tuple(parse_fault(spec) for spec in faults)
    except ValueError as exc:
        raise UserError(str(exc), field="--fault") from None


def config_from_options(
    *,
    api_key: str,
    time_scale: float,
    rpm: int,
    credits: str | Decimal | None,
    faults: Sequence[str],
    seed: int,
    latency: str = "realistic",
    poll_url: str = "absolute",
    submit_status: int = 200,
    large_output_bytes: int | None = None,
    cancel_route: bool = True,
    bill_cancelled: bool = False,
    bill_failed: bool = False,
    drifted_schema: bool = False,
    rate_limit_headers: bool = False,
    job_list: str = "cursor",
) -> EmulatorConfig:
    """An `EmulatorConfig` from command-line style values; `UserError` names a bad option."""
    balance, parsed = _credits(credits), _faults(faults)
    timing, style, listing = _styles(latency, poll_url, job_list)
    try:
        return EmulatorConfig(
            api_key=api_key,
            time_scale=time_scale,
            rpm=rpm,
            credits=balance,
            faults=parsed,
            seed=seed,
            latency=timing,
            poll_url_style=style,
            submit_status=submit_status,
            large_output_bytes=large_output_bytes,
            cancel_route=cancel_route,
            bill_cancelled=bill_cancelled,
            bill_failed=bill_failed,
            drifted_schema=drifted_schema,
            rate_limit_headers=rate_limit_headers,
            job_list=listing,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _styles(
    latency: str, poll_url: str, job_list: str
) -> tuple[Latency, PollUrlStyle, JobListStyle]:
    """The `--latency`, `--poll-url` and `--job-list` choices, checked."""
    if latency not in ("realistic", "zero"):
        raise UserError("expected 'realistic' or 'zero'", field="--latency")
    if poll_url not in ("absolute", "relative", "absent", "location"):
        raise UserError(
            "expected 'absolute', 'relative', 'absent' or 'location'", field="--poll-url"
        )
    style: PollUrlStyle = poll_url  # type: ignore[assignment]
    if job_list not in ("cursor", "no-cursor", "absent"):
        raise UserError("expected 'cursor', 'no-cursor' or 'absent'", field="--job-list")
    listing: JobListStyle = job_list  # type: ignore[assignment]
    return Latency.zero() if latency == "zero" else Latency.realistic(), style, listing


def serve(*, host: str, port: int, config: EmulatorConfig) -> None:
    """Serve an emulator until Ctrl-C (the `kling-batch emulator` command)."""
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    with Emulator(config) as emulator:
        server = _server(emulator, log_level="info", own_logging=True)
        url_host = f"[{host}]" if ":" in host else host
        sys.stderr.write(
            f"kling-batch emulator on http://{url_host}:{bound_port} "
            f"(API key {config.api_key}, time scale {config.time_scale:g}, "
            f"rpm {config.rpm or 'unlimited'}); Ctrl-C stops\n"
        )
        sys.stderr.flush()
        # uvicorn re-raises the SIGINT it caught once it has shut down; for a server,
        # Ctrl-C is the normal way to stop, so it ends the command successfully.
        with contextlib.suppress(KeyboardInterrupt):
            server.run(sockets=[sock])


@contextlib.contextmanager
def running(
    config: EmulatorConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> Iterator[RunningEmulator]:
    """Serve a new emulator on a loopback port in a background thread for the block."""
    with Emulator(config) as emulator, _serving(emulator, host, port) as base_url:
        yield RunningEmulator(base_url=base_url, emulator=emulator)


@contextlib.asynccontextmanager
async def running_async(
    config: EmulatorConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningEmulator]:
    """`running` for async code: start and stop happen off the caller's event loop."""
    stack = contextlib.ExitStack()
    served = await anyio.to_thread.run_sync(
        stack.enter_context, running(config, host=host, port=port)
    )
    try:
        yield served
    finally:
        await anyio.to_thread.run_sync(stack.close)


@contextlib.contextmanager
def _serving(emulator: Emulator, host: str, port: int) -> Iterator[str]:
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    server = _server(emulator, log_level="warning", own_logging=False)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="kling-emulator", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + _START_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the emulator server did not start")
            time.sleep(0.005)
        url_host = f"[{host}]" if ":" in host else host
        yield f"http://{url_host}:{bound_port}"
    finally:
        server.stop()
        thread.join(_STOP_TIMEOUT)
        sock.close()


class _Server(uvicorn.Server):
    """A uvicorn server that `stop()` ends at once rather than at its next 0.1 s tick."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.1)

    def stop(self) -> None:
        """Ask the server to shut down (thread-safe)."""
        self.should_exit = True
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                self._loop.call_soon_threadsafe(self._wake.set)


def _server(emulator: Emulator, *, log_level: str, own_logging: bool) -> _Server:
    config = uvicorn.Config(
        emulator.app,
        # In-process, uvicorn must not reconfigure the host program's logging.
        log_config=LOGGING_CONFIG if own_logging else None,
        http="h11",
        ws="none",
        lifespan="off",
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    return _Server(config)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on accepted sockets
    # whose proto says TCP, and without it Nagle + delayed ACK stall keep-alive answers 40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}", field="--port") from None
    sock.listen(2048)
    return sock
