"""Picks (`<manifest stem>.picks.toml`): the renders a person chose to keep.

User-owned and meant to be committed: a version and a sorted list of render ids, one a line,
so the same picks always give the same bytes and two people's picks merge line by line.
`kling-batch pick` adds and removes ids; the gallery highlights them; `export --picked`
copies them.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import filelock
import tomli
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kling_batch import ui
from kling_batch.atomic import atomic_write
from kling_batch.errors import UserError
from kling_batch.expand import expand_shots
from kling_batch.limits import PICKS_MAX_BYTES
from kling_batch.manifest import load_manifest
from kling_batch.safefiles import read_text
from kling_batch.state import StateDir
from kling_batch.toml_errors import syntax_problem

PICKS_VERSION = 1
HEADER = (
    "# Renders picked in `kling-batch review`: yours to edit and commit.\n"
    "# `kling-batch pick` and `kling-batch pick --unpick` rewrite this list sorted.\n"
)


class PicksFile(BaseModel):
    """The picks file's contents."""

    model_config = ConfigDict(extra="forbid")

    version: int = PICKS_VERSION
    picks: list[str] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PickChange:
    """What a `pick` command did: ids added or removed, and the picks after it."""

    changed: tuple[str, ...]
    unchanged: tuple[str, ...]
    unmatched: tuple[str, ...]
    picks: tuple[str, ...]


def picks_path(manifest: Path) -> Path:
    """`launch.toml` → `launch.picks.toml`, beside the manifest."""
    return manifest.with_name(manifest.stem + ".picks.toml")


def read_picks(manifest: Path) -> frozenset[str]:
    """The picked render ids (empty when there is no picks file)."""
    return frozenset(_load(picks_path(manifest)).picks)


def dumps(picks: Iterable[str]) -> str:
    """The picks file text: header, version, then each id on its own line, sorted."""
    lines = [HEADER, f"version = {PICKS_VERSION}\n"]
    ordered = sorted(set(picks))
    if not ordered:
        return "".join([*lines, "picks = []\n"])
    items = "".join(f"    {_toml_string(pick)},\n" for pick in ordered)
    return "".join([*lines, "picks = [\n", items, "]\n"])


def _toml_string(text: str) -> str:
    """A TOML basic string: json.dumps writes only escapes TOML accepts, and leaves every
    character as is but DEL, which TOML takes only escaped."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def pick(manifest: Path, patterns: Iterable[str], *, unpick: bool = False) -> PickChange:
    """Add (or remove) the renders matching each id or glob; write only on a change.

    Picking needs each pattern to match a render of the manifest; unpicking matches the
    picks themselves, so a render since removed from the manifest can still be unpicked.
    """
    path = picks_path(manifest)
    patterns = list(patterns)
    ids = [] if unpick else [spec.id for spec in expand_shots(load_manifest(manifest))]
    unmatched: list[str] = []
    with _picks_lock(manifest):  # read, change and write as one: another pick waits
        current = set(_load(path).picks)
        if unpick:
            chosen = _matching(sorted(current), patterns, path=None)
            unmatched = [p for p in patterns if not _matching(sorted(current), [p], path=None)]
            changed = sorted(chosen)
            after = current - chosen
        else:
            chosen = _matching(ids, patterns, path=manifest)
            changed = sorted(chosen - current)
            after = current | chosen
        if changed:
            atomic_write(path, dumps(after))
    unchanged = sorted(chosen - set(changed))
    return PickChange(tuple(changed), tuple(unchanged), tuple(unmatched), tuple(sorted(after)))


@contextlib.contextmanager
def _picks_lock(manifest: Path) -> Iterator[None]:
    """Hold the picks file's lock (in the state folder) while it is read and rewritten: two
    `pick` commands at once each keep their picks, where the later write lost the other's."""
    state = StateDir(manifest.parent)
    try:
        state.ensure()
    except OSError as exc:
        raise UserError(
            f"cannot write {state.path.name}/ for the picks file's lock: {exc.strerror or exc}",
            file=state.path,
        ) from None
    with filelock.FileLock(state.picks_lock(picks_path(manifest))):
        yield


def _matching(ids: list[str], patterns: Iterable[str], *, path: Path | None) -> set[str]:
    """Ids matched by the patterns; with `path`, a pattern matching nothing is an error."""
    chosen: set[str] = set()
    for pattern in patterns:
        found = {render_id for render_id in ids if fnmatch.fnmatchcase(render_id, pattern)}
        if not found and path is not None:
            close = difflib.get_close_matches(pattern, ids, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UserError(f"no render of the manifest matches {pattern!r}{hint}", file=path)
        chosen |= found
    return chosen


def _load(path: Path) -> PicksFile:
    try:  # a regular file of bounded size only: a FIFO or /dev/zero is refused at once
        text = read_text(path, limit=PICKS_MAX_BYTES, what="the picks file")
    except FileNotFoundError:
        return PicksFile()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the picks file: {exc}", file=path) from None
    try:
        data = tomli.loads(text)
    except tomli.TOMLDecodeError as exc:
        message, line = syntax_problem(exc, text)
        raise UserError(
            f"the picks file is not valid TOML ({message})", file=path, line=line
        ) from None
    except RecursionError:
        raise UserError("the picks file is nested too deeply to read", file=path) from None
    try:
        picks = PicksFile.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or None
        raise UserError(f"invalid picks file: {error['msg']}", file=path, field=field) from None
    if picks.version != PICKS_VERSION:
        raise UserError(
            f"picks file version {picks.version} is not one this kling-batch reads "
            f"({PICKS_VERSION})",
            file=path,
            field="version",
        )
    return picks


def pick_command(manifest: Path, patterns: Iterable[str], *, unpick: bool = False) -> None:
    """`kling-batch pick`: change the picks and say what changed; no pattern lists them."""
    patterns = list(patterns)
    path = picks_path(manifest)
    if not patterns:
        current = sorted(read_picks(manifest))
        for render_id in current:
            ui.write_data(render_id + "\n")
        if not current:
            ui.say(f"No picks in {path.name} yet.")
        return
    change = pick(manifest, patterns, unpick=unpick)
    if change.changed:
        verb = "Unpicked" if unpick else "Picked"
        ui.say(f"{verb} {len(change.changed)}: {', '.join(change.changed)}")
    if change.unchanged:
        ui.say(f"Already picked: {', '.join(change.unchanged)}")
    if change.unmatched:
        ui.say(f"Not picked, left as is: {', '.join(change.unmatched)}")
    ui.say(f"{len(change.picks)} picked in {path.name}")
