"""Fixtures for integration tests: the real client against the real emulator over loopback."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from kling_batch.client import EmpirioClient, JobState, RetryPolicy
from kling_batch.clock import ScaledClock
from kling_batch.emulator import EmulatorConfig, Latency, RunningEmulator, parse_fault, running

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
STREET_MP4 = EXAMPLES / "edit" / "clips" / "street.mp4"  # 6.0 s long
SHOE_PNG = EXAMPLES / "product-launch" / "assets" / "trail-shoe.png"

# One modelled second lasts 10 ms: Retry-After waits and backoffs stay well under a second.
TIME_SCALE = 0.01
# Polls are 5 modelled seconds apart, like the official sample; this bounds a runaway loop.
POLL_EVERY = 5.0
MAX_POLLS = 2_000

BODY: dict[str, Any] = {"model": "kling-o3", "prompt": "a fox runs through snow"}


class RecordingClock(ScaledClock):
    """A `ScaledClock` that remembers every wait it was asked for, in model seconds."""

    def __init__(self, time_scale: float) -> None:
        super().__init__(time_scale)
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await super().sleep(seconds)


@dataclass(frozen=True)
class Answer:
    """One response as it came off the socket: status line and headers."""

    method: str
    path: str
    status: int
    headers: Mapping[str, str]


@dataclass
class RecordingTransport(httpx.AsyncBaseTransport):
    """httpx's own socket transport, noting every request sent and every response's head."""

    sent: list[tuple[str, str]] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    inner: httpx.AsyncHTTPTransport = field(default_factory=httpx.AsyncHTTPTransport)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.method, request.url.path))
        response = await self.inner.handle_async_request(request)
        self.answers.append(
            Answer(request.method, request.url.path, response.status_code, dict(response.headers))
        )
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def serve() -> Iterator[Callable[..., RunningEmulator]]:
    """Start emulators on loopback; defaults: instant jobs, no RPM limit, `TIME_SCALE`.

    `faults` takes `--fault` strings; every other keyword is an `EmulatorConfig` field.
    """
    with contextlib.ExitStack() as stack:

        def start(*, faults: tuple[str, ...] = (), **fields: Any) -> RunningEmulator:
            fields.setdefault("latency", Latency.zero())
            fields.setdefault("rpm", 0)
            fields.setdefault("time_scale", TIME_SCALE)
            config = EmulatorConfig(faults=tuple(parse_fault(f) for f in faults), **fields)
            return stack.enter_context(running(config))

        yield start


@pytest.fixture
def served(serve: Callable[..., RunningEmulator]) -> RunningEmulator:
    """An emulator with instant jobs, no RPM limit and no faults."""
    return serve()


@pytest.fixture
def connect() -> Callable[..., EmpirioClient]:
    """A real `EmpirioClient` for a served emulator, on a `RecordingClock` at its time scale.

    Defaults: the emulator's key, no client-side RPM limit, deterministic backoff (each
    retry waits the full step). Keywords override any `EmpirioClient` argument.
    """

    def make(served: RunningEmulator, **overrides: Any) -> EmpirioClient:
        options: dict[str, Any] = {
            "api_key": served.api_key,
            "base_url": served.base_url,
            "rpm": None,
            "clock": RecordingClock(served.emulator.config.time_scale),
            "retry": RetryPolicy(random=lambda: 1.0),
        }
        options.update(overrides)
        return EmpirioClient(**options)

    return make


@pytest.fixture
def wait_done() -> Callable[..., Any]:
    """Poll a job on the client's clock until it is no longer pending; return its state."""

    async def wait(client: EmpirioClient, job_id: str, poll_url: str | None = None) -> JobState:
        for _ in range(MAX_POLLS):
            state = await client.get_job(job_id, poll_url)
            if state.status != "pending":
                return state
            await client.clock.sleep(POLL_EVERY)
        raise AssertionError(f"job {job_id} still pending after {MAX_POLLS} polls")

    return wait


@pytest.fixture
def render(wait_done: Callable[..., Any]) -> Callable[..., Any]:
    """Submit a body (`BODY` plus the given fields), poll until done, return the end state."""

    async def go(client: EmpirioClient, **fields: Any) -> JobState:
        submission = await client.submit({**BODY, **fields})
        state: JobState = await wait_done(client, submission.job_id, submission.poll_url)
        return state

    return go


@pytest.fixture
def transport() -> RecordingTransport:
    """A socket transport that records each response's status and headers."""
    return RecordingTransport()


@pytest.fixture
def street_mp4(tmp_path: Path) -> Path:
    """A local copy of the 6-second example clip."""
    target = tmp_path / "street.mp4"
    shutil.copy(STREET_MP4, target)
    return target


@pytest.fixture
def shoe_png(tmp_path: Path) -> Path:
    """A local copy of a small example PNG."""
    target = tmp_path / "trail-shoe.png"
    shutil.copy(SHOE_PNG, target)
    return target
