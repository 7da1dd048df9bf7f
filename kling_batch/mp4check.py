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
import struct
from pathlib import Path
from typing import Any, BinaryIO

import mutagen
import mutagen.mp4
from mutagen.mp4 import Atoms  # type: ignore[attr-defined]

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


def mp4_seconds(source: Path | BinaryIO) -> float | None:
    """How long the video plays: its video track's duration (the `trak` whose `hdlr` is
    `vide`, from its `mdhd`), else the whole movie's (`mvhd`); None if unreadable.

    Not mutagen's `info.length`, which is the first sound track's: 2 s of sound over 10 s of
    picture read as 2 s, and a `video_edit` of that clip was priced at a fifth of its cost.
    mutagen only finds the boxes here."""
    try:
        if isinstance(source, Path):
            with open(source, "rb") as f:
                return _video_seconds(f)
        return _video_seconds(source)
    except (OSError, KeyError, ValueError, struct.error, mutagen.MutagenError):
        return None


def has_video_track(path: Path) -> bool:
    """True for an MP4/MOV file with a video track: not a sound file (`.m4a`) nor a still
    image in the same box format (`.heic`, `.avif`)."""
    try:
        with open(path, "rb") as f:
            return _video_trak(f, Atoms(f)[b"moov"]) is not None
    except (OSError, KeyError, ValueError, struct.error, mutagen.MutagenError):
        return False


def _video_seconds(f: BinaryIO) -> float | None:
    moov = Atoms(f)[b"moov"]
    trak = _video_trak(f, moov)
    if trak is not None:
        return _duration(_read(f, trak[b"mdia", b"mdhd"]))
    return _duration(_read(f, moov[b"mvhd"]))


def _video_trak(f: BinaryIO, moov: Any) -> Any:
    """The first `trak` whose handler (`hdlr`) is `vide`, or None."""
    for trak in moov.findall(b"trak"):
        if _read(f, trak[b"mdia", b"hdlr"])[8:12] == b"vide":
            return trak
    return None


def _read(f: BinaryIO, atom: Any) -> bytes:
    ok, data = atom.read(f)
    if not ok:
        raise ValueError("a box runs past the end of the file")
    return bytes(data)


def _duration(data: bytes) -> float | None:
    """Seconds from a `mvhd` or `mdhd` box's content (version 0: 32-bit fields, 1: 64-bit)."""
    if data[0] == 1:
        scale, duration = struct.unpack(">IQ", data[20:32])
        unknown = 0xFFFF_FFFF_FFFF_FFFF
    else:
        scale, duration = struct.unpack(">II", data[12:20])
        unknown = 0xFFFF_FFFF
    if not scale or not duration or duration == unknown:
        return None
    return float(duration) / float(scale)
