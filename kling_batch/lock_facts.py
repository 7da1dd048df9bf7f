"""What planning reads of a lockfile, cached by the lockfile's sha256.

A plan decides from a few fields of each entry (fingerprint, state, output and its hash,
job id, error, finished renders on record); validating the whole lockfile into pydantic
models took longer than a whole warm plan may (issue 13). So `plan` keeps those fields in
`.kling-batch/<lock name>.facts.json`, keyed by the sha256 of the lockfile's bytes: a
lockfile changed in any way (a run, a merge, an edit by hand) is read and validated in
full again, and its facts written anew. The full `Lockfile` is read only when something
needs it (a run, the gallery), and must still be the file the facts came from.

Entries and finished renders are read through the `EntryRecord` and `PastRecord`
protocols, which the lockfile's own models and these facts both satisfy.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from kling_batch.cachefile import Blob, BlobWriter, Cold, read_cache, write_cache
from kling_batch.errors import UserError
from kling_batch.lockfile import (
    CacheText,
    Entry,
    Lockfile,
    lockfile_bytes,
    lockfile_digest,
    lockfile_file_digest,
    lockfile_from,
    parsed_lockfile,
    submission_marks,
    untag,
)

# 7: a job in flight without its job id is refused; 8: what names each submission on
# record (`submitted`); 9: the rest is the entry's text in the lockfile's parse cache;
# 10: its times tagged (`lockfile.untag`), read back as times; 11: the rows in the blob,
# in chunks
_VERSION = "lock-facts-11"
# Rows per chunk of the blob: a plan reads 100,000 rows a chunk at a time, never the text
# of all of them at once (issue 13).
_CHUNK_ROWS = 4096


class PastRecord(Protocol):
    """A finished render on record."""

    @property
    def fingerprint(self) -> str: ...
    @property
    def sha256(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def result_url(self) -> str | None: ...
    @property
    def result_expires_at(self) -> datetime | None: ...
    @property
    def in_remote(self) -> bool | None: ...


class EntryRecord(Protocol):
    """One render's record, as planning reads it."""

    @property
    def fingerprint(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def shot(self) -> str: ...
    @property
    def take(self) -> int: ...
    @property
    def output(self) -> str: ...
    @property
    def output_sha256(self) -> str | None: ...
    @property
    def output_size(self) -> int | None: ...
    @property
    def job_id(self) -> str | None: ...
    @property
    def error(self) -> str | None: ...
    @property
    def request(self) -> dict[str, Any]: ...
    @property
    def assets(self) -> dict[str, str]: ...
    @property
    def cost_usd(self) -> Decimal: ...
    @property
    def tags(self) -> list[str]: ...
    def as_past(self) -> PastRecord | None: ...


class LockRecords(Protocol):
    """A lockfile's entries, as planning reads them."""

    @property
    def shots(self) -> Mapping[str, EntryRecord]: ...

    def finished(self) -> Iterator[tuple[EntryRecord | None, PastRecord]]: ...

    def submitted(self) -> frozenset[str]:
        """What names every submission on record (`lockfile.submission_marks`)."""


class PastFacts(NamedTuple):
    """A finished render, from the facts cache."""

    fingerprint: str
    sha256: str
    size: int
    result_url: str | None
    result_expires_at: datetime | None
    in_remote: bool | None = None


class EntryFacts(NamedTuple):
    """An entry's fields that planning reads, from the facts cache: those every plan
    reads, then the whole entry as JSON text (as the lockfile's parse cache holds it),
    decoded when asked for (a changed render, a restore, a job in flight)."""

    fingerprint: str
    state: str
    output: str
    output_sha256: str | None
    output_size: int | None
    has_history: bool
    rest: Cold

    def decoded(self) -> dict[str, Any]:
        """The entry's record (`Entry.model_dump` without its None values), decoded from
        its JSON text."""
        value: dict[str, Any] = json.loads(self.rest.read(), object_hook=untag)
        return value

    @property
    def shot(self) -> str:
        """The shot the render belongs to."""
        return str(self.decoded()["shot"])

    @property
    def take(self) -> int:
        """The take number."""
        return int(self.decoded()["take"])

    @property
    def job_id(self) -> str | None:
        """The job on record, if any."""
        value = self.decoded().get("job_id")
        return str(value) if value is not None else None

    @property
    def error(self) -> str | None:
        """The last error on record, if any."""
        value = self.decoded().get("error")
        return str(value) if value is not None else None

    @property
    def request(self) -> dict[str, Any]:
        """The request on record."""
        value: dict[str, Any] = self.decoded()["request"]
        return value

    @property
    def assets(self) -> dict[str, str]:
        """The assets' content hashes on record."""
        value: dict[str, str] = self.decoded()["assets"]
        return value

    @property
    def cost_usd(self) -> Decimal:
        """The estimated cost on record."""
        return Decimal(self.decoded()["cost_usd"])

    @property
    def tags(self) -> list[str]:
        """The shot's tags on record."""
        value: list[str] = self.decoded()["tags"]
        return value

    @property
    def marks(self) -> list[str]:
        """What names each submission on record (`lockfile.submission_marks`)."""
        return list(submission_marks(Entry.model_validate(self.decoded())))

    def as_past(self) -> DonePast | None:
        """This entry as a finished render, if it is one."""
        if self.state != "done" or not self.output_sha256 or self.output_size is None:
            return None
        return DonePast(self, self.output_sha256, self.output_size)

    @property
    def history(self) -> list[PastFacts]:
        """Earlier finished renders, oldest first."""
        if not self.has_history:
            return []
        return [_past(past) for past in self.decoded()["history"]]


class DonePast(NamedTuple):
    """A done entry as a finished render: its hash and size at once, the rest of its
    record (result URL, whether the shared store holds it) decoded only when asked, so a
    search of every finished render by fingerprint decodes none of them."""

    entry: EntryFacts
    sha256: str
    size: int

    @property
    def fingerprint(self) -> str:
        """The render's fingerprint."""
        return self.entry.fingerprint

    @property
    def result_url(self) -> str | None:
        """Its result URL on record (older lockfiles), if any."""
        value = self.entry.decoded().get("result_url")
        return str(value) if value is not None else None

    @property
    def result_expires_at(self) -> datetime | None:
        """When that URL expires."""
        expires: datetime | None = self.entry.decoded().get("result_expires_at")
        return expires

    @property
    def in_remote(self) -> bool | None:
        """Whether the team's shared store holds it, as last recorded."""
        value: bool | None = self.entry.decoded().get("in_remote")
        return value


class LockFacts:
    """`LockRecords` from the facts cache; the full `Lockfile` read only when asked for."""

    def __init__(
        self, path: Path, digest: str, shots: dict[str, EntryFacts], cache: Path | None
    ) -> None:
        self.path = path
        self.digest = digest
        self.shots: dict[str, EntryFacts] = shots
        self.cache = cache

    def finished(self) -> Iterator[tuple[EntryFacts | None, PastRecord]]:
        """Every finished render on record: each done entry (with itself), then its history."""
        for entry in self.shots.values():
            past = entry.as_past()
            if past is not None:
                yield entry, past
            for earlier in entry.history:
                yield None, earlier

    def submitted(self) -> frozenset[str]:
        """What names every submission on record (`lockfile.submission_marks`)."""
        return frozenset(mark for entry in self.shots.values() for mark in entry.marks)

    def full(self) -> Lockfile:
        """The whole lockfile; refused if it changed since its facts were read."""
        raw = lockfile_bytes(self.path)
        if raw is None or lockfile_digest(raw) != self.digest:
            raise UserError(
                "the lockfile changed while it was being planned; plan again", file=self.path
            )
        lock, save = lockfile_from(raw, self.path, cache=self.cache)
        save()
        return lock


def read_facts(
    lock_file: Path, facts_file: Path | None, lock_cache: Path | None, *, tool: str
) -> tuple[Lockfile | LockFacts, Callable[[], None]]:
    """The lockfile's records for planning (the whole `Lockfile` when it had to be read)
    and what writes the caches (call it last). `tool`: what kling-batch is made of
    (`plan_cache.tool_identity`): facts cached by another version are not believed."""
    cached = read_cache(facts_file, _VERSION) if facts_file is not None else None
    if cached is not None:
        # Only the lockfile's digest is read (streamed: a plan at 100,000 renders never
        # holds its 70 MB), and the facts believed are those cached for that digest.
        digest = lockfile_file_digest(lock_file)
        if digest is None:
            return Lockfile(), _nothing
        if cached[0].get("digest") == digest and cached[0].get("tool") == tool:
            shots = _facts_from(cached[0].get("chunks"), cached[1])
            if shots is not None:
                return LockFacts(lock_file, digest, shots, lock_cache), _nothing
        cached = None
    raw = lockfile_bytes(lock_file)
    if raw is None:
        return Lockfile(), _nothing
    keyed = {"digest": lockfile_digest(raw), "tool": tool}  # the facts made come from `raw`
    lock, text, save_lock_cache = parsed_lockfile(raw, lock_file, cache=lock_cache)
    if facts_file is None:
        return lock, save_lock_cache
    # Made now, as the parse cache's text is: the caller may change `lock` before saving.
    rows, blob = _rows(text if text is not None else CacheText(lock))

    def save() -> None:
        save_lock_cache()
        write_cache(facts_file, _VERSION, {**keyed, "chunks": _chunked(rows, blob)}, blob)

    return lock, save


def _facts_from(chunks: Any, blob: Blob) -> dict[str, EntryFacts] | None:
    """The facts of every entry, read from the blob a chunk of rows at a time, each row
    made facts as it is read (`_chunked`); None for a cache of another shape."""
    if not isinstance(chunks, list):
        return None
    facts: dict[str, EntryFacts] = {}
    states: dict[str, str] = {}  # one string per state, not one per entry
    try:
        for offset, length in chunks:
            rows = json.loads(Cold(blob, offset, length).read())
            for key, row in rows.items():
                state = states.setdefault(row[1], row[1])
                rest = Cold(blob, row[6], row[7])
                facts[key] = EntryFacts(row[0], state, row[2], row[3], row[4], bool(row[5]), rest)
    except (TypeError, ValueError, LookupError, AttributeError, RecursionError):
        return None  # a cache, not a record
    return facts


def _chunked(rows: dict[str, list[Any]], blob: BlobWriter) -> list[list[int]]:
    """The rows written into the blob in chunks of `_CHUNK_ROWS`: where each one lies."""
    keys = list(rows)
    return [
        blob.add(json.dumps({key: rows[key] for key in keys[at : at + _CHUNK_ROWS]}).encode())
        for at in range(0, len(keys), _CHUNK_ROWS)
    ]


def _rows(text: CacheText) -> tuple[dict[str, list[Any]], BlobWriter]:
    """Each entry as the facts cache keeps it (an `EntryFacts`): what every plan reads,
    and where its JSON text (the parse cache's) lies in the blob."""
    rows: dict[str, list[Any]] = {}
    blob = BlobWriter()
    for key, entry in text.entries.items():
        rows[key] = [
            entry["fingerprint"],
            entry["state"],
            entry["output"],
            entry.get("output_sha256"),
            entry.get("output_size"),
            bool(entry.get("history")),
            *blob.add(text.texts[key].encode()),
        ]
    return rows, blob


def _past(past: dict[str, Any]) -> PastFacts:
    """A finished render of an entry's history, from its record."""
    return PastFacts(
        past["fingerprint"],
        past["output_sha256"],
        past["output_size"],
        past.get("result_url"),
        past.get("result_expires_at"),
        past.get("in_remote"),
    )


def _nothing() -> None:
    """No cache to write."""
