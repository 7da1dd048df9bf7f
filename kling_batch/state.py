""".kling-batch/ beside a manifest: caches and the run lock, never committed.

Every path under the folder is built here and nowhere else:

    .kling-batch/
     ├── .gitignore              `*`: the folder ignores itself in git
     ├── assets.json             stat → sha256 (and video length) of input files (plan)
     ├── <lock name>.json        parse cache of a lockfile, keyed by its sha256 (plan)
     ├── <lock name>.facts.json  what planning reads of a lockfile, keyed by its sha256
     │                           (plan; `kling_batch.lock_facts`)
     ├── <lock name>.plan.json   each shot's planned renders (plan; `kling_batch.plan_cache`)
     ├── <lock name>.uptodate.json
     │                           the last plan that had nothing to do and the stat facts
     │                           of what it read (plan; `kling_batch.uptodate`)
     ├── <manifest name>.parse.json
     │                           parsed TOML shot tables by digest (plan;
     │                           `kling_batch.manifest_cache`)
     ├── <lock name>.run-lock    held by the one run writing that lockfile (run)
     ├── <picks name>.pick-lock  held by `kling-batch pick` while it rewrites the picks
     ├── <lock name>.urls.jsonl  signed result URLs of downloaded renders, kept out of
     │                           the committed lockfile (run; `kling_batch.urls`)
     ├── cache/<hex>             finished renders by content, read-only copies of their
     │                           own, for free restores (run)
     └── cache-index/<lock name>/<hex>
                                 which content each render (by fingerprint) produced for
                                 that lockfile: `sha256:<hex> <size>`, so a lockfile
                                 reverted or lost still restores what the cache holds;
                                 per lockfile, so emulator renders never stand in for
                                 paid ones (run)
     └── jobs/<lock name>/<hex>  the last job submitted for each request (by fingerprint)
                                 from that lockfile: API, job id, when; removed once it
                                 ends (or by gc, past the recall window). A lockfile
                                 that lost the record (a `git checkout`, a stash, a
                                 revert) follows the job instead of paying again (run;
                                 `kling_batch.recall`)

Everything in it can be rebuilt from the manifest, the lockfile and the files, except the
render cache, which only saves money. A folder that is a symlink, or that resolves outside
the manifest's folder, is refused: a repository must not make kling-batch write elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from kling_batch import safefiles
from kling_batch.atomic import atomic_write
from kling_batch.canonical import untagged
from kling_batch.errors import UserError

NAME = ".kling-batch"
_RENDERS = "cache"
_INDEX = "cache-index"
_JOBS = "jobs"
_GITIGNORE = "# kling-batch state: caches, never committed\n*\n"


class StateDir:
    """The state folder of the project rooted at `root` (the manifest's folder)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / NAME

    @property
    def hash_cache(self) -> Path:
        """The input files' stat → hash cache."""
        return self.path / "assets.json"

    def lock_cache(self, lock_file: Path) -> Path:
        """The parse cache of one lockfile."""
        return self.path / f"{lock_file.name}.json"

    def lock_facts(self, lock_file: Path) -> Path:
        """What planning reads of one lockfile."""
        return self.path / f"{lock_file.name}.facts.json"

    def plan_cache(self, lock_file: Path) -> Path:
        """Each shot's planned renders, for the plans of one lockfile."""
        return self.path / f"{lock_file.name}.plan.json"

    def uptodate(self, lock_file: Path) -> Path:
        """The stamp of the last plan of one lockfile that had nothing to do."""
        return self.path / f"{lock_file.name}.uptodate.json"

    def parse_cache(self, manifest: Path) -> Path:
        """Parsed TOML shot tables of one manifest and its included files."""
        return self.path / f"{manifest.name}.parse.json"

    def usable(self) -> bool:
        """True when `check` passes: caches may be read from the folder."""
        try:
            self.check()
        except UserError:
            return False
        return True

    def result_urls(self, lock_file: Path) -> Path:
        """The signed result URLs of one lockfile's downloaded renders."""
        return self.path / f"{lock_file.name}.urls.jsonl"

    def picks_lock(self, picks_file: Path) -> Path:
        """The file lock `kling-batch pick` holds while it rewrites `picks_file`."""
        return self.path / f"{picks_file.name}.pick-lock"

    def run_lock(self, lock_file: Path) -> Path:
        """The file lock one run of `lock_file` holds."""
        return self.path / f"{lock_file.name}.run-lock"

    @property
    def render_cache(self) -> Path:
        """The folder of cached renders, named by content hash."""
        return self.path / _RENDERS

    def cached_render(self, sha256: str) -> Path:
        """Where the render with this content hash is cached."""
        return self.render_cache / untagged(sha256)

    def cached_render_relative(self, sha256: str) -> str:
        """`cached_render` relative to the project root, as a POSIX path."""
        return f"{NAME}/{_RENDERS}/{untagged(sha256)}"

    def remember_render(
        self, lock_file: Path, fingerprint: str, sha256: str, size: int, api: str | None = None
    ) -> None:
        """Index a cached render of `lock_file`'s under the fingerprint of its request,
        with the API that rendered it (`lockfile.Lockfile.api`)."""
        line = " ".join(part for part in (sha256, str(size), api) if part)
        atomic_write(self._index(lock_file, fingerprint), line + "\n")

    def remembered_render(
        self, lock_file: Path, fingerprint: str, api: str | None = None
    ) -> tuple[str, int] | None:
        """(sha256, size) the cache index holds for `lock_file` and `fingerprint`, if any;
        with `api`, only a render that API made (emulator videos never pass for paid ones)."""
        index = self._index(lock_file, fingerprint)
        try:  # a regular file only: a FIFO planted in a shipped folder must not block
            text = safefiles.read_text(index, limit=256, what="a cache")
        except (OSError, UnicodeDecodeError, UserError):
            return None
        sha256, size, made_by = [*text.split(maxsplit=2), "", "", ""][:3]
        if not sha256.startswith("sha256:") or not size.isdigit():
            return None  # a cache, not a record: a damaged index entry is no entry
        if api is not None and made_by.strip() != api:
            return None
        return sha256, int(size)

    def remembered_job(self, lock_file: Path, fingerprint: str) -> Path:
        """Where the last job submitted for `fingerprint` from `lock_file` is remembered."""
        return self.remembered_jobs(lock_file) / untagged(fingerprint)

    def remembered_jobs(self, lock_file: Path) -> Path:
        """The folder of the jobs remembered for `lock_file` (one file per fingerprint)."""
        return self.path / _JOBS / lock_file.name

    @property
    def remembered_job_folders(self) -> Path:
        """The folder of every lockfile's remembered jobs (`jobs/<lock name>/`)."""
        return self.path / _JOBS

    @property
    def cache_index(self) -> Path:
        """The folder of the render cache's per-lockfile indexes (`cache-index/<lock name>/`)."""
        return self.path / _INDEX

    def run_locks(self) -> list[Path]:
        """The lockfiles (beside the manifest) whose run lock file is in the folder: every
        lockfile a run or a cancel has used here (`gc` holds them all)."""
        suffix = ".run-lock"
        if not self.path.is_dir():
            return []
        found = self.path.glob(f"*{suffix}")
        return sorted(self.root / lock.name.removesuffix(suffix) for lock in found)

    def _index(self, lock_file: Path, fingerprint: str) -> Path:
        return self.path / _INDEX / lock_file.name / untagged(fingerprint)

    def check(self) -> None:
        """Refuse a state folder that is a symlink or lies outside the project folder, or
        holds a symlink where kling-batch writes (its own entries, the render cache's,
        the cache index's and the remembered jobs' folders): a repository must not make
        it write elsewhere."""
        if self.path.is_symlink():
            raise UserError(
                f"{NAME} is a symlink; kling-batch keeps its caches and run lock only in a "
                "real folder beside the manifest (remove the link)",
                file=self.path,
            )
        if self.path.exists() and not self.path.resolve().is_relative_to(self.root.resolve()):
            raise UserError(
                f"{NAME} resolves outside the manifest's folder; remove it", file=self.path
            )
        for folder in (self.path, self.path / _INDEX, self.path / _JOBS):
            for entry in _entries(folder):
                if entry.is_symlink():
                    where = Path(entry.path).relative_to(self.root)
                    raise UserError(
                        f"{where} is a symlink; kling-batch writes only real files and "
                        f"folders inside {NAME} (remove the link)",
                        file=where,
                    )

    def ensure(self, *, create: bool = True) -> None:
        """Make the folder (if asked) and its `.gitignore`; raises OSError if it cannot."""
        self.check()
        if create:
            self.path.mkdir(parents=True, exist_ok=True)
        ignore = self.path / ".gitignore"
        if self.path.is_dir() and not ignore.exists():
            atomic_write(ignore, _GITIGNORE)

    def ensure_for_run(self) -> None:
        """`ensure`, as a one-line refusal when the folder cannot be written (read-only)."""
        try:
            self.ensure()
            probe = self.path / ".write-probe"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            raise UserError(
                f"cannot write {NAME}/ ({exc.strerror or exc}); a run needs it for its run "
                "lock and render cache: run from a writable checkout",
                file=self.path,
            ) from None


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    """A folder's entries (none when it does not exist or is not a folder)."""
    try:
        with os.scandir(folder) as found:
            return list(found)
    except (FileNotFoundError, NotADirectoryError):
        return []
