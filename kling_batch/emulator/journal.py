"""Journal: one entry per request the emulator saw, readable in-process and over HTTP.

An entry is recorded when the answer's status line is about to be sent (or when the
connection is dropped instead), so listeners run before the client can see the answer.
Requests to ``/_emulator/*`` (the journal and ledger endpoints themselves) are not recorded.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kling_batch.emulator.clock import iso

SUBMIT_PATH = "/v1/videos/generations"


@dataclass(frozen=True)
class JournalEntry:
    """What one request was and how it was answered."""

    seq: int
    method: str
    path: str
    query: str
    body_digest: str
    body_size: int
    mono: float
    wall: float
    status: int | None
    headers: Mapping[str, str] = field(default_factory=dict)
    counted: bool = False
    fault: str | None = None
    dropped: bool = False
    job_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The entry as the journal endpoint serves it."""
        return {
            "seq": self.seq,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "body_digest": self.body_digest,
            "body_size": self.body_size,
            "mono": self.mono,
            "wall": self.wall,
            "time": iso(self.wall),
            "status": self.status,
            "headers": dict(self.headers),
            "counted": self.counted,
            "fault": self.fault,
            "dropped": self.dropped,
            "job_id": self.job_id,
        }


Listener = Callable[[JournalEntry], None]


class Journal:
    """Append-only, thread-safe record of requests; the oldest fall off past `max_entries`."""

    def __init__(self, max_entries: int | None = None) -> None:
        self._entries: deque[JournalEntry] = deque(maxlen=max_entries)
        self._seq = 0
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, **fields: Any) -> JournalEntry:
        """Append an entry (every `JournalEntry` field but `seq`) and tell the listeners."""
        with self._lock:
            self._seq += 1
            entry = JournalEntry(seq=self._seq, **fields)
            self._entries.append(entry)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(entry)
        return entry

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(entry)` on the server thread for every new entry; returns an unsubscribe.

        Listeners must be quick and must not block: the answer waits for them.
        """
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                self._listeners.remove(listener)

        return unsubscribe

    def entries(
        self, *, method: str | None = None, path: str | None = None, since: int = 0
    ) -> list[JournalEntry]:
        """Entries in arrival order, optionally filtered; `since` skips seq numbers <= it."""
        with self._lock:
            snapshot = list(self._entries)
        return [
            e
            for e in snapshot
            if e.seq > since
            and (method is None or e.method == method.upper())
            and (path is None or e.path == path)
        ]

    def submissions(self) -> list[JournalEntry]:
        """Every `POST /v1/videos/generations` received, whatever its outcome."""
        return self.entries(method="POST", path=SUBMIT_PATH)

    def count_by_header(self, name: str) -> dict[str, int]:
        """Submissions received per value of request header `name` (e.g. a fingerprint)."""
        key = name.lower()
        counts = Counter(e.headers[key] for e in self.submissions() if key in e.headers)
        return dict(counts)

    def jobs_by_header(self, name: str) -> dict[str, list[str]]:
        """Jobs created per value of request header `name`, including answers that were dropped."""
        key = name.lower()
        jobs: dict[str, list[str]] = {}
        for entry in self.submissions():
            if entry.job_id is not None and key in entry.headers:
                jobs.setdefault(entry.headers[key], []).append(entry.job_id)
        return jobs

    def clear(self) -> None:
        """Forget every entry (sequence numbers keep rising)."""
        with self._lock:
            self._entries.clear()
