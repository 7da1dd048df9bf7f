"""Signed result URLs, kept out of the committed lockfile.

A result URL lets whoever holds it download the render for seven days, and the lockfile is
meant to be committed. So the lockfile holds a URL only while its render is not yet
downloaded (state `completed`): then it is the one way to a paid video once the job's
state has expired (an hour after it ends). Once the video is in place its URL moves here,
to `<lock name>.urls.jsonl` in the state folder (git-ignored, readable by the user only),
keyed by the video's content hash, where it serves free restores on this machine until it
expires. A URL the API refuses before its expiry is forgotten, so no plan promises a
restore from it again.

The file is a journal: each URL learnt or forgotten is appended at once (one JSON object
per line, the last word on a hash wins), so a run killed at any point keeps every URL it
learnt; `save` rewrites it compactly at the end of a run.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from kling_batch import safefiles
from kling_batch.atomic import atomic_write
from kling_batch.errors import UserError
from kling_batch.lockfile import LockWriter
from kling_batch.payloads import parse_time

log = logging.getLogger(__name__)

_MAX_BYTES = 64 * 1024 * 1024
_MODE = 0o600


@dataclass(frozen=True, slots=True)
class KnownUrl:
    """Where a finished render can be downloaded again, until when, and from which job."""

    url: str
    expires_at: datetime
    job_id: str | None = None
    api: str | None = None  # the API that rendered it (`endpoint.api_identity`)


class ResultUrls:
    """The URLs of one lockfile's renders, by content hash."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._urls = _load(path)
        self._appended = False

    def get(self, sha256: str) -> KnownUrl | None:
        """The URL of the render with this content, if one is known."""
        return self._urls.get(sha256)

    def put(self, sha256: str, url: KnownUrl) -> None:
        """Remember where a finished render can be downloaded again (appended at once)."""
        if self._urls.get(sha256) != url:
            self._urls[sha256] = url
            self._append({"sha256": sha256, **_fields(url)})

    def forget(self, sha256: str) -> None:
        """Drop a URL the API refused: it restores nothing any more (appended at once)."""
        if self._urls.pop(sha256, None) is not None:
            self._append({"sha256": sha256, "forget": True})

    def save(self) -> None:
        """Rewrite the journal compactly (best effort: the URLs only save money later)."""
        if not self._appended:
            return
        lines = [
            json.dumps({"sha256": sha, **_fields(url)}) + "\n"
            for sha, url in sorted(self._urls.items())
        ]
        try:
            atomic_write(self.path, "".join(lines), mode=_MODE)
            self._appended = False
        except OSError as exc:
            log.info("result URLs not written (%s)", exc)

    def _append(self, record: dict[str, Any]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, _MODE)
            with os.fdopen(fd, "a", encoding="utf-8") as journal:
                journal.write(json.dumps(record) + "\n")
            self._appended = True
        except OSError as exc:
            log.info("result URL not written (%s)", exc)

    def absorb(self, writer: LockWriter) -> None:
        """Move the URLs of downloaded renders out of the lockfile (left there by an older
        version, or a record that predates this file) into this store."""
        for shot_id, entry in list(writer.lock.shots.items()):
            past = [p for p in entry.history if p.result_url and p.result_expires_at]
            for earlier in past:
                assert earlier.result_url is not None and earlier.result_expires_at is not None
                known = KnownUrl(
                    earlier.result_url, earlier.result_expires_at, None, writer.lock.api
                )
                self.put(earlier.output_sha256, known)
            done = entry.state == "done" and entry.output_sha256 and entry.result_url
            if done and entry.result_expires_at is not None:
                assert entry.output_sha256 is not None and entry.result_url is not None
                known = KnownUrl(
                    entry.result_url, entry.result_expires_at, entry.job_id, writer.lock.api
                )
                self.put(entry.output_sha256, known)
            if past or done:
                history = [p.model_copy(update=_NO_URL) for p in entry.history]
                fields = _NO_URL if done else {}
                writer.update(shot_id, history=history, **fields)


_NO_URL: dict[str, Any] = {"result_url": None, "result_expires_at": None}


def _fields(url: KnownUrl) -> dict[str, Any]:
    return {
        "url": url.url,
        "expires_at": url.expires_at.isoformat(),
        "job_id": url.job_id,
        "api": url.api,
    }


def _load(path: Path) -> dict[str, KnownUrl]:
    """The journal read to its end (later lines win); damaged lines are skipped."""
    try:
        text = safefiles.read_text(path, limit=_MAX_BYTES, what="a cache")
    except (OSError, UnicodeDecodeError, UserError):
        return {}  # a cache, not a record: a lost one only costs a paid re-render later
    urls: dict[str, KnownUrl] = {}
    for line in text.splitlines():
        try:
            item: Any = json.loads(line)
        except (ValueError, RecursionError):
            continue  # a line cut by a kill (or nested too deep to read)
        sha = item.get("sha256") if isinstance(item, dict) else None
        if not isinstance(sha, str):
            continue
        if item.get("forget"):
            urls.pop(sha, None)
        elif (known := _known(item)) is not None:
            urls[sha] = known
    return urls


def _known(item: dict[str, Any]) -> KnownUrl | None:
    expires = parse_time(item.get("expires_at"))
    if expires is None or not isinstance(item.get("url"), str):
        return None
    job, api = item.get("job_id"), item.get("api")
    return KnownUrl(
        item["url"],
        expires,
        job if isinstance(job, str) else None,
        api if isinstance(api, str) else None,
    )
