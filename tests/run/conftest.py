"""Fixtures for `kling-batch run` tests: an emulator on loopback and the real command line."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kling_batch.emulator import EmulatorConfig, RunningEmulator, parse_fault, running

# One modelled second lasts 2 ms: a 70-second pro render takes 0.14 s.
TIME_SCALE = 0.002

MANIFEST = """\
version = 1
name = "run-test"
output_dir = "renders"

[vars]
place = "a harbour"

[defaults]
model_tier = "standard"
duration = 4

[[shots]]
id = "dawn"
prompt = "Dawn over {{ place }}"

[[shots]]
id = "night"
prompt = "5s: night falls on {{ place }} | 3s: lights come on"
model_tier = "pro"
sound = false

[[shots]]
id = "still"
prompt = "The harbour wakes"
image = "still.png"
aspect_ratio = "9:16"
takes = 2
"""

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d4944415478da636460f80f0001040100a5f1d1b70000000049454e44ae426082"
)


@dataclass
class Project:
    """A manifest in a temporary folder and an emulator to render it against."""

    root: Path
    manifest: Path
    served: RunningEmulator

    @property
    def lock(self) -> Path:
        """The lockfile beside the manifest."""
        return self.manifest.with_suffix(".lock")

    def edit(self, old: str, new: str) -> None:
        """Replace text in the manifest (exactly once)."""
        text = self.manifest.read_text()
        assert text.count(old) == 1, old
        self.manifest.write_text(text.replace(old, new))

    def submissions(self) -> int:
        """POSTs to /v1/videos/generations the emulator has seen so far."""
        return len(self.served.emulator.journal.submissions())

    def requests(self) -> int:
        """Every request the emulator has seen so far."""
        return len(self.served.emulator.journal.entries())

    def run(
        self, *args: str, timeout: float = 120, yes: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`kling-batch run MANIFEST` against the emulator; output captured."""
        return subprocess.run(
            self.command(*args, yes=yes),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(env),
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def command(self, *args: str, yes: bool = True) -> list[str]:
        """The argv of a run against the emulator."""
        argv = [
            sys.executable,
            "-m",
            "kling_batch",
            "run",
            str(self.manifest),
            "--api-base",
            self.served.base_url,
            "--time-scale",
            str(self.served.emulator.config.time_scale),
            *args,
        ]
        return argv + (["--yes"] if yes else [])

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for a run: the emulator's key, no colour."""
        return {
            **os.environ,
            "EMPIRIOLABS_API_KEY": self.served.api_key,
            "NO_COLOR": "1",
            **(extra or {}),
        }

    def plan_json(self) -> dict[str, object]:
        """`kling-batch plan --format json` of the manifest, planned for this emulator (its
        base URL in the environment, as a user's would be)."""
        import json

        result = subprocess.run(
            [sys.executable, "-m", "kling_batch", "plan", str(self.manifest), "--format", "json"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "EMPIRIOLABS_BASE_URL": self.served.base_url},
        )
        data: dict[str, object] = json.loads(result.stdout)
        return data


def many_shots(count: int, *, tier: str = "standard", duration: int = 4) -> str:
    """A manifest of `count` distinct renders `s00`, `s01`, …"""
    body = "\n".join(
        f'[[shots]]\nid = "s{n:02d}"\nprompt = "scene {n}"\nmodel_tier = "{tier}"\n'
        f"duration = {duration}\n"
        for n in range(count)
    )
    return f'version = 1\nname = "many"\noutput_dir = "renders"\n\n{body}'


def emulator(
    *,
    faults: Sequence[str] = (),
    rpm: int = 50,
    seed: int = 0,
    time_scale: float = TIME_SCALE,
    **config: Any,
) -> contextlib.AbstractContextManager[RunningEmulator]:
    """An emulator on loopback (at the tests' time scale unless told), faults given as
    `--fault` strings; runs of a `Project` use its time scale."""
    cfg = EmulatorConfig(
        time_scale=time_scale,
        rpm=rpm,
        seed=seed,
        faults=tuple(parse_fault(f) for f in faults),
        **config,
    )
    return running(cfg)


def write_project(root: Path, served: RunningEmulator, manifest_text: str = MANIFEST) -> Project:
    """A manifest and the image it uses in `root`, to run against `served`."""
    root.mkdir(parents=True, exist_ok=True)
    manifest = root / "shots.toml"
    manifest.write_text(textwrap.dedent(manifest_text))
    (root / "still.png").write_bytes(PNG)
    return Project(root, manifest, served)


@pytest.fixture
def make_project(tmp_path: Path) -> Iterator[Callable[..., Project]]:
    """Start an emulator (see `emulator`) and write a manifest beside it."""
    with contextlib.ExitStack() as stack:

        def make(manifest: str = MANIFEST, **options: Any) -> Project:
            served = stack.enter_context(emulator(**options))
            return write_project(tmp_path, served, manifest)

        yield make
