"""`kling-batch pull`: the outputs of every done render on record, fetched from the team's
shared store (a fresh clone's first command: the lockfile says what exists, the store
holds the videos).

Only what is missing or changed is fetched: an output already holding its recorded bytes
stays. Each arrives the way a download does (`remote_files.fetch_render`: streamed,
verified against the recorded hash, kept in the render cache, renamed into place). Output
paths come from the lockfile, which may come from someone else: only paths inside the
manifest's output folder are written, links followed (a folder link there that leads out
of it, or an output folder that leads out of the project, refuses the render). Holds the
run lock; the lockfile is not changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import anyio
import anyio.to_thread

from kling_batch import ui
from kling_batch.canonical import sha256_file
from kling_batch.errors import RemoteError
from kling_batch.gc import size_text
from kling_batch.lockfile import Entry, load_lockfile
from kling_batch.push import WORKERS, StoreProject, store_project
from kling_batch.remote import RemoteStore, open_store
from kling_batch.remote_files import fetch_render
from kling_batch.runlock import hold_run_lock
from kling_batch.safefiles import lies_inside, real_path


@dataclass(frozen=True, slots=True)
class _Wanted:
    """A done render's output and the content it must hold."""

    render_id: str
    output: PurePosixPath
    sha256: str
    size: int
    fingerprint: str


def pull_command(manifest: Path, *, emulator: bool, remote: str | None) -> int:
    """Fetch every done render's missing output from the store; the exit code."""
    project = store_project(manifest, emulator=emulator, remote=remote)
    with hold_run_lock(project.state, project.lock_file, then="pull again"):
        entries = load_lockfile(project.lock_file).shots
        wanted, refused = _wanted(project, entries)
        return anyio.run(_pull_all, project, wanted, refused)


def _wanted(project: StoreProject, entries: dict[str, Entry]) -> tuple[list[_Wanted], list[str]]:
    """The done renders to have in place, and the ids whose output path is refused."""
    wanted, refused = [], []
    folder = PurePosixPath(project.output_dir).parts
    root = real_path(project.root)
    base = real_path(project.root / project.output_dir)
    in_project = root is not None and base is not None and base.is_relative_to(root)
    for render_id, entry in sorted(entries.items()):
        if entry.state != "done" or not entry.output_sha256 or entry.output_size is None:
            continue
        output = PurePosixPath(entry.output)
        as_text = output.parts[: len(folder)] == folder and not output.is_absolute()
        # Links followed too: a folder link in the output folder must not lead the write out.
        if not (
            as_text and in_project and lies_inside(project.root, project.output_dir, entry.output)
        ):
            refused.append(render_id)
            continue
        item = _Wanted(render_id, output, entry.output_sha256, entry.output_size, entry.fingerprint)
        wanted.append(item)
    return wanted, refused


async def _pull_all(project: StoreProject, wanted: list[_Wanted], refused: list[str]) -> int:
    store = open_store(project.url)
    await store.probe()
    fetched: list[_Wanted] = []
    placed = 0
    outside = "its output path is outside the output folder"
    failures = [(render_id, outside) for render_id in refused]
    limiter = anyio.CapacityLimiter(WORKERS)

    async def one(item: _Wanted) -> None:
        nonlocal placed
        async with limiter:
            if await anyio.to_thread.run_sync(_in_place, project.root / item.output, item.sha256):
                placed += 1
                return
            problem = await _fetch(store, project, item)
        if problem is None:
            fetched.append(item)
        else:
            failures.append((item.render_id, problem))

    async with anyio.create_task_group() as group:
        for item in wanted:
            group.start_soon(one, item)
    size = size_text(sum(item.size for item in fetched))
    ui.say(f"Pulled {len(fetched)} render(s) ({size}) from {store.url}; {placed} already in place.")
    for render_id, why in sorted(failures):
        ui.say(f"- not pulled: {render_id}: {why}")
    return 1 if failures else 0


async def _fetch(store: RemoteStore, project: StoreProject, item: _Wanted) -> str | None:
    try:
        problem = await fetch_render(store, project.state, item.output, item.sha256)
    except RemoteError as exc:
        return str(exc)
    if problem is None:
        try:  # the render cache's index: a lost lockfile still restores it (best effort)
            state = project.state
            state.remember_render(project.lock_file, item.fingerprint, item.sha256, item.size)
        except OSError:
            pass
    return problem


def _in_place(path: Path, sha256: str) -> bool:
    """True when `path` is a file holding exactly the recorded render."""
    try:
        return path.is_file() and sha256_file(path) == sha256
    except OSError:
        return False
