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
not) and compares device, inode, type, size, modification and change times, digested by
group, with the stamp's; it also matches the `include` globs again and reads the partials
again. Anything different, missing or refused means no answer: a full plan (or the plan of
an edit, below), which finds and reports the change. A refused lockfile name or state
folder is refused by that full plan.

A plan reads its files while it runs; a file changed during the plan must not be stamped
with facts newer than what the plan read. So every stamped fact's change time (which no
tool can set back, unlike a modification time) must be `SETTLE_NS` before the plan began;
otherwise no stamp is written and the next plan plans in full (and stamps). This trusts
the file system's clock to agree with this machine's within that margin, as the hash
cache does (a network file server whose clock runs behind could defeat it). A plan that
cannot be stamped removes the stamp it would replace.

When only the manifest's files differ (the manifest, its included shot files and the
folders only they are in), everything else as stamped, the stamp is what an edit is
planned against (`EditBase`, `plan.plan_edit`): it also keeps each shot of the stamped
plan (its plan cache key, the index of its first render when a template reads it, its
renders' ids, outputs, cost and warnings), so only the shots it does not know are
planned, the others counted unchanged. An edit leaves the stamp as it is.

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from kling_batch.cachefile import Blob, BlobWriter, Cold, read_cache, write_cache
from kling_batch.errors import UserError
from kling_batch.lockname import lock_path
from kling_batch.partials import partial_digest
from kling_batch.state import StateDir

if TYPE_CHECKING:
    from kling_batch.plan import Plan

_VERSION = "uptodate-4"  # 4: each shot's renders as `--max-renders` counts them
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


class KnownShot(NamedTuple):
    """A shot of the stamped plan, every render of it unchanged: the index of its first
    render when a template of it reads the index (else None), each render's id and
    output, their cost, their warnings as (render id, text), and how many renders
    `--max-renders` counts for it (`expand.count_renders`: more than it has when its
    matrix excludes some, or includes one into a combination)."""

    start: int | None
    ids: list[str]
    outputs: list[str]
    cost: str
    warnings: list[list[str]]
    counted: int


@dataclass(frozen=True)
class EditBase:
    """What an edit to the manifest is planned against (`plan.plan_edit`): the stamped
    plan's shared context (`plan_cache.context_key`) and its shots by plan cache key. All
    else the stamped answer depended on is as stamped: the lockfile, every input and
    output and their folders, the partials; only the manifest's files changed."""

    context: str
    shots: dict[str, KnownShot]
    # The lockfile's name and stat facts as stamped (`lock_unchanged`).
    lock: tuple[str, str] = ("", "")

    def lock_unchanged(self, root: Path) -> bool:
        """True when the lockfile still has the stat facts stamped. Asked after the edit's
        plan read it: `look` saw it as stamped before, and a lockfile written in between
        (a run) would decide the edit's new shots by its new records and the stamp's
        shots by their old ones, a mix no plan of one lockfile makes."""
        name, facts = self.lock
        return _facts(root, _names(name), os.stat) == facts


# The stamp's groups of files, in the order they are looked at (`_FOLDERS`: by `lstat`).
_LOCK, _INPUTS, _OUTPUTS, _FOLDERS, _MANIFESTS, _MANIFEST_FOLDERS = range(6)


def look(key: StampKey) -> Lines | EditBase | None:
    """The report of the stamped plan when nothing it depended on changed; what an edit is
    planned against when only the manifest's files did; else None."""
    path = key.stamp_path()
    cached = read_cache(path, _VERSION) if path is not None else None
    if cached is None:
        return None
    stamp, blob = cached
    root = key.manifest.parent.resolve()
    try:
        if stamp["key"] != key.text() or not _partials_unchanged(root, stamp["partials"]):
            return None
        differing = _differing(root, stamp["groups"], stamp["facts"])
        if differing is None or differing - {_MANIFESTS, _MANIFEST_FOLDERS}:
            return None
        if not differing and _included(key.manifest, stamp["include"]) == stamp["included"]:
            return [(str(text), str(style)) for text, style in stamp["lines"]]
        return _edit_base(stamp, blob)
    except UserError:
        return None  # the globs no longer match: the full plan says what is wrong
    except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError):
        return None  # a stamp of another shape is no stamp


def _partials_unchanged(root: Path, partials: dict[str, str]) -> bool:
    return all(partial_digest(root, name) == digest for name, digest in partials.items())


def _edit_base(stamp: dict[str, Any], blob: Blob) -> EditBase | None:
    """The stamp's shots (kept in its blob, read only for an edit); None without them."""
    where = stamp.get("shots")
    if where is None:
        return None
    rows = json.loads(Cold(blob, *where).read())
    shots = {key: KnownShot._make(row) for key, row in rows.items()}
    lock = (str(stamp["groups"][_LOCK][1]), str(stamp["facts"][_LOCK]))
    return EditBase(str(stamp["context"]), shots, lock)


def record(plan: Plan, key: StampKey, lines: Lines | None, started_ns: int) -> None:
    """Stamp `plan`'s answer (`lines`, None when it has rows to list) if its run would do
    nothing and every file it depends on settled before it began (`started_ns`); else
    remove the stamp it would replace."""
    path = key.stamp_path()
    if path is None:
        return
    stamp = _stamp(plan, key, lines, started_ns) if not plan.has_work else None
    if stamp is not None:
        write_cache(path, _VERSION, *stamp)
        return
    with contextlib.suppress(OSError):  # a read-only checkout keeps no stamp to remove
        path.unlink(missing_ok=True)


def restamp(plan: Plan, key: StampKey, lines: Lines | None, started_ns: int) -> None:
    """After a plan of an edit that found the stamped plan again (`Settled.whole`: every
    stamped shot as it was, no other, nothing to do; its report `lines` the stamped ones),
    the stamp with its manifest files' facts as they are now, so the next check is
    answered from `stat` alone again rather than planned as an edit each time (a touched
    file, a branch switched and back, a comment). Left as it is unless those files settled
    before the plan began (`started_ns`) and `include` still matches the files stamped."""
    path = key.stamp_path()
    settled = plan.settled
    if path is None or lines is None or settled is None or not settled.whole or plan.has_work:
        return
    cached = read_cache(path, _VERSION)
    if cached is None:
        return
    stamp, blob = cached
    try:
        if [(str(text), str(style)) for text, style in stamp["lines"]] != lines:
            return  # another answer (a warning's wording, say): the full plan stamps it
        refreshed = _refreshed(stamp, blob, key, list(plan.loaded.manifest.include), started_ns)
    except UserError:
        return  # the globs no longer match: the next plan says what is wrong
    except (KeyError, TypeError, ValueError, AttributeError):
        return  # a stamp of another shape: left for the next full plan to replace
    if refreshed is not None:
        write_cache(path, _VERSION, *refreshed)


def _refreshed(
    stamp: dict[str, Any], blob: Blob, key: StampKey, include: list[str], started_ns: int
) -> tuple[dict[str, Any], BlobWriter] | None:
    """`restamp`'s stamp and blob, or None when it must be left as it is."""
    if stamp["key"] != key.text() or stamp["include"] != include:
        return None
    if _included(key.manifest, include) != stamp["included"]:
        return None
    root, facts = key.manifest.parent.resolve(), list(stamp["facts"])
    for group in (_MANIFESTS, _MANIFEST_FOLDERS):
        look, names = stamp["groups"][group]
        got = _facts(root, _names(names), _LOOKS[look], settled_before=started_ns - SETTLE_NS)
        if got is None:
            return None
        facts[group] = got
    writer = BlobWriter()
    if stamp.get("shots") is not None:
        stamp["shots"] = writer.add(Cold(blob, *stamp["shots"]).read())
    return {**stamp, "facts": facts}, writer


def _stamp(
    plan: Plan, key: StampKey, lines: Lines | None, started_ns: int
) -> tuple[dict[str, Any], BlobWriter] | None:
    """The stamp's payload and blob, or None when the answer cannot be stamped."""
    loaded, root = plan.loaded, plan.loaded.root
    if lines is None or plan.lock_path.parent != root or plan.settled is not None:
        return None
    try:
        included = _included(loaded.path, loaded.manifest.include)
    except UserError:
        return None
    if included != [_shown(root, path) for path in loaded.included]:
        return None  # the globs match otherwise than when the plan read them
    looked: dict[str, _Looked] = {}  # what `_groups` lstat'ed, by name
    groups = _groups(plan, looked)
    if groups is None:
        return None
    settled = started_ns - SETTLE_NS
    facts = [
        _facts(root, names, _LOOKS[look], settled_before=settled, looked=looked)
        for look, names in groups
    ]
    if None in facts:
        return None
    payload = {
        "key": key.text(),
        "include": list(loaded.manifest.include),
        "included": included,
        "partials": dict(plan.partials),
        "groups": [[look, "\0".join(names)] for look, names in groups],
        "facts": facts,
        "lines": lines,
    }
    return _with_shots(plan, payload)


def _with_shots(plan: Plan, payload: dict[str, Any]) -> tuple[dict[str, Any], BlobWriter]:
    """The payload with the plan's shots (`KnownShot`) in a blob, for an edit to be planned
    against; without them when the plan's items do not follow its shots."""
    from kling_batch.plan_cache import context_key  # loaded by the plan already

    blob = BlobWriter()
    if sum(unit.renders for unit in plan.units) != len(plan.items):
        return payload, blob
    shots, at = {}, 0
    for unit in plan.units:
        items = plan.items[at : at + unit.renders]
        at += unit.renders
        ids = [item.render.id for item in items]
        outputs = [str(item.render.output) for item in items]
        cost = str(sum((item.render.cost for item in items), Decimal(0)))
        said = [[item.render.id, text] for item in items for text in item.render.warnings]
        shots[unit.key] = [unit.start, ids, outputs, cost, said, unit.counted]
    payload["context"] = context_key(plan.loaded)
    payload["shots"] = blob.add(json.dumps(shots).encode())
    return payload, blob


def _groups(plan: Plan, looked: dict[str, _Looked]) -> list[tuple[str, list[str]]] | None:
    """The files and folders a plan's answer depends on, relative to the manifest's
    folder, as named (never normalised: the file system resolves a link before a `..`
    after it), in six sorted groups: (how each is looked at, names). Those an edit to the
    manifest must leave as they were come first (the lockfile, the inputs, the outputs,
    their folders), then the manifest's own files and their other folders (see
    `_MANIFESTS`). None when a name is absolute or a link leads out. `looked` gets the
    `lstat` of each file and folder it looked at for links."""
    loaded, root = plan.loaded, plan.loaded.root
    manifests = {loaded.path.name, *(_shown(root, path) for path in loaded.included)}
    inputs: set[str] = set()
    outputs: set[str] = set()
    for item in plan.items:
        render = item.render
        outputs.add(str(render.output))
        inputs.update(a.ref for a in render.assets.values() if a.kind == "local")
        inputs.update(a.ref for a in render.unsent.values())
    files = [[plan.lock_path.name], sorted(inputs), sorted(outputs), sorted(manifests)]
    if any(name.startswith("/") for group in files for name in group):
        return None
    lock, inputs_, outputs_, manifests_ = files
    folders = _folders_of(root, [*lock, *inputs_, *outputs_], looked)
    theirs = _folders_of(root, manifests_, looked)
    if folders is None or theirs is None:
        return None
    taken = set(folders)
    others = [folder for folder in theirs if folder not in taken]
    first = [("stat", lock), ("stat", inputs_), ("stat", outputs_), ("lstat", folders)]
    return [*first, ("stat", manifests_), ("lstat", others)]


def _folders_of(root: Path, files: Iterable[str], looked: dict[str, _Looked]) -> list[str] | None:
    """Every folder between the manifest's folder and each of `files`, and, for each of
    those (or of the files) that is a link, every link met on the way to where it leads
    and every folder there (a link pointed elsewhere, or a folder swapped for a link,
    moves its facts); None when a link leads out, dangles or loops. `looked` gets the
    `lstat` of each file and folder named, by name."""
    folders = _ancestors(files)
    base = str(root.resolve())
    for name in sorted({*files, *folders}):
        try:  # a str path: thousands of them, no Path objects
            info = looked[name] = _Looked.of(os.lstat(f"{base}/{name}"))
            if not stat.S_ISLNK(info.st_mode):
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


_LOOKS: dict[str, Callable[[str], os.stat_result]] = {"stat": os.stat, "lstat": os.lstat}
_DIGESTED = 4096


class _Looked(NamedTuple):
    """What the stamp keeps of an `lstat` between looking for links and digesting the
    facts: a third of an `os.stat_result`, for each of 100,000 files (issue 13)."""

    st_dev: int
    st_ino: int
    st_mode: int
    st_size: int
    st_mtime_ns: int
    st_ctime_ns: int

    @classmethod
    def of(cls, info: os.stat_result) -> _Looked:
        """The facts of `info`."""
        return cls(
            info.st_dev, info.st_ino, info.st_mode, info.st_size, info.st_mtime_ns, info.st_ctime_ns
        )


def _differing(root: Path, groups: Sequence[Any], facts: Sequence[str]) -> set[int] | None:
    """The groups (by index) whose files no longer have the stat facts stamped, looked at
    in order: the first difference among those an edit must leave as they were ends it.
    None for groups of another shape."""
    if len(groups) != len(facts) or len(groups) != _MANIFEST_FOLDERS + 1:
        return None
    differing: set[int] = set()
    for index, ((look, names), got) in enumerate(zip(groups, facts, strict=True)):
        if _facts(root, _names(names), _LOOKS[look]) != got:
            differing.add(index)
            if index < _MANIFESTS:
                break
    return differing


def _facts(
    root: Path,
    names: Sequence[str],
    look: Callable[[str], os.stat_result],
    settled_before: int | None = None,
    looked: Mapping[str, _Looked] | None = None,
) -> str | None:
    """The digest of the stat facts (by `look`) of every one of `names`, in order; None
    when one cannot be stat'ed or, given `settled_before`, changed since then. `looked`:
    the `lstat` of names just looked at, taken for theirs where it is (an `lstat` is
    a `stat` of anything but a link): stamping 10,000 renders stat'ed each input and
    output twice."""
    base = f"{root}{os.sep}"
    digest, parts = hashlib.sha256(), []
    known = looked if looked is not None else {}
    follows = look is os.stat
    for name in names:
        info: _Looked | os.stat_result | None = known.get(name)
        try:
            if info is None or (follows and stat.S_ISLNK(info.st_mode)):
                info = look(base + name)
        except (OSError, ValueError):
            return None
        if settled_before is not None and info.st_ctime_ns >= settled_before:
            return None
        parts.append(
            f"{name}\0{info.st_dev} {info.st_ino} {info.st_mode} {info.st_size} "
            f"{info.st_mtime_ns} {info.st_ctime_ns}\n"
        )
        if len(parts) == _DIGESTED:  # digested in pieces: never 100,000 lines at once
            digest.update("".join(parts).encode())
            parts.clear()
    digest.update("".join(parts).encode())
    return digest.hexdigest()


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
