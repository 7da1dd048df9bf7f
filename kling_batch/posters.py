"""Poster frames read from the renders with PyAV, saved as JPEGs beside the gallery (Pillow).

Both come with the `review` extra. Without it the gallery has no posters (the browser shows
each video's first frame) and the contact sheet cannot be drawn.
"""

from __future__ import annotations

import errno
import importlib
import io
import re
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kling_batch.assets import AssetStore
from kling_batch.atomic import atomic_write
from kling_batch.errors import PosterError

if TYPE_CHECKING:
    from PIL.Image import Image

POSTER_AT = Fraction(1, 3)
"""Where the poster frame is taken, as a fraction of the video's length.

Not the first frame: an image-to-video render opens on its input image, which says nothing
about the render itself.
"""
POSTER_MAX_SIDE = 640
POSTER_MAX_PIXELS = 4096 * 4096
"""The largest frame decoded for a poster: twice a 4K render's (3840 × 2160 pixels).

A stranger's project ships its renders' files, and a file of a few kilobytes can hold a
frame of billions of pixels (a picture is a one-frame video to FFmpeg): FFmpeg is told to
refuse a larger one, when it reads the file's streams and when it decodes.
"""
POSTER_MAX_FRAMES = 600
"""Frames decoded to reach a poster's time. A render lasts at most 15 s, so its poster is at
most 300 frames in at 60 fps; but a frame repeating the one before costs a few bytes, and a
1 MB file can claim 20 minutes of 4K video (decoding to a third of it took 97 s).
"""
POSTER_FOLDER = "posters"
REVIEW_EXTRA = "pip install 'kling-batch[review]'"

_POSTER_NAME = re.compile(r"[0-9a-f]{16}\.jpg")


def missing_review_extra() -> str | None:
    """None when PyAV and Pillow import; else the missing package's name."""
    for module, package in (("av", "av"), ("PIL.Image", "pillow")):
        try:
            importlib.import_module(module)
        except ImportError:
            return package
    return None


def poster_frame(video: Path) -> Image:
    """The frame a third of the way into `video`, as an RGB image at full size."""
    import av

    limit = {"max_pixels": str(POSTER_MAX_PIXELS)}
    try:
        with av.open(str(video), options=limit) as container:
            stream = container.streams.video[0]
            _check_size(stream)
            stream.codec_context.options = limit
            frame = _frame_at(container, stream, _length(container, stream) * POSTER_AT)
            if frame is None:
                raise PosterError("no video frame")
            image: Image = frame.to_image()
    except PosterError as exc:
        raise PosterError(f"{video.name}: {exc}") from None
    except Exception as exc:  # PyAV's error tree is wide; any failure means "unreadable"
        raise PosterError(f"{video.name}: {_problem(exc)}") from None
    return image.convert("RGB")


def _problem(exc: Exception) -> str:
    """What went wrong; FFmpeg says only "Invalid argument" when a frame is over the limit."""
    if getattr(exc, "errno", None) == errno.EINVAL:
        return f"damaged, or frames over {POSTER_MAX_PIXELS:,} pixels ({exc})"
    return str(exc)


def _check_size(stream: Any) -> None:
    """Refuse a stream whose frames are larger than POSTER_MAX_PIXELS, before decoding."""
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > POSTER_MAX_PIXELS:
        raise PosterError(f"frames of {width} × {height} pixels are too large")


def _length(container: Any, stream: Any) -> Fraction:
    if stream.duration is not None and stream.time_base is not None:
        return Fraction(stream.duration) * Fraction(stream.time_base)
    if container.duration is not None:
        return Fraction(container.duration, 1_000_000)
    return Fraction(0)


def _frame_at(container: Any, stream: Any, target: Fraction) -> Any:
    """The first frame at or after `target` seconds (the last frame if none is)."""
    if target > 0 and stream.time_base is not None:
        # Seek to the keyframe before the target, then decode forward to it.
        container.seek(int(target / Fraction(stream.time_base)), stream=stream, backward=True)
    last = None
    for count, frame in enumerate(container.decode(stream), 1):
        last = frame
        if frame.time is not None and Fraction(frame.time) >= target:
            return frame
        if count >= POSTER_MAX_FRAMES:
            raise PosterError(f"over {POSTER_MAX_FRAMES:,} frames to decode to its poster's time")
    return last


def poster_jpeg(image: Image) -> bytes:
    """A JPEG of `image`, at most POSTER_MAX_SIDE pixels on its long side."""
    small = image.copy()
    small.thumbnail((POSTER_MAX_SIDE, POSTER_MAX_SIDE))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def write_posters(
    videos: Mapping[str, Path], root: Path, folder: Path
) -> tuple[dict[str, Path], list[str]]:
    """A poster per render id in `folder`, named by the video's content (so kept while it is).

    Returns (id → poster file, warnings). Posters of videos no longer shown are removed.
    """
    store = AssetStore(root)
    posters: dict[str, Path] = {}
    warnings: list[str] = []
    for render_id, video in videos.items():
        sha256, _ = store.file_hash(video)
        target = folder / f"{sha256.removeprefix('sha256:')[:16]}.jpg"
        if not target.is_file():
            try:
                atomic_write(target, poster_jpeg(poster_frame(video)))
            except PosterError as exc:
                warnings.append(f"{render_id}: no poster ({exc})")
                continue
        posters[render_id] = target
    store.save()
    _sweep(folder, set(posters.values()))
    return posters, warnings


def _sweep(folder: Path, keep: set[Path]) -> None:
    """Remove posters no card uses any more (only files named as posters are named)."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if _POSTER_NAME.fullmatch(path.name) and path not in keep:
            path.unlink(missing_ok=True)
