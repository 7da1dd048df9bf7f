"""The API key never travels over plain http to a host off this machine (issue 9).

A listener on a loopback port stands in for the network: it is set as the HTTP proxy, so
any request the client made to `http://api.example.invalid` would reach it, key and all.
`.invalid` names never resolve, so a refusal that came after a DNS lookup or a connect
would show up as a different error, not as the one-line refusal.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kling_batch.endpoint import is_loopback, resolve_base_url
from kling_batch.errors import UserError

KEY = "sk-empiriolabs-plain-http-test"
REMOTE = "http://api.example.invalid"
MANIFEST = 'version = 1\nname = "n"\n\n[[shots]]\nid = "dawn"\nprompt = "Dawn"\nduration = 5\n'
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


class Listener:
    """A TCP listener on loopback that records every byte sent to it and answers 401."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.received = b""
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.received += data
                conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    """A recording listener, closed after the test."""
    served = Listener()
    yield served
    served.close()


def run_cli(
    folder: Path, proxy: str, *args: str, base_env: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`kling-batch run manifest.toml --yes ARGS` with every http request sent via `proxy`."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARIABLES}
    env.update({"http_proxy": proxy, "HTTP_PROXY": proxy, "EMPIRIOLABS_API_KEY": KEY})
    env["NO_COLOR"] = "1"
    if base_env is not None:
        env["EMPIRIOLABS_BASE_URL"] = base_env
    return subprocess.run(
        [sys.executable, "-m", "kling_batch", "run", "manifest.toml", "--yes", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def project(tmp_path: Path) -> Path:
    (tmp_path / "manifest.toml").write_text(MANIFEST)
    return tmp_path


@pytest.mark.parametrize(
    ("args", "base_env", "source"),
    [
        (("--api-base", REMOTE), None, "--api-base"),
        ((), REMOTE, "EMPIRIOLABS_BASE_URL"),
    ],
    ids=["option", "environment"],
)
def test_plain_http_off_loopback_is_refused_before_any_request(
    tmp_path: Path, listener: Listener, args: tuple[str, ...], base_env: str | None, source: str
) -> None:
    """`run` exits 2 with one line naming the URL; nothing reaches the wire or the disk."""
    folder = project(tmp_path)

    result = run_cli(folder, listener.url, *args, base_env=base_env)

    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"error: field {source!r}: plain http would send the API key unencrypted to "
        f"{REMOTE}; use https://, a loopback address, or --allow-insecure-http"
    ]
    assert listener.received == b""
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.toml"]


def test_allow_insecure_http_sends_with_a_warning(tmp_path: Path, listener: Listener) -> None:
    """With --allow-insecure-http the request goes (here, to the listener) after one
    warning line: the listener would have seen the key had the refusal not held."""
    result = run_cli(project(tmp_path), listener.url, "--api-base", REMOTE, "--allow-insecure-http")

    assert result.stderr.splitlines()[0] == (
        f"warning: sending the API key unencrypted to {REMOTE} (--allow-insecure-http)"
    )
    assert f"Bearer {KEY}".encode() in listener.received
    assert b"api.example.invalid" in listener.received


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8765", "http://127.3.4.5", "http://[::1]:9", "http://localhost:1"],
)
def test_plain_http_to_loopback_is_allowed(url: str) -> None:
    """The emulator's addresses (127.0.0.0/8, ::1, localhost) take plain http."""
    assert resolve_base_url(url, {}) == url


@pytest.mark.parametrize(
    "url",
    ["http://10.0.0.1", "http://127.0.0.1.example.com", "http://localhost.example.com"],
)
def test_plain_http_to_other_hosts_is_refused(url: str) -> None:
    """A private address or a name that merely starts like loopback is not loopback."""
    with pytest.raises(UserError, match="plain http would send the API key unencrypted"):
        resolve_base_url(None, {"EMPIRIOLABS_BASE_URL": url})


def test_https_is_never_refused() -> None:
    """https:// to any host passes, and no warning is given."""
    warnings: list[str] = []
    assert resolve_base_url("https://api.example.invalid", {}, warn=warnings.append)
    assert warnings == []


def test_loopback_names() -> None:
    """`localhost` (any case, trailing dot) and loopback addresses only."""
    assert all(map(is_loopback, ["localhost", "LOCALHOST", "localhost.", "127.0.0.1", "::1"]))
    assert not any(map(is_loopback, ["0.0.0.0", "10.1.2.3", "::", "example.invalid"]))


def test_a_loopback_api_is_reached_directly_whatever_proxy_is_set(
    monkeypatch: pytest.MonkeyPatch, listener: Listener
) -> None:
    """`run --emulator` and a loopback `--api-base` reach this machine's own port: a proxy
    the environment names (a company's, CI's) is another machine and cannot, so sending
    through it failed every request, and gave it the key."""
    import anyio

    from kling_batch.client import EmpirioClient
    from kling_batch.emulator import EmulatorConfig, running

    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", listener.url)
    monkeypatch.setenv("ALL_PROXY", listener.url)

    async def model_id(base_url: str, key: str) -> str:
        async with EmpirioClient(api_key=key, base_url=base_url) as client:
            return str((await client.get_model())["id"])

    with running(EmulatorConfig()) as served:
        assert anyio.run(model_id, served.base_url, served.api_key) == "kling-o3"
    assert listener.received == b""
