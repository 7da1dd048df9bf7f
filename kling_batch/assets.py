"""Input media on the planning side: where a reference points, its content hash, its length.

Local files are hashed once and remembered by (size, mtime) in the state folder's hash
cache (`kling_batch.state`), so replanning gigabytes of assets costs a `stat` per file.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from stat import S_ISDIR, S_ISREG
from typing import Any, Literal, NamedTuple

from kling_batch import safefiles
from kling_batch.atomic import atomic_write
from kling_batch.canonical import sha256_file
from kling_batch.errors import AssetProblem, UserError
from kling_batch.state import StateDir

log = logging.getLogger(__name__)

_CACHE_VERSION = 4  # 4: a video's length is its video track's (3 kept the sound track's)
_CACHE_MAX = 1024 * 1024 * 1024  # read only a regular file (never block on a FIFO)
# A file changed within this window of being hashed may change again in the same tick.
_RACY_NS = 2_000_000_000
_MILLISECOND = Decimal("0.001")

AssetKind = Literal["local", "https", "bunny"]


@dataclass(frozen=True, slots=True)
class Asset:
    """A media reference, resolved: a local file (hashed) or a URL passed through."""

    ref: str
    kind: AssetKind
    location: str | None = None  # the resolved file of a local asset
    sha256: str | None = None
    size: int | None = None

    @property
    def path(self) -> Path | None:
        """The resolved file of a local asset."""
        return Path(self.location) if self.location is not None else None

    @property
    def identity(self) -> str:
        """What the fingerprint sees: a local file's content hash, else the URL itself."""
        return self.sha256 if self.sha256 is not None else self.ref


class _Stat(NamedTuple):
    """What the cache compares of a file's `stat`: kept for each of 100,000 outputs
    between two looks at it, a third of the size of an `os.stat_result` (issue 13)."""

    st_mode: int
    st_size: int
    st_mtime_ns: int
    st_ctime_ns: int
    st_ino: int

    @classmethod
    def of(cls, stat: os.stat_result) -> _Stat:
        """The facts of `stat`."""
        return cls(stat.st_mode, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


@dataclass(slots=True)
class _Entry:
    """A file's hash, believed while the file's stat facts are the ones it was hashed at:
    size, modification time, and inode and change time (a rewrite that keeps the size and
    puts the modification time back still moves the change time, which no tool sets)."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    sha256: str
    hashed_ns: int
    seconds: str | None = None

    def holds_for(self, stat: _Stat | os.stat_result) -> bool:
        """True when `stat` is the file this entry hashed, unchanged, and the hash was taken
        long enough after its last change (a change in the same clock tick as the hash
        would leave the same times: such an entry is never believed)."""
        return (
            self.size == stat.st_size
            and self.mtime_ns == stat.st_mtime_ns
            and self.ctime_ns == stat.st_ctime_ns
            and self.inode == stat.st_ino
            and self.hashed_ns - self.ctime_ns > _RACY_NS
        )


class AssetStore:
    """Resolves media references under one folder, with a persistent stat → hash cache."""

    def __init__(self, root: Path, state: StateDir | None = None) -> None:
        self.root = root.resolve()
        self._root_text = os.fspath(self.root) + os.sep
        self.state = state if state is not None else StateDir(root)
        self._rows: dict[str, list[Any]] | None = None  # the cache's, read when first needed
        self._only: frozenset[str] | None = None
        self._entries: dict[str, _Entry | None] = {}
        self._dirty = False
        self._resolved: dict[str, Asset] = {}
        self._real_dirs: dict[str, str] = {}
        # What a stat taken while expanding (is an output a folder?) showed, for its hash
        # check: the file's entry, believed at that stat, or the stat itself.
        self._stats: dict[str, _Entry | _Stat | None] = {}

    def resolve(self, ref: str) -> Asset:
        """The asset behind `ref`; raises `AssetProblem` for refused or missing ones."""
        asset = self._resolved.get(ref)
        if asset is None:
            asset = self._resolve(ref)
            self._resolved[ref] = asset
        return asset

    def resolve_local(self, ref: str) -> Asset:
        """`resolve` for a reference already known to name a local file (the plan cache's):
        its text is not checked again, only where it leads and what it holds now."""
        asset = self._resolved.get(ref)
        if asset is None:
            asset = self._resolve_plain(ref) or self._resolve(ref)
            self._resolved[ref] = asset
        return asset

    def file_hash(self, path: Path) -> tuple[str, int]:
        """(sha256, size) of a file under the root, from the cache when its stat is unchanged."""
        entry = self._entry(self._key(path), path)
        return entry.sha256, entry.size

    def relative_hash(self, relative: str) -> tuple[str, int] | None:
        """(sha256, size) of `root/relative`, or None when it is not a file.

        The fast path for thousands of outputs: no `resolve()`, one `stat()` when cached.
        """
        path = self._root_text + relative
        known = self._stats.pop(relative, None)
        if isinstance(known, _Entry):  # believed at that stat
            return known.sha256, known.size
        try:
            entry = self._entry(relative, path, known)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        return entry.sha256, entry.size

    def is_dir(self, relative: str) -> bool:
        """True when `root/relative` is a folder (symlinks followed); what the stat says of
        the file is kept for `relative_hash` of the same path: its cached entry when the
        stat shows it still holds, else the stat."""
        try:
            stat = os.stat(self._root_text + relative)  # noqa: PTH116 - hot path, str path
        except (OSError, ValueError):
            return False
        if S_ISDIR(stat.st_mode):
            return True
        if not S_ISREG(stat.st_mode):
            self._stats[relative] = None
            return False
        # The cache is not read for this (a plan of an edit names the rows it reads only
        # once its shots are expanded): a file whose row is not read yet keeps its stat.
        entry = self._cached_entry(relative) if self._rows is not None else None
        held = entry is not None and entry.holds_for(stat)
        self._stats[relative] = entry if held else _Stat.of(stat)
        return False

    def video_seconds(self, asset: Asset) -> Decimal:
        """Length of a local video in seconds (to the millisecond), probed once per content."""
        assert asset.path is not None
        entry = self._entry(self._key(asset.path), asset.path)
        if entry.seconds is None:
            entry.seconds = str(_probe_seconds(asset.path))
            self._dirty = True
        return Decimal(entry.seconds)

    def only(self, keys: Iterable[str]) -> None:
        """Keep only these files' rows (paths relative to the root, as the cache keys them)
        when the cache is read: a plan that asks for a few files (the plan of an edit)
        holds no more of a cache of 100,000. Any other file asked for is hashed, and the
        cache is not written (it would lose every other row)."""
        self._only = frozenset(keys)

    @property
    def _cached(self) -> dict[str, list[Any]]:
        if self._rows is None:
            self._rows = self._load()
        return self._rows

    def save(self) -> None:
        """Write the cache if anything was learnt; a no-op on a warm replan.

        The cache only saves time: a folder that cannot be written (a read-only checkout)
        is noted in the log and planning goes on without it.
        """
        try:
            self._save()
        except OSError as exc:
            log.info("hash cache not written (%s); planning works without it", exc)

    def _save(self) -> None:
        if not self._dirty or self._only is not None:
            self.state.ensure(create=False)
            return
        self.state.ensure()
        atomic_write(self.state.hash_cache, self._text(sorted({*self._cached, *self._entries})))
        self._dirty = False

    def _text(self, keys: list[str]) -> Iterator[str]:
        """The cache's JSON text in pieces of `_SAVED_ROWS` rows (a cache of 100,000 is
        never held whole as text, issue 13). One row per file, [size, mtime_ns, ctime_ns,
        inode, sha256, hashed_ns(, seconds)]: rows read several times faster than objects."""
        yield _CACHE_HEAD.decode()
        comma = ""
        for at in range(0, len(keys), _SAVED_ROWS):
            rows = ((key, self._row(key)) for key in keys[at : at + _SAVED_ROWS])
            piece = {key: row for key, row in rows if row is not None}
            if piece:
                yield comma + json.dumps(piece, separators=(",", ":"))[1:-1]
                comma = ","
        yield "}}\n"

    def _row(self, key: str) -> list[Any] | None:
        entry = self._entries.get(key)
        if entry is None:  # never asked for (kept as it was), or damaged (dropped)
            return None if key in self._entries else self._cached[key]
        row: list[Any] = [
            entry.size,
            entry.mtime_ns,
            entry.ctime_ns,
            entry.inode,
            entry.sha256,
            entry.hashed_ns,
        ]
        return row if entry.seconds is None else [*row, entry.seconds]

    def _resolve(self, ref: str) -> Asset:
        lowered = ref.lower()
        if lowered.startswith("https://"):
            return Asset(ref, "https")
        if lowered.startswith("bunny://"):
            return Asset(ref, "bunny")
        if lowered.startswith("http://"):
            raise AssetProblem(f"{ref!r}: plain http:// is refused; use https:// or a local file")
        if "://" in ref or lowered.startswith("data:"):
            raise AssetProblem(
                f"{ref!r}: media must be a local path, an https:// URL or a bunny:// path"
            )
        problem = safefiles.path_problem(ref)  # a NUL or an over-long name: no such file
        if problem is not None:
            raise AssetProblem(f"{safefiles.shown(ref)} {problem}")
        fast = self._resolve_plain(ref)
        if fast is not None:
            return fast
        resolved = safefiles.real_path(self.root / ref)
        if resolved is None:
            raise AssetProblem(f"{ref!r}: its symlinks go round in a loop")
        if not resolved.is_relative_to(self.root):
            raise AssetProblem(f"{ref!r} lies outside the manifest's folder; copy it inside")
        if not resolved.is_file():
            raise AssetProblem(f"{ref!r}: no such file")
        sha256, size = self.file_hash(resolved)
        return Asset(ref, "local", str(resolved), sha256, size)

    def _resolve_plain(self, ref: str) -> Asset | None:
        """A local file that is no symlink, in a folder inside the root: resolved with one
        `lstat` and the folder's real path (looked up once per folder). None for anything
        else (missing, a link, a folder, outside): `_resolve` decides those slowly.

        Issue 13: `Path.resolve()` of 10,000 images took longer than a whole plan may.
        """
        if os.sep != "/" or ref.startswith("/"):
            return None
        joined = self._root_text + ref
        cut = ref.rfind("/")
        head, name = self._root_text + ref[: cut + 1], ref[cut + 1 :]
        if name in ("", ".", ".."):
            return None
        try:
            stat = os.lstat(joined)
        except (OSError, ValueError):
            return None
        if not S_ISREG(stat.st_mode):
            return None
        real = self._real_dirs.get(head)
        if real is None:
            real = os.path.realpath(head)
            self._real_dirs[head] = real
        if not (real + os.sep).startswith(self._root_text):
            return None
        resolved = real + os.sep + name
        key = resolved[len(self._root_text) :].replace(os.sep, "/")
        entry = self._entry(key, resolved, stat)
        return Asset(ref, "local", resolved, entry.sha256, entry.size)

    def _entry(
        self, key: str, path: Path | str, known: _Stat | os.stat_result | None = None
    ) -> _Entry:
        # A str path on the hot path; no Path objects.
        stat = known if known is not None else os.stat(path)  # noqa: PTH116
        if not S_ISREG(stat.st_mode):
            raise IsADirectoryError(path)
        entry = self._cached_entry(key)
        if entry is not None and entry.holds_for(stat):
            return entry
        hashed_ns = time.time_ns()
        sha256 = sha256_file(path)
        entry = _Entry(
            stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, sha256, hashed_ns
        )
        self._entries[key] = entry
        self._dirty = True
        return entry

    def _cached_entry(self, key: str) -> _Entry | None:
        """The entry known for a file, its cache row made one when first asked for."""
        entry = self._entries.get(key)
        if entry is None and key in self._cached:  # the row becomes the entry
            entry = self._entries[key] = _from_row(self._cached.pop(key))
        return entry

    def _key(self, path: Path) -> str:
        resolved = path.resolve()
        try:
            return resolved.relative_to(self.root).as_posix()
        except ValueError:
            return str(resolved)

    def _load(self) -> dict[str, list[Any]]:
        """The cache's rows by file (only those of `only`, when set); each becomes an
        `_Entry` when its file is asked for."""
        try:
            data = safefiles.read_bytes(self.state.hash_cache, limit=_CACHE_MAX, what="a cache")
            if not data.startswith(_CACHE_HEAD):
                return {}
            if self._only is not None and len(self._only) <= _FOUND_MOST:
                return _rows_of(data, self._only)
            files: Any = json.loads(data)["files"]
            if not isinstance(files, dict):
                return {}
            if self._only is None:
                return files
            return {key: files[key] for key in self._only.intersection(files)}
        except (OSError, ValueError, TypeError, KeyError, RecursionError, UserError):
            # A cache, not a record: a damaged one is rebuilt from the files themselves
            # (one nested too deep for the parser too, rather than stop the plan).
            return {}


# How the cache's text begins (`_save` writes it so): a few rows are found in it without
# parsing it whole (a search of a cache of 100,000 rows takes 3 ms, its parse 210 ms).
_CACHE_HEAD = b'{"version":%d,"files":{' % _CACHE_VERSION
_FOUND_MOST = 32
_SAVED_ROWS = 4096


def _rows_of(data: bytes, keys: Iterable[str]) -> dict[str, list[Any]]:
    """The rows of these files found in the cache's text, each parsed alone: a plan of
    an edit that needs a few rows of a cache of 100,000 never holds the rest (the whole
    parsed costs 120 MB there, issue 13). A key's text starts a row only after `{` or
    `,` (within a JSON string every quote is escaped), and a row holds no `]`."""
    rows = {}
    for key in keys:
        name = json.dumps(key).encode("ascii") + b":["
        start = next((at for at in _found(data, name) if data[at - 1 : at] in b"{,"), -1)
        if start < 0:
            continue
        start += len(name) - 1  # the row's `[`
        end = data.find(b"]", start)
        row = json.loads(data[start : end + 1]) if end > 0 else None
        if isinstance(row, list):
            rows[key] = row
    return rows


def _found(data: bytes, name: bytes) -> Iterable[int]:
    """Every place `name` occurs in `data` after the cache's head, the last first: of a
    key given twice (a hand edit), a JSON parser keeps the last, and so does the search."""
    head = len(_CACHE_HEAD) - 1
    at = data.rfind(name, head)
    while at >= 0:
        yield at
        at = data.rfind(name, head, at)


def _from_row(row: Any) -> _Entry | None:
    """A cache row as an entry; None for a damaged one (it is hashed again): a number too
    large for an integer (`1e999`), or a video length that is no finite number, which
    `video_seconds` would otherwise stop on or hand on as NaN."""
    try:
        size, mtime_ns, ctime_ns, inode, sha256, hashed_ns, *rest = row
        entry = _Entry(
            int(size), int(mtime_ns), int(ctime_ns), int(inode), str(sha256), int(hashed_ns)
        )
        if rest:
            entry.seconds = str(rest[0])
            if not Decimal(entry.seconds).is_finite():
                return None
    except (TypeError, ValueError, ArithmeticError):  # OverflowError, InvalidOperation
        return None
    return entry


def _probe_seconds(path: Path) -> Decimal:
    from kling_batch.mp4check import mp4_seconds  # mutagen loads only for a video input

    length = mp4_seconds(path)
    if length is None:
        raise AssetProblem(f"cannot read the length of {path.name}: not an MP4 or MOV video")
    return Decimal(repr(length)).quantize(_MILLISECOND, rounding=ROUND_HALF_UP)
