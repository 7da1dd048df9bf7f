"""UploadStore: files from `POST /v1/files/upload`, kept on disk, named by `bunny://` paths."""

from __future__ import annotations

import mimetypes
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import anyio

from kling_batch.emulator.clock import Clock
from kling_batch.emulator.errors import ApiError
from kling_batch.emulator.media import probe_seconds

ACCEPTED_TYPES = {
    "image": frozenset({"image/jpeg", "image/png", "image/webp"}),
    "video": frozenset({"video/mp4", "video/quicktime"}),
    "audio": frozenset(
        {"audio/mpeg", "audio/mp4", "audio/x-m4a", "audio/wav", "audio/x-wav", "audio/aac"}
    ),
}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Upload:
    """One stored file."""

    path: str
    uid: str
    filename: str
    file: Path
    size: int
    content_type: str
    kind: str
    seconds: Decimal | None
    created: float = 0.0  # the emulator clock's reading when it was uploaded


class UploadStore:
    """Uploads in a private temp folder, removed by `close`."""

    def __init__(
        self, limits: dict[str, int], clock: Clock | None = None, ttl: float | None = None
    ) -> None:
        self._limits = limits
        self._clock = clock
        self._ttl = ttl  # real seconds a path stays valid; None: forever
        self._folder = Path(tempfile.mkdtemp(prefix="kling-emulator-"))
        self._by_path: dict[str, Upload] = {}
        self._by_uid: dict[str, Upload] = {}
        self._lock = threading.Lock()

    def classify(self, content_type: str | None, filename: str) -> tuple[str, str]:
        """`(kind, content_type)` of a file, or a 415 for types the model does not take."""
        declared = (content_type or "").split(";")[0].strip().lower()
        if declared in ("", "application/octet-stream"):
            declared = (mimetypes.guess_type(filename)[0] or declared).lower()
        for kind, types in ACCEPTED_TYPES.items():
            if declared in types:
                return kind, declared
        accepted = ", ".join(sorted(t for types in ACCEPTED_TYPES.values() for t in types))
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Unsupported file type {declared or 'unknown'!r}; accepted: {accepted}.",
            param="file",
        )

    async def save(
        self,
        account: str,
        filename: str,
        content_type: str | None,
        chunks: AsyncIterator[bytes],
    ) -> Upload:
        """Store a file read from `chunks`; 413 if it exceeds its kind's size limit."""
        kind, ctype = self.classify(content_type, filename)
        limit = self._limits[kind]
        uid = uuid.uuid4().hex
        name = _UNSAFE.sub("_", Path(filename).name).strip("._") or "upload"
        target = self._folder / uid / name
        target.parent.mkdir()
        size = 0
        async with await anyio.open_file(target, "wb") as out:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    break
                await out.write(chunk)
        if size > limit:
            shutil.rmtree(target.parent, ignore_errors=True)
            raise ApiError(
                413,
                "file_too_large",
                f"The {kind} is larger than the {limit // (1024 * 1024)} MB limit.",
                param="file",
            )
        seconds = probe_seconds(target) if kind == "video" else None
        upload = Upload(
            path=f"bunny://uploads/{account}/{uid}/{name}",
            uid=uid,
            filename=name,
            file=target,
            size=size,
            content_type=ctype,
            kind=kind,
            seconds=seconds,
            created=self._clock.now() if self._clock is not None else 0.0,
        )
        with self._lock:
            self._by_path[upload.path] = upload
            self._by_uid[uid] = upload
        return upload

    def get(self, path: str) -> Upload | None:
        """The upload a `bunny://` path names, or None (also once the path has expired)."""
        upload = self._by_path.get(path)
        if upload is None or self._clock is None or self._ttl is None:
            return upload
        return upload if self._clock.now() - upload.created <= self._ttl else None

    def by_uid(self, uid: str) -> Upload | None:
        """The upload with id `uid`, or None."""
        return self._by_uid.get(uid)

    def close(self) -> None:
        """Delete every stored file."""
        shutil.rmtree(self._folder, ignore_errors=True)
