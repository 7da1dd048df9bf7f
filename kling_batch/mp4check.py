"""MP4 structure and length: is a downloaded file a whole MP4, and how long does it play?

`mp4_problem` walks the top-level boxes (ISO/IEC 14496-12 §4.2) from header to header,
reading only the 8- or 16-byte headers: a complete file starts with `ftyp`, holds a `moov`
(the index a player needs) and an `mdat` (the media it indexes), and its box sizes add up to
exactly the file's size. A body cut short ends inside a box (or before `moov`); extra bytes
after the last box are not part of any box. A "fast start" file puts `moov` before `mdat`:
cut right after `moov`, its sizes still add up, so the missing `mdat` is what gives it away.
It is tolerant of everything else: any box types in any order after `ftyp`, 64-bit sizes
(`size == 1`, then a `largesize`), and a last box of `size == 0` that runs to the end of the
file.
"""

from __future__ import annotations

import os
from pathlib import Path

import mutagen.mp4

_HEADER = 8
_LARGE_HEADER = 16
# A guard against a file of millions of empty boxes; fragmented MP4s have a few per second.
_MAX_BOXES = 100_000


def mp4_problem(path: Path) -> str | None:
    """What makes `path` not a complete MP4 file (a phrase to follow "the file"), or None."""
    with open(path, "rb") as f:
        end = os.fstat(f.fileno()).st_size
        first = f.read(_HEADER)
        if len(first) < _HEADER or first[4:8] != b"ftyp":
            return "is not an MP4 file (it does not start with an ftyp box)"
        kinds: list[bytes] = []
        offset = 0
        while offset < end:
            if len(kinds) >= _MAX_BOXES:
                return f"has over {_MAX_BOXES} top-level boxes"
            f.seek(offset)
            header = f.read(_LARGE_HEADER)
            kind, size, problem = _box(header, offset, end)
            if problem is not None:
                return problem
            kinds.append(kind)
            offset += size
    if b"moov" not in kinds:
        return "has no moov box (the index a player needs): it is cut short or incomplete"
    if b"mdat" not in kinds:
        return "has no mdat box (the media itself): it is cut short or incomplete"
    return None


def _box(header: bytes, offset: int, end: int) -> tuple[bytes, int, str | None]:
    """The type and size of the box whose header starts `header`, or what is wrong."""
    if len(header) < _HEADER:
        return b"", 0, f"ends inside a box header at byte {offset}: it is cut short"
    size, kind = int.from_bytes(header[:4], "big"), header[4:8]
    name = kind.decode("latin-1")
    header_size = _HEADER
    if size == 1:
        if len(header) < _LARGE_HEADER:
            return kind, 0, f"ends inside the header of box {name!r} at byte {offset}"
        size, header_size = int.from_bytes(header[8:16], "big"), _LARGE_HEADER
    elif size == 0:
        size = end - offset  # the last box, running to the end of the file
    if size < header_size:
        return kind, 0, f"has a box {name!r} at byte {offset} smaller than its own header"
    if offset + size > end:
        return (
            kind,
            0,
            (
                f"ends inside box {name!r} (at byte {offset}, {size} bytes long) after "
                f"{end} bytes: it is cut short"
            ),
        )
    return kind, size, None


def mp4_seconds(path: Path) -> float | None:
    """How long the video plays, from its `moov` header (mutagen); None if unreadable."""
    try:
        info = mutagen.mp4.MP4(path).info  # type: ignore[no-untyped-call]
    except Exception:  # mutagen raises several unrelated types on a broken file
        return None
    length = float(info.length) if info is not None else 0.0
    return length if length > 0 else None
