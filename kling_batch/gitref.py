"""A manifest as it was at a git ref: its folder read from git into a temporary folder.

`plan --compare origin/main` plans the manifest twice, now and at the ref. At the ref, the
manifest's folder (manifest, included shot files, template partials, lockfile and assets)
is read with `git archive` and unpacked into a temporary folder, where it is planned like
any other: assets are hashed from their content, so a plan there matches one here.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kling_batch.errors import UserError

_GIT_TIMEOUT = 300.0


@dataclass(frozen=True)
class Checkout:
    """The manifest at a ref: its path in the temporary folder (None if it did not exist)."""

    ref: str
    commit: str
    manifest: Path | None
    # The manifest's path from the top of the repository, as git names it.
    name: PurePosixPath

    @property
    def label(self) -> str:
        """`origin/main (1a2b3c4)`."""
        return f"{self.ref} ({self.commit[:7]})"


@contextlib.contextmanager
def checkout_at(ref: str, manifest: Path) -> Iterator[Checkout]:
    """The manifest's folder as it was at `ref`, unpacked for the duration of the block."""
    folder = manifest.resolve().parent
    try:
        top = Path(_git(folder, "rev-parse", "--show-toplevel").strip())
    except UserError:
        raise UserError(
            f"{ref!r} is not a saved plan, and {manifest} is not in a git repository",
            field="--compare",
        ) from None
    commit = _commit(folder, ref)
    relative = PurePosixPath(folder.relative_to(top).as_posix())
    name = relative / manifest.name
    with tempfile.TemporaryDirectory(prefix="kling-batch-base-") as temp:
        root = Path(temp)
        if not _exists(folder, commit, name):
            yield Checkout(ref, commit, None, name)
            return
        _unpack(top, commit, relative, root)
        yield Checkout(ref, commit, root / name, name)


def _commit(folder: Path, ref: str) -> str:
    if ref.startswith("-"):
        raise UserError(f"not a git ref: {ref!r}", field="--compare")
    try:
        return _git(folder, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").strip()
    except UserError:
        raise UserError(
            f"{ref!r} is neither a saved plan nor a git ref known here "
            "(in CI, fetch it first: git fetch origin main)",
            field="--compare",
        ) from None


def _exists(folder: Path, commit: str, name: PurePosixPath) -> bool:
    try:
        _git(folder, "cat-file", "-e", f"{commit}:{name}")
    except UserError:
        return False
    return True


def _unpack(top: Path, commit: str, relative: PurePosixPath, root: Path) -> None:
    """Unpack `relative/` of `commit` into `root/relative/` (links leading outside refused).

    The archive is streamed from git, never held whole in memory (assets can be large).
    """
    argv = ["git", "archive", "--format=tar", commit, "--", str(relative)]
    with subprocess.Popen(argv, cwd=top, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as git:
        assert git.stdout is not None and git.stderr is not None
        problem: Exception | None = None
        try:
            with tarfile.open(fileobj=git.stdout, mode="r|") as tar:
                tar.extractall(root, filter="data")
        except (tarfile.TarError, OSError) as exc:
            problem = exc
            git.kill()
        errors = git.stderr.read().decode("utf-8", "replace").strip()
        status = git.wait(timeout=_GIT_TIMEOUT)
    if errors and status not in (
        0,
        -signal.SIGKILL,
    ):  # git's own refusal says more than an empty tar
        raise UserError(f"git archive failed: {errors.splitlines()[-1]}")
    if problem is not None or status != 0:
        raise UserError(f"cannot unpack the manifest's folder at {commit[:7]}: {problem}")


def _git(folder: Path, *args: str) -> str:
    return _git_bytes(folder, *args).decode("utf-8", "replace")


def _git_bytes(folder: Path, *args: str) -> bytes:
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=folder,
            capture_output=True,
            timeout=_GIT_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise UserError("--compare with a git ref needs git on the PATH") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"git {args[0]} took over {_GIT_TIMEOUT:.0f}s") from None
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise UserError(f"git {args[0]} failed: {message[-1] if message else done.returncode}")
    return done.stdout
