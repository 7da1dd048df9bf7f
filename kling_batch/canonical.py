"""Canonical JSON, JSON numbers and content hashes: the one place every fingerprint is made.

`json_number` is the one rule that turns a `Decimal` into a JSON number: the fingerprint,
the body sent to the API and the plan JSON all use it, so what is hashed is what is sent.
(The emulator keeps its own independent encoding on purpose: it stands for the server.)
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from decimal import Decimal
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def canonical_json(value: Any) -> str:
    """JSON with sorted keys, no spaces and no NaN: equal values give equal text.

    A `Decimal` (lockfiles read numbers as Decimal) is written as the number it is, so a
    request read back from a lockfile gives the same text as the request that was sent.
    """
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=json_default,
    )


def json_number(value: Decimal) -> int | float:
    """A finite Decimal as the JSON number it is: `5` for 5.000, `7.5` for 7.50."""
    if not value.is_finite():
        raise ValueError(f"{value} is not a JSON number")
    return int(value) if value == value.to_integral_value() else float(value)


def json_default(value: Any) -> Any:
    """`json.dumps(default=...)`: Decimals become numbers; anything else is refused."""
    if isinstance(value, Decimal) and value.is_finite():
        return json_number(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def plain_numbers(value: Any) -> Any:
    """`value` with every Decimal (in lists too) as its JSON number, for comparisons."""
    if isinstance(value, Decimal):
        return json_number(value)
    if isinstance(value, list):
        return [plain_numbers(item) for item in value]
    return value


def tagged(hexdigest: str) -> str:
    """`sha256:<hex>`: how every content hash is written."""
    return "sha256:" + hexdigest


def untagged(digest: str) -> str:
    """The bare hex of a `sha256:<hex>` hash (e.g. a content-addressed file name)."""
    return digest.removeprefix("sha256:")


def text_digest(text: str) -> str:
    """The sha256 hex of any text, lone surrogates included (a cache's key for text read
    from a file; never an error)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def sha256_text(text: str) -> str:
    """`sha256:<hex>` of UTF-8 text."""
    return tagged(hashlib.sha256(text.encode()).hexdigest())


def fingerprint_of(value: Any) -> str:
    """`sha256:<hex>` of the canonical JSON of `value`."""
    return sha256_text(canonical_json(value))


def sha256_file(path: str | Path) -> str:
    """`sha256:<hex>` of a regular file's bytes, read in constant memory."""
    digest = hashlib.sha256()
    # Plain reads of the descriptor: a cold plan hashes every input and output (20,000 for
    # 10,000 renders), and a buffered file object per file cost more than the hashing.
    # O_NONBLOCK and the check: a FIFO or a device swapped in after the caller's stat is
    # refused at once (IsADirectoryError, as `assets` words a name that is no file), not
    # waited on for a writer or read without end.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IsADirectoryError(errno.EISDIR, "not a regular file", str(path))
        while chunk := os.read(fd, _CHUNK):
            digest.update(chunk)
    finally:
        os.close(fd)
    return tagged(digest.hexdigest())
