"""The run lock: one process at a time may change a lockfile's jobs (a run, a cancel)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import filelock

from kling_batch.errors import RunError
from kling_batch.state import StateDir


@contextlib.contextmanager
def hold_run_lock(state: StateDir, lock_file: Path, *, then: str = "run again") -> Iterator[None]:
    """Hold `lock_file`'s run lock for the block; refused while another process holds it.

    `then` ends the refusal: what to do once the other process is done.
    """
    state.ensure_for_run()
    guard = filelock.FileLock(state.run_lock(lock_file))
    try:
        guard.acquire(timeout=0)
    except filelock.Timeout:
        raise RunError(
            f"another kling-batch run is using {lock_file.name}; wait for it to finish "
            f"(or stop it) and {then}"
        ) from None
    try:
        yield
    finally:
        guard.release()
