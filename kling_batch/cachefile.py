"""Cache files in the state folder: JSON behind a checksum line, read only when intact.

A cache only saves time, so anything wrong with one (missing, not a regular file, too
big, truncated, of another format or version) reads as no cache at all. The first line
is the sha256 of the rest and the cache's key (its format and `tool_identity`, which
holds the modification times of this installation's modules, so a cache file committed
to a repository is never believed on another machine); a damaged file is noticed before
any of it is believed. The second is the payload; after it comes a blob of JSON texts
the payload refers to by offset and length (`Cold`), read from the file only when needed
(most plans need few).
Written atomically (`kling_batch.atomic`), by `plan` last, and never needed: a folder that
cannot be written (a read-only checkout) leaves planning only slower.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import stat
import weakref
from pathlib import Path
from typing import Any, BinaryIO

import tomli

from kling_batch import __version__
from kling_batch.atomic import atomic_write
from kling_batch.model_data import data_file

log = logging.getLogger(__name__)

_PACKAGE = Path(__file__).resolve().parent
_MAX_BYTES = 4 * 1024 * 1024 * 1024
_CHUNK = 1 << 20


@functools.cache
def tool_identity() -> str:
    """kling-batch's version, the size and time of each of its modules, the model data's
    hash and the TOML parser's version (what it accepts changes between versions): what
    every cache of what kling-batch computed is keyed by (a cache made by another
    kling-batch is not believed)."""
    modules = sorted(
        (entry.name, entry.stat().st_size, entry.stat().st_mtime_ns)
        for entry in os.scandir(_PACKAGE)
        if entry.name.endswith(".py")
    )
    model = hashlib.sha256(data_file("kling-o3.json").read_bytes()).hexdigest()
    text = json.dumps([__version__, modules, model, tomli.__version__])
    return hashlib.sha256(text.encode()).hexdigest()


class Blob:
    """The part of a cache file after its payload, read piece by piece when needed.

    The file stays open (a later cache written over it replaces the file, so this one
    keeps reading the bytes its checksum covered) and nothing of it is held in memory.
    """

    def __init__(self, file: BinaryIO | None, base: int) -> None:
        self._file = file
        self._base = base
        if file is not None:  # closed with the last piece that may still read from it
            weakref.finalize(self, file.close)

    def read(self, offset: int, length: int) -> bytes:
        """`length` bytes from `offset` (counted from the start of the part)."""
        if self._file is None:
            return b""
        return os.pread(self._file.fileno(), length, self._base + offset)


class Cold:
    """One JSON text in a cache's `Blob`, decoded only by whoever needs it."""

    __slots__ = ("_blob", "_length", "_offset")

    def __init__(self, blob: Blob, offset: int, length: int) -> None:
        self._blob = blob
        self._offset = offset
        self._length = length

    def read(self) -> bytes:
        """The text's bytes."""
        return self._blob.read(self._offset, self._length)


class BlobWriter:
    """Collects JSON texts for a cache's blob; `add` says where each one lands."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, text: bytes) -> list[int]:
        """Append `text`; its [offset, length] for the payload to keep."""
        where = [self.size, len(text)]
        self.parts.append(text)
        self.size += len(text)
        return where


# A cache whose items are mostly still right is not rewritten for a few new ones: each
# plan computes those again (a shot of a few renders: milliseconds), which costs less than
# rewriting a cache of 10,000 (a tenth of a second or more, issue 13). Rewritten once the
# changed items (new, or no longer used) reach this share of it, or when it is small.
_REWRITE_SHARE = 16
_SMALL = 1024


def worth_rewriting(changed: int, size: int) -> bool:
    """True when a cache of `size` items of which `changed` are new or no longer used
    should be written again (see `_REWRITE_SHARE`)."""
    return changed > 0 and (size < _SMALL or changed * _REWRITE_SHARE >= size)


def read_cache(path: Path, version: str) -> tuple[dict[str, Any], Blob] | None:
    """The payload of an intact cache file written with `version` and its blob, else None.

    Only a regular file is opened (never blocking on a FIFO); its checksum is computed
    while streaming it, so a cache of any size costs little memory.
    """
    try:
        file = _open_regular(path)
    except OSError:
        return None
    keep = False
    try:
        # The key first: a cache another kling-batch (or a stranger's repository) made is
        # refused before a byte more of it is read.
        expected, _, key = file.readline(256).strip().decode("ascii", "replace").partition(" ")
        if key != _key(version):
            return None
        head = file.readline()
        digest = hashlib.sha256(head)
        base = file.tell()
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
        if digest.hexdigest() != expected:
            return None
        text, head = head.decode("utf-8"), b""  # parsed from text alone: half the memory
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != version:
            return None
        keep = file.tell() > base
        return data, Blob(file if keep else None, base)
    except (OSError, ValueError, RecursionError):
        return None
    finally:
        if not keep:
            file.close()


def _key(version: str) -> str:
    """What a cache file is valid for: its format and the kling-batch that wrote it."""
    return f"{version} {tool_identity()}"


def _open_regular(path: Path) -> BinaryIO:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    file = os.fdopen(fd, "rb")
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_BYTES:
        file.close()
        raise OSError(f"{path.name} is not a cache file")
    return file


def write_cache(
    path: Path, version: str, payload: dict[str, Any], blob: BlobWriter | None = None
) -> None:
    """Write `payload` (and the texts of `blob`) as the cache at `path`; a failure is
    only logged."""
    try:
        head = json.dumps({"version": version, **payload}, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:  # a value JSON cannot hold: no cache this time
        log.info("cache %s not written (%s)", path.name, exc)
        return
    parts = [head, b"\n", *(blob.parts if blob is not None else ())]
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        first = f"{digest.hexdigest()} {_key(version)}\n".encode()
        atomic_write(path, b"".join([first, *parts]))
    except OSError as exc:  # a read-only checkout still plans, only slower next time
        log.info("cache %s not written (%s)", path.name, exc)
