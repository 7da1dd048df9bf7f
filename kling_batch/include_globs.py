"""Matching a manifest's `include` globs without entering links to folders.

pathlib's glob follows a link to a folder at every `*`: six links to `.` (git stores them)
and `*/*/*/*/*/*/shots.toml` reach one file by 6**6 paths, and a longer glob never ends.
Here a glob walks the folders as they are on disk: each real folder at most once, a link to
a folder never entered (pathlib's `**` never entered one either), so the work grows with the
project's files, not with the glob. Names match as pathlib's glob matches them on POSIX:
`**` is any number of folders, other components are fnmatch patterns, case-sensitive, and
hidden names are not skipped.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

# One glob component: None for `**`, else a test of a name.
Step = Callable[[str], object] | None


def matching_files(root: Path, pattern: str, most: int) -> list[Path] | None:
    """The paths under `root` that the relative glob `pattern` matches and that are not
    folders nor links to folders, sorted; None when they are more than `most`.
    A path is matched only if no folder on its way is a link."""
    steps: list[Step] = [
        None if part == "**" else re.compile(fnmatch.translate(part)).fullmatch
        for part in Path(pattern).parts
    ]
    end = len(steps)
    found: list[Path] = []
    todo = [(root, _skip_any(steps, {0}))]
    while todo:
        folder, states = todo.pop()
        for entry in _entries(folder):
            after = _advance(steps, states, entry)
            if end in after and not _is_folder(entry, follow=True):
                found.append(folder / entry.name)
                if len(found) > most:
                    return None
            ahead = _skip_any(steps, after) - {end}
            if ahead and _is_folder(entry, follow=False):
                todo.append((folder / entry.name, ahead))
    return sorted(found)


def _skip_any(steps: list[Step], states: set[int]) -> set[int]:
    """`states` with each `**` also matching no folder at all."""
    out = set(states)
    for state in states:
        while state < len(steps) and steps[state] is None:
            state += 1
            out.add(state)
    return out


def _advance(steps: list[Step], states: set[int], entry: os.DirEntry[str]) -> set[int]:
    """The components matched once `entry` is matched too: a `**` takes in a real folder
    and stays, any other component takes in a name it matches."""
    after: set[int] = set()
    for state in states:
        if state == len(steps):
            continue
        step = steps[state]
        if step is None:
            if _is_folder(entry, follow=False):
                after.add(state)
        elif step(entry.name):
            after.add(state + 1)
    return after


def _entries(folder: Path) -> Iterator[os.DirEntry[str]]:
    """The entries of `folder`; none when it cannot be listed (as pathlib skips it)."""
    try:
        with os.scandir(folder) as listing:
            entries = list(listing)
    except OSError:
        return iter(())
    return iter(entries)


def _is_folder(entry: os.DirEntry[str], *, follow: bool) -> bool:
    try:
        return entry.is_dir(follow_symlinks=follow)
    except OSError:
        return False
