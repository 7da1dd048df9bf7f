"""Fixtures for client tests: a scripted fake API behind httpx.MockTransport, on virtual time."""

from __future__ import annotations

import json
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from kling_batch.client import EmpirioClient, RetryPolicy
from kling_batch.clock import VirtualClock

KEY = "sk-empiriolabs-TESTKEY-0123456789abcdef"
BASE = "https://api.empiriolabs.ai"

Reply = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response] | dict[str, Any]


@dataclass
class Seen:
    """One request as the transport saw it, with the virtual time it was sent at."""

    at: float
    request: httpx.Request

    @property
    def auth(self) -> str | None:
        return self.request.headers.get("authorization")


@dataclass
class FakeApi:
    """Answers each (method, path) with its queued replies in order; records every request."""

    clock: VirtualClock
    seen: list[Seen] = field(default_factory=list)
    replies: dict[tuple[str, str], deque[Reply]] = field(default_factory=lambda: defaultdict(deque))
    default: Callable[[httpx.Request], httpx.Response] | None = None

    def on(self, method: str, path: str, *replies: Reply) -> FakeApi:
        self.replies[(method, path)].extend(replies)
        return self

    def paths(self) -> list[str]:
        return [s.request.url.path for s in self.seen]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(Seen(self.clock.monotonic(), request))
        queue = self.replies.get((request.method, request.url.path))
        if not queue:
            if self.default is not None:
                return self.default(request)
            return httpx.Response(599, text=f"no reply scripted for {request.url.path}")
        reply = queue.popleft()
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, dict):
            return httpx.Response(200, json=reply)
        if isinstance(reply, httpx.Response):
            return reply
        return reply(request)


def openai_error(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> httpx.Response:
    """An OpenAI-style error response."""
    body = {"error": {"message": message, "type": "api_error", "code": code, "param": param}}
    return httpx.Response(status, content=json.dumps(body).encode(), headers=_JSON)


_JSON = {"content-type": "application/json"}


@pytest.fixture
def key() -> str:
    return KEY


@pytest.fixture
def base() -> str:
    return BASE


@pytest.fixture
def error_response() -> Callable[..., httpx.Response]:
    return openai_error


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def api(clock: VirtualClock) -> FakeApi:
    return FakeApi(clock)


@pytest.fixture
def make_client(api: FakeApi, clock: VirtualClock) -> Iterator[Callable[..., EmpirioClient]]:
    """Build clients on the fake API: no rate limit, backoff always at the cap of its step."""

    def make(**overrides: Any) -> EmpirioClient:
        options: dict[str, Any] = {
            "api_key": KEY,
            "base_url": BASE,
            "transport": httpx.MockTransport(api),
            "clock": clock,
            "rpm": None,
            "retry": RetryPolicy(random=lambda: 1.0),
        }
        options.update(overrides)
        return EmpirioClient(**options)

    yield make
