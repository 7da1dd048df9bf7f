"""Input files uploaded once per content, shared by every render of a run and recorded.

A file's content hash is the key: two renders using the same image (or two names for the
same bytes) upload it once, the second waiting for the first; a lockfile that already
records an upload of that content to the same API and account (`upload_scope`) reuses
its `bunny://` path. Upload paths expire, and belong to one account: a submission the
API refuses because it does not know a path (`stale_paths`) drops the cached path and
uploads the file again (`Uploads.rewire`); a refused request is not billed.

The content uploaded must be the content planned: the plan priced and fingerprinted it, and
the lockfile will say the render was made from it. A run uploads a file only when its first
render starts, maybe an hour after the plan hashed it, so the client hashes the bytes as it
sends them; bytes that are not the planned content (the file was edited meanwhile) are
neither recorded as that content's upload nor sent for the render, which fails saying to
plan again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import anyio

from kling_batch import kling_o3
from kling_batch.assets import Asset
from kling_batch.clock import Clock
from kling_batch.errors import ApiError, RunFatal, ShotRejected, UploadFailed
from kling_batch.lockfile import LockWriter, UploadedAsset
from kling_batch.payloads import Upload

_BUNNY = re.compile(r"bunny://[^\s'\",;)]+")
# What an API says of a path it does not know: unknown, expired, missing, not found.
_UNKNOWN = re.compile(r"unknown|expired|not\s+found|no\s+such|missing|invalid", re.IGNORECASE)


class Uploader(Protocol):
    """What this module needs of the API client."""

    @property
    def upload_scope(self) -> str:
        """Which API and account upload paths belong to (never the key itself)."""

    async def upload(self, path: Path, *, content_type: str | None = None) -> Upload: ...


class Uploads:
    """Upload paths of local input files, each content uploaded at most once."""

    def __init__(self, client: Uploader, writer: LockWriter, clock: Clock) -> None:
        self.client = client
        self.writer = writer
        self.clock = clock
        self.scope = client.upload_scope
        self._pending: dict[str, anyio.Event] = {}
        self._errors: dict[str, str] = {}
        # Paths of ours found stale and uploaded anew: renders refused for one of them
        # after another render replaced it take the new path too.
        self._renewed: set[str] = set()

    async def wire_body(
        self, body: Mapping[str, Any], assets: Mapping[str, Asset]
    ) -> dict[str, Any]:
        """`body` with every local asset replaced by its upload path (uploading if needed).

        Raises `UploadFailed` when a file cannot be uploaded; `RunFatal` passes through.
        """
        paths = {}
        for key, asset in assets.items():
            if asset.kind == "local":
                assert asset.path is not None and asset.sha256 is not None
                paths[key] = await self.path_of(asset.sha256, asset.path, asset.ref)
        return kling_o3.with_media(body, paths)

    async def rewire(
        self, body: Mapping[str, Any], assets: Mapping[str, Asset], stale: set[str]
    ) -> dict[str, Any] | None:
        """The body again after forgetting the `stale` upload paths (uploaded anew); None
        when none of them is an upload of ours (a path the manifest gave, say). Renders
        refused at once for one path: the first uploads anew, the others take its path."""
        for asset in assets.values():
            if asset.sha256 is None:
                continue
            known = self.writer.upload(self.scope, asset.sha256)
            if known is not None and known.path in stale:
                self.writer.drop_upload(self.scope, asset.sha256)
                self._pending.pop(asset.sha256, None)
                self._renewed.add(known.path)
        return await self.wire_body(body, assets) if stale & self._renewed else None

    async def path_of(self, sha256: str, path: Path, ref: str) -> str:
        """The `bunny://` path of a file's content, uploading it once per run and lockfile."""
        known = self.writer.upload(self.scope, sha256)
        if known is not None:
            return known.path
        pending = self._pending.get(sha256)
        if pending is None:
            self._pending[sha256] = pending = anyio.Event()
            try:
                await self._upload(sha256, path, ref)
            finally:
                pending.set()
        else:
            await pending.wait()
        known = self.writer.upload(self.scope, sha256)
        if known is None:
            raise UploadFailed(self._errors.get(sha256, f"upload of {ref} failed"))
        return known.path

    async def _upload(self, sha256: str, path: Path, ref: str) -> None:
        try:
            upload = await self.client.upload(path)
        except RunFatal:
            raise
        except (ApiError, OSError) as exc:
            self._errors[sha256] = f"upload of {ref} failed: {exc}"
            return
        if upload.sha256 != sha256:  # what was sent is not what was planned and priced
            self._errors[sha256] = (
                f"{ref} changed since it was planned (the bytes uploaded are not those "
                "planned); plan again to render what it holds now"
            )
            return
        recorded = UploadedAsset(path=upload.path, size=upload.size, uploaded_at=self.clock.now())
        self.writer.add_upload(self.scope, sha256, recorded)
        await self.writer.commit()


def stale_paths(error: ShotRejected, body: Mapping[str, Any]) -> set[str]:
    """The upload paths of `body` a 400 says the API does not know (expired, another
    account's, never made): empty when the refusal is about something else."""
    if error.status != 400 or not _UNKNOWN.search(error.message):
        return set()
    sent = {p for value in body.values() if isinstance(value, str) for p in _BUNNY.findall(value)}
    named = set(_BUNNY.findall(error.message))
    if named:  # the message names the paths: only those we sent count
        return named & sent
    param = (error.param or "").partition(".")[0].partition("[")[0]
    value = body.get(param)
    return set(_BUNNY.findall(value)) if isinstance(value, str) else set()
