"""Output files: downloads verified and moved into place, copies, and the content cache.

Every file lands through a temp file in the target's folder and a rename, so an output
path holds a complete, verified MP4 or nothing.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from kling_batch.atomic import fsync_dir
from kling_batch.canonical import sha256_file
from kling_batch.errors import BadOutput
from kling_batch.payloads import Download

OUTPUT_MODE = 0o644


def temp_beside(target: Path) -> Path:
    """A new empty temp file in the target's folder (so the final rename is atomic).

    Temp files a killed run left for this target are removed first: the run lock makes
    this run the only writer, so no other download can be using them.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.part"):
        discard(stale)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    return Path(name)


def discard(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def verify_and_place(
    temp: Path, target: Path, download: Download, cache: Callable[[str], Path]
) -> None:
    """Check the MP4 signature and hash, fsync, keep a cached copy, then rename into place."""
    with open(temp, "rb") as f:
        head = f.read(12)
        os.fsync(f.fileno())
    if len(head) < 12 or head[4:8] != b"ftyp":
        raise BadOutput(f"{target.name}: the download is not an MP4 file")
    if sha256_file(temp) != download.sha256 or temp.stat().st_size != download.size:
        raise BadOutput(f"{target.name}: the file on disk does not match what was received")
    temp.chmod(OUTPUT_MODE)  # mkstemp makes 0600; renders are ordinary files
    with contextlib.suppress(OSError):  # the cache only saves money later; never block a file
        keep_in_cache(temp, cache(download.sha256))
    temp.replace(target)
    fsync_dir(target.parent)


def keep_in_cache(path: Path, cached: Path) -> None:
    """Keep a content-addressed copy (a hardlink where possible) for free restores."""
    cached.parent.mkdir(parents=True, exist_ok=True)
    if cached.exists():
        return
    try:
        os.link(path, cached)
    except OSError:
        staging = cached.with_suffix(".part")
        shutil.copyfile(path, staging)
        staging.replace(cached)


def place_copy(source: Path, target: Path, sha256: str) -> None:
    """Copy (or hardlink) `source` to `target` through a temp file, checking its hash."""
    if sha256_file(source) != sha256:
        raise BadOutput(f"{source.name} no longer holds the recorded render")
    temp = temp_beside(target)
    try:
        temp.unlink()
        try:
            os.link(source, temp)
        except OSError:
            shutil.copyfile(source, temp)
            temp.chmod(OUTPUT_MODE)
        temp.replace(target)
        fsync_dir(target.parent)
    finally:
        discard(temp)
