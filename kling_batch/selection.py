"""Choosing renders on the command line: `--only` and `--force` patterns.

A pattern is a glob on the render id (`teaser-*`), or `tag:NAME` (a glob too) for the
renders whose shot carries a matching tag. A pattern that chooses nothing is a mistake,
refused with the closest ids and tags, never a silent "nothing to do".
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Sequence

from kling_batch.errors import UserError

TAG_PREFIX = "tag:"
_CLOSEST = 3
# A render id and its tags: what a pattern is matched against.
Candidate = tuple[str, Sequence[str]]


def matches(render_id: str, tags: Iterable[str], pattern: str) -> bool:
    """True when `pattern` (an id glob or `tag:GLOB`) chooses this render."""
    if pattern.startswith(TAG_PREFIX):
        wanted = pattern.removeprefix(TAG_PREFIX)
        return any(fnmatch.fnmatchcase(tag, wanted) for tag in tags)
    return fnmatch.fnmatchcase(render_id, pattern)


def matches_any(render_id: str, tags: Iterable[str], patterns: Sequence[str]) -> bool:
    """True when any of `patterns` chooses this render (False when there are none)."""
    tag_list = list(tags)
    return any(matches(render_id, tag_list, pattern) for pattern in patterns)


def require_matches(patterns: Iterable[str], candidates: Sequence[Candidate], option: str) -> None:
    """Refuse (exit 2) the first pattern that chooses none of `candidates`."""
    for pattern in patterns:
        if not any(matches(render_id, tags, pattern) for render_id, tags in candidates):
            raise UserError(
                f"{option} {pattern!r} matches no render{closest(pattern, candidates)}",
                field=option,
            )


def closest(pattern: str, candidates: Sequence[Candidate]) -> str:
    """`; closest ids: a, b; closest tags: x` for a pattern that matched nothing."""
    ids = sorted({render_id for render_id, _ in candidates})
    tags = sorted({tag for _, tags in candidates for tag in tags})
    if not ids:
        return "; there are no renders to choose from"
    word = pattern.removeprefix(TAG_PREFIX).strip("*?[]")
    parts = []
    if not pattern.startswith(TAG_PREFIX):
        parts.append("closest ids: " + ", ".join(_nearest(word, ids)))
    if tags:
        parts.append("closest tags: " + ", ".join(TAG_PREFIX + t for t in _nearest(word, tags)))
    else:
        parts.append("no render has tags")
    return "; " + "; ".join(parts)


def _nearest(word: str, choices: Sequence[str]) -> list[str]:
    """The few choices most like `word`, best first (always some when there are any)."""
    return difflib.get_close_matches(word, choices, n=_CLOSEST, cutoff=0.0)
