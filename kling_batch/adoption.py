"""Adopting jobs from the API's job list: a submission that went unanswered may have
created a job, and if the list shows one with exactly that request, it is that job.

A job is adopted once: job ids already on record, or adopted or created in this run, are
never matched again, so two uncertain renders of one request cannot share one job.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Protocol

import anyio

from kling_batch import kling_o3
from kling_batch.canonical import canonical_json
from kling_batch.errors import ApiError, RunFatal
from kling_batch.lockfile import Entry, LockWriter
from kling_batch.payloads import JobState

# How far a job's creation time may precede the recorded submission (clock skew).
CLOCK_SKEW = timedelta(minutes=5)


class JobLister(Protocol):
    """The one API call this module needs."""

    async def list_jobs(
        self, status: str | None = None, limit: int = 100
    ) -> list[JobState] | None: ...


class JobFinder:
    """Finds, in the API's job list, the job an unanswered submission created."""

    def __init__(self, client: JobLister, writer: LockWriter) -> None:
        self.client = client
        self.writer = writer
        self._claimed = writer.job_ids()
        self._listed: list[JobState] | None = None
        self._lock = anyio.Lock()

    def claim(self, job_id: str) -> None:
        """Never adopt this job: a render of this run already owns it."""
        self._claimed.add(job_id)

    async def find(self, entry: Entry) -> JobState | None:
        """A listed job with the entry's exact request, created since it was submitted."""
        async with self._lock:
            wanted = canonical_json(self.sent_body(entry))
            since = entry.updated_at - CLOCK_SKEW if entry.updated_at else None
            for job in await self._jobs():
                if job.job_id in self._claimed or job.status == "failed":
                    continue
                if job.request is None or comparable(job.request) != wanted:
                    continue
                if since is not None and job.created_at is not None and job.created_at < since:
                    continue
                self._claimed.add(job.job_id)
                return job
        return None

    def sent_body(self, entry: Entry) -> dict[str, Any]:
        """What was POSTed for an entry: its request with local assets as upload paths."""
        paths = {}
        for key, sha256 in entry.assets.items():
            upload = self.writer.upload(sha256)
            if upload is not None:
                paths[key] = upload.path
        return kling_o3.with_media(entry.request, paths)

    async def _jobs(self) -> list[JobState]:
        """The job list, read once per run (an unreadable list reads as empty)."""
        if self._listed is None:
            try:
                self._listed = await self.client.list_jobs(limit=100) or []
            except RunFatal:
                raise
            except ApiError:
                self._listed = []
        return self._listed


def comparable(request: Mapping[str, Any]) -> str:
    """Canonical text of a listed job's request; list fields compared comma-joined."""
    normal = {
        key: ",".join(value) if isinstance(value, list) else value for key, value in request.items()
    }
    return canonical_json(normal)
