"""The state folder `.kling-batch/`: never a symlink, and optional for `plan` on a read-only
checkout, while `run` refuses before any request."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def kling(*args: str, cwd: Path, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """The real command line in `cwd` (optionally under a wrapper such as `unshare`)."""
    return subprocess.run(
        [*prefix, sys.executable, "-m", "kling_batch", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1", "EMPIRIOLABS_API_KEY": "sk-test"},
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.fixture
def quickstart(tmp_path: Path) -> Path:
    """The quickstart manifest copied into a fresh folder."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(EXAMPLES / "quickstart.toml", root / "quickstart.toml")
    return root


def read_only(root: Path) -> tuple[str, ...]:
    """A command prefix that runs its command with `root` mounted read-only.

    Root ignores permission bits, so a read-only bind mount in a private mount namespace
    is the honest way to make a checkout read-only.
    """
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not available to make a read-only mount")
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount --bind -o ro '{root}' '{root}'"],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot make a read-only mount here: {probe.stderr.decode().strip()}")
    # `cd` after mounting: a working directory opened before it would bypass the mount.
    script = f'mount --bind -o ro "{root}" "{root}" && cd "{root}" && exec "$@"'
    return ("unshare", "-m", "sh", "-c", script, "sh")


@pytest.mark.parametrize("command", ["plan", "run"])
def test_symlinked_state_folder_is_refused(quickstart: Path, tmp_path: Path, command: str) -> None:
    """A `.kling-batch` symlink shipped by a repository is refused; nothing lands behind it."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (quickstart / ".kling-batch").symlink_to(elsewhere)
    result = kling(command, "quickstart.toml", "--emulator", cwd=quickstart)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "error: .kling-batch: .kling-batch is a symlink; kling-batch keeps its caches and "
        "run lock only in a real folder beside the manifest (remove the link)"
    ]
    assert "Traceback" not in result.stderr
    assert list(elsewhere.iterdir()) == []
    assert not (quickstart / "quickstart.emulator.lock").exists()


def test_plan_works_in_a_read_only_checkout(tmp_path: Path) -> None:
    """`plan` on a read-only folder prints the plan; its caches are only skipped (-v says so)."""
    root = tmp_path / "launch"
    shutil.copytree(
        EXAMPLES / "product-launch", root, ignore=shutil.ignore_patterns(".kling-batch")
    )
    result = kling("-v", "plan", "launch.toml", cwd=root, prefix=read_only(root))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Plan: 10 to render")
    assert "hash cache not written" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (root / ".kling-batch").exists()


def test_run_refuses_a_read_only_checkout_before_any_request(quickstart: Path) -> None:
    """`run` on a read-only folder stops with one line, exit 2, having sent nothing."""
    result = kling(
        "run", "quickstart.toml", "--emulator", cwd=quickstart, prefix=read_only(quickstart)
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write .kling-batch/" in lines[0], result.stderr
    assert not (quickstart / "quickstart.emulator.lock").exists()
    assert not (quickstart / "renders").exists()


@pytest.mark.parametrize("planted", ["cache", "cache-index", "quickstart.emulator.lock.run-lock"])
def test_a_symlink_inside_the_state_folder_is_refused(
    quickstart: Path, tmp_path: Path, planted: str
) -> None:
    """A shipped `.kling-batch/cache` (or run lock) linking elsewhere: refused, untouched."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("mine")
    (quickstart / ".kling-batch").mkdir()
    (quickstart / ".kling-batch" / planted).symlink_to(victim)
    result = kling("run", "quickstart.toml", "--emulator", cwd=quickstart)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f".kling-batch/{planted} is a symlink" in line
    assert [p.name for p in victim.iterdir()] == ["notes.txt"]
    assert (victim / "notes.txt").stat().st_mode & 0o777 == 0o644
