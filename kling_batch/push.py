"""Pushing finished renders to the team's shared store: in the background of a run
(`Pusher`), and all at once with `kling-batch push` (`push_command`).

A run never waits for the store while it renders: each finished render is queued and a
few workers push it (`remote_files.push_render`). A store that fails is not hammered:
what it refused waits, one probe at a time (backing off from one second to thirty) finds
out when it is back, and then everything waiting goes again. When the renders are done
the run lets the queue drain and gives what still waits one last try; what the store
never took is reported by name, for `kling-batch push` to finish later.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from kling_batch import ui
from kling_batch.claims import RunIdentity
from kling_batch.errors import BadOutput, RemoteError, UserError
from kling_batch.gc import size_text
from kling_batch.lockfile import Lockfile, LockWriter, load_lockfile
from kling_batch.lockname import lock_path
from kling_batch.manifest import load_manifest
from kling_batch.remote import ENV_VAR, RemoteStore, RemoteUrl, open_store, resolve_remote
from kling_batch.remote_files import Pushed, StoredRender, push_render, record_of
from kling_batch.runlock import hold_run_lock
from kling_batch.state import StateDir

WORKERS = 4
FIRST_RETRY = 1.0
LAST_RETRY = 30.0
RECHECK = 15.0  # seconds after a failure before a claim asks the store again


class Health:
    """Whether the store answered last time, and if not, why (shared by a run's claims and
    pushes, so a store found down is not asked again by every render)."""

    def __init__(self, *, recheck: float = RECHECK) -> None:
        self.problem: str | None = None
        self.recheck = recheck
        self._since = 0.0

    @property
    def ok(self) -> bool:
        """True unless the store failed since it last answered."""
        return self.problem is None

    @property
    def worth_asking(self) -> bool:
        """True when the store answered last time, or failed long enough ago (`recheck`
        seconds) that it may be back."""
        return self.ok or time.monotonic() - self._since >= self.recheck

    def down(self, problem: str) -> None:
        """The store failed: say why."""
        self.problem = problem
        self._since = time.monotonic()

    def up(self) -> None:
        """The store answered."""
        self.problem = None


@dataclass(frozen=True, slots=True)
class PushJob:
    """One finished render to push: its record and the local files that may hold it."""

    render_id: str
    record: StoredRender
    sources: tuple[Path, ...]


@dataclass(frozen=True, slots=True)
class Unpushed:
    """A render the store does not hold yet: how often it was tried and the last error."""

    render_id: str
    attempts: int
    error: str


OnPushed = Callable[[PushJob, Pushed], Awaitable[None]]


class Pusher:
    """Pushes finished renders in the background of a run (see the module's docstring)."""

    def __init__(
        self, store: RemoteStore, health: Health, on_pushed: OnPushed, *, workers: int = WORKERS
    ) -> None:
        self.store = store
        self.health = health
        self.on_pushed = on_pushed
        self.workers = workers
        self.pushed = 0  # renders whose bytes or record went up
        self.uploaded_bytes = 0
        self._send: MemoryObjectSendStream[PushJob] | None = None  # made by `work`
        self._waiting: list[PushJob] = []
        self._pending: set[str] = set()  # queued, waiting or being pushed
        self._attempts: dict[str, int] = {}
        self._errors: dict[str, str] = {}
        self._refused: dict[str, str] = {}  # no local copy holds it: trying again is no use
        self._finishing = anyio.Event()
        self._drained = anyio.Event()

    def push(self, job: PushJob) -> None:
        """Queue a finished render (never waits)."""
        self._pending.add(job.render_id)
        if self._send is None or self._finishing.is_set():
            self._waiting.append(job)  # for the retries, or the last round
        else:
            self._send.send_nowait(job)

    async def work(self) -> None:
        """The workers and the retry loop; returns once `finish` drained the queue."""
        send, receive = anyio.create_memory_object_stream[PushJob](math.inf)
        self._send = send
        try:
            async with anyio.create_task_group() as group:
                for _ in range(self.workers):
                    group.start_soon(self._worker, receive.clone())
                receive.close()
                group.start_soon(self._retry_while_running)
        finally:
            send.close()
            self._drained.set()

    async def finish(self) -> list[Unpushed]:
        """Stop taking renders, let the queue drain, try what waits once more; what the
        store still lacks."""
        self._finishing.set()
        if self._send is not None:
            self._send.close()
            await self._drained.wait()
        if self._waiting:
            await self._last_round()
        return self.unpushed()

    def unpushed(self) -> list[Unpushed]:
        """Renders not pushed (so far), by id."""
        left = self._pending | set(self._refused)
        errors = {**self._errors, **self._refused}
        return [
            Unpushed(render_id, self._attempts.get(render_id, 0), errors.get(render_id, ""))
            for render_id in sorted(left)
        ]

    async def _worker(self, receive: MemoryObjectReceiveStream[PushJob]) -> None:
        async with receive:
            async for job in receive:
                if self.health.ok:
                    await self._attempt(job)
                else:
                    self._waiting.append(job)  # the store is down: wait for the probe

    async def _attempt(self, job: PushJob) -> bool:
        """Push one render; False when the store failed (the job then waits)."""
        self._attempts[job.render_id] = self._attempts.get(job.render_id, 0) + 1
        try:
            pushed = await push_render(self.store, job.record, job.sources)
        except BadOutput as exc:
            self._refused[job.render_id] = str(exc)
            self._pending.discard(job.render_id)
            return True
        except RemoteError as exc:
            self.health.down(str(exc))
            self._errors[job.render_id] = str(exc)
            self._waiting.append(job)
            return False
        self.health.up()
        self._pending.discard(job.render_id)
        if pushed.uploaded:
            self.uploaded_bytes += job.record.output_size
        if pushed.uploaded or pushed.recorded:
            self.pushed += 1
        await self.on_pushed(job, pushed)
        return True

    async def _retry_while_running(self) -> None:
        """Retry the oldest waiting push with backoff; once the store takes it, queue the
        rest again."""
        pause = FIRST_RETRY
        while not self._finishing.is_set():
            with anyio.move_on_after(pause):
                await self._finishing.wait()
            if self._finishing.is_set() or not self._waiting:
                pause = FIRST_RETRY
                continue
            if not await self._retry_one():
                pause = min(pause * 2, LAST_RETRY)
            elif not self._finishing.is_set() and self._send is not None:  # else: last round
                pause = FIRST_RETRY
                waiting, self._waiting = self._waiting, []
                for job in waiting:
                    self._send.send_nowait(job)

    async def _retry_one(self) -> bool:
        """Push the oldest waiting render again; False when the store still fails."""
        return await self._attempt(self._waiting.pop(0))

    async def _last_round(self) -> None:
        """One more try for each waiting render, if the store takes the first of them."""
        if not await self._retry_one():
            return
        waiting, self._waiting = self._waiting, []
        limiter = anyio.CapacityLimiter(self.workers)

        async def again(job: PushJob) -> None:
            async with limiter:
                await self._attempt(job)

        async with anyio.create_task_group() as group:
            for job in waiting:
                group.start_soon(again, job)


def describe_unpushed(unpushed: Sequence[Unpushed], store: str, command: str) -> str:
    """The end-of-run warning naming the renders the store does not hold yet."""
    names = ", ".join(item.render_id for item in unpushed)
    last = next((item.error for item in reversed(unpushed) if item.error), "")
    tries = max((item.attempts for item in unpushed), default=0)
    times = f"{tries} time{'s' if tries != 1 else ''}"
    why = f" (the store was tried {times}; last error: {last})" if last else ""
    return (
        f"warning: {len(unpushed)} render(s) not yet pushed to {store}: {names}{why}; "
        f"`{command}` pushes them"
    )


# -- kling-batch push ---------------------------------------------------------------------


@dataclass(frozen=True)
class StoreProject:
    """A manifest's folder, lockfile and shared store, as `push` and `pull` need them."""

    root: Path
    lock_file: Path
    output_dir: str  # relative to `root`; `<output_dir>-emulator` for emulator renders
    url: RemoteUrl

    @property
    def state(self) -> StateDir:
        """The project's state folder (render cache)."""
        return StateDir(self.root)


def store_project(manifest: Path, *, emulator: bool, remote: str | None) -> StoreProject:
    """The project of `manifest` and its store (`emulator/` below it for emulator renders);
    a `UserError` when no store is configured."""
    loaded = load_manifest(manifest)
    url = resolve_remote(loaded.manifest.remote, remote, file=manifest)
    if url is None:
        raise UserError(
            'no remote store: set `remote = "s3://bucket/prefix"` in the manifest, or pass '
            f"--remote or set {ENV_VAR}",
            file=manifest,
            field="remote",
        )
    output_dir = loaded.manifest.output_dir.rstrip("/") + ("-emulator" if emulator else "")
    return StoreProject(
        root=loaded.root,
        lock_file=lock_path(manifest, emulator=emulator),
        output_dir=output_dir,
        url=url.below("emulator") if emulator else url,
    )


def push_command(manifest: Path, *, emulator: bool, remote: str | None) -> int:
    """Push every finished render on record the store lacks; the exit code."""
    project = store_project(manifest, emulator=emulator, remote=remote)
    with hold_run_lock(project.state, project.lock_file, then="push again"):
        lock = load_lockfile(project.lock_file)
        return anyio.run(_push_all, project, lock)


async def _push_all(project: StoreProject, lock: Lockfile) -> int:
    store = open_store(project.url)
    await store.probe()
    me = RunIdentity.new(scope="")
    writer = LockWriter(project.lock_file, lock)
    jobs = _finished_renders(project, lock, me)
    results: dict[str, Pushed | str] = {}
    limiter = anyio.CapacityLimiter(WORKERS)

    async def one(job: PushJob) -> None:
        async with limiter:
            try:
                results[job.render_id] = await push_render(store, job.record, job.sources)
            except (BadOutput, RemoteError) as exc:
                results[job.render_id] = str(exc)
                return
        writer.mark_in_remote(job.record.fingerprint, job.record.output_sha256)

    async with anyio.create_task_group() as group:
        for job in jobs:
            group.start_soon(one, job)
    await writer.commit()
    return _push_report(jobs, results, str(project.url))


def _finished_renders(project: StoreProject, lock: Lockfile, me: RunIdentity) -> list[PushJob]:
    """One push per finished render on record (the current one of each entry, then the
    earlier ones its history keeps), each from the render cache or its output."""
    now = datetime.now(UTC)
    seen: set[tuple[str, str]] = set()
    jobs = []
    for shot_id, entry in sorted(lock.shots.items()):
        current = entry.as_past()
        pasts = [(shot_id, current)] if current else []
        pasts += [(f"{shot_id} (earlier render)", past) for past in reversed(entry.history)]
        for name, past in pasts:
            if (past.fingerprint, past.sha256) in seen:
                continue
            seen.add((past.fingerprint, past.sha256))
            record = record_of(entry, past, run=me.run, host=me.host, api=lock.api, at=now)
            sources = [project.state.cached_render(past.sha256)]
            if past is current:
                sources.append(project.root / entry.output)
            jobs.append(PushJob(name, record, tuple(sources)))
    return jobs


def _push_report(jobs: Sequence[PushJob], results: dict[str, Pushed | str], store: str) -> int:
    pushed = [job for job in jobs if isinstance(results.get(job.render_id), Pushed)]
    went = [job for job in pushed if _did_push(results[job.render_id])]
    size = sum(job.record.output_size for job in went if _uploaded(results[job.render_id]))
    failed = [(job.render_id, results[job.render_id]) for job in jobs if job not in pushed]
    ui.say(
        f"Pushed {len(went)} render(s) ({size_text(size)}) to {store}; "
        f"{len(pushed) - len(went)} already there."
    )
    for render_id, why in failed:
        ui.say(f"- not pushed: {render_id}: {why}")
    return 1 if failed else 0


def _did_push(result: Pushed | str) -> bool:
    return isinstance(result, Pushed) and (result.uploaded or result.recorded)


def _uploaded(result: Pushed | str) -> bool:
    return isinstance(result, Pushed) and result.uploaded
