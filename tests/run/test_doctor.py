"""`kling-batch doctor` through the real CLI, against emulators that behave in different ways."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import ClassVar

from kling_batch.emulator import EmulatorConfig, RunningEmulator, running
from tests.run.conftest import emulator


def doctor(
    *args: str, key: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`kling-batch doctor ARGS` with `key` as the API key (none when None), in `env`
    (this process's environment when None) without its EMPIRIOLABS_ variables."""
    env = {k: v for k, v in (env or os.environ).items() if not k.startswith("EMPIRIOLABS_")}
    if key is not None:
        env["EMPIRIOLABS_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "kling_batch", "doctor", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )


def against(served: RunningEmulator, key: str | None = None) -> subprocess.CompletedProcess[str]:
    return doctor("--api-base", served.base_url, key=served.api_key if key is None else key)


def marks(output: str) -> dict[str, str]:
    """Check name → its mark (`✓`, `✗`, `·`), from lines like `✓ reachable: ...`."""
    found = {}
    for line in output.splitlines():
        if line[:1] in "✓✗·":
            found[line[2:].split(":")[0]] = line[0]
    return found


def test_a_healthy_api_passes_every_check() -> None:
    """Against a well-behaved emulator: every check passes and the exit code is 0."""
    with emulator() as served:
        result = against(served)
    assert result.returncode == 0, result.stdout + result.stderr
    assert marks(result.stdout) == {
        "base URL": "✓",
        "API key": "✓",
        "reachable": "✓",
        "key": "✓",
        "rate-limit headers": "·",
        "model schema": "✓",
    }
    assert f"base URL: {served.base_url} (--api-base)" in result.stdout
    assert "GET /v1/models/kling-o3 answered 200 in " in result.stdout
    assert "GET /v1/jobs?limit=1 answered 200" in result.stdout
    assert served.api_key not in result.stdout + result.stderr
    assert not served.emulator.journal.submissions()  # nothing was created


def test_a_drifted_schema_is_a_readable_diff_and_exit_1() -> None:
    """Against an API serving another kling-o3 description: one line per difference, exit 1."""
    with emulator(drifted_schema=True) as served:
        result = against(served)
    assert result.returncode == 1
    assert marks(result.stdout)["model schema"] == "✗"
    diff = [line.strip() for line in result.stdout.splitlines() if line.startswith("    ")]
    assert sorted(diff) == sorted(
        [
            "- parameter 'image_end': no longer served",
            "+ parameter 'seed': new, type 'integer'",
            "~ parameter 'model_tier': default 'pro' → 'standard'",
            "~ parameter 'aspect_ratio': enum adds '4:3'",
            "~ parameter 'duration': max 15 → 10",
            "~ price row 'Pro T2V/I2V Sound': price $0.28/s → $0.308/s",
        ]
    )


def test_rate_limit_headers_are_shown() -> None:
    """The rate-limit headers the API sends are listed."""
    # Real time: both requests fall inside one rate window of 60 s.
    with running(EmulatorConfig(rpm=40, rate_limit_headers=True)) as served:
        result = against(served)
    assert result.returncode == 0, result.stdout
    line = next(x for x in result.stdout.splitlines() if x.startswith("· rate-limit headers seen"))
    assert "x-ratelimit-limit-requests: 40" in line
    assert "x-ratelimit-remaining-requests: 38" in line  # after the second of two requests


def test_a_wrong_key_fails_the_key_check() -> None:
    """A key the API refuses: reachable, but the key check fails (exit 1), the key unshown."""
    with emulator() as served:
        result = against(served, key="sk-wrong-key-123")
    assert result.returncode == 1
    assert marks(result.stdout)["reachable"] == "✓"
    assert marks(result.stdout)["key"] == "✗" and "refused" in result.stdout
    assert "sk-wrong-key-123" not in result.stdout + result.stderr


def test_an_unreachable_api_fails_reachability() -> None:
    """Nothing listening at the base URL: the reachability check fails, exit 1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = doctor("--api-base", f"http://127.0.0.1:{port}", key="sk-anything")
    assert result.returncode == 1
    assert marks(result.stdout)["reachable"] == "✗"


def test_a_missing_key_is_reported() -> None:
    """No key set: that check fails and the ones that need a key are skipped, exit 1."""
    with emulator() as served:
        result = doctor("--api-base", served.base_url)
        assert served.emulator.journal.entries() == []
    assert result.returncode == 1
    assert "✗ API key: EMPIRIOLABS_API_KEY is not set" in result.stdout


def test_plain_http_off_this_machine_is_refused() -> None:
    """A plain http:// base URL off this machine is refused (exit 2), as for run."""
    result = doctor("--api-base", "http://api.example.com", key="sk-anything")
    assert result.returncode == 2
    assert "plain http would send the API key unencrypted" in result.stderr


def test_the_bundled_emulator_passes() -> None:
    """`doctor --emulator` examines an in-process emulator, with no key of the user's."""
    result = doctor("--emulator")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(the bundled emulator, in-process)" in result.stdout
    assert marks(result.stdout)["model schema"] == "✓"


class _ForwardingProxy(http.server.BaseHTTPRequestHandler):
    """A plain-http forward proxy that sends every request on to the emulator at `target`."""

    target = ""
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        path = urllib.parse.urlsplit(self.path)
        forwarded = urllib.request.Request(
            self.target + path.path + (f"?{path.query}" if path.query else ""),
            headers={k: v for k, v in self.headers.items() if k.lower() != "host"},
        )
        try:
            with urllib.request.urlopen(forwarded, timeout=30) as answer:
                status, headers, body = answer.status, answer.headers, answer.read()
        except urllib.error.HTTPError as refused:
            status, headers, body = refused.code, refused.headers, refused.read()
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_the_proxy_the_environment_names_is_used_as_run_uses_it() -> None:
    """Behind a proxy (`HTTP_PROXY` / `HTTPS_PROXY`, as run honours them), doctor goes
    through it too: reaching the API directly where only the proxy can would report the API
    unreachable while `run` works."""
    with emulator() as served:
        _ForwardingProxy.target = served.base_url
        _ForwardingProxy.seen.clear()
        proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ForwardingProxy)
        thread = threading.Thread(target=proxy.serve_forever, daemon=True)
        thread.start()
        try:
            names = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
            env = {k: v for k, v in os.environ.items() if k.lower() not in names}
            env["HTTP_PROXY"] = f"http://127.0.0.1:{proxy.server_address[1]}"
            base = ["--api-base", "http://api.example.invalid", "--allow-insecure-http"]
            result = doctor(*base, key=served.api_key, env=env)
        finally:
            proxy.shutdown()
            thread.join()
            proxy.server_close()
    assert marks(result.stdout)["reachable"] == "✓", result.stdout + result.stderr
    assert "http://api.example.invalid/v1/models/kling-o3" in _ForwardingProxy.seen
