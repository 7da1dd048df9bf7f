"""Output files: downloads verified and moved into place, copies, and the render cache.

Every file lands through `kling_batch.atomic` (a temp file in the target's folder, fsync,
rename), so an output path holds a complete, verified MP4 or nothing. Nothing reaches an
output or the cache before it is verified: a whole MP4 (`mp4check`), the bytes received,
the recorded hash when one is expected, and the planned length when the server did not
say how many bytes it sent.

Each output and each cache file is its own file (issue 8): a copy-on-write clone where the
file system offers one, else a plain copy, never a hardlink, so editing an output in place
(an editor, ffmpeg, exiftool) changes nothing else. Cache files are read-only.
"""

from __future__ import annotations

import contextlib
import shutil
import stat
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import BinaryIO

from kling_batch.atomic import commit_temp, discard, sweep_temps
from kling_batch.atomic import temp_beside as _temp_beside
from kling_batch.canonical import sha256_file, tagged, untagged
from kling_batch.errors import BadOutput
from kling_batch.mp4check import mp4_problem, mp4_seconds
from kling_batch.payloads import Download

OUTPUT_MODE = 0o644
CACHE_MODE = 0o444
_PART = ".part"
_FICLONE = 0x40049409  # Linux <linux/fs.h>: _IOW(0x94, 9, int); `fcntl.FICLONE` from 3.12
# How far a download's length may be from the planned seconds when the server sent no
# Content-Length. The model renders whole seconds (3-15), so a wrong or cut render misses
# by a second or more, while a right one differs only by frame and audio-packet rounding
# (a frame is 1/24 s, an AAC packet 1/43 s): half a second tells the two apart.
LENGTH_TOLERANCE = Decimal("0.5")


def temp_beside(target: Path) -> Path:
    """A new empty download file in the target's folder, after sweeping stale ones.

    Temp files a killed run left for this target are removed first: the run lock makes
    this run the only writer, so no other download can be using them.
    """
    if target.parent.is_dir():
        sweep_temps(target, suffix=_PART)
    return _temp_beside(target, suffix=_PART)


def verify_and_place(
    temp: Path,
    target: Path,
    download: Download,
    cache: Callable[[str], Path],
    *,
    expected: str | None = None,
    seconds: Decimal | None = None,
) -> None:
    """Verify a downloaded file, keep a cached copy, then move it into place.

    Refused (`BadOutput`, nothing placed or cached): a file that is not a whole MP4; bytes
    that differ from what was received; with `expected`, bytes of another hash; with
    `seconds` and no length declared by the server, a video whose length is further than
    `LENGTH_TOLERANCE` from it.
    """
    _verify(temp, download, target, seconds=seconds if expected is None else None)
    if expected is not None and download.sha256 != expected:
        raise BadOutput(
            f"{target.name}: the download is not the recorded render (sha256 "
            f"{untagged(download.sha256)[:12]}…, recorded {untagged(expected)[:12]}…)"
        )
    with contextlib.suppress(OSError):  # the cache only saves money later; never block
        keep_in_cache(temp, cache(download.sha256), download.sha256)
    commit_temp(temp, target, mode=OUTPUT_MODE)


def _verify(temp: Path, download: Download, target: Path, *, seconds: Decimal | None) -> None:
    """Refuse (`BadOutput`, naming `target`) a download that is not a whole MP4, whose
    bytes on disk are not those received, or, with `seconds` and no length declared by
    the server, whose length is not the planned one."""
    problem = mp4_problem(temp)
    if problem is not None:
        raise BadOutput(f"{target.name}: the download {problem}")
    if sha256_file(temp) != download.sha256 or temp.stat().st_size != download.size:
        raise BadOutput(f"{target.name}: the file on disk does not match what was received")
    if seconds is not None and not download.length_declared:
        _check_length(temp, target, seconds)


def _check_length(temp: Path, target: Path, seconds: Decimal) -> None:
    """Refuse a video whose length is not the planned one (for bodies of unknown size)."""
    length = mp4_seconds(temp)
    if length is None:
        raise BadOutput(
            f"{target.name}: the download came without a Content-Length and its length "
            "cannot be read"
        )
    if abs(Decimal(str(length)) - seconds) > LENGTH_TOLERANCE:
        raise BadOutput(
            f"{target.name}: the download came without a Content-Length and lasts "
            f"{length:.2f} s, not the planned {seconds.normalize():f} s"
        )


def verify_into_cache(
    temp: Path, download: Download, cache: Callable[[str], Path], *, seconds: Decimal | None
) -> Path:
    """Verify a download as `verify_and_place` does and keep it only in the render cache
    (the render has no output path any more); returns the cached file."""
    cached = cache(download.sha256)
    _verify(temp, download, cached, seconds=seconds)
    keep_in_cache(temp, cached, download.sha256)
    return cached


def keep_in_cache(path: Path, cached: Path, sha256: str) -> None:
    """Keep a read-only, content-addressed copy of `path` (hash `sha256`) for free restores.

    A cache file that does not hold `sha256` (left by an older version that hardlinked it
    to an output someone then edited) is replaced.
    """
    if cached.exists() and sha256_file(cached) == sha256:
        return
    staging = _temp_beside(cached, suffix=_PART)
    try:
        clone_or_copy(path, staging)
        commit_temp(staging, cached, mode=CACHE_MODE)
    finally:
        discard(staging)


def place_copy(
    source: Path, target: Path, sha256: str, cache: Callable[[str], Path] | None = None
) -> None:
    """Copy `source` to `target` through a temp file; the copy must hash to `sha256`.

    With `cache`, the copy is also kept in the render cache if it is not there yet.
    """
    temp = temp_beside(target)
    try:
        clone_or_copy(source, temp)
        if sha256_file(temp) != sha256:
            raise BadOutput(f"{source.name} no longer holds the recorded render")
        if cache is not None and cache(sha256) != source:
            with contextlib.suppress(OSError):
                keep_in_cache(temp, cache(sha256), sha256)
        commit_temp(temp, target, mode=OUTPUT_MODE)
    finally:
        discard(temp)


def detach_cache(folder: Path) -> int:
    """Give each cache file its own inode, read-only; returns how many were fixed.

    Earlier versions hardlinked cache files to outputs. A linked file is copied, checked
    against the hash it is named after (a file edited through its link is dropped) and made
    read-only. Only safe while holding the run lock.
    """
    fixed = 0
    if not folder.is_dir():
        return fixed
    for path in folder.iterdir():
        if path.name.startswith("."):
            continue  # a temp file
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode):
            continue
        if info.st_nlink > 1:
            _detach(path)
            fixed += 1
        elif stat.S_IMODE(info.st_mode) != CACHE_MODE:
            path.chmod(CACHE_MODE)
            fixed += 1
    return fixed


def _detach(cached: Path) -> None:
    """Replace a hardlinked cache file by a copy of its own, or drop it if it was edited."""
    staging = _temp_beside(cached, suffix=_PART)
    try:
        clone_or_copy(cached, staging)
        if sha256_file(staging) != tagged(cached.name):
            discard(cached)
            return
        commit_temp(staging, cached, mode=CACHE_MODE)
    finally:
        discard(staging)


def clone_or_copy(source: Path, dest: Path) -> None:
    """Make `dest` a new file holding `source`'s bytes: a clone where possible, else a copy.

    A copy-on-write clone (Linux `FICLONE`: btrfs, XFS, bcachefs) shares blocks until
    either file is written, so it costs no space or time, yet writing one never changes the
    other, unlike a hardlink. Elsewhere the bytes are copied.
    """
    with open(source, "rb") as src, open(dest, "wb") as dst:
        if _clone(src, dst):
            return
    shutil.copyfile(source, dest)


def _clone(src: BinaryIO, dst: BinaryIO) -> bool:
    """Clone `src` into the empty `dst`; False when the platform or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    import fcntl

    try:
        fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
    except OSError:  # EOPNOTSUPP, EXDEV, EINVAL...: no clones here, copy instead
        return False
    return True
