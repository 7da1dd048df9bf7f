"""Renders in and out of the shared store: a finished render's bytes and its record pushed,
a recorded render fetched into place.

A render goes up as two objects, bytes first: `objects/sha256/<hex>` (streamed from the
read-only render cache, or the output, hash-checked on the way) and then its record,
`renders/<fingerprint hex>.json` (`StoredRender`), created only if absent (If-None-Match),
so the first record of a fingerprint stays and a record always names bytes that are
there. Bytes already under their key (of the recorded size) are not sent again: checking
their hash would mean reading them back, and every fetch checks it anyway.

A render comes down the way a download does: streamed to a temp file beside the output,
verified as every download is (`outputs.verify_and_place`: a whole MP4, the recorded
hash), kept in the render cache, renamed into place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

import anyio.to_thread
from pydantic import BaseModel, ConfigDict, ValidationError

from kling_batch.atomic import discard
from kling_batch.canonical import sha256_file
from kling_batch.errors import BadOutput
from kling_batch.lockfile import Entry, PastRender
from kling_batch.outputs import temp_beside, verify_and_place
from kling_batch.remote import RemoteStore, object_key, record_key
from kling_batch.state import StateDir


class StoredRender(BaseModel):
    """The record of one render in the store; fields other versions add are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    kling_batch_render: int = 1
    fingerprint: str
    output_sha256: str
    output_size: int
    request: dict[str, Any] | None = None
    job_id: str | None = None
    estimated_usd: Decimal | None = None
    billed_usd: Decimal | None = None
    rendered_at: datetime | None = None
    stored_at: datetime
    run: str
    host: str = ""
    api: str | None = None

    def dumps(self) -> bytes:
        """The stored form (JSON)."""
        return self.model_dump_json(exclude_none=True).encode()


@dataclass(frozen=True, slots=True)
class Pushed:
    """What pushing one render did: whether bytes went up and whether its record was new."""

    uploaded: bool
    recorded: bool


def record_of(
    entry: Entry | None, past: PastRender, *, run: str, host: str, api: str | None, at: datetime
) -> StoredRender:
    """The record of a finished render: its entry when it is the current one, else what the
    lockfile's history keeps of it (no request, job or cost)."""
    current = entry is not None and entry.fingerprint == past.fingerprint
    return StoredRender(
        fingerprint=past.fingerprint,
        output_sha256=past.sha256,
        output_size=past.size,
        request=dict(entry.request) if current and entry else None,
        job_id=entry.job_id if current and entry else None,
        estimated_usd=entry.cost_usd if current and entry else None,
        billed_usd=entry.billed_usd if current and entry else None,
        rendered_at=(entry.completed_at or entry.updated_at) if current and entry else None,
        stored_at=at,
        run=run,
        host=host,
        api=api,
    )


async def read_record(store: RemoteStore, fingerprint: str) -> StoredRender | None:
    """The store's record of a fingerprint; None when there is none or it is not usable."""
    stored = await store.read(record_key(fingerprint))
    if stored is None:
        return None
    try:
        record = StoredRender.model_validate_json(stored.data)
    except ValidationError:
        return None
    return record if record.fingerprint == fingerprint and record.output_size >= 0 else None


async def push_render(store: RemoteStore, record: StoredRender, sources: Sequence[Path]) -> Pushed:
    """Put a render's bytes (from the first of `sources` that holds them) and its record in
    the store, each only if missing. `BadOutput` when no source holds the recorded bytes."""
    key = object_key(record.output_sha256)
    uploaded = False
    if await store.size_of(key) != record.output_size:
        source = await anyio.to_thread.run_sync(_holding, sources, record.output_sha256)
        if source is None:
            names = ", ".join(path.name for path in sources) or "no file"
            raise BadOutput(f"no local copy holds the recorded render ({names})")
        await store.upload(key, source, record.output_sha256, record.output_size)
        uploaded = True
    recorded = await store.create(record_key(record.fingerprint), record.dumps()) is not None
    return Pushed(uploaded, recorded)


def _holding(sources: Sequence[Path], sha256: str) -> Path | None:
    """The first file among `sources` whose bytes hash to `sha256`."""
    for path in sources:
        try:
            if path.is_file() and sha256_file(path) == sha256:
                return path
        except OSError:
            continue
    return None


async def fetch_render(
    store: RemoteStore, state: StateDir, output: PurePosixPath, sha256: str
) -> str | None:
    """Download the render with content `sha256` to `output` (under `state.root`), verified
    and kept in the render cache; None when done, else why not. `RemoteError` when the
    store fails (try again later), as opposed to a render it does not hold."""
    target = state.root / output
    await anyio.to_thread.run_sync(lambda: target.parent.mkdir(parents=True, exist_ok=True))
    temp = await anyio.to_thread.run_sync(temp_beside, target)
    try:
        download = await store.download(object_key(sha256), temp)
        if download is None:
            return f"the remote store {store.url} does not hold it"
        verify = partial(
            verify_and_place, temp, target, download, state.cached_render, expected=sha256
        )
        await anyio.to_thread.run_sync(verify)
    except BadOutput as exc:
        return f"the remote store's copy is not the recorded render: {exc}"
    finally:
        await anyio.to_thread.run_sync(discard, temp)
    return None
