"""Shared fixtures: small manifests written into a temporary project folder."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from kling_batch.plan import Plan

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# A process that makes a temp file for `argv[1]` (suffix `argv[2]`), prints its path and
# holds it (its writer's lock) until its stdin closes.
_TEMP_WRITER = (
    "import sys; from pathlib import Path; from kling_batch.atomic import temp_beside; "
    "print(temp_beside(Path(sys.argv[1]), suffix=sys.argv[2]), flush=True); sys.stdin.read()"
)


@contextlib.contextmanager
def temp_in_another_process(target: Path, suffix: str) -> Iterator[Path]:
    """A temp file `atomic.temp_beside` made for `target` in another process, which is
    writing it for the block and then ends as a killed run would, leaving it behind."""
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES.parent)}
    command = [sys.executable, "-c", _TEMP_WRITER, str(target), suffix]
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    ) as writer:
        assert writer.stdin is not None and writer.stdout is not None
        temp = Path(writer.stdout.readline().strip())
        try:
            yield temp
        finally:
            writer.stdin.close()
            writer.wait()


def left_by_killed_writer(target: Path, suffix: str) -> Path:
    """A temp file for `target` whose writer (another process) has ended."""
    with temp_in_another_process(target, suffix) as temp:
        return temp


NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def mark_done(path: Path) -> Plan:
    """Plan `path` and record every render done in its lockfile, each output written (its
    render id as its bytes); the plan it marked."""
    from kling_batch.lockfile import new_entry
    from kling_batch.lockname import lock_path
    from kling_batch.plan import build_plan

    plan = build_plan(path, now=NOW)
    for item in plan.items:
        render = item.render
        content = render.id.encode()
        target = plan.loaded.root / render.output
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        digest = "sha256:" + hashlib.sha256(content).hexdigest()
        plan.lock.shots[render.id] = new_entry(
            render, "done", output_sha256=digest, output_size=len(content)
        )
    plan.lock.save(lock_path(path))
    return plan


HEADER = 'version = 1\nname = "test"\noutput_dir = "renders"\n'


@pytest.fixture(autouse=True)
def no_api_settings_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's EMPIRIOLABS_* variables (a real key, another base URL) and shared
    store (KLING_BATCH_REMOTE) never reach a test."""
    for name in list(os.environ):
        if name.startswith("EMPIRIOLABS_") or name == "KLING_BATCH_REMOTE":
            monkeypatch.delenv(name)


@pytest.fixture
def project(tmp_path: Path) -> Callable[[str], Path]:
    """Write `manifest.toml` (a version/name header is prepended) and return its path."""

    def write(body: str, *, name: str = "manifest.toml", header: bool = True) -> Path:
        path = tmp_path / name
        text = textwrap.dedent(body)
        path.write_text((HEADER if header else "") + text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def clip(tmp_path: Path) -> Callable[[str, str], Path]:
    """Copy an example MP4 (6 s or 12 s long) into the project under a given name."""

    def copy(example: str, name: str) -> Path:
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(EXAMPLES / "edit" / "clips" / example, target)
        return target

    return copy


@pytest.fixture
def image(tmp_path: Path) -> Callable[[str], Path]:
    """Copy an example PNG into the project under a given name."""

    def copy(name: str) -> Path:
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(EXAMPLES / "product-launch" / "assets" / "trail-shoe.png", target)
        return target

    return copy
