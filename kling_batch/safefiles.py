"""Reading files a stranger may have shaped: regular files of a sane size, BOM dropped.

A manifest, an included shot file or a lockfile comes from someone else's repository. It
may be a symlink to `/dev/zero` (endless), a FIFO (`open` blocks until a writer appears)
or a multi-gigabyte file; each would hang `plan` or exhaust memory. Every such file is
read here: `stat` first and refuse anything that is not a regular file of at most `limit`
bytes, then open without blocking and check the open file again (it may have been swapped
in between), then read at most `limit` bytes. A UTF-8 byte order mark (Windows editors
write one) is dropped from text.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from kling_batch.errors import UserError
from kling_batch.limits import NAME_MAX_BYTES

__all__ = [
    "file_kind",
    "head",
    "lies_inside",
    "path_problem",
    "read_bytes",
    "read_text",
    "sha256_hex",
    "shown",
]

_CHUNK = 1 << 20
_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def file_kind(mode: int) -> str:
    """What a `st_mode` is, in words: "a regular file", "a FIFO", "a character device"..."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def read_bytes(path: Path, *, limit: int, what: str, most: int | None = None) -> bytes:
    """The content of `path`, a regular file of at most `limit` bytes; else a `UserError`.

    `what` names the file in messages ("the lockfile", "a manifest"). A missing file raises
    `FileNotFoundError` and other I/O failures `OSError`, for the caller to word. With
    `most`, only the first `most` bytes are read.
    """
    _check(path, path.stat(), limit, what)
    # O_NONBLOCK: should a FIFO be swapped in after the stat, open() still returns at once.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        _check(path, os.fstat(fd), limit, what)
        data = f.read(limit + 1 if most is None else most)
    if len(data) > limit:  # it grew while being read
        raise _too_big(path, len(data), limit, what)
    return data


def sha256_hex(path: Path, *, limit: int, what: str) -> str:
    """The sha256 (hex) of what `read_bytes` would return, read in constant memory: for a
    file whose digest alone is needed (a lockfile whose caches are keyed by it)."""
    _check(path, path.stat(), limit, what)
    digest, size = hashlib.sha256(), 0
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        _check(path, os.fstat(fd), limit, what)
        while size <= limit and (chunk := f.read(min(_CHUNK, limit + 1 - size))):
            digest.update(chunk)
            size += len(chunk)
    if size > limit:  # it grew while being read
        raise _too_big(path, size, limit, what)
    return digest.hexdigest()


def read_text(path: Path, *, limit: int, what: str) -> str:
    """`read_bytes` decoded as UTF-8, a leading byte order mark dropped.

    Raises `UnicodeDecodeError` for text that is not UTF-8.
    """
    return read_bytes(path, limit=limit, what=what).decode("utf-8-sig")


def head(path: Path, size: int = 64) -> bytes:
    """The first `size` bytes of `path` (a UTF-8 BOM dropped); empty if it is not a
    readable regular file."""
    try:
        data = read_bytes(path, limit=1 << 62, what="a file", most=size + 3)
    except (OSError, UserError):
        return b""
    return data.removeprefix(b"\xef\xbb\xbf")[:size]


def path_problem(path: str) -> str | None:
    """Why no file system can hold `path` (a NUL, a name over 255 bytes), or None."""
    if "\x00" in path:
        return "contains a NUL character, which no file name can hold"
    for name in path.replace("\\", "/").split("/"):
        size = len(name.encode("utf-8", "surrogatepass"))
        if size > NAME_MAX_BYTES:
            return (
                f"has a {size}-byte name; file systems hold names of at most {NAME_MAX_BYTES} bytes"
            )
    return None


def real_path(path: Path) -> Path | None:
    """`path` with every symlink followed; None when the links go round in a loop (Python
    3.11 raises RuntimeError there, later versions OSError)."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):
        return None


def lies_inside(root: Path, folder: str, relative: str) -> bool:
    """True when `relative` (relative to `root`, as a lockfile records an output) names a
    path under `root/folder`, symlinks followed; decided without opening it."""
    text = relative.replace("\\", "/")
    if path_problem(text) or path_problem(folder) or text.startswith("/"):
        return False
    if ".." in text.split("/"):
        return False
    base, target = real_path(root / folder), real_path(root / text)
    return (
        base is not None and target is not None and target != base and target.is_relative_to(base)
    )


def shown(text: str, width: int = 60) -> str:
    """`text` quoted for a message, cut to about `width` characters."""
    return repr(text) if len(text) <= width else repr(text[: width - 3]) + "..."


def _check(path: Path, info: os.stat_result, limit: int, what: str) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise UserError(
            f"{what} must be a regular file, and this is {file_kind(info.st_mode)}", file=path
        )
    if info.st_size > limit:
        raise _too_big(path, info.st_size, limit, what)


def _too_big(path: Path, size: int, limit: int, what: str) -> UserError:
    return UserError(
        f"{what} is {_megabytes(size)}; kling-batch reads at most {_megabytes(limit)}", file=path
    )


def _megabytes(size: int) -> str:
    megabytes = size / (1024 * 1024)
    return f"{megabytes:.0f} MB" if megabytes.is_integer() else f"{megabytes:.1f} MB"
