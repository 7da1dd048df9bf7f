"""Poster frames of hostile videos: a stranger's project ships its renders' files, and
`review` reads a frame of each one."""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

from kling_batch.lockfile import new_entry
from kling_batch.lockname import lock_path
from kling_batch.plan import build_plan
from tests.conftest import NOW
from tests.review.conftest import kling_batch

Project = Callable[..., Path]

BOMB_SIDE = 6_000


def png_bomb(width: int, height: int) -> bytes:
    """A grey PNG of `width` × `height` pixels in a few dozen kilobytes (all zeros,
    deflated): FFmpeg reads it as a one-frame video, whatever its name."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + width)  # filter byte, then one grey byte per pixel
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"".join(
        [b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", header), chunk(b"IDAT", data), chunk(b"IEND", b"")]
    )


def rendered_as(manifest: Path, content: bytes) -> None:
    """Record every render of `manifest` done, each output holding `content` (as a pull
    request can: it ships the files and the lockfile vouching for them)."""
    plan = build_plan(manifest, now=NOW)
    for item in plan.items:
        target = plan.loaded.root / item.render.output
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        digest = "sha256:" + hashlib.sha256(content).hexdigest()
        plan.lock.shots[item.render.id] = new_entry(
            item.render, "done", output_sha256=digest, output_size=len(content)
        )
    plan.lock.save(lock_path(manifest))


def test_a_decompression_bomb_gets_no_poster(project: Project) -> None:
    """A render whose file is a tiny picture of 36 million pixels (a picture is a one-frame
    video to FFmpeg) is not decoded: no poster, a warning naming the render, the gallery
    written. Decoded, a 16,000-pixel square of 250 KB took 3.4 GB and 24 s per poster."""
    manifest = project('[[shots]]\nid = "bomb"\nprompt = "a quiet harbour"\n')
    rendered_as(manifest, png_bomb(BOMB_SIDE, BOMB_SIDE))
    result = kling_batch("review", str(manifest))
    assert result.returncode == 0, result.stderr
    assert "bomb: no poster" in result.stderr and "pixels" in result.stderr
    assert not list((manifest.parent / "renders" / "review" / "posters").glob("*.jpg"))
