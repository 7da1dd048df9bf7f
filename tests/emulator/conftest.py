"""Fixtures for emulator tests: emulators served on loopback and a small API helper."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from kling_batch.emulator import EmulatorConfig, Latency, RunningEmulator, running
from kling_batch.emulator.app import Emulator
from kling_batch.emulator.media import render_mp4

SUBMIT = "/v1/videos/generations"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)


class Api:
    """An authenticated client bound to one served emulator."""

    def __init__(self, served: RunningEmulator, client: httpx.Client) -> None:
        self.served = served
        self.client = client

    @property
    def emu(self) -> Emulator:
        return self.served.emulator

    def submit(self, **fields: Any) -> httpx.Response:
        body = {"model": "kling-o3", "prompt": "a fox runs through snow", **fields}
        return self.client.post(SUBMIT, json=body)

    def submit_ok(self, **fields: Any) -> dict[str, Any]:
        response = self.submit(**fields)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def finish(self, job_id: str) -> dict[str, Any]:
        """Move the clock past any modelled render time (but inside retention) and poll."""
        self.emu.advance(1000)
        return self.job(job_id)

    def render(self, **fields: Any) -> dict[str, Any]:
        """Submit and return the completed job."""
        job = self.finish(self.submit_ok(**fields)["job_id"])
        assert job["status"] == "completed", job
        return job

    def upload(self, name: str, data: bytes, content_type: str) -> httpx.Response:
        return self.client.post("/v1/files/upload", files={"file": (name, data, content_type)})

    def upload_ok(self, name: str, data: bytes, content_type: str) -> dict[str, Any]:
        response = self.upload(name, data, content_type)
        assert response.status_code == 200, response.text
        return dict(response.json())


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The `error` object of an envelope."""
    return dict(response.json()["error"])


@pytest.fixture
def serve() -> Iterator[Callable[..., RunningEmulator]]:
    """Start emulators from `EmulatorConfig` fields; every one stops at teardown."""
    with contextlib.ExitStack() as stack:

        def start(**fields: Any) -> RunningEmulator:
            return stack.enter_context(running(EmulatorConfig(**fields)))

        yield start


@pytest.fixture
def make_api(serve: Callable[..., RunningEmulator]) -> Iterator[Callable[..., Api]]:
    """An `Api` on a new emulator; defaults: instant jobs, no RPM limit."""
    with contextlib.ExitStack() as stack:

        def make(**fields: Any) -> Api:
            fields.setdefault("latency", Latency.zero())
            fields.setdefault("rpm", 0)
            served = serve(**fields)
            client = stack.enter_context(
                httpx.Client(
                    base_url=served.base_url,
                    headers={"Authorization": f"Bearer {served.api_key}"},
                )
            )
            return Api(served, client)

        yield make


@pytest.fixture
def api(make_api: Callable[..., Api]) -> Api:
    """An `Api` on an emulator with instant jobs and no RPM limit."""
    return make_api()


@pytest.fixture(scope="module")
def shared_api() -> Iterator[Api]:
    """One `Api` for a whole module, for tests that read no shared state (instant jobs)."""
    config = EmulatorConfig(latency=Latency.zero(), rpm=0)
    with (
        running(config) as served,
        httpx.Client(
            base_url=served.base_url, headers={"Authorization": f"Bearer {served.api_key}"}
        ) as client,
    ):
        yield Api(served, client)


@pytest.fixture
def clip() -> Callable[[str, str], bytes]:
    """MP4 bytes of a given length in seconds and aspect ratio."""
    return lambda seconds, aspect="16:9": render_mp4(aspect, Decimal(seconds))
