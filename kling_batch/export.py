"""`kling-batch export`: copy finished renders (or the picks) out of the project, readably named.

Real copies, never hardlinks: an export is handed on and edited, and an edit must never
reach the render the lockfile vouches for. Each copy lands atomically (temp file, rename).

A file already at a target is replaced only when its bytes are a render of that id on record
(the current one or one in its history: an earlier export); anything else (an edit, another
render's video, a file of the user's) is kept and reported, and the export exits 1. A
destination inside the project's output folders (`output_dir` or its `-emulator` twin) or its
state folder is refused before anything is copied: there a target may be another render.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from kling_batch import state, ui
from kling_batch.canonical import sha256_file
from kling_batch.errors import RunError, UserError
from kling_batch.gallery import card_state
from kling_batch.lockfile import Entry
from kling_batch.picks import picks_path, read_picks
from kling_batch.plan import build_plan


@dataclass(frozen=True, slots=True)
class Exported:
    """What an export did: files written, files already there, renders it could not copy, and
    targets it left alone (render id, file) because they hold no render of that id on record."""

    copied: tuple[Path, ...]
    unchanged: tuple[Path, ...]
    skipped: tuple[tuple[str, str], ...]
    kept: tuple[tuple[str, Path], ...] = ()


def export_name(render_id: str, output: PurePosixPath) -> str:
    """`teaser-trail-shoe-pro-take1.mp4`: the render id, with the output's extension."""
    return render_id + (output.suffix or ".mp4")


def export_renders(
    manifest: Path, dest: Path, *, picked: bool = False, emulator: bool = False
) -> Exported:
    """Copy each finished render (or each picked one) to `dest` as `<id>.mp4`.

    Renders not finished (or whose file no longer matches the lockfile) are skipped and
    listed; with `picked`, a pick that cannot be copied is an error after the rest are copied.
    """
    plan = build_plan(manifest, now=datetime.now(UTC), emulator=emulator)
    wanted = read_picks(manifest) if picked else None
    if wanted is not None and not wanted:
        raise UserError(
            "no renders are picked; pick some with `kling-batch pick`", file=picks_path(manifest)
        )
    if dest.exists() and not dest.is_dir():
        raise UserError(f"{dest} is not a folder")
    _refuse_project_folders(dest, plan.loaded.root, plan.loaded.manifest.output_dir, emulator)
    copied: list[Path] = []
    unchanged: list[Path] = []
    skipped: list[tuple[str, str]] = []
    kept: list[tuple[str, Path]] = []
    for item in plan.items:
        render = item.render
        if wanted is not None and render.id not in wanted:
            continue
        entry = plan.lock.shots.get(render.id)
        card, reason = card_state(item, entry)
        if card != "done":
            skipped.append((render.id, f"{card}: {reason}" if reason else card))
            continue
        target = dest / export_name(render.id, render.output)
        source = plan.loaded.root / render.output
        found = _existing(source, target, entry)
        if found == "foreign":
            kept.append((render.id, target))
            continue
        if found != "same":
            _copy(source, target)
        (copied if found != "same" else unchanged).append(target)
    if wanted is not None:
        planned = {item.render.id for item in plan.items}
        skipped.extend((pick, "no longer in the manifest") for pick in sorted(wanted - planned))
    return Exported(tuple(copied), tuple(unchanged), tuple(skipped), tuple(kept))


def _refuse_project_folders(dest: Path, root: Path, output_dir: str, emulator: bool) -> None:
    """Exit 2 when `dest` is (or lies inside) an output folder or the state folder: a target
    there may be another render's file (`a` exported over `b`'s render `a.mp4`)."""
    base = output_dir.rstrip("/")
    if emulator:
        base = base.removesuffix("-emulator")
    where = dest.resolve()
    for folder in (root / base, root / f"{base}-emulator", root / state.NAME):
        if where.is_relative_to(folder.resolve()):
            raise UserError(
                f"{dest} is in the project's own folder {folder}, where a target may be "
                "another render's file; export to a folder outside it"
            )


def _existing(source: Path, target: Path, entry: Entry | None) -> str:
    """What is at `target`: "none" (nothing, or not a file), "same" (a copy of `source`),
    "earlier" (a render of this id on record, or a link to `source`) or "foreign" (else)."""
    if not target.is_file():
        return "none"
    if target.samefile(source):
        return "earlier"  # a hardlink: replaced by a copy, so an edit cannot reach the render
    if _same_bytes(source, target):
        return "same"
    on_record = [(p.size, p.sha256) for p in entry.history] if entry else []
    if entry and entry.output_sha256 is not None and entry.output_size is not None:
        on_record.append((entry.output_size, entry.output_sha256))
    size = target.stat().st_size
    digests = {digest for known, digest in on_record if known == size}
    return "earlier" if digests and sha256_file(target) in digests else "foreign"


def _copy(source: Path, target: Path) -> None:
    """Copy `source` to `target` (a new file, atomically)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp = Path(name)
        try:
            shutil.copyfile(source, tmp)  # copies the bytes: a new inode, never a link
            tmp.replace(target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise RunError(f"cannot copy {source.name} to {target}: {exc}") from None


def _same_bytes(first: Path, second: Path) -> bool:
    if first.stat().st_size != second.stat().st_size:
        return False
    with open(first, "rb") as a, open(second, "rb") as b:
        while True:
            chunk = a.read(1 << 20)
            if chunk != b.read(1 << 20):
                return False
            if not chunk:
                return True


def export_command(manifest: Path, dest: Path, *, picked: bool, emulator: bool) -> int:
    """`kling-batch export`: copy, list the files on stdout, report on stderr; the exit code."""
    result = export_renders(manifest, dest, picked=picked, emulator=emulator)
    for path in (*result.copied, *result.unchanged):
        ui.write_data(f"{path}\n")
    total = len(result.copied) + len(result.unchanged)
    what = "picked renders" if picked else "renders"
    kept = f", {len(result.kept)} kept" if result.kept else ""
    ui.say(
        f"Exported {total} {what} to {dest} ({len(result.copied)} copied, "
        f"{len(result.unchanged)} already there{kept})"
    )
    for render_id, path in result.kept:
        ui.say(
            f"kept: {path} differs from every render of {render_id} on record (edited?); "
            "remove it to export again"
        )
    code = 1 if result.kept else 0
    if not result.skipped:
        return code
    listed = ", ".join(f"{render_id} ({why})" for render_id, why in result.skipped)
    if picked:
        ui.say(f"error: {len(result.skipped)} picked not exported: {listed}")
        return 1
    ui.say(f"Skipped {len(result.skipped)} not finished: {listed}")
    return code
