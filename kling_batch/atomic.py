"""Replacing files atomically: the only way kling-batch puts a file it owns in place.

A file is written to a temp file in the target's own folder (`temp_beside`), flushed and
fsynced, given its final mode and renamed over the target (`commit_temp`), then the folder
is fsynced: a reader sees the old file or the new one, never a half-written or missing
one, and a crash leaves at most a temp file that `sweep_temps` removes.
`atomic_write` is the pair for bytes in memory; downloads and cache copies stream into
`temp_beside` themselves and finish with `commit_temp`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import stat
import tempfile
from pathlib import Path

DEFAULT_MODE = 0o644


def atomic_write(path: Path, data: bytes | str | list[str], *, mode: int | None = None) -> None:
    """Replace `path` with `data` atomically and durably (keeping its mode by default).

    `data` may be text in pieces (a list of strings), written one after another as UTF-8:
    a large file made of many parts is never copied whole in memory.
    """
    if mode is None:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            mode = DEFAULT_MODE
    temp = temp_beside(path, suffix=".tmp")
    try:
        with open(temp, "wb") as f:
            if isinstance(data, list):
                for piece in data:
                    f.write(piece.encode())
            else:
                f.write(data.encode() if isinstance(data, str) else data)
        commit_temp(temp, path, mode=mode)
    except BaseException:
        discard(temp)
        raise


def temp_beside(target: Path, *, suffix: str) -> Path:
    """A new empty file `.<name>.<random><suffix>` in the target's folder (made if needed).

    In the same folder so that the final rename is atomic; hidden, and named after the
    target so that `sweep_temps` finds what a killed writer left.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    return Path(name)


def commit_temp(temp: Path, target: Path, *, mode: int = DEFAULT_MODE) -> None:
    """fsync `temp`, give it `mode`, rename it over `target`, fsync the folder."""
    fd = os.open(temp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(temp, mode)
    os.replace(temp, target)
    fsync_dir(target.parent)


def discard(path: Path) -> None:
    """Remove a file if it is there."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def sweep_temps(path: Path, *, suffix: str = ".tmp") -> int:
    """Remove temp files a killed writer of `path` left beside it; returns how many.

    Only safe while holding whatever lock makes the caller the file's only writer.
    """
    removed = 0
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*{glob.escape(suffix)}"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stale)
            removed += 1
    return removed


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
