"""Cache files in the state folder: JSON behind a checksum line, read only when intact.

A cache only saves time, so anything wrong with one (missing, not a regular file, too
big, truncated, of another format or version) reads as no cache at all. The first line
is the sha256 of the rest: a damaged file is noticed before any of it is believed. The
second is the payload; any further lines are JSON texts the payload refers to by number,
which the reader decodes only when it needs them (most plans need few of them).
Written atomically (`kling_batch.atomic`), by `plan` last, and never needed: a folder that
cannot be written (a read-only checkout) leaves planning only slower.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kling_batch import safefiles
from kling_batch.atomic import atomic_write
from kling_batch.errors import UserError

log = logging.getLogger(__name__)

_MAX_BYTES = 1024 * 1024 * 1024


def read_cache(path: Path, version: str) -> tuple[dict[str, Any], list[bytes]] | None:
    """The payload of an intact cache file written with `version` and its further lines
    (undecoded), else None."""
    try:
        raw = safefiles.read_bytes(path, limit=_MAX_BYTES, what="a cache")
    except (OSError, UserError):
        return None
    digest, _, rest = raw.partition(b"\n")
    if digest.decode("ascii", "replace") != hashlib.sha256(rest).hexdigest():
        return None
    head, _, tail = rest.partition(b"\n")
    try:
        data = json.loads(head)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("version") != version:
        return None
    return data, tail.split(b"\n") if tail else []


def write_cache(
    path: Path, version: str, payload: dict[str, Any], lines: Sequence[bytes] = ()
) -> None:
    """Write `payload` (and `lines`, JSON texts) as the cache at `path`; a failure is
    only logged."""
    try:
        body = json.dumps({"version": version, **payload}, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:  # a value JSON cannot hold: no cache this time
        log.info("cache %s not written (%s)", path.name, exc)
        return
    data = b"\n".join([body, *lines])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, hashlib.sha256(data).hexdigest().encode() + b"\n" + data)
    except OSError as exc:  # a read-only checkout still plans, only slower next time
        log.info("cache %s not written (%s)", path.name, exc)
