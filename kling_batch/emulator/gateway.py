"""Gateway: the outer ASGI layer, in front of the routes: journal, auth, RPM limit and faults.

It sits outside Starlette on purpose: dropping a connection needs uvicorn's own `send`,
and every answer (including the ones it makes itself) must pass through the journal.

Dropping: uvicorn's `send` is a bound method of its request cycle, which holds the
asyncio transport. Closing that transport before `http.response.start` makes the client see
the connection end without a response (httpx: `RemoteProtocolError`); after a partial
body, a short read. Without such a transport (e.g. under `httpx.ASGITransport`) the
gateway raises `ConnectionDropped` out of the app instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.requests import ClientDisconnect

from kling_batch.emulator.clock import Clock
from kling_batch.emulator.config import EmulatorConfig
from kling_batch.emulator.errors import ApiError
from kling_batch.emulator.faults import Fault, FaultPlan, classify
from kling_batch.emulator.journal import Journal
from kling_batch.emulator.ratelimit import RateLimiter

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CONTEXT_KEY = "kling_emulator.context"
SWAP_KEY = "kling_emulator.swap_seconds"  # a `swap` fault: the length of the video to serve
_JOURNALED_HEADER_PREFIX = "x-kling-batch-"
_JOURNALED_HEADERS = frozenset({"idempotency-key"})
_5XX = {500: "internal_error", 502: "upstream_error", 503: "model_unavailable"}
_5XX_MESSAGES = {
    500: "The server had an error while processing your request.",
    502: "The provider returned an error.",
    503: "The model's worker is temporarily offline; retry shortly.",
}


class ConnectionDropped(Exception):
    """Raised out of the app when a fault drops a connection the server cannot close itself."""


class _Stop(Exception):
    """Ends the app after its connection was dropped mid-answer."""


@dataclass
class RequestContext:
    """What the gateway tells the routes about a request, and what they tell the journal."""

    account: str
    job_id: str | None = None


class _Exchange:
    """One request/response pair: hashes the body as read, journals the answer when it starts."""

    def __init__(self, gateway: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
        self.gateway = gateway
        self.scope = scope
        self._receive = receive
        self._send = send
        self.mono = gateway.clock.now()
        self.digest = hashlib.sha256()
        self.body_size = 0
        self.body_done = False
        self.client_gone = False
        self._receiving = False
        self.headers = _journaled_headers(scope)
        self.counted = False
        self.fault: str | None = None
        self.context: RequestContext | None = None
        self.recorded = False
        self.dropped = False
        self.truncate_keep: float | None = None
        self.hide_length = False  # `length=none`: no Content-Length; a cut ends cleanly
        self.extra_headers: list[tuple[bytes, bytes]] = []
        self._limit: int | None = None
        self._sent = 0

    async def receive(self) -> Message:
        self._receiving = True
        try:
            message = await self._receive()
        finally:
            self._receiving = False
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            self.digest.update(chunk)
            self.body_size += len(chunk)
            if not message.get("more_body", False):
                self.body_done = True
        elif message["type"] == "http.disconnect":
            self.body_done = self.client_gone = True
        return message

    async def read_rest(self) -> None:
        """Read what the app left of the body, so the journal digest covers all of it."""
        while not self.body_done and not self._receiving:
            await self.receive()

    async def send(self, message: Message) -> None:
        if self.dropped:
            raise _Stop
        if self.client_gone:
            # Nobody is listening (e.g. a client killed mid-request): journal it as
            # unanswered rather than as the 500 Starlette sends for the ClientDisconnect.
            self.record(None, dropped=True)
            return
        if message["type"] == "http.response.start":
            await self.read_rest()
            if self.extra_headers:
                message = {**message, "headers": [*message.get("headers", []), *self.extra_headers]}
            if self.truncate_keep is not None and self.scope["method"] != "HEAD":
                length = _content_length(message)
                if length is not None:
                    self._limit = math.floor(length * self.truncate_keep)
            if self.hide_length:
                message = _without_length(message)
            self.record(message["status"], dropped=self._limit is not None and not self.hide_length)
        elif message["type"] == "http.response.body" and self._limit is not None:
            body = message.get("body", b"")
            room = self._limit - self._sent
            if len(body) >= room:
                await self._cut(body[:room])
            self._sent += len(body)
        await self._send(message)

    async def _cut(self, last: bytes) -> None:
        """End a truncated answer after `last`: cleanly if no length was declared, else by
        closing the connection (the client sees fewer bytes than announced)."""
        if self.hide_length:
            await self._send({"type": "http.response.body", "body": last, "more_body": False})
            self.dropped = True  # swallow whatever the app still sends
            raise _Stop
        await self._send({"type": "http.response.body", "body": last, "more_body": True})
        await self.drop()
        raise _Stop

    async def answer(self, error: ApiError) -> None:
        """Send an error answer made by the gateway itself."""
        body = json.dumps(error.body()).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
        await self.send({"type": "http.response.start", "status": error.status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    def record(self, status: int | None, *, dropped: bool) -> None:
        if self.recorded:
            return
        self.recorded = True
        query = self.scope.get("query_string", b"")
        self.gateway.journal.record(
            method=self.scope["method"],
            path=self.scope["path"],
            query=query.decode("latin-1") if isinstance(query, bytes) else str(query),
            body_digest="sha256:" + self.digest.hexdigest(),
            body_size=self.body_size,
            mono=self.mono,
            wall=self.gateway.clock.wall(self.mono),
            status=status,
            headers=self.headers,
            counted=self.counted,
            fault=self.fault,
            dropped=dropped,
            job_id=self.context.job_id if self.context is not None else None,
        )

    async def drop(self) -> None:
        """Close the connection now, whatever was or was not sent (journaled first)."""
        self.record(None, dropped=True)
        self.dropped = True
        cycle = getattr(self._send, "__self__", None)
        transport = getattr(cycle, "transport", None)
        if not isinstance(transport, asyncio.BaseTransport):
            raise ConnectionDropped(f"{self.scope['method']} {self.scope['path']}")
        transport.close()
        # Let uvicorn's connection_lost run, so it does not answer 500 on our behalf.
        for _ in range(2000):
            if getattr(cycle, "disconnected", True):
                break
            await asyncio.sleep(0.001)


class Gateway:
    """Wraps the routes app with journal, auth, rate limit and faults."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        config: EmulatorConfig,
        clock: Clock,
        journal: Journal,
        limiter: RateLimiter,
        faults: FaultPlan,
    ) -> None:
        self.app = app
        self.config = config
        self.clock = clock
        self.journal = journal
        self.limiter = limiter
        self.faults = faults
        self.started = clock.now()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_emulator/"):
            await self.app(scope, receive, send)
            return
        exchange = _Exchange(self, scope, receive, send)
        try:
            await self._handle(exchange)
        except* (_Stop, ClientDisconnect):
            pass
        finally:
            if not exchange.recorded:
                exchange.record(None, dropped=True)

    async def _handle(self, ex: _Exchange) -> None:
        scope = ex.scope
        request_class = classify(scope["method"], scope["path"])
        if scope["path"].startswith("/v1/"):
            try:
                ex.context = RequestContext(account=self._authenticate(scope))
                if self._strike("revoke", request_class, ex) is not None:
                    raise ApiError(401, "invalid_api_key", "The API key was revoked.")
                self._admit(ex)
            except ApiError as error:
                await ex.answer(error)
                return
        scope[CONTEXT_KEY] = ex.context
        if self.faults and await self._inject(ex, request_class):
            return
        ambiguous = self._strike("ambiguous", request_class, ex)
        if ambiguous is None:
            await self.app(scope, ex.receive, ex.send)
            return
        captured: list[Message] = []

        async def swallow(message: Message) -> None:
            captured.append(message)

        await self.app(scope, ex.receive, swallow)
        status = next((m["status"] for m in captured if m["type"] == "http.response.start"), None)
        await ex.read_rest()
        ex.record(status, dropped=True)
        await ex.drop()

    def _authenticate(self, scope: Scope) -> str:
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization", b"").decode("latin-1").strip()
        key = headers.get(b"x-api-key", b"").decode("latin-1").strip()
        if authorization:
            scheme, _, token = authorization.partition(" ")
            key = token.strip() if scheme.lower() == "bearer" else ""
            if not key:
                raise ApiError(401, "invalid_api_key", "Malformed Authorization header.")
        if not key:
            raise ApiError(401, "missing_api_key", "No API key: send Authorization: Bearer <key>.")
        if key != self.config.api_key:
            raise ApiError(401, "invalid_api_key", "Invalid API key.")
        return self.config.account

    def _admit(self, ex: _Exchange) -> None:
        assert ex.context is not None
        window = self.config.scaled(self.config.rate_window_seconds)
        wait = self.limiter.admit(ex.context.account, self.clock.now())
        if wait is not None:
            raise ApiError(
                429,
                "rate_limit_exceeded",
                f"Rate limit of {self.config.rpm} requests per {window:g}s reached; retry later.",
                headers=retry_after(wait),
            )
        ex.counted = True
        if self.config.rate_limit_headers:
            remaining = self.limiter.remaining(ex.context.account, self.clock.now())
            ex.extra_headers = [
                (b"x-ratelimit-limit-requests", str(self.config.rpm).encode()),
                (b"x-ratelimit-remaining-requests", str(remaining).encode()),
            ]

    async def _inject(self, ex: _Exchange, request_class: str) -> bool:
        """Apply storm, slow, drop, 5xx and error-200 faults; True when the request was
        answered."""
        elapsed = (self.clock.now() - self.started) / self.config.time_scale
        storm = self.faults.storm_left(request_class, elapsed)
        if storm is not None:
            ex.fault = "storm"
            await ex.read_rest()
            await ex.answer(
                ApiError(
                    429,
                    "rate_limit_exceeded",
                    "Too many requests; retry later.",
                    headers=retry_after(self.config.scaled(storm)),
                )
            )
            return True
        slow = self._strike("slow", request_class, ex)
        if slow is not None:
            await anyio.sleep(self.config.scaled(slow.delay))
        if self._strike("drop", request_class, ex) is not None:
            await ex.read_rest()
            await ex.drop()
            return True
        server_error = self._strike("5xx", request_class, ex)
        if server_error is not None:
            status = server_error.status or self.faults.pick_status()
            await ex.read_rest()
            await ex.answer(ApiError(status, _5XX[status], _5XX_MESSAGES[status]))
            return True
        errored = self._strike("error-200", request_class, ex)
        if errored is not None:
            await ex.read_rest()
            await ex.answer(ApiError(200, errored.code, "The video could not be generated."))
            return True
        truncate = self._strike("truncate", request_class, ex)
        if truncate is not None:
            ex.truncate_keep = truncate.keep
            ex.hide_length = not truncate.declare_length
        swap = self._strike("swap", request_class, ex)
        if swap is not None:
            ex.scope[SWAP_KEY] = swap.seconds
            ex.hide_length = ex.hide_length or not swap.declare_length
        return False

    def _strike(self, kind: str, request_class: str, ex: _Exchange) -> Fault | None:
        if not self.faults:
            return None
        fault = self.faults.strike(kind, request_class)
        if fault is not None:
            ex.fault = kind if ex.fault is None else f"{ex.fault}+{kind}"
        return fault


def retry_after(real_seconds: float) -> dict[str, str]:
    """`Retry-After` in whole real seconds, rounded up, at least 1; `retry-after-ms` exact.

    HTTP only has whole seconds. Rounding up never invites a retry that would be refused
    again; the floor of 1 s keeps clients from spinning. At small time scales the real wait
    can be well under a second: `retry-after-ms` (read by OpenAI-style clients) carries it.
    """
    return {
        "Retry-After": str(max(1, math.ceil(real_seconds))),
        "retry-after-ms": str(max(1, math.ceil(real_seconds * 1000))),
    }


def _journaled_headers(scope: Scope) -> dict[str, str]:
    found: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        if name.startswith(_JOURNALED_HEADER_PREFIX) or name in _JOURNALED_HEADERS:
            found[name] = raw_value.decode("latin-1")
    return found


def _without_length(message: Message) -> Message:
    """A response start without its Content-Length (the server then sends it chunked)."""
    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"content-length"]
    return {**message, "headers": headers}


def _content_length(message: Message) -> int | None:
    for name, value in message.get("headers", []):
        if name.lower() == b"content-length":
            return int(value)
    return None
