"""Media: tiny real H.264 MP4 outputs (PyAV), their padded large variant, and duration probes."""

from __future__ import annotations

import io
import math
from collections.abc import AsyncIterator
from decimal import Decimal
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import av

from kling_batch.mp4check import mp4_seconds

# Even sizes, since yuv420p halves each side for chroma.
SIZES = {"16:9": (32, 18), "1:1": (18, 18), "9:16": (18, 32)}
_FPS = 4
_MS = Fraction(1, 1000)
_CHUNK = 1 << 20
_ZEROS = bytes(_CHUNK)
_MAX_BOX32 = 0xFFFFFFFF


def render_mp4(aspect: str, seconds: Decimal) -> bytes:
    """A playable H.264 MP4 of `aspect` lasting exactly `seconds` (to the millisecond); cached."""
    return _render(aspect, int((seconds * 1000).to_integral_value()))


@lru_cache(maxsize=512)
def _render(aspect: str, millis: int) -> bytes:
    width, height = SIZES[aspect]
    step = 1000 // _FPS
    frames = max(1, math.ceil(millis / step))
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=_FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = _MS
        stream.codec_context.time_base = _MS
        # No B-frames, so packets come out in presentation order and the last one is last.
        stream.options = {"preset": "ultrafast", "tune": "zerolatency"}
        packets = []
        for index in range(frames):
            frame = av.VideoFrame(width, height, "yuv420p")
            for plane_no, plane in enumerate(frame.planes):
                shade = (index * 23 + plane_no * 70) % 200 + 28
                plane.update(bytes([shade]) * plane.buffer_size)
            frame.pts, frame.time_base = index * step, _MS
            packets.extend(stream.encode(frame))
        packets.extend(stream.encode(None))
        last_pts = (frames - 1) * step
        for packet in packets:
            packet.duration = millis - last_pts if packet.pts == last_pts else step
            container.mux(packet)
    return buffer.getvalue()


def padded_size(mp4_size: int, target: int | None) -> int:
    """Total bytes served when an output of `mp4_size` is padded towards `target` bytes."""
    if target is None or target <= mp4_size:
        return mp4_size
    return max(target, mp4_size + 8)


async def stream_output(mp4: bytes, total: int) -> AsyncIterator[bytes]:
    """Yield `mp4`, then a `free` box filling up to `total` bytes, in 1 MiB chunks.

    The padding is never held in memory, so a 200 MB output costs one chunk of zeros.
    """
    yield mp4
    pad = total - len(mp4)
    if pad <= 0:
        return
    if pad <= _MAX_BOX32:
        header = pad.to_bytes(4, "big") + b"free"
    else:
        header = (1).to_bytes(4, "big") + b"free" + pad.to_bytes(8, "big")
    yield header
    left = pad - len(header)
    while left >= _CHUNK:
        yield _ZEROS
        left -= _CHUNK
    if left:
        yield _ZEROS[:left]


def probe_seconds(source: Path | bytes) -> Decimal | None:
    """A video's length in seconds (millisecond precision), or None if unreadable."""
    length = _probe_with_mutagen(source)
    if length is None:
        length = _probe_with_av(source)
    if length is None or not length > 0:
        return None
    return Decimal(str(round(length, 3)))


def _probe_with_mutagen(source: Path | bytes) -> float | None:
    return mp4_seconds(io.BytesIO(source) if isinstance(source, bytes) else source)


def _probe_with_av(source: Path | bytes) -> float | None:
    try:
        target = io.BytesIO(source) if isinstance(source, bytes) else str(source)
        with av.open(target, mode="r") as container:
            if container.duration is None:
                return None
            return float(container.duration) / 1_000_000
    except Exception:  # PyAV's error tree is wide; any failure means "not a video we can read"
        return None
