"""`kling-batch doctor`: is the API reachable, the key good, and the model as kling-batch knows it?

Checks, in order, each on one line (`✓` passed, `✗` failed, `·` information):

- the base URL and where it came from (plain http off this machine is refused, exit 2);
- that an API key is set (it is never shown);
- reachability and latency: `GET /v1/models/kling-o3`, timed;
- the key, with a cheap authenticated call that creates nothing (`GET /v1/jobs?limit=1`;
  when the API has no job list, the model call stands for it);
- the rate-limit headers the API sent (`x-ratelimit-*`, `retry-after`), if any;
- schema drift: the served description against `schemas/kling-o3.json`
  (`kling_batch.schema_drift`), with one line per difference.

Every request is tried once: a doctor reports what happens rather than retrying it away.
Exit 0 when every check passes, 1 when any fails (drift included).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx

from kling_batch import ui
from kling_batch.client import EmpirioClient, RetryPolicy
from kling_batch.endpoint import (
    BASE_ENV,
    KEY_ENV,
    api_key_from_env,
    direct_to_loopback,
    resolve_base_url,
)
from kling_batch.errors import ApiError, AuthError, ConnectionFailed, RunError, UserError
from kling_batch.model_data import MODEL_ID, model_schema
from kling_batch.schema_drift import drift

_RATE_HEADER_WORDS = ("ratelimit", "rate-limit", "retry-after")
BUNDLED = "schemas/kling-o3.json"


@dataclass(frozen=True)
class DoctorRequest:
    """Everything the `doctor` command was asked to do."""

    emulator: bool = False
    api_base: str | None = None
    allow_insecure_http: bool = False


@dataclass(frozen=True)
class Exchange:
    """One request the doctor made: what came back, how fast, and its rate-limit headers."""

    method: str
    path: str
    status: int
    milliseconds: float
    rate_headers: dict[str, str]

    def __str__(self) -> str:
        return f"{self.method} {self.path} answered {self.status} in {self.milliseconds:.0f} ms"


@dataclass
class Findings:
    """The checks' lines, and whether any failed."""

    lines: list[str] = field(default_factory=list)
    failed: bool = False

    def ok(self, text: str) -> None:
        """A check that passed."""
        self.lines.append(f"✓ {text}")

    def fail(self, text: str) -> None:
        """A check that failed."""
        self.lines.append(f"✗ {text}")
        self.failed = True

    def info(self, text: str) -> None:
        """Something worth knowing that is neither."""
        self.lines.append(f"· {text}")


class _Recorder(httpx.AsyncBaseTransport):
    """A transport that times every exchange and keeps its rate-limit headers.

    It sends through a plain `httpx.AsyncClient`, which routes each request as `run`'s
    client does (through the proxy `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` name, unless
    `NO_PROXY` says otherwise, and never for a loopback base URL); httpx ignores those
    once a client is given a transport.
    """

    def __init__(self, base_url: str) -> None:
        self.inner = httpx.AsyncClient(mounts=direct_to_loopback(base_url))
        self.exchanges: list[Exchange] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        started = time.perf_counter()
        answer = await self.inner.send(request, stream=True)
        response = httpx.Response(
            answer.status_code,
            headers=answer.headers,
            stream=answer.stream,
            extensions=answer.extensions,
        )
        elapsed = (time.perf_counter() - started) * 1000
        headers = {
            name.lower(): value
            for name, value in response.headers.items()
            if any(word in name.lower() for word in _RATE_HEADER_WORDS)
        }
        path = request.url.path + (f"?{request.url.query.decode()}" if request.url.query else "")
        exchange = Exchange(request.method, path, response.status_code, elapsed, headers)
        self.exchanges.append(exchange)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def doctor_command(request: DoctorRequest) -> int:
    """Run every check, print the findings on stdout; the exit code."""
    findings = Findings()
    anyio.run(_examine, request, findings)
    ui.write_data("\n".join(findings.lines) + "\n")
    return 1 if findings.failed else 0


async def _examine(request: DoctorRequest, findings: Findings) -> None:
    async with _endpoint(request, findings) as endpoint:
        if endpoint is None:
            return
        base, key = endpoint
        recorder = _Recorder(base)
        client = EmpirioClient(
            api_key=key,
            base_url=base,
            transport=recorder,
            retry=RetryPolicy(max_attempts=1),
            allow_insecure_http=request.allow_insecure_http,
        )
        async with client:
            served = await _reach(client, recorder, findings)
            if served is None:
                return
            await _check_key(client, recorder, findings)
        _rate_headers(recorder, findings)
        _schema(served, findings)


@contextlib.asynccontextmanager
async def _endpoint(
    request: DoctorRequest, findings: Findings
) -> AsyncIterator[tuple[str, str] | None]:
    """(base URL, key) to examine, with their checks written; None when there is no key."""
    if request.emulator:
        try:
            from kling_batch.emulator import EmulatorConfig, running_async
        except ImportError as exc:
            raise RunError(
                f"--emulator needs the emulator extra: pip install 'kling-batch[emulator]' ({exc})"
            ) from None
        async with running_async(EmulatorConfig()) as served:
            findings.ok(f"base URL: {served.base_url} (the bundled emulator, in-process)")
            findings.ok("API key: the emulator's")
            yield served.base_url, served.api_key
        return
    base = resolve_base_url(
        request.api_base, allow_insecure_http=request.allow_insecure_http, warn=findings.info
    )
    findings.ok(f"base URL: {base} ({_source(request)})")
    try:
        key = api_key_from_env()
    except UserError as exc:
        findings.fail(f"API key: {exc.message}")
        findings.info("skipped the checks that need a key: reachability, key, rate limits, schema")
        yield None
        return
    findings.ok(f"API key: set in ${KEY_ENV} (not shown)")
    yield base, key


def _source(request: DoctorRequest) -> str:
    """Where the base URL came from."""
    if request.api_base:
        return "--api-base"
    return f"${BASE_ENV}" if os.environ.get(BASE_ENV) else "default"


async def _reach(
    client: EmpirioClient, recorder: _Recorder, findings: Findings
) -> dict[str, Any] | None:
    """Fetch the model description: reachability and latency; the description, if served."""
    try:
        served = await client.get_model(MODEL_ID)
    except ConnectionFailed as exc:
        findings.fail(f"reachable: no ({exc})")
        return None
    except ApiError as exc:
        _answered(recorder, findings)
        if isinstance(exc, AuthError):
            findings.fail(f"key: refused ({exc})")
        else:
            findings.fail(f"model description: GET /v1/models/{MODEL_ID} failed ({exc})")
        return None
    _answered(recorder, findings)
    return served


def _answered(recorder: _Recorder, findings: Findings) -> None:
    if recorder.exchanges:
        findings.ok(f"reachable: {recorder.exchanges[-1]}")


async def _check_key(client: EmpirioClient, recorder: _Recorder, findings: Findings) -> None:
    """The key, by a cheap authenticated call that creates nothing."""
    try:
        jobs = await client.list_jobs(limit=1)
    except AuthError as exc:
        findings.fail(f"key: refused ({exc})")
        return
    except (ApiError, RunError) as exc:
        findings.info(f"key: accepted by the model call; GET /v1/jobs failed ({exc})")
        return
    if jobs is None:
        findings.ok("key: accepted (by the model call; the API offers no job list to ask)")
        return
    last = recorder.exchanges[-1]
    findings.ok(f"key: accepted ({last})")


def _rate_headers(recorder: _Recorder, findings: Findings) -> None:
    seen: dict[str, str] = {}
    for exchange in recorder.exchanges:
        seen.update(exchange.rate_headers)
    if seen:
        shown = ", ".join(f"{name}: {value}" for name, value in sorted(seen.items()))
        findings.info(f"rate-limit headers seen: {shown}")
    else:
        findings.info(
            "rate-limit headers: none seen (the account default is 50 requests a minute, "
            "polls included; kling-batch paces itself with --rpm)"
        )


def _schema(served: dict[str, Any], findings: Findings) -> None:
    differences = drift(model_schema(), served)
    if not differences:
        findings.ok(f"model schema: GET /v1/models/{MODEL_ID} matches the bundled {BUNDLED}")
        return
    findings.fail(
        f"model schema: GET /v1/models/{MODEL_ID} differs from the bundled {BUNDLED} "
        f"({len(differences)} difference{'s' if len(differences) != 1 else ''}; "
        "+ served only by the API, - only bundled, ~ changed):"
    )
    findings.lines.extend(f"    {line}" for line in differences)
    findings.info(
        "plans are validated and priced from the bundled file: upgrade kling-batch, or expect "
        "refusals and prices that differ from the bill"
    )
