"""Serving: the async helper, plain ASGI use, option parsing and the standalone command."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from decimal import Decimal

import httpx
import pytest

from kling_batch.emulator import (
    ConnectionDropped,
    Emulator,
    EmulatorConfig,
    Latency,
    parse_fault,
    running_async,
)
from kling_batch.emulator.server import config_from_options
from kling_batch.errors import UserError

BODY = {"model": "kling-o3", "prompt": "a fox"}
KEY = {"x-api-key": "sk-empiriolabs-emulator"}


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_async_helper_serves_on_loopback():
    """`running_async` yields a base URL an async client can render against."""
    config = EmulatorConfig(latency=Latency.zero())
    async with (
        running_async(config) as served,
        httpx.AsyncClient(base_url=served.base_url, headers=KEY) as client,
    ):
        job_id = (await client.post("/v1/videos/generations", json=BODY)).json()["job_id"]
        job = (await client.get(f"/v1/jobs/{job_id}")).json()
        assert job["status"] == "completed"
        assert served.base_url.startswith("http://127.0.0.1:")


@pytest.mark.anyio
async def test_app_runs_under_asgi_transport():
    """The ASGI app works with httpx.ASGITransport, no socket needed."""
    with Emulator(EmulatorConfig(latency=Latency.zero())) as emulator:
        transport = httpx.ASGITransport(app=emulator.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://emulator", headers=KEY
        ) as client:
            body = (await client.post("/v1/videos/generations", json=BODY)).json()
            assert body["poll_url"].startswith("http://emulator/v1/jobs/")
            job = (await client.get(body["poll_url"])).json()
            video = await client.get(job["result"]["video_url"])
            assert video.content[4:8] == b"ftyp"


@pytest.mark.anyio
async def test_drop_without_a_socket_raises_connection_dropped():
    """Under ASGITransport a dropped connection surfaces as ConnectionDropped."""
    config = EmulatorConfig(faults=(parse_fault("drop=1"),))
    with Emulator(config) as emulator:
        transport = httpx.ASGITransport(app=emulator.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://emulator", headers=KEY
        ) as client:
            with pytest.raises(ConnectionDropped):
                await client.get("/v1/models")


def test_advance_endpoint_moves_the_clock(api):
    """`POST /_emulator/advance` moves the clock by modelled seconds, for out-of-process use."""
    job_id = api.submit_ok()["job_id"]
    httpx.post(f"{api.served.base_url}/_emulator/advance", json={"seconds": 3700})
    assert api.client.get(f"/v1/jobs/{job_id}").status_code == 404


def test_options_become_a_config():
    """Command-line values map onto EmulatorConfig fields."""
    config = config_from_options(
        api_key="k",
        time_scale=0.5,
        rpm=10,
        credits="12.5",
        faults=["5xx=0.1"],
        seed=3,
        latency="zero",
        poll_url="relative",
        submit_status=202,
    )
    assert (config.credits, config.faults[0].kind, config.latency) == (
        Decimal("12.5"),
        "5xx",
        Latency.zero(),
    )
    assert (config.poll_url_style, config.submit_status, config.time_scale) == (
        "relative",
        202,
        0.5,
    )


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"credits": "lots"}, "--credits"), ({"faults": ["nope=1"]}, "--fault")],
)
def test_bad_options_are_user_errors(changes, field):
    """A bad credit amount or fault spec is a UserError naming the option."""
    options = {
        "api_key": "k",
        "time_scale": 1.0,
        "rpm": 50,
        "credits": None,
        "faults": [],
        "seed": 0,
        **changes,
    }
    with pytest.raises(UserError) as caught:
        config_from_options(**options)
    assert caught.value.field == field


def test_config_refuses_a_zero_time_scale():
    """time_scale must be positive; instant jobs are Latency.zero()."""
    with pytest.raises(ValueError, match="time_scale"):
        EmulatorConfig(time_scale=0)


def test_standalone_command_serves_until_interrupted():
    """`kling-batch emulator --port 0` logs its URL and key, serves, and stops on SIGINT."""
    process = subprocess.Popen(
        [sys.executable, "-m", "kling_batch", "emulator", "--port", "0", "--latency", "zero"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert match is not None, line
        assert "sk-empiriolabs-emulator" in line
        assert httpx.get(f"{match.group(0)}/livez").json() == {"status": "ok"}
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()
