"""The manifests' parse cache: a TOML file read table by table, unchanged tables from cache.

Parsing a 10,000-shot manifest takes 0.05 s with `tomli` compiled, 0.16 s without (as
`tomllib`): a large share of a warm plan (issue 13). A TOML file is cut at its `[[shots]]`
header lines into chunks: the head (everything before the first header) and one chunk per
shot table. Each chunk is parsed on its own and remembered by its sha256, so an edit
parses only the chunks it touched, and each shot gets the digest of its chunk: what the
plan cache knows it by.

The cut is trusted only when it provably gives the parse of the whole document: the head
parses to a table without `shots`, and every other chunk to exactly `{"shots": [tables]}`.
TOML is read left to right, so a chunk that parses alone ends outside any string or
value; a header line inside a multi-line string leaves the chunk before it unterminated,
and a table another chunk would also define (`[vars]` twice) is a key besides `shots`.
Anything else parses the whole file as before, with its error lines. Chunks holding
values JSON cannot keep (TOML dates) are simply parsed every time.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import tomli

from kling_batch.cachefile import read_cache, worth_rewriting, write_cache
from kling_batch.canonical import text_digest

_VERSION = "manifest-chunks-1"
_HEADER = re.compile(r"^[ \t]*\[\[[ \t]*shots[ \t]*\]\][ \t]*(?:#[^\n]*)?$", re.MULTILINE)


class ParseCache:
    """Parsed TOML chunks by the sha256 of their text, read from and written to `path`."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        cached = read_cache(path, _VERSION) if path is not None else None
        chunks = cached[0].get("chunks") if cached is not None else None
        self._known: dict[str, Any] = chunks if isinstance(chunks, dict) else {}
        self._used: dict[str, Any] = {}
        self._new = 0

    def parse_toml(self, text: str) -> tuple[dict[str, Any], list[str]] | None:
        """The document and each shot's chunk digest, or None when the cut cannot be
        trusted (the caller parses the whole text)."""
        cut = shot_chunks(text)
        if cut is None:
            return None
        head = self._chunk(cut[0])
        if not isinstance(head, dict) or "shots" in head:
            return None
        shots: list[Any] = []
        digests: list[str] = []
        for chunk in cut[1]:
            digest = text_digest(chunk)
            parsed = self._chunk(chunk, digest)
            tables = parsed.get("shots") if isinstance(parsed, dict) else None
            if len(parsed or ()) != 1 or not isinstance(tables, list):
                return None
            if not all(isinstance(table, dict) for table in tables):
                return None
            shots.extend(tables)
            digests.extend(
                digest if len(tables) == 1 else f"{digest}:{n}" for n in range(len(tables))
            )
        return {**head, "shots": shots}, digests

    def _chunk(self, chunk: str, digest: str | None = None) -> Any:
        """One chunk's parse (from the cache when known), or None when it does not parse."""
        digest = digest or text_digest(chunk)
        known = self._known.get(digest)
        if isinstance(known, dict):
            self._used[digest] = known
            return known
        try:
            parsed = tomli.loads(chunk)
        except (tomli.TOMLDecodeError, RecursionError):
            return None
        if _json_safe(parsed):  # TOML dates have no JSON form: such a chunk is not kept
            self._used[digest] = parsed
            self._new += 1
        return parsed

    def save(self) -> None:
        """Keep the chunks this plan used (and only those) when enough of them are new, or
        enough known ones went unused (`cachefile.worth_rewriting`)."""
        if self.path is not None and self._worth_saving():
            write_cache(self.path, _VERSION, {"chunks": self._used})

    def settle(self) -> None:
        """Every file is read: let go of the parsed chunks when `save` will not write them
        (most plans), so they leave memory with the document (a 100,000-shot manifest's
        chunks weigh about 100 MB beside its validated shots)."""
        if not self._worth_saving():
            self._known, self._used = {}, {}

    def _worth_saving(self) -> bool:
        if self.path is None or not (self._used or self._known):
            return False
        unused = len(self._known) - (len(self._used) - self._new)
        return worth_rewriting(self._new + unused, len(self._used))


def shot_chunks(text: str) -> tuple[str, list[str]] | None:
    """A TOML text cut at its `[[shots]]` header lines: the head, and each chunk from one
    header to the next; None without such a line."""
    starts = [match.start() for match in _HEADER.finditer(text)]
    if not starts:
        return None
    ends = [*starts[1:], len(text)]
    return text[: starts[0]], [text[start:end] for start, end in zip(starts, ends, strict=True)]


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        return False
    return True
