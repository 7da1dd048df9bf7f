"""Results into place: downloaded to a temp file beside the output, verified, kept in the
render cache and renamed over the output; copies of earlier renders the same way; and a
fresh result URL asked of the job when a signed one has expired."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import anyio.to_thread

from kling_batch.atomic import discard
from kling_batch.canonical import sha256_file
from kling_batch.errors import (
    ApiError,
    BadOutput,
    JobNotFound,
    ResultExpired,
    RunFatal,
    TryLater,
)
from kling_batch.lockfile import Entry
from kling_batch.outputs import (
    detach_cache,
    keep_in_cache,
    place_copy,
    temp_beside,
    verify_and_place,
    verify_into_cache,
)
from kling_batch.payloads import Download, JobState
from kling_batch.plan import RestoreSource
from kling_batch.state import StateDir
from kling_batch.urls import KnownUrl, ResultUrls

log = logging.getLogger(__name__)

RESULT_RETENTION = timedelta(days=7)  # signed result URLs (API reference §3.1)


class ResultClient(Protocol):
    """The API calls this module needs."""

    async def get_job(self, job_id: str, poll_url: str | None = None) -> JobState: ...

    async def download(self, url: str, dest: Path) -> Download: ...


@dataclass(frozen=True)
class Collected:
    """How collecting a completed job's result ended: the download, or why not."""

    download: Download | None = None
    fresh: JobState | None = None  # the job asked again for a fresh URL, to record
    failed: str | None = None  # the job is gone with its video: the plan prices a re-render
    pending: str | None = None  # not now: the job is paid for, the next run tries again

    @property
    def fresh_url(self) -> dict[str, Any]:
        """The entry's fields for the fresh URL, and when it expires (none if not asked)."""
        if self.fresh is None or not self.fresh.video_url:
            return {}
        return {"result_url": self.fresh.video_url, "result_expires_at": url_expiry(self.fresh)}


class Downloads:
    """Puts results and restores at their output paths under `state.root`."""

    def __init__(
        self, client: ResultClient, state: StateDir, lock_file: Path, api: str | None = None
    ) -> None:
        self.client = client
        self.state = state
        self.lock_file = lock_file
        self.api = api  # which API this run renders with: recorded beside what it caches
        self.urls = ResultUrls(state.result_urls(lock_file))

    async def fetch(
        self,
        url: str,
        output: PurePosixPath,
        *,
        expected: str | None = None,
        seconds: Decimal | None = None,
    ) -> Download:
        """Download to a temp file beside the target, verify it, cache it, move it in place.

        With `expected`, bytes that hash differently are refused before they replace or
        enter anything; with `seconds` (the planned length), a body the server sent without
        a length must play that long (`outputs.verify_and_place`).
        """
        target = self.state.root / output
        temp = await anyio.to_thread.run_sync(temp_beside, target)
        try:
            download = await self.client.download(url, temp)
            verify = partial(
                verify_and_place,
                temp,
                target,
                download,
                self.state.cached_render,
                expected=expected,
                seconds=seconds,
            )
            await anyio.to_thread.run_sync(verify)
        finally:
            await anyio.to_thread.run_sync(discard, temp)
        return download

    async def collect(
        self,
        entry: Entry,
        output: PurePosixPath | None,
        *,
        seconds: Decimal | None,
        attempts: int,
        retained: bool,
    ) -> Collected:
        """Download a completed job's result to `output` (None: into the render cache
        only), asking the job for a fresh URL when the signed one is refused.

        `retained`: the job is recent enough that the API still keeps it, so a job that
        cannot be found then is a hiccup (pending), not a job gone with its video (failed).
        """
        assert entry.result_url is not None
        url, fresh, last_error = entry.result_url, None, ""
        for _ in range(attempts):
            try:
                download = await self._fetch_once(url, output, seconds)
            except ResultExpired as exc:
                try:
                    fresh = await self.fresh_job(entry.job_id, entry.poll_url)
                except TryLater as later:
                    why = f"result URL refused and the job could not be asked ({later})"
                    return Collected(pending=why)
                if fresh is None and retained:
                    return Collected(pending=_unanswered(entry, exc))
                if fresh is None:
                    return Collected(failed=_gone(entry, exc))
                url = fresh.video_url or url
                continue
            except RunFatal:
                raise
            except (ApiError, BadOutput, OSError) as exc:
                last_error = str(exc)
                continue
            self.remember(entry.fingerprint, download.sha256, download.size)
            return Collected(download=download, fresh=fresh)
        why = f"download failed ({last_error}); rerun to resume, the job is paid for"
        return Collected(fresh=fresh, pending=why)

    async def _fetch_once(
        self, url: str, output: PurePosixPath | None, seconds: Decimal | None
    ) -> Download:
        if output is None:
            return await self.fetch_to_cache(url, seconds=seconds)
        return await self.fetch(url, output, seconds=seconds)

    async def fetch_to_cache(self, url: str, *, seconds: Decimal | None = None) -> Download:
        """Download a render that has no output path any more into the render cache only."""
        self.state.render_cache.mkdir(parents=True, exist_ok=True)
        temp = await anyio.to_thread.run_sync(temp_beside, self.state.render_cache / "download")
        try:
            download = await self.client.download(url, temp)
            cache = self.state.cached_render
            verify = partial(verify_into_cache, temp, download, cache, seconds=seconds)
            await anyio.to_thread.run_sync(verify)
        finally:
            await anyio.to_thread.run_sync(discard, temp)
        return download

    def remember(self, fingerprint: str, sha256: str, size: int) -> None:
        """Index the cached render of a request (best effort: the index only saves money)."""
        try:
            self.state.remember_render(self.lock_file, fingerprint, sha256, size, self.api)
        except OSError as exc:
            log.debug("could not index the cached render %s: %s", sha256, exc)

    async def place(self, output: PurePosixPath, source: RestoreSource) -> None:
        """Copy or download an earlier render to `output`, checked against its hash."""
        if source.kind == "url":
            assert source.url is not None
            await self.fetch(source.url, output, expected=source.sha256)
            return
        assert source.path is not None
        target = self.state.root / output
        copy = partial(place_copy, source.path, target, source.sha256, self.state.cached_render)
        await anyio.to_thread.run_sync(copy)

    async def detach_cache(self) -> None:
        """Give every render cache file its own read-only inode (`outputs.detach_cache`).

        Best effort: the cache only saves money later, so a failure never stops a run.
        """
        try:
            await anyio.to_thread.run_sync(detach_cache, self.state.render_cache)
        except OSError as exc:
            log.debug("could not detach the render cache: %s", exc)

    async def stage(self, source: RestoreSource) -> RestoreSource:
        """A restore source that no other restore of the run can overwrite: a file source
        (another render's output, which this run may be about to replace) is first copied
        into the render cache; other sources are returned as they are."""
        if source.kind != "file" or source.path is None:
            return source
        cached = self.state.cached_render(source.sha256)
        staged = await anyio.to_thread.run_sync(_stage, source.path, cached, source.sha256)
        return replace(source, kind="cache", path=cached) if staged else source

    async def restore(self, output: PurePosixPath, source: RestoreSource) -> str | None:
        """Put an earlier render in place; None when done, else why not.

        A result URL the API refuses (or that serves other bytes) is not tried again: its
        job is asked for a fresh one while it is retained, else the URL is forgotten so the
        next plan prices a re-render honestly instead of promising this restore again.
        """
        try:
            await self.place(output, source)
            return None
        except (ResultExpired, BadOutput) as exc:
            if source.kind != "url":
                return f"restore failed: {exc}"
            problem: Exception = exc
        except (ApiError, OSError) as exc:
            return f"restore failed: {exc}"
        try:
            job = await self.fresh_job(source.job_id)
            if job is not None and job.video_url:
                await self.place(output, replace(source, url=job.video_url))
                known = KnownUrl(job.video_url, url_expiry(job), source.job_id, self.api)
                self.urls.put(source.sha256, known)
                return None
        except (TryLater, ApiError, BadOutput, OSError) as exc:
            problem = exc
        self.urls.forget(source.sha256)
        return (
            f"restore from its result URL failed ({problem}); the URL is forgotten and the "
            "next plan prices a re-render"
        )

    async def fresh_job(self, job_id: str | None, poll_url: str | None = None) -> JobState | None:
        """The job, finished with a result URL; None if it is gone; `TryLater` if unsure."""
        if job_id is None:
            return None
        try:
            job = await self.client.get_job(job_id, poll_url)
        except JobNotFound:
            return None
        except RunFatal:
            raise
        except ApiError as exc:
            raise TryLater(str(exc)) from None
        if job.status == "succeeded" and job.video_url:
            return job
        if job.status == "succeeded":
            raise TryLater(f"job {job.job_id} answered without a video URL")
        return None


def _unanswered(entry: Entry, exc: ApiError) -> str:
    return (
        f"result URL refused ({exc}) and job {entry.job_id} did not give a fresh one, "
        "though the API still keeps it; rerun to resume, the job is paid for"
    )


def _gone(entry: Entry, exc: ApiError) -> str:
    return (
        f"result URL expired and job {entry.job_id} is gone ({exc}); "
        "the next plan prices a re-render"
    )


def url_expiry(job: JobState) -> datetime:
    """When the URL a job just gave expires: as it says, else the documented week."""
    return job.expires_at or datetime.now(UTC) + RESULT_RETENTION


def _stage(path: Path, cached: Path, sha256: str) -> bool:
    """Keep `path` in the render cache as `cached` if it holds `sha256`; True when it is."""
    try:
        if not cached.exists() and sha256_file(path) == sha256:
            keep_in_cache(path, cached, sha256)
        return cached.exists() and sha256_file(cached) == sha256
    except OSError:
        return False
