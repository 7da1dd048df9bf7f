"""The up-to-date stamp: a `plan` with nothing to do, answered again from `stat` alone.

A make-style check runs on every save and in every CI job, and when nothing changed its
answer is the one it gave last time (issue 13). After a plan whose run would do nothing
and whose table lists no render (every render unchanged, more of them than are listed),
`plan` stamps the answer in `.kling-batch/<lock name>.uptodate.json`: the report's lines,
and every file and folder the answer depends on:

- the manifest, the shot files its `include` globs matched, and the lockfile;
- every local input (by the path the manifest names: a link pointed elsewhere is a change;
  also those the workflow does not send) and every output;
- the folders below the manifest's folder that hold those, and where each link among them
  leads (a folder swapped for a link, or an entry added, removed or renamed in one,
  changes the folder's facts);
- the template partials the renders read, by content (`kling_batch.partials`).

The next `plan` with the same options stats each of them (files through links, folders
not) and compares device, inode, type, size, modification and change times, digested in
order, with the stamp's; it also matches the `include` globs again and reads the partials
again. Anything different, missing or refused means no answer: a full plan, which finds and
reports the change. A refused lockfile name or state folder is refused by that full plan.

A plan reads its files while it runs; a file changed during the plan must not be stamped
with facts newer than what the plan read. So every stamped fact's change time (which no
tool can set back, unlike a modification time) must be `SETTLE_NS` before the plan began;
otherwise no stamp is written and the next plan plans in full (and stamps). This trusts
the file system's clock to agree with this machine's within that margin, as the hash
cache does (a network file server whose clock runs behind could defeat it). A plan that
cannot be stamped removes the stamp it would replace.

Like every cache it is keyed by what kling-batch is made of, never needed, and ignored
when damaged (`kling_batch.cachefile`). Only `plan` in its default table report, without
`--only`, `--force`, `--out`, `--compare` or `--resubmit-uncertain`, uses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kling_batch.cachefile import read_cache, write_cache
from kling_batch.errors import UserError
from kling_batch.lockname import lock_path
from kling_batch.partials import partial_digest
from kling_batch.state import StateDir

if TYPE_CHECKING:
    from kling_batch.plan import Plan

_VERSION = "uptodate-2"
# How long before a plan began a stamped file must have last changed (the hash cache's
# rule too: file systems with coarse times may show a later change at the same time).
SETTLE_NS = 2_000_000_000
# Report lines: text and rich style (`kling_batch.reports.quiet_lines`).
Lines = list[tuple[str, str]]


@dataclass(frozen=True)
class StampKey:
    """The options a stamped answer holds for (the manifest's folder is the state's)."""

    manifest: Path
    emulator: bool
    max_renders: int
    remote: str | None

    def text(self) -> str:
        return json.dumps([self.manifest.name, self.emulator, self.max_renders, self.remote])

    def stamp_path(self) -> Path | None:
        """Where the stamp lives; None when the lockfile's name or the state folder would
        be refused (the full plan says why)."""
        try:
            lock = lock_path(self.manifest, emulator=self.emulator)
        except UserError:
            return None
        state = StateDir(self.manifest.parent)
        return state.uptodate(lock) if state.usable() else None


def answer(key: StampKey) -> Lines | None:
    """The report of the stamped plan, when nothing it depended on changed; else None."""
    path = key.stamp_path()
    cached = read_cache(path, _VERSION) if path is not None else None
    if cached is None:
        return None
    stamp, _ = cached
    root = key.manifest.parent.resolve()
    try:
        fine = (
            stamp["key"] == key.text()
            and _unchanged(root, stamp["files"], stamp["folders"], stamp["facts"])
            and _included(key.manifest, stamp["include"]) == stamp["included"]
            and all(partial_digest(root, n) == d for n, d in stamp["partials"].items())
        )
        lines = [(str(text), str(style)) for text, style in stamp["lines"]]
    except UserError:
        return None  # the globs no longer match: the full plan says what is wrong
    except (KeyError, TypeError, ValueError, AttributeError):
        return None  # a stamp of another shape is no stamp
    return lines if fine else None


def record(plan: Plan, key: StampKey, lines: Lines | None, started_ns: int) -> None:
    """Stamp `plan`'s answer (`lines`, None when it has rows to list) if its run would do
    nothing and every file it depends on settled before it began (`started_ns`); else
    remove the stamp it would replace."""
    path = key.stamp_path()
    if path is None:
        return
    stamp = _stamp(plan, key, lines, started_ns) if not plan.has_work else None
    if stamp is not None:
        write_cache(path, _VERSION, stamp)
        return
    with contextlib.suppress(OSError):  # a read-only checkout keeps no stamp to remove
        path.unlink(missing_ok=True)


def _stamp(
    plan: Plan, key: StampKey, lines: Lines | None, started_ns: int
) -> dict[str, Any] | None:
    """The stamp's payload, or None when the answer cannot be stamped."""
    loaded, root = plan.loaded, plan.loaded.root
    if lines is None or plan.lock_path.parent != root:
        return None
    try:
        included = _included(loaded.path, loaded.manifest.include)
    except UserError:
        return None
    if included != [_shown(root, path) for path in loaded.included]:
        return None  # the globs match otherwise than when the plan read them
    groups = _depended_on(plan)
    folders = _folders_of(root, [n for g in groups for n in g]) if groups is not None else None
    if groups is None or folders is None:
        return None
    settled = started_ns - SETTLE_NS
    looks = [*((os.stat, group) for group in groups), (os.lstat, folders)]
    facts = [_facts(root, names, look, settled_before=settled) for look, names in looks]
    if None in facts:
        return None
    return {
        "key": key.text(),
        "include": list(loaded.manifest.include),
        "included": included,
        "partials": dict(plan.partials),
        "files": ["\0".join(group) for group in groups],
        "folders": "\0".join(folders),
        "facts": facts,
        "lines": lines,
    }


def _depended_on(plan: Plan) -> list[list[str]] | None:
    """The files a plan's answer depends on, relative to the manifest's folder, in three
    sorted groups, most often changed first (the manifest, its included files and the
    lockfile; the inputs; the outputs), as named (never normalised: the file system
    resolves a link before a `..` after it); None when one is absolute."""
    loaded = plan.loaded
    root = loaded.root
    head = {loaded.path.name, plan.lock_path.name}
    head.update(_shown(root, path) for path in loaded.included)
    inputs: set[str] = set()
    outputs: set[str] = set()
    for item in plan.items:
        render = item.render
        outputs.add(str(render.output))
        inputs.update(a.ref for a in render.assets.values() if a.kind == "local")
        inputs.update(a.ref for a in render.unsent.values())
    groups = [sorted(head), sorted(inputs), sorted(outputs)]
    if any(name.startswith("/") for group in groups for name in group):
        return None
    return groups


def _folders_of(root: Path, files: Iterable[str]) -> list[str] | None:
    """Every folder between the manifest's folder and each of `files`, and, for each of
    those (or of the files) that is a link, every link met on the way to where it leads
    and every folder there (a link pointed elsewhere, or a folder swapped for a link,
    moves its facts); None when a link leads out, dangles or loops."""
    folders = _ancestors(files)
    base = str(root.resolve())
    for name in sorted({*files, *folders}):
        try:  # a str path: thousands of them, no Path objects
            if not stat.S_ISLNK(os.lstat(f"{base}/{name}").st_mode):
                continue
            way = _way(base, name)
        except (OSError, ValueError):
            return None
        if way is None:
            return None
        links, led_to = way
        folders |= links | _ancestors([led_to])
        if Path(base, led_to).is_dir():
            folders.add(led_to)
    return sorted(folders)


# Links followed resolving one path before they count as a loop.
_HOPS = 40


def _way(base: str, name: str) -> tuple[set[str], str] | None:
    """`name` resolved under `base` step by step: the links met and where it leads, both
    relative to `base`; None when it leads out or the links loop. (`os.path.realpath`
    gives only the end; a link met halfway must be stamped too.)"""
    pending, at, links, hops = name.split("/"), list[str](), set[str](), 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not at:
                return None
            at.pop()
            continue
        path = "/".join([*at, part])
        if not stat.S_ISLNK(os.lstat(f"{base}/{path}").st_mode):
            at.append(part)
            continue
        links.add(path)
        hops += 1
        if hops > _HOPS:
            return None
        target = str(Path(base, path).readlink())
        if target.startswith("/"):
            if not target.startswith(f"{base}/"):
                return None
            at, target = [], target.removeprefix(f"{base}/")
        pending = [*target.split("/"), *pending]
    return links, "/".join(at)


def _ancestors(files: Iterable[str]) -> set[str]:
    """Every folder between the manifest's folder and each of `files` (relative, `/`)."""
    folders: set[str] = set()
    for name in files:
        folder = name.rpartition("/")[0]
        while folder and folder not in folders:
            folders.add(folder)
            folder = folder.rpartition("/")[0]
    return folders


def _unchanged(root: Path, files: Sequence[str], folders: str, facts: Sequence[str]) -> bool:
    """True when each group of files (through links) and the folders (not) have the stat
    facts stamped; looked at in order, the first difference ends it."""
    looks = [*((os.stat, _names(group)) for group in files), (os.lstat, _names(folders))]
    if len(looks) != len(facts):
        return False
    pairs = zip(looks, facts, strict=True)
    return all(_facts(root, names, look) == got for (look, names), got in pairs)


def _facts(
    root: Path,
    names: Sequence[str],
    look: Callable[[str], os.stat_result],
    settled_before: int | None = None,
) -> str | None:
    """The digest of the stat facts (by `look`) of every one of `names`, in order; None
    when one cannot be stat'ed or, given `settled_before`, changed since then."""
    base = f"{root}{os.sep}"
    parts = []
    for name in names:
        try:
            info = look(base + name)
        except (OSError, ValueError):
            return None
        if settled_before is not None and info.st_ctime_ns >= settled_before:
            return None
        parts.append(
            f"{name}\0{info.st_dev} {info.st_ino} {info.st_mode} {info.st_size} "
            f"{info.st_mtime_ns} {info.st_ctime_ns}\n"
        )
    return hashlib.sha256("".join(parts).encode()).hexdigest()


def _included(manifest: Path, patterns: Sequence[str]) -> list[str]:
    """The shot files `include` matches now, relative to the manifest's folder."""
    if not patterns:
        return []
    from kling_batch.manifest import included_files  # only manifests that include any

    return [_shown(manifest.parent, path) for path in included_files(manifest, list(patterns))]


def _shown(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _names(joined: str) -> list[str]:
    return joined.split("\0") if joined else []
