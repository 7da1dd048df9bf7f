"""Uploads that expire or belong to another API (issue 8, point 4): upload paths are kept per
API and account, and a path the API no longer knows is uploaded again. Real CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from kling_batch.lockfile import load_lockfile
from tests.run.conftest import Project

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DAY = 24 * 3600.0
STILL = """version = 1
name = "uploads"
output_dir = "renders"

[[shots]]
id = "still"
prompt = "The harbour wakes"
image = "still.png"
model_tier = "standard"
"""


def test_an_edit_run_on_a_fresh_emulator_uploads_again(tmp_path: Path) -> None:
    """The product-launch example, one prompt edited, run again on a new emulator: done."""
    root = tmp_path / "launch"
    shutil.copytree(EXAMPLES / "product-launch", root, ignore=shutil.ignore_patterns(".kling-*"))

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kling_batch", "run", "launch.toml", "--emulator"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "NO_COLOR": "1"},
            check=False,
        )

    assert run().returncode == 0
    manifest = root / "launch.toml"
    text = manifest.read_text()
    manifest.write_text(text.replace("lands on wet rock", "lands on dry rock"))
    again = run()
    assert again.returncode == 0, again.stdout + again.stderr
    lock = load_lockfile(root / "launch.emulator.lock")
    assert {entry.state for entry in lock.shots.values()} == {"done"}
    assert len(lock.uploads) == 2  # one scope per emulator (API origin and account)


def test_an_expired_upload_path_is_uploaded_again_and_billed_once(
    make_project: Callable[..., Project],
) -> None:
    """Two days on, the API refuses the cached path: upload again, submit once more, pay once."""
    project = make_project(STILL)
    assert project.run().returncode == 0
    project.edit("The harbour wakes", "The harbour sleeps")
    project.served.emulator.advance(2 * DAY)
    result = project.run()
    assert result.returncode == 0, result.stdout + result.stderr
    journal = project.served.emulator.journal
    assert len(journal.entries(path="/v1/files/upload")) == 2
    refused = [e for e in journal.submissions() if e.status == 400]
    assert len(refused) == 1  # the stale path, refused and not billed
    assert len(project.served.emulator.jobs.requests()) == 2
    lock = load_lockfile(project.lock)
    entry = lock.shots["still"]
    assert entry.state == "done" and len(entry.submissions) == 2
    assert project.served.emulator.ledger.total == 2 * entry.cost_usd
    (scope,) = lock.uploads.values()
    (upload,) = scope.values()
    assert upload.path == project.served.emulator.jobs.requests()[-1]["image"]
