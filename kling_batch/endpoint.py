"""Where and how the client connects: base URL and API key from the environment, timeouts."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import httpx

from kling_batch.errors import UserError

__all__ = [
    "DEFAULT_BASE_URL",
    "Timeouts",
    "api_key_from_env",
    "check_api_key",
    "direct_to_loopback",
    "is_loopback",
    "resolve_base_url",
]

DEFAULT_BASE_URL = "https://api.empiriolabs.ai"
KEY_ENV = "EMPIRIOLABS_API_KEY"
BASE_ENV = "EMPIRIOLABS_BASE_URL"


@dataclass(frozen=True)
class Timeouts:
    """Per-operation network timeouts in real seconds (never scaled by a clock).

    `submit`, `poll`, `upload` and `download` bound each read and write of that kind of
    request; for a download that is the longest silence between two chunks, not the total.
    """

    connect: float = 10.0
    pool: float = 60.0
    submit: float = 60.0
    poll: float = 30.0
    upload: float = 300.0
    download: float = 60.0

    def httpx_timeout(self, what: Literal["submit", "poll", "upload", "download"]) -> httpx.Timeout:
        """The httpx timeout for one kind of request."""
        budget: float = getattr(self, what)
        return httpx.Timeout(budget, connect=self.connect, pool=self.pool)


def resolve_base_url(
    explicit: str | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    allow_insecure_http: bool = False,
    warn: Callable[[str], None] | None = None,
) -> str:
    """The API base URL: `explicit`, else `$EMPIRIOLABS_BASE_URL`, else the public API.

    Plain `http://` carries the API key in clear text, so it is refused unless the host is
    a loopback address (the emulator) or `allow_insecure_http` is set (then `warn` is told).
    The check is on the URL alone: nothing is looked up or connected to before it.
    """
    env = os.environ if environ is None else environ
    raw = (explicit or env.get(BASE_ENV) or DEFAULT_BASE_URL).strip()
    source = "--api-base" if explicit else BASE_ENV  # where the value came from
    try:
        url = httpx.URL(raw)
    except httpx.InvalidURL as exc:
        raise UserError(f"invalid API base URL {raw!r}: {exc}", field=source) from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise UserError(f"the API base URL must be http(s)://host, got {raw!r}", field=source)
    if url.scheme == "http" and not is_loopback(url.host):
        if not allow_insecure_http:
            raise UserError(
                f"plain http would send the API key unencrypted to {raw}; use https://, "
                "a loopback address, or --allow-insecure-http",
                field=source,
            )
        if warn is not None:
            warn(f"sending the API key unencrypted to {raw} (--allow-insecure-http)")
    return raw.rstrip("/")


def direct_to_loopback(
    base_url: str, limits: httpx.Limits | None = None
) -> dict[str, httpx.AsyncBaseTransport]:
    """httpx mounts that reach a loopback base URL's host directly (none for other hosts).

    A proxy the environment names (`HTTP_PROXY`, `ALL_PROXY`) is another machine: it
    cannot reach this one's loopback ports, so the emulator would be unreachable through it
    (and the proxy would be handed the key).
    """
    host = httpx.URL(base_url).host
    if not is_loopback(host):
        return {}
    pattern = f"all://[{host}]" if ":" in host else f"all://{host}"
    return {pattern: httpx.AsyncHTTPTransport(limits=limits or httpx.Limits())}


def is_loopback(host: str) -> bool:
    """True for `localhost`, 127.0.0.0/8 and ::1: traffic that never leaves the machine."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_key_from_env(environ: Mapping[str, str] | None = None) -> str:
    """The API key from `$EMPIRIOLABS_API_KEY`, stripped and checked (never echoed)."""
    env = os.environ if environ is None else environ
    return check_api_key(env.get(KEY_ENV, ""))


def check_api_key(key: str) -> str:
    """`key` stripped; refuses an empty key or one that cannot go in a header (not echoed)."""
    key = key.strip()
    if not key:
        raise UserError(f"{KEY_ENV} is not set: export your EmpirioLabs API key", field=KEY_ENV)
    if not all(33 <= ord(c) <= 126 for c in key):
        raise UserError(
            f"the API key contains spaces or non-ASCII characters; check {KEY_ENV}", field=KEY_ENV
        )
    return key


def api_identity(*, emulator: bool, api_base: str | None = None) -> str:
    """Which API a run talks to, as lockfiles and caches record it: `emulator` for the
    bundled one, else the API's origin (`https://api.empiriolabs.ai`)."""
    if emulator:
        from kling_batch.lockfile import EMULATOR_API

        return EMULATOR_API
    url = httpx.URL(resolve_base_url(api_base, allow_insecure_http=True))
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{url.host}{port}"
