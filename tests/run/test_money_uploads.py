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
from tests.run.conftest import TIME_SCALE, Project

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


TWO_STILLS = (
    STILL
    + """
[[shots]]
id = "other"
prompt = "The harbour at noon"
image = "still.png"
model_tier = "standard"
"""
)


def test_an_unanswered_submission_is_found_by_the_body_it_sent(
    make_project: Callable[..., Project],
) -> None:
    """Its upload path expired and was replaced since: the look still finds its job by
    what was sent, so `--resubmit-uncertain` adopts it instead of paying again."""
    # The list fails all through the second run (six attempts at its first page), so the
    # look is made only in the third.
    faults = ("ambiguous=first1,on=submit", "5xx=first6,on=list")  # 6: one look, retried
    # Three runs must fit in the API's hour of keeping the job: at the suite's pace an hour
    # is 7 real seconds, which a loaded machine overran (the look then said "sent over an
    # hour ago"); here it is 72.
    project = make_project(
        TWO_STILLS, faults=faults, upload_ttl_seconds=280.0, time_scale=TIME_SCALE * 10
    )
    assert project.run("--only", "still").returncode == 1  # answer lost: uncertain
    assert load_lockfile(project.lock).shots["still"].state == "uncertain"
    # The upload path expires; the job is still listed. The jump is the API's clock alone,
    # so it stays under the 5 minutes of clock skew a look allows: a longer one (it was 700
    # s) let a slow machine reach the job's last listed minute while the run believed the
    # submission younger, and send it again, as a real skew that large would.
    project.served.emulator.advance(290)
    project.run("--only", "other")  # uploads the image again; still's look cannot be made
    assert load_lockfile(project.lock).shots["other"].state == "done"
    assert load_lockfile(project.lock).shots["still"].state == "uncertain"
    result = project.run("--only", "still", "--resubmit-uncertain")
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(project.served.emulator.jobs.requests()) == 2  # one job per render
    lock = load_lockfile(project.lock)
    assert project.served.emulator.ledger.total == sum(e.cost_usd for e in lock.shots.values())


def test_renders_sharing_an_expired_upload_all_upload_once_and_render(
    make_project: Callable[..., Project],
) -> None:
    """Three renders of one image, their cached path expired: all three are refused for
    it, one uploads the image again and every one is submitted once more with the new
    path (a render refused after another replaced the path used to fail)."""
    shots = "".join(
        f'\n[[shots]]\nid = "s{n}"\nprompt = "The harbour, take {n}"\nimage = "still.png"\n'
        'model_tier = "standard"\n'
        for n in range(3)
    )
    project = make_project(STILL.split("[[shots]]")[0] + shots)
    assert project.run("--jobs", "3").returncode == 0
    for n in range(3):
        project.edit(f"take {n}", f"take {n}, at dusk")
    project.served.emulator.advance(2 * DAY)
    result = project.run("--jobs", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    journal = project.served.emulator.journal
    assert len(journal.entries(path="/v1/files/upload")) == 2
    assert len([e for e in journal.submissions() if e.status == 400]) == 3
    lock = load_lockfile(project.lock)
    assert {entry.state for entry in lock.shots.values()} == {"done"}
    assert len(project.served.emulator.jobs.requests()) == 6
    assert project.served.emulator.ledger.total == 2 * sum(e.cost_usd for e in lock.shots.values())
