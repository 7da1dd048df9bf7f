"""Input files uploaded once per content, shared by every render of a run and recorded.

A file's content hash is the key: two renders using the same image (or two names for the
same bytes) upload it once, the second waiting for the first; a lockfile that already
records an upload of that content reuses its `bunny://` path.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import anyio

from kling_batch import kling_o3
from kling_batch.assets import Asset
from kling_batch.clock import Clock
from kling_batch.errors import ApiError, RunFatal, UploadFailed
from kling_batch.lockfile import LockWriter, UploadedAsset
from kling_batch.payloads import Upload


class Uploader(Protocol):
    """The one API call this module needs."""

    async def upload(self, path: Path, *, content_type: str | None = None) -> Upload: ...


class Uploads:
    """Upload paths of local input files, each content uploaded at most once."""

    def __init__(self, client: Uploader, writer: LockWriter, clock: Clock) -> None:
        self.client = client
        self.writer = writer
        self.clock = clock
        self._pending: dict[str, anyio.Event] = {}
        self._errors: dict[str, str] = {}

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

    async def path_of(self, sha256: str, path: Path, ref: str) -> str:
        """The `bunny://` path of a file's content, uploading it once per run and lockfile."""
        known = self.writer.upload(sha256)
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
        known = self.writer.upload(sha256)
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
        recorded = UploadedAsset(path=upload.path, size=upload.size, uploaded_at=self.clock.now())
        self.writer.add_upload(sha256, recorded)
        await self.writer.commit()
