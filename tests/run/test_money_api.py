"""Emulator renders can never pass for paid ones: a lockfile records its API, and names
cannot collide (issue 8, point 8). Real CLI against emulators on loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from kling_batch.lockfile import load_lockfile
from tests.run.conftest import TIME_SCALE, Project, emulator

HEADER = 'version = 1\nname = "api"\noutput_dir = "renders"\n'
ONE = HEADER + '\n[[shots]]\nid = "bay"\nprompt = "a bay"\nmodel_tier = "standard"\n'


def kling(*args: str, cwd: Path, key: str = "sk-x") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kling_batch", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1", "EMPIRIOLABS_API_KEY": key},
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_the_lockfile_records_its_api_and_refuses_another(
    make_project: Callable[..., Project],
) -> None:
    """Rendered against one API, the lockfile refuses a run against another before a request."""
    project = make_project(ONE)
    assert project.run().returncode == 0
    assert load_lockfile(project.lock).api == project.served.base_url
    result = project.run("--force", "bay")  # the same API: fine
    with emulator() as other:
        refused = subprocess.run(
            [
                sys.executable,
                *("-m", "kling_batch", "run", str(project.manifest), "--force", "bay"),
                *("--api-base", other.base_url, "--yes"),
            ],
            capture_output=True,
            text=True,
            env={**project.env(), "EMPIRIOLABS_API_KEY": other.api_key},
            check=False,
        )
        assert other.emulator.journal.entries() == []
    assert result.returncode == 0, result.stderr
    assert refused.returncode == 2, refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert f"records renders of {project.served.base_url}" in line
    assert f"a run against {other.base_url} would mix them" in line


def test_a_first_run_that_reached_no_api_binds_the_lockfile_to_none(
    make_project: Callable[..., Project],
) -> None:
    """A first run sent to a mistyped address (nothing listens there) records its renders
    failed, none submitted: the next run against the right API is not refused, renders
    them, and the lockfile records that API."""
    project = make_project(ONE)
    wrong = project.run("--api-base", "http://127.0.0.1:9")  # the last --api-base is used
    assert wrong.returncode == 1, wrong.stderr
    lock = load_lockfile(project.lock)
    assert lock.api == "http://127.0.0.1:9" and lock.shots["bay"].state == "failed"
    right = project.run()
    assert right.returncode == 0, right.stderr
    lock = load_lockfile(project.lock)
    assert lock.api == project.served.base_url and lock.shots["bay"].state == "done"


def test_an_emulator_lockfile_is_never_a_paid_one(tmp_path: Path) -> None:
    """`X.emulator.toml` would share `X.toml`'s emulator lockfile: refused by name."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "launch.toml").write_text(ONE)
    assert kling("run", "launch.toml", "--emulator", cwd=root).returncode == 0
    assert load_lockfile(root / "launch.emulator.lock").api == "emulator"
    shutil.copy(root / "launch.toml", root / "launch.emulator.toml")
    before = (root / "launch.emulator.lock").read_bytes()
    for command in ("plan", "run"):
        result = kling(command, "launch.emulator.toml", cwd=root)
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert "would share its lockfile with the emulator renders of launch.toml" in line
    assert (root / "launch.emulator.lock").read_bytes() == before


def test_a_cached_render_of_one_api_is_never_restored_for_another(
    make_project: Callable[..., Project],
) -> None:
    """The lockfile deleted, a run against another API: the cache's video (from the first
    API) is not passed off as this API's render; it is rendered there."""
    project = make_project(ONE)
    assert project.run().returncode == 0
    project.lock.unlink()
    (project.root / "renders" / "bay.mp4").unlink()
    with emulator() as other:
        env = {**project.env(), "EMPIRIOLABS_API_KEY": other.api_key}
        base = ("--api-base", other.base_url, "--time-scale", str(TIME_SCALE))
        run = [sys.executable, "-m", "kling_batch", "run", str(project.manifest), *base, "--yes"]
        result = subprocess.run(run, capture_output=True, text=True, env=env, check=False)
        assert result.returncode == 0, result.stderr
        assert len(other.emulator.journal.submissions()) == 1
    assert load_lockfile(project.lock).api == other.base_url
