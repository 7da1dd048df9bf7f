"""Template partials (`{% include %}` targets): where one is and what it holds, without Jinja.

The template loader reads partials through `partial_source`; the plan cache checks the
partials a cached expansion read through `partial_digest`, the same way, without starting
the template engine.
"""

from __future__ import annotations

from pathlib import Path

from kling_batch import safefiles
from kling_batch.canonical import tagged, text_digest
from kling_batch.errors import UserError
from kling_batch.limits import PARTIAL_MAX_BYTES


def partial_source(root: Path, name: str) -> tuple[Path | None, str]:
    """(file, source) of the partial `name` under the resolved `root`, or (None, why not)
    when there is none to read there.

    Nothing outside `root` is read, symlinks followed. Raises `UserError` for a file that
    is not a regular file of a sane size.
    """
    problem = safefiles.path_problem(name)
    if problem is not None:
        return None, f"{safefiles.shown(name)} {problem}"
    candidate = safefiles.real_path(root / name)
    if candidate is None:
        return None, f"{name} (its symlinks go round in a loop)"
    if not candidate.is_relative_to(root):
        return None, f"{name} (includes must stay inside {root.name}/)"
    if not candidate.is_file():
        return None, name
    return candidate, safefiles.read_text(candidate, limit=PARTIAL_MAX_BYTES, what="a template")


def partial_digest_of(source: str) -> str:
    """How the plan cache records a partial's source."""
    return tagged(text_digest(source))


def partial_digest(root: Path, name: str) -> str:
    """`partial_digest_of` the partial `name` as the loader would read it now, "missing"
    when there is none, "refused" when it cannot be read."""
    try:
        candidate, source = partial_source(root, name)
    except (OSError, UnicodeDecodeError, UserError):
        return "refused"
    return "missing" if candidate is None else partial_digest_of(source)
