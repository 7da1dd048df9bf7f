"""Canonical JSON and content hashes: the one place every fingerprint is made."""

from __future__ import annotations

import hashlib
import json
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
        default=_number,
    )


def _number(value: Any) -> int | float:
    if isinstance(value, Decimal) and value.is_finite():
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def sha256_text(text: str) -> str:
    """`sha256:<hex>` of UTF-8 text."""
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def fingerprint_of(value: Any) -> str:
    """`sha256:<hex>` of the canonical JSON of `value`."""
    return sha256_text(canonical_json(value))


def sha256_file(path: Path) -> str:
    """`sha256:<hex>` of a file's bytes, read in constant memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()
