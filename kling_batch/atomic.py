"""Replacing files atomically: the only way kling-batch puts a file it owns in place.

A file is written to a temp file in the target's own folder (`temp_beside`), flushed and
fsynced, given its final mode and renamed over the target (`commit_temp`), then the folder
is fsynced: a reader sees the old file or the new one, never a half-written or missing
one, and a crash leaves at most a temp file that `sweep_temps` removes.
A temp file is named `.<target name>.<12 hex digits><suffix>`, which no other target's temp
file can match, and its writer holds a lock on it (`flock`) until it is renamed or
discarded: a sweep, in any process, removes only temp files no live writer holds.
`atomic_write` is the pair for bytes in memory; downloads and cache copies stream into
`temp_beside` themselves and finish with `commit_temp`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
import stat
import sys
from collections.abc import Iterable
from pathlib import Path

DEFAULT_MODE = 0o644
_TOKEN_BYTES = 6
# The random part of a temp file's name: ours, or `tempfile.mkstemp`'s (8 characters of
# `[a-z0-9_]`), which made the temp files of earlier versions. Neither holds a dot.
_TOKEN = r"(?:[0-9a-f]{12}|[a-z0-9_]{8})"
# Read-only is enough to hold a lock (`flock`), and lets a sweep lock a temp file a killed
# writer left read-only (between `chmod` and the rename).
_OPEN = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
# Temp file → the descriptor through which this process holds its lock.
_HELD: dict[Path, int] = {}


def atomic_write(path: Path, data: bytes | str | Iterable[str], *, mode: int | None = None) -> None:
    """Replace `path` with `data` atomically and durably (keeping its mode by default).

    `data` may be text in pieces (strings, or what yields them), written one after
    another as UTF-8: a large file made of many parts is never copied whole in memory.
    """
    if mode is None:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            mode = DEFAULT_MODE
    temp = temp_beside(path, suffix=".tmp")
    try:
        with open(temp, "wb") as f:
            if isinstance(data, str | bytes):
                f.write(data.encode() if isinstance(data, str) else data)
            else:
                for piece in data:
                    f.write(piece.encode())
        commit_temp(temp, path, mode=mode)
    except BaseException:
        discard(temp)
        raise


def temp_beside(target: Path, *, suffix: str) -> Path:
    """A new empty file `.<name>.<random><suffix>` in the target's folder (made if needed),
    locked by this process until `commit_temp` or `discard`.

    In the same folder so that the final rename is atomic; hidden, and named after the
    target so that `sweep_temps` finds what a killed writer left.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        token = secrets.token_hex(_TOKEN_BYTES)
        temp = target.parent / f".{target.name}.{token}{suffix}"
        try:
            fd = os.open(temp, _OPEN | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        locked = _lock(fd)
        if locked is None:  # no locks here (Windows): guarded by the run lock alone
            os.close(fd)
            return temp
        # A sweep may take the new file between its creation and our lock: make another.
        if locked and os.fstat(fd).st_nlink > 0:
            _HELD[temp] = fd
            return temp
        os.close(fd)


def commit_temp(temp: Path, target: Path, *, mode: int = DEFAULT_MODE) -> None:
    """fsync `temp`, give it `mode`, rename it over `target`, fsync the folder."""
    fd = os.open(temp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(temp, mode)
    os.replace(temp, target)
    _release(temp)
    fsync_dir(target.parent)


def discard(path: Path) -> None:
    """Remove a file if it is there (and this process's lock on it, if a temp file)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    _release(path)


def sweep_temps(path: Path, *, suffix: str = ".tmp") -> int:
    """Remove temp files a killed writer of `path` left beside it; returns how many.

    Only `path`'s own temp names match: `.hero.mp4.<token>.part`, never the temp file of
    `hero.mp4.v2` (`.hero.mp4.v2.<token>.part`); and a temp file a live writer holds, in
    this process or another, stays (`remove_unused`).
    """
    own = re.compile(rf"\.{re.escape(path.name)}\.{_TOKEN}{re.escape(suffix)}")
    removed = 0
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*{glob.escape(suffix)}"):
        if own.fullmatch(stale.name) and remove_unused(stale):
            removed += 1
    return removed


def remove_unused(temp: Path) -> bool:
    """Remove the temp file `temp` unless a live writer holds its lock; True if removed.

    Where files cannot be locked (some network file systems), nothing is removed; on
    Windows (no `flock`), a file another process has open cannot be removed anyway.
    """
    if sys.platform == "win32":
        try:
            os.unlink(temp)
        except OSError:
            return False
        return True
    try:
        fd = os.open(temp, _OPEN)
    except OSError:
        return False  # gone, a link, or not ours to read
    try:
        if not _lock(fd):
            return False
        if os.stat(temp, follow_symlinks=False).st_ino != os.fstat(fd).st_ino:
            return False  # renamed over or replaced meanwhile: not the file we locked
        os.unlink(temp)
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)


def _lock(fd: int) -> bool | None:
    """Lock the open file `fd` without waiting: False when another holds it, None when
    the file system cannot lock (or there is no `flock`: Windows)."""
    if sys.platform == "win32":
        return None
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


def _release(temp: Path) -> None:
    fd = _HELD.pop(temp, None)
    if fd is not None:
        os.close(fd)


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
