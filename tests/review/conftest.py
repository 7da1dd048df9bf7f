"""Fixtures for `kling-batch review`: the product-launch example rendered once, and a browser.

The example is copied into a temporary folder (never rendered in place) with two shots
added: one whose prompt holds markup, one that an emulator fault fails. The README's
one-line command renders it against the bundled emulator and writes the gallery; the failing
shot is then rendered against an emulator started with `fail=first1` (via --api-base), which
records it in the real lockfile, so a second gallery shows a failed render among ones not
rendered yet.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kling_batch.emulator import EmulatorConfig, parse_fault, running

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLE = ROOT / "examples" / "product-launch"
README = ROOT / "README.md"
TIME_SCALE = 0.002
FAULT_CODE = "moderated_in_test"
MARKUP_PROMPT = "a neon shop sign that reads <script>alert(1)</script> at night"
MARKUP_TAG = "<b>odd</b>"
EXTRA_SHOTS = f"""

[[shots]]
id = "sign"
prompt = {json.dumps(MARKUP_PROMPT)}
tags = [{json.dumps(MARKUP_TAG)}]

[[shots]]
id = "doomed"
prompt = "a render the emulator is told to fail"
tags = ["doomed", "two words"]
"""
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def kling_batch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real command line, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "kling_batch", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "NO_COLOR": "1", **(env or {})},
    )


def readme_review_command() -> str:
    """The README's one-line command that renders the example and writes its gallery."""
    pattern = r"^kling-batch run examples/product-launch/launch\.toml --emulator && .*review.*$"
    (line,) = re.findall(pattern, README.read_text(), flags=re.MULTILINE)
    return line


@dataclass(frozen=True)
class Reviewed:
    """The rendered copy of the example and its two galleries."""

    root: Path
    manifest: Path
    emulator_page: Path
    real_page: Path

    def plan(self, *, emulator: bool) -> dict[str, dict[str, Any]]:
        """`kling-batch plan --format json` per render id."""
        args = ["plan", str(self.manifest), "--format", "json"]
        result = kling_batch(*args, *(["--emulator"] if emulator else []))
        assert result.returncode == 0, result.stderr
        return {shot["id"]: shot for shot in json.loads(result.stdout)["shots"]}


def copy_example(target: Path) -> Path:
    """The product-launch example copied to `target` (without any local renders)."""
    ignore = shutil.ignore_patterns("renders*", "*.lock", ".kling-batch", "*.picks.toml")
    shutil.copytree(EXAMPLE, target, ignore=ignore)
    return target / "launch.toml"


@pytest.fixture(scope="session")
def reviewed(tmp_path_factory: pytest.TempPathFactory) -> Reviewed:
    """The example (plus two shots) rendered on the emulator, one shot failed, both reviewed."""
    manifest = copy_example(tmp_path_factory.mktemp("review") / "product-launch")
    with open(manifest, "a", encoding="utf-8") as f:
        f.write(EXTRA_SHOTS)
    example = "examples/product-launch/launch.toml"
    for part in readme_review_command().split(" && "):
        argv = shlex.split(part.replace(example, str(manifest)))
        assert argv[0] == "kling-batch"
        result = kling_batch(*argv[1:])
        assert result.returncode == 0, result.stderr
    fault = parse_fault(f"fail=first1,code={FAULT_CODE}")
    with running(EmulatorConfig(time_scale=TIME_SCALE, faults=(fault,))) as served:
        failed = kling_batch(
            *("run", str(manifest), "--only", "doomed", "--yes"),
            *("--api-base", served.base_url, "--time-scale", str(TIME_SCALE)),
            env={"EMPIRIOLABS_API_KEY": served.api_key},
        )
    assert failed.returncode == 1, failed.stderr
    real = kling_batch("review", str(manifest))
    assert real.returncode == 0, real.stderr
    root = manifest.parent
    return Reviewed(
        root=root,
        manifest=manifest,
        emulator_page=root / "renders-emulator" / "review" / "index.html",
        real_page=Path(real.stdout.strip()),
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright; failing to start it fails the test (no skip).

    Module-scoped: Playwright's sync API keeps its event loop running in this thread until it
    stops, and later tests start event loops of their own.
    """
    from playwright.sync_api import Error, sync_playwright

    with sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except Error as exc:
            pytest.fail(
                f"cannot start {CHROMIUM} for the browser tests ({exc}); "
                "install it with `apt-get install -y chromium`"
            )
        yield chromium
        chromium.close()
