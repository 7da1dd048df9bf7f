"""Output files: downloads verified and moved into place, copies, and the render cache.

Every file lands through `kling_batch.atomic` (a temp file in the target's folder, fsync,
rename), so an output path holds a complete, verified MP4 or nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from kling_batch.atomic import commit_temp, discard, sweep_temps
from kling_batch.atomic import temp_beside as _temp_beside
from kling_batch.canonical import sha256_file
from kling_batch.errors import BadOutput
from kling_batch.payloads import Download

OUTPUT_MODE = 0o644
_PART = ".part"


def temp_beside(target: Path) -> Path:
    """A new empty download file in the target's folder, after sweeping stale ones.

    Temp files a killed run left for this target are removed first: the run lock makes
    this run the only writer, so no other download can be using them.
    """
    if target.parent.is_dir():
        sweep_temps(target, suffix=_PART)
    return _temp_beside(target, suffix=_PART)


def verify_and_place(
    temp: Path, target: Path, download: Download, cache: Callable[[str], Path]
) -> None:
    """Check the MP4 signature and hash, keep a cached copy, then move it into place."""
    with open(temp, "rb") as f:
        head = f.read(12)
    if len(head) < 12 or head[4:8] != b"ftyp":
        raise BadOutput(f"{target.name}: the download is not an MP4 file")
    if sha256_file(temp) != download.sha256 or temp.stat().st_size != download.size:
        raise BadOutput(f"{target.name}: the file on disk does not match what was received")
    with contextlib.suppress(OSError):  # the cache only saves money later; never block
        keep_in_cache(temp, cache(download.sha256))
    commit_temp(temp, target, mode=OUTPUT_MODE)


def keep_in_cache(path: Path, cached: Path) -> None:
    """Keep a content-addressed copy (a hardlink where possible) for free restores."""
    if cached.exists():
        return
    staging = _temp_beside(cached, suffix=_PART)
    try:
        _link_or_copy(path, staging)
        commit_temp(staging, cached, mode=OUTPUT_MODE)
    finally:
        discard(staging)


def place_copy(source: Path, target: Path, sha256: str) -> None:
    """Copy (or hardlink) `source` to `target` through a temp file, checking its hash."""
    if sha256_file(source) != sha256:
        raise BadOutput(f"{source.name} no longer holds the recorded render")
    temp = temp_beside(target)
    try:
        _link_or_copy(source, temp)
        commit_temp(temp, target, mode=OUTPUT_MODE)
    finally:
        discard(temp)


def _link_or_copy(source: Path, temp: Path) -> None:
    """Make the (empty) temp file `temp` hold `source`'s bytes: a hardlink, else a copy."""
    temp.unlink()
    try:
        os.link(source, temp)
    except OSError:
        shutil.copyfile(source, temp)
