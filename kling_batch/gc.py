"""`kling-batch gc`: what nothing needs any more beside a manifest, listed and (`--yes`) removed.

Four kinds, each with its size:

- orphaned outputs: MP4 files (told by their content, whatever their name) under
  `output_dir` that no kling-batch lockfile in the manifest's folder records as an output.
  Left alone: the review gallery's folder `<output_dir>/review/` (`review` rewrites it),
  hidden files (a run's temp files), the manifest's own inputs and any file a lockfile
  records as an input; and nothing is looked for when `output_dir` is the manifest's folder
  or the manifest has no lockfile (a lost lockfile must not turn every render into garbage);
- lockfile entries of renders no longer in the manifest whose jobs are settled (`done` or
  `failed`); one whose job may still be paid for is left for `run` to follow to its end;
- render-cache files nothing refers to (no entry, no entry's history, no cache-index file
  of any lockfile in the folder), and cache-index files whose cached render is gone;
- remembered jobs (`.kling-batch/jobs/`, `kling_batch.recall`) past the longest recall
  window of any render (`recall.longest_window`, about ten hours: a memo does not say
  which render it was for), and unreadable ones. One still within it stays, even when its
  lockfile is gone: a checkout that took the lockfile away may bring back the request
  without its job, and the memo is what keeps that job from being paid again. Removing
  marks a memo dated ahead of the clock as first seen (`recall.first_seen`).

The only copy of a finished render on record is never removed. An orphaned `done` entry
leaves the lockfile only when the render cache holds its video, and the cache index then
points at it (written first when it does not), so putting the shot back restores it for
free; otherwise the entry stays and gc says where its only copy is. Earlier renders in a
removed entry's history that the cache holds are indexed alike. An unrecorded video that
is the only copy of a render on record stays too.

Removing entries takes their submissions out of `kling-batch spend`; gc says how much
(the lockfile's version history keeps them). Removal holds the run lock of every lockfile
in the folder (the render cache is shared), finds everything under those locks, writes the
cache index, then the lockfile (atomically), and only then removes files.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from rich.console import Console

from kling_batch import safefiles, ui
from kling_batch.atomic import remove_unused
from kling_batch.canonical import sha256_file, tagged
from kling_batch.errors import RunError
from kling_batch.inventory import Inventory, read_inventory
from kling_batch.lockfile import UNSETTLED, Entry, Lockfile, load_lockfile
from kling_batch.lockname import emulator_only_hint, lock_path
from kling_batch.mp4check import has_video_track
from kling_batch.recall import RememberedJob, first_seen, longest_window, read_job, recent, unseen
from kling_batch.reports import usd
from kling_batch.runlock import hold_run_lock
from kling_batch.shared_outputs import lockfiles_in
from kling_batch.spend import lock_totals
from kling_batch.state import StateDir

GALLERY_FOLDER = "review"  # `kling-batch review` writes its gallery in <output_dir>/review/


@dataclass(frozen=True, slots=True)
class Found:
    """A file gc would remove: where it is, as shown (relative to the manifest), its size."""

    path: Path
    shown: str
    size: int


@dataclass(frozen=True, slots=True)
class Indexed:
    """A cached render to index under its request before the entry recording it goes."""

    fingerprint: str
    sha256: str
    size: int


@dataclass
class Garbage:
    """Everything gc found, and what it keeps on purpose (with why)."""

    outputs: list[Found] = field(default_factory=list)
    entries: list[str] = field(default_factory=list)
    cache: list[Found] = field(default_factory=list)
    index: list[Found] = field(default_factory=list)
    memos: list[Found] = field(default_factory=list)
    reindex: dict[str, Indexed] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)
    # Remembered jobs dated ahead that no run has seen yet: marked seen when removing.
    unseen: list[tuple[Path, RememberedJob]] = field(default_factory=list)

    @property
    def files(self) -> list[Found]:
        """Every file to remove."""
        return [*self.outputs, *self.cache, *self.index, *self.memos]

    @property
    def size(self) -> int:
        """Bytes the files to remove take."""
        return sum(found.size for found in self.files)

    @property
    def empty(self) -> bool:
        """True when there is nothing to remove."""
        return not self.files and not self.entries


@dataclass(frozen=True)
class Project:
    """A manifest's folder as gc sees it: the manifest's inventory and every lockfile."""

    manifest: Path
    inventory: Inventory
    state: StateDir
    lock_file: Path
    lock: Lockfile
    others: tuple[Lockfile, ...]

    @property
    def root(self) -> Path:
        """The manifest's folder."""
        return self.inventory.root

    def entries(self, *, without: Iterable[str] = ()) -> list[Entry]:
        """Every entry of every lockfile in the folder, less this lockfile's `without`."""
        dropped = set(without)
        own = [entry for key, entry in self.lock.shots.items() if key not in dropped]
        return own + [entry for lock in self.others for entry in lock.shots.values()]


def gc_command(manifest: Path, *, emulator: bool, remove: bool) -> int:
    """List what gc finds for `manifest`; with `remove`, remove it. The exit code."""
    hint = None if emulator else emulator_only_hint(manifest, "gc")
    if hint is not None:
        ui.say(hint)
    console = ui.stdout_console()
    project = read_project(manifest, emulator=emulator)  # bad input stops here, unlocked
    if not remove:
        garbage = find_garbage(project)
        report(project, garbage, console, removing=False)
        if not garbage.empty:
            again = f"kling-batch gc {manifest}{' --emulator' if emulator else ''} --yes"
            _print(console, f"Run `{again}` to remove them.")
        return 0
    with _run_locks(manifest, emulator=emulator):
        project = read_project(manifest, emulator=emulator)  # again: a run may have ended
        garbage = find_garbage(project)
        report(project, garbage, console, removing=True)
        reclaimed, failures, busy = remove_garbage(project, garbage)
    for failure in failures:
        ui.say(f"error: could not remove {failure}")
    for shown in busy:
        ui.say(f"left {shown}: another process is writing it")
    if not garbage.empty:
        removed = len(garbage.files) - len(failures) - len(busy)
        _print(console, f"Removed {_count(removed, 'file')}: reclaimed {size_text(reclaimed)}.")
    return 1 if failures else 0


def read_project(manifest: Path, *, emulator: bool) -> Project:
    """The manifest's inventory and the folder's lockfiles; `UserError` for bad input."""
    inventory = read_inventory(manifest, emulator=emulator)
    state = StateDir(inventory.root)
    state.check()
    lock_file = lock_path(manifest, emulator=emulator)
    others = tuple(
        load_lockfile(path) for path in lockfiles_in(lock_file.parent) if path != lock_file
    )
    return Project(manifest, inventory, state, lock_file, load_lockfile(lock_file), others)


@contextlib.contextmanager
def _run_locks(manifest: Path, *, emulator: bool) -> Iterator[None]:
    """Hold the run lock of this manifest's lockfile and of every other one in the folder
    (the render cache is shared): no run may write while gc removes."""
    state = StateDir(manifest.parent)
    own = lock_path(manifest, emulator=emulator)
    names = {
        own.name,
        *(p.name for p in lockfiles_in(own.parent)),
        *(p.name for p in state.run_locks()),
    }
    with contextlib.ExitStack() as stack:
        for name in sorted(names):
            stack.enter_context(hold_run_lock(state, own.with_name(name), then="run gc again"))
        yield


# -- finding ------------------------------------------------------------------------------


def find_garbage(project: Project) -> Garbage:
    """What nothing needs any more (see the module docstring); reads, never writes."""
    try:
        return _find_garbage(project)
    except OSError as exc:
        raise RunError(f"cannot read {exc.filename or 'a file'}: {exc.strerror or exc}") from None


def _find_garbage(project: Project) -> Garbage:
    garbage = Garbage()
    _orphaned_entries(project, garbage)
    remaining = project.entries(without=garbage.entries)
    index = list(_index_files(project.state))
    referenced = {sha for entry in remaining for sha in _renders_of(entry)}
    referenced |= {sha for _, sha in index if sha is not None}
    referenced |= {indexed.sha256 for indexed in garbage.reindex.values()}
    garbage.index = [
        found
        for found, sha in index
        if sha is None or not project.state.cached_render(sha).is_file()
    ]
    garbage.cache = list(_unreferenced_cache(project.state, referenced))
    garbage.outputs = _orphaned_outputs(project, remaining, referenced, garbage.kept)
    _expired_memos(project, garbage, datetime.now(UTC))
    return garbage


def _renders_of(entry: Entry) -> Iterator[str]:
    """The content hash of every render an entry records: its output, then its history."""
    if entry.output_sha256:
        yield entry.output_sha256
    yield from (past.output_sha256 for past in entry.history)


def _orphaned_entries(project: Project, garbage: Garbage) -> None:
    """Settled entries no longer in the manifest, unless one holds a render's only copy."""
    for key, entry in sorted(project.lock.shots.items()):
        if key in project.inventory.ids:
            continue
        if entry.state in UNSETTLED:
            garbage.kept.append(
                f"{key} ({entry.state}): no longer in the manifest, but its job may be paid "
                "for; `kling-batch run` follows it to its end"
            )
            continue
        only_copy = _only_copy(project, entry)
        if only_copy is not None:
            garbage.kept.append(
                f"{key} ({entry.state}): no longer in the manifest, but its only copy is "
                f"{only_copy} (the render cache has none); delete that file to let gc drop "
                "the entry"
            )
            continue
        garbage.entries.append(key)
        garbage.reindex.update(_to_index(project, entry))


def _only_copy(project: Project, entry: Entry) -> str | None:
    """The entry's output, when it holds a render on record of the entry (its own when
    done, or one in its history: a failed or cancelled re-render's entry keeps the paid
    one there) that the render cache does not."""
    renders = [past for past in (entry.as_past(), *entry.history) if past is not None]
    uncached = {
        past.sha256
        for past in renders
        if not _holds(project.state.cached_render(past.sha256), past.sha256)
    }
    output = project.root / entry.output
    return entry.output if uncached and _content(output) in uncached else None


def _content(path: Path) -> str | None:
    """The sha256 of a regular file (links not followed); None for anything else."""
    try:
        return sha256_file(path) if stat.S_ISREG(path.lstat().st_mode) else None
    except OSError:
        return None


def _to_index(project: Project, entry: Entry) -> dict[str, Indexed]:
    """The cached renders of an entry about to go that the cache index must point at: its
    history's where the index has nothing for their request, its own video in any case."""
    found: dict[str, Indexed] = {}
    remembered = partial(project.state.remembered_render, project.lock_file)
    for past in entry.history:
        cached = _holds(project.state.cached_render(past.sha256), past.sha256)
        if cached and remembered(past.fingerprint) is None:
            found[past.fingerprint] = Indexed(past.fingerprint, past.sha256, past.size)
    own = entry.as_past()
    if own is None or not _holds(project.state.cached_render(own.sha256), own.sha256):
        return found
    if remembered(own.fingerprint) != (own.sha256, own.size):
        found[own.fingerprint] = Indexed(own.fingerprint, own.sha256, own.size)
    return found


def _holds(path: Path, sha256: str) -> bool:
    """True when `path` is a regular file with exactly the content `sha256`."""
    try:
        return stat.S_ISREG(path.lstat().st_mode) and sha256_file(path) == sha256
    except OSError:
        return False


def _index_files(state: StateDir) -> Iterator[tuple[Found, str | None]]:
    """Every cache-index file with the render it names (None: unreadable, or a temp file)."""
    folder = state.cache_index
    if folder.is_symlink() or not folder.is_dir():
        return
    for lock_dir in sorted(folder.iterdir()):
        if lock_dir.is_symlink() or not lock_dir.is_dir():
            continue
        for path, size in _regular_files(lock_dir):
            remembered = None
            if not path.name.startswith("."):
                remembered = state.remembered_render(Path(lock_dir.name), path.name)
            yield _found(state, path, size), remembered[0] if remembered else None


def _expired_memos(project: Project, garbage: Garbage, now: datetime) -> None:
    """Remembered jobs past the longest recall window (or unreadable, or temp files);
    those within it stay, and a lockfile that is gone keeps its own (see the module)."""
    folder, window = project.state.remembered_job_folders, longest_window()
    if folder.is_symlink() or not folder.is_dir():
        return
    for lock_dir in sorted(folder.iterdir()):
        if lock_dir.is_symlink() or not lock_dir.is_dir():
            continue
        lock_file, kept = project.root / lock_dir.name, 0
        for path, size in _regular_files(lock_dir):
            hidden = path.name.startswith(".")
            job = None if hidden else read_job(project.state, lock_file, tagged(path.name))
            if job is None or not recent(job, now, window):
                garbage.memos.append(_found(project.state, path, size))
                continue
            kept += 1
            if unseen(job, now):
                garbage.unseen.append((lock_file, job))
        if kept and not lock_file.exists():
            garbage.kept.append(
                f"{_found(project.state, lock_dir, 0).shown}/: {_count(kept, 'remembered job')}"
                f" of {lock_dir.name}, which is gone, still within the recall window: a "
                "checkout may bring back their requests without their jobs"
            )


def _unreferenced_cache(state: StateDir, referenced: set[str]) -> Iterator[Found]:
    """Render-cache files no render on record names (temp files left by a killed run too)."""
    if not state.render_cache.is_dir():
        return
    for path, size in _regular_files(state.render_cache):
        if path.name.startswith(".") or tagged(path.name) not in referenced:
            yield _found(state, path, size)


def _regular_files(folder: Path) -> Iterator[tuple[Path, int]]:
    """(path, size) of each regular file directly in `folder` (no symlinks), sorted."""
    if folder.is_symlink():
        return  # a folder kling-batch made is never a link: not ours to empty
    for path in sorted(folder.iterdir()):
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue  # removed meanwhile (a run finishing a temp file)
        if stat.S_ISREG(info.st_mode):
            yield path, info.st_size


def _found(state: StateDir, path: Path, size: int) -> Found:
    return Found(path, path.relative_to(state.root).as_posix(), size)


def _orphaned_outputs(
    project: Project, entries: list[Entry], referenced: set[str], kept: list[str]
) -> list[Found]:
    """Videos under `output_dir` no lockfile records; an only copy of a render is kept."""
    base = project.root / project.inventory.output_dir
    real, root = safefiles.real_path(base), project.root.resolve()
    if base.is_symlink() or real is None or not real.is_relative_to(root):
        kept.append(
            f"{project.inventory.output_dir} is a link or leads out of the manifest's folder: "
            "gc does not look there for orphaned outputs"
        )
        return []
    if real == root:
        kept.append(
            "output_dir is the manifest's own folder, where other files live too: gc does "
            "not look there for orphaned outputs"
        )
        return []
    if not project.lock_file.exists():
        if base.is_dir():
            kept.append(
                f"no {project.lock_file.name} beside the manifest: with no record of its "
                "renders, gc treats no output as orphaned"
            )
        return []
    recorded = {entry.output.casefold() for entry in entries}
    inputs = {sha for entry in project.entries() for sha in entry.assets.values()}
    found = []
    for path in _videos_under(base):
        shown = path.relative_to(project.root).as_posix()
        if shown.casefold() in recorded or path.resolve() in project.inventory.inputs:
            continue
        try:
            sha256, size = sha256_file(path), path.stat().st_size
        except FileNotFoundError:
            continue
        if sha256 in inputs:
            continue  # an input of a render on record
        if sha256 in referenced and not _holds(project.state.cached_render(sha256), sha256):
            kept.append(f"{shown}: the only copy of a render on record (the render cache has none)")
            continue
        found.append(Found(path, shown, size))
    return found


def _videos_under(base: Path) -> Iterator[Path]:
    """MP4 files under `base`, symlinks never followed; hidden ones and the gallery skipped."""
    for folder, dirs, files in os.walk(base):
        here = Path(folder)
        dirs[:] = sorted(
            name
            for name in dirs
            if not name.startswith(".") and not (here == base and name == GALLERY_FOLDER)
        )
        for name in sorted(files):
            path = here / name
            if not name.startswith(".") and not path.is_symlink() and _is_mp4(path):
                yield path


def _is_mp4(path: Path) -> bool:
    """True for a video as every render is: an MP4 `ftyp` box first, and a video track
    (a user's `.m4a`, `.heic` or `.avif` has the same box format and is no render)."""
    return safefiles.head(path, 12)[4:8] == b"ftyp" and has_video_track(path)


# -- removing -----------------------------------------------------------------------------


def remove_garbage(project: Project, garbage: Garbage) -> tuple[int, list[str], list[str]]:
    """Index what must stay, drop the entries (one atomic save), then remove the files;
    (bytes reclaimed, files that could not be removed, temp files a writer still holds:
    a run of a manifest with no lockfile yet, whose run lock gc did not know to take)."""
    try:
        for indexed in garbage.reindex.values():
            project.state.remember_render(
                project.lock_file,
                indexed.fingerprint,
                indexed.sha256,
                indexed.size,
                project.lock.api,  # the API that made it: only its runs restore it
            )
    except OSError as exc:
        raise RunError(f"cannot write the render cache index, nothing removed: {exc}") from None
    if garbage.entries:
        lock = project.lock.copy_tables()
        for key in garbage.entries:
            del lock.shots[key]
        try:
            lock.save(project.lock_file)
        except OSError as exc:
            raise RunError(f"cannot write {project.lock_file.name}: {exc}") from None
    reclaimed, failures, busy = 0, [], []
    for found in garbage.files:
        if found.path.name.startswith("."):  # a temp file: left while a writer holds it
            if remove_unused(found.path):
                reclaimed += found.size
            elif found.path.exists():
                busy.append(found.shown)
            continue
        try:
            found.path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            failures.append(f"{found.shown}: {exc.strerror or exc}")
            continue
        reclaimed += found.size
    _prune_folders(project.root / project.inventory.output_dir, garbage.outputs)
    for found in garbage.memos:  # a lockfile's folder of jobs, emptied
        with contextlib.suppress(OSError):
            found.path.parent.rmdir()
    now = datetime.now(UTC)
    for lock_file, job in garbage.unseen:
        first_seen(project.state, lock_file, job, now)
    return reclaimed, failures, busy


def _prune_folders(base: Path, removed: Iterable[Found]) -> None:
    """Remove the folders under `base` that removing outputs left empty."""
    for found in removed:
        folder = found.path.parent
        while folder != base and folder.is_relative_to(base):
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (or not ours to remove): stop climbing
            folder = folder.parent


# -- reporting ----------------------------------------------------------------------------


def report(project: Project, garbage: Garbage, console: Console, *, removing: bool) -> None:
    """What gc found, grouped, with sizes; then what it keeps on purpose."""
    verb = "Removing" if removing else "Would remove"
    output_dir = project.inventory.output_dir.rstrip("/") + "/"
    _section(
        console,
        f"orphaned outputs under {output_dir}, recorded by no entry gc keeps",
        garbage.outputs,
    )
    if garbage.entries:
        _print(
            console,
            f"Lockfile entries no longer in the manifest, settled ({len(garbage.entries)}, "
            f"from {project.lock_file.name}):",
        )
        for key in garbage.entries:
            _print(console, f"  {key} ({project.lock.shots[key].state})")
        note = _spend_note(project.lock, garbage.entries)
        if note is not None:
            _print(console, f"  {note}")
    _section(console, "render-cache files nothing refers to", garbage.cache)
    _section(console, "cache-index files whose render is gone", garbage.index)
    _section(console, "remembered jobs past their recall window, or unreadable", garbage.memos)
    for line in garbage.kept:
        _print(console, f"Kept: {line}")
    if garbage.empty:
        _print(console, f"Nothing to clean up for {project.manifest.name}.")
        return
    entries = f" and {_count(len(garbage.entries), 'lockfile entry')}" if garbage.entries else ""
    _print(
        console,
        f"{verb} {_count(len(garbage.files), 'file')} ({size_text(garbage.size)}){entries}.",
    )


def _section(console: Console, title: str, found: list[Found]) -> None:
    if not found:
        return
    total = size_text(sum(item.size for item in found))
    _print(console, f"{title[0].upper()}{title[1:]} ({len(found)}, {total}):")
    for item in found:
        _print(console, f"  {item.shown}  {size_text(item.size)}")


def _spend_note(lock: Lockfile, removed: Iterable[str]) -> str | None:
    """How much recorded spend leaves `kling-batch spend` with the entries `removed`, if
    any: what it sums with them less what it sums without (a job a merge left recorded
    under a kept entry too stays counted there)."""
    dropped = set(removed)
    kept = {key: entry for key, entry in lock.shots.items() if key not in dropped}
    before, after = lock_totals(lock), lock_totals(lock.model_copy(update={"shots": kept}))
    leaving, billed = before.submissions - after.submissions, before.billed - after.billed
    if not leaving and not billed:
        return None
    return (
        f"their {_count(leaving, 'submission')} ({usd(billed)} billed) leave "
        "`kling-batch spend`; the lockfile's version history keeps them"
    )


def size_text(size: int) -> str:
    """`512 B`, `1.4 kB`, `12.3 MB`, `1.2 GB` (powers of 1000)."""
    if size < 1000:
        return f"{size} B"
    value = float(size)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000
        if value < 1000 or unit == "TB":
            break
    return f"{value:.1f} {unit}"


def _count(number: int, noun: str) -> str:
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{number} {noun if number == 1 else plural}"


def _print(console: Console, line: str) -> None:
    # Paths and ids are shown as they are: no markup, never wrapped (logs are grepped).
    console.print(line, markup=False, highlight=False, soft_wrap=True)
