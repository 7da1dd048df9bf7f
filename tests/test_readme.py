"""The README's commands work as written."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from kling_batch.emulator import running

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_curl_example_creates_a_job() -> None:
    """The README's curl request, sent to a live emulator, answers with a queued job."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    (line,) = [text for text in README.splitlines() if text.startswith("curl ")]
    assert "http://127.0.0.1:8765" in line
    with running() as served:
        command = line.replace("http://127.0.0.1:8765", served.base_url)
        result = subprocess.run(
            shlex.split(command), capture_output=True, text=True, check=True, timeout=30
        )
    answer = json.loads(result.stdout)
    assert answer["status"] == "queued" and answer["job_id"]
    assert answer["poll_url"].endswith(answer["job_id"])


def test_readme_commands_match_ci() -> None:
    """`.ci/run` runs the README's test command."""
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    dev = re.search(r"python3 -m venv .venv && .venv/bin/pip install -q -e '\.\[dev\]'", README)
    assert dev is not None
    assert ".venv/bin/pip install -q -e '.[dev]'" in ci
    assert ".venv/bin/python -m pytest" in ci and ".venv/bin/python -m pytest" in README
