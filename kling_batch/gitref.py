"""A manifest as it was at a git ref: its folder read from git into a temporary folder.

`plan --compare origin/main` plans the manifest twice, now and at the ref. At the ref, the
manifest's folder (manifest, included shot files, template partials, lockfile and assets)
is read from git's objects into a temporary folder as a checkout would write it, where it
is planned like any other: assets are hashed from their content, so a plan there matches
one here.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO

from kling_batch.errors import UserError

_GIT_TIMEOUT = 300.0
_CHUNK = 1 << 20
_LINK = "120000"
_SUBMODULE = "160000"
_NOT_FILES = frozenset({_LINK, _SUBMODULE})
_LONGEST_LINK = 4096
# The attributes by which a checkout converts a file (gitattributes(5)): those that do
# whatever their value but unset, then those of line endings.
_CONVERSIONS = ("filter", "ident", "working-tree-encoding", "text", "eol", "crlf")


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
    """Write `relative/` of `commit` into `root/relative/` (links leading outside refused).

    Read from git's objects, not with `git archive`: its `export-ignore` and `export-subst`
    attributes would leave files out or rewrite them, and the ref would be planned from
    other files than it holds. Files are converted as a checkout converts them (smudge
    filters such as Git LFS, line endings) and streamed from git, never held whole in memory
    (assets can be large).
    """
    items = _listing(top, commit, relative)
    converted = _converted(top, [item.path for item in items if item.mode not in _NOT_FILES])
    try:
        with _objects(top) as objects:
            for item in items:
                _place(item, root, objects, convert=item.path in converted)
    except (tarfile.TarError, OSError) as exc:
        raise UserError(f"cannot unpack the manifest's folder at {commit[:7]}: {exc}") from None


@dataclass(frozen=True, slots=True)
class _Item:
    """One entry of the folder's tree at the ref; `path` from the repository's top."""

    mode: str
    oid: str
    path: str


def _listing(top: Path, commit: str, relative: PurePosixPath) -> list[_Item]:
    """Every file, link and submodule under `relative/` at `commit`, in git's order."""
    tree = commit if relative == PurePosixPath(".") else f"{commit}:{relative}"
    items = []
    for record in _git_bytes(top, "ls-tree", "-r", "-z", tree).split(b"\0"):
        meta, _, name = record.partition(b"\t")
        if not name:
            continue
        mode, _, oid = meta.decode("ascii").split(" ")
        items.append(_Item(mode, oid, str(relative / os.fsdecode(name))))
    return items


def _converted(top: Path, paths: list[str]) -> set[str]:
    """The files a checkout converts (or may), by their attributes and `core.autocrlf`.

    Attributes are those of the working tree, as `git cat-file --filters` reads them (a ref
    whose `.gitattributes` differ is converted by today's; git reads them from a tree only
    from 2.40 on).
    """
    if not paths:
        return set()
    autocrlf = _git(top, "config", "--default", "false", "--get", "core.autocrlf")
    crlf = autocrlf.strip().lower() not in {"false", "no", "off", "0", "input"}
    paths_in = b"".join(os.fsencode(path) + b"\0" for path in paths)
    answer = _git_bytes(top, "check-attr", "-z", "--stdin", *_CONVERSIONS, stdin=paths_in)
    fields = answer.split(b"\0")
    values: dict[str, dict[str, str]] = {}
    for at in range(0, len(fields) - 2, 3):
        path, name, value = (os.fsdecode(field) for field in fields[at : at + 3])
        values.setdefault(path, {})[name] = value
    return {path for path, found in values.items() if _converts(found, autocrlf=crlf)}


def _converts(values: Mapping[str, str], *, autocrlf: bool) -> bool:
    """Whether a checkout may change a file's content, by its attributes (gitattributes(5))."""
    unset = {"unspecified", "unset"}
    if any(values.get(name, "unspecified") not in unset for name in _CONVERSIONS[:3]):
        return True
    if "unset" in (values.get("text"), values.get("crlf")):
        return False  # binary: no line endings converted
    return autocrlf or any(
        values.get(name, "unspecified") != "unspecified" for name in _CONVERSIONS[3:]
    )


def _place(item: _Item, root: Path, objects: _Objects, *, convert: bool) -> None:
    """Write one entry under `root`, refused where tar's `data` filter would refuse it."""
    info = tarfile.TarInfo(item.path)
    if item.mode == _LINK:
        info.type = tarfile.SYMTYPE
        info.linkname = os.fsdecode(objects.read(item.oid, item.path, most=_LONGEST_LINK))
    elif item.mode == _SUBMODULE:
        info.type = tarfile.DIRTYPE  # as `git archive` left it: an empty folder
    info = tarfile.data_filter(info, str(root))
    target = root / info.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if info.issym():
        target.symlink_to(info.linkname)
    elif info.isdir():
        target.mkdir(exist_ok=True)
    else:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        with os.fdopen(os.open(target, flags | getattr(os, "O_BINARY", 0), 0o644), "wb") as out:
            if convert:
                _copy_converted(objects.top, item, out)
            else:
                objects.copy(item.oid, out)


def _copy_converted(top: Path, item: _Item, out: BinaryIO) -> None:
    """Stream a file as a checkout writes it (`git cat-file --filters`, one per file: its
    batch mode announces the size before conversion)."""
    argv = ["git", "cat-file", "--filters", f"--path={item.path}", item.oid]
    with tempfile.TemporaryFile() as errors:
        with subprocess.Popen(argv, cwd=top, stdout=subprocess.PIPE, stderr=errors) as git:
            assert git.stdout is not None
            shutil.copyfileobj(git.stdout, out, _CHUNK)
            status = git.wait(timeout=_GIT_TIMEOUT)
        if status != 0:
            errors.seek(0)
            raise UserError(f"git cat-file failed: {_last_line(errors.read(), status)}")


@contextlib.contextmanager
def _objects(top: Path) -> Iterator[_Objects]:
    """A `git cat-file --batch` for the duration of the block (killed if the block fails)."""
    pipe = subprocess.PIPE
    with tempfile.TemporaryFile() as errors:
        argv = ["git", "cat-file", "--batch"]
        with subprocess.Popen(argv, cwd=top, stdin=pipe, stdout=pipe, stderr=errors) as git:
            try:
                yield _Objects(top, git, errors)
            except BaseException:
                git.kill()
                raise


@dataclass(frozen=True)
class _Objects:
    """`git cat-file --batch`: objects' content as git stores it, one at a time."""

    top: Path
    _git: subprocess.Popen[bytes]
    _errors: IO[bytes]

    def copy(self, oid: str, out: BinaryIO) -> None:
        """Stream a blob's content into `out`."""
        self._stream(self._ask(oid), out)

    def read(self, oid: str, name: str, *, most: int) -> bytes:
        """A small blob's content (a link's target); one over `most` bytes is refused."""
        size = self._ask(oid)
        if size > most:
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), name)
        buffer = io.BytesIO()
        self._stream(size, buffer)
        return buffer.getvalue()

    def _ask(self, oid: str) -> int:
        """Ask for one blob; its size, read from git's answer."""
        git = self._git
        assert git.stdin is not None and git.stdout is not None
        try:
            git.stdin.write(f"{oid}\n".encode("ascii"))
            git.stdin.flush()
        except BrokenPipeError:
            raise UserError(f"git cat-file failed: {self._failure()}") from None
        header = git.stdout.readline().split()
        if len(header) != 3 or header[1] != b"blob":
            detail = b" ".join(header).decode("utf-8", "replace") or self._failure()
            raise UserError(f"git cat-file failed: {detail}")
        return int(header[2])

    def _stream(self, size: int, out: BinaryIO) -> None:
        stdout = self._git.stdout
        assert stdout is not None
        while size:
            chunk = stdout.read(min(size, _CHUNK))
            if not chunk:
                raise UserError(f"git cat-file failed: {self._failure()}")
            out.write(chunk)
            size -= len(chunk)
        stdout.read(1)  # the newline after each object

    def _failure(self) -> str:
        """Why git stopped answering: its last line of errors."""
        status = self._git.wait(timeout=_GIT_TIMEOUT)
        self._errors.seek(0)
        return _last_line(self._errors.read(), status)


def _last_line(errors: bytes, status: int) -> str:
    lines = errors.decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else f"exit status {status}"


def _git(folder: Path, *args: str) -> str:
    return _git_bytes(folder, *args).decode("utf-8", "replace")


def _git_bytes(folder: Path, *args: str, stdin: bytes | None = None) -> bytes:
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=folder,
            input=stdin,
            capture_output=True,
            timeout=_GIT_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise UserError("--compare with a git ref needs git on the PATH") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"git {args[0]} took over {_GIT_TIMEOUT:.0f}s") from None
    if done.returncode != 0:
        raise UserError(f"git {args[0]} failed: {_last_line(done.stderr, done.returncode)}")
    return done.stdout
