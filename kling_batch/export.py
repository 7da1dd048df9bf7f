"""`kling-batch export`: copy finished renders (or the picks) out of the project, readably named.

Real copies, never hardlinks: an export is handed on and edited, and an edit must never
reach the render the lockfile vouches for. Each copy lands atomically (temp file, rename).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from kling_batch import ui
from kling_batch.errors import RunError, UserError
from kling_batch.gallery import card_state
from kling_batch.picks import picks_path, read_picks
from kling_batch.plan import build_plan


@dataclass(frozen=True, slots=True)
class Exported:
    """What an export did: files written, files already there, renders it could not copy."""

    copied: tuple[Path, ...]
    unchanged: tuple[Path, ...]
    skipped: tuple[tuple[str, str], ...]


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
    copied: list[Path] = []
    unchanged: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for item in plan.items:
        render = item.render
        if wanted is not None and render.id not in wanted:
            continue
        state, reason = card_state(item, plan.lock.shots.get(render.id))
        if state != "done":
            skipped.append((render.id, f"{state}: {reason}" if reason else state))
            continue
        target = dest / export_name(render.id, render.output)
        source = plan.loaded.root / render.output
        (copied if _copy(source, target) else unchanged).append(target)
    if wanted is not None:
        planned = {item.render.id for item in plan.items}
        skipped.extend((pick, "no longer in the manifest") for pick in sorted(wanted - planned))
    return Exported(tuple(copied), tuple(unchanged), tuple(skipped))


def _copy(source: Path, target: Path) -> bool:
    """Copy `source` to `target` (a new file, atomically); False when it is already there."""
    if target.is_file() and not target.samefile(source) and _same_bytes(source, target):
        return False
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
    return True


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
    ui.say(
        f"Exported {total} {what} to {dest} ({len(result.copied)} copied, "
        f"{len(result.unchanged)} already there)"
    )
    if not result.skipped:
        return 0
    listed = ", ".join(f"{render_id} ({why})" for render_id, why in result.skipped)
    if picked:
        ui.say(f"error: {len(result.skipped)} picked not exported: {listed}")
        return 1
    ui.say(f"Skipped {len(result.skipped)} not finished: {listed}")
    return 0
