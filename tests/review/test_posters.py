"""Poster frames of hostile videos: a stranger's project ships its renders' files, and
`review` reads a frame of each one."""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import pytest
from PIL import Image

from kling_batch import posters
from kling_batch.errors import PosterError
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


def endless_video(path: Path, frames: int) -> None:
    """An H.264 MP4 of one keyframe and `frames - 1` copies of a frame that repeats it (a
    few bytes each): nothing to seek to, so every frame up to the poster's is decoded."""
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = 64, 64, "yuv420p"
    encoder.time_base = Fraction(1, 24)
    encoder.options = {"preset": "ultrafast", "bframes": "0", "keyint": "100000"}
    packets: list[bytes] = []
    for pts in range(2):
        frame = av.VideoFrame.from_image(Image.new("RGB", (64, 64), (200, 40, 90)))
        frame.pts = pts
        packets.extend(bytes(packet) for packet in encoder.encode(frame))
    packets.extend(bytes(packet) for packet in encoder.encode())
    with av.open(str(path), "w") as out:
        stream = out.add_stream("h264", rate=24)
        stream.width, stream.height = 64, 64
        stream.time_base = Fraction(1, 24)
        stream.codec_context.extradata = encoder.extradata
        for index in range(frames):
            packet = av.Packet(packets[0] if index == 0 else packets[1])
            packet.pts = packet.dts = index
            packet.time_base = stream.time_base
            packet.stream = stream
            packet.is_keyframe = index == 0
            out.mux(packet)


def test_a_video_of_endless_repeated_frames_gets_no_poster(tmp_path: Path) -> None:
    """Reaching a poster's time takes at most POSTER_MAX_FRAMES decoded frames: a file
    claiming a long video of repeated frames (some bytes each, with one keyframe) is refused,
    where it was decoded to a third of its length (a 1 MB file of 4K frames: 97 s)."""
    video = tmp_path / "endless.mp4"
    endless_video(video, 2_400)  # 100 s at 24 fps: its poster is 800 frames in
    with pytest.raises(PosterError, match="frames to decode"):
        posters.poster_frame(video)


def test_a_render_gets_its_poster(tmp_path: Path) -> None:
    """A short video of the same kind (far fewer frames) still gets its poster."""
    video = tmp_path / "short.mp4"
    endless_video(video, 48)
    assert posters.poster_frame(video).size == (64, 64)
