"""Markdown building blocks for pull-request comments: escaping, fences, markers, details.

Every plan in Markdown ends with a hidden marker naming its manifest,
`<!-- kling-batch-plan: examples/launch.toml -->`, the same on every run, so a CI job can
find and update its own comment instead of adding one per push.
"""

from __future__ import annotations

import re
from pathlib import Path

from kling_batch import worddiff

MARKER_PREFIX = "<!-- kling-batch-plan: "
# A comment must stay far below GitHub's 65,536 characters: rows and prompt diffs beyond
# these are counted, not shown (the JSON report lists everything).
MAX_ROWS = 100
MAX_PROMPT_DIFFS = 20


def hidden_marker(manifest: Path) -> str:
    """The stable, invisible line that identifies this manifest's comment."""
    return f"{MARKER_PREFIX}{manifest.as_posix().replace('--', '-&#45;')} -->"


def emulator_marker(lock_name: str) -> str:
    """A visible warning that the plan is against the emulator, not the real API."""
    return (
        f"> **Emulator**: planned against the bundled emulator's lockfile (`{lock_name}`); "
        "nothing here is rendered or billed by the real API."
    )


def escape(text: str) -> str:
    """Text safe inside a table cell: pipes escaped, one line."""
    return text.replace("|", "\\|").replace("\n", " ")


def code(text: str) -> str:
    """Inline code that survives backticks inside `text`."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * (longest + 1)
    padded = f" {text} " if text.startswith("`") or text.endswith("`") else text
    return f"{ticks}{padded}{ticks}"


def fenced(text: str, info: str = "text") -> list[str]:
    """A fenced block longer than any backtick run in `text`."""
    longest = max((len(run) for run in re.findall(r"`{3,}", text)), default=2)
    fence = "`" * (longest + 1)
    return [f"{fence}{info}", *text.splitlines(), fence]


def prompt_details(render_id: str, pieces: list[worddiff.Piece]) -> list[str]:
    """A collapsed block with the word-level diff of one render's prompt."""
    summary = (
        f"<details><summary>Prompt of <code>{_html(render_id)}</code> "
        "(<code>[-removed-]</code> <code>{+added+}</code>)</summary>"
    )
    return [summary, "", *fenced(worddiff.render(pieces)), "", "</details>", ""]


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def not_listed(count: int, what: str) -> list[str]:
    """`30 more <what> not shown here (`--format json` lists them all).`, or nothing."""
    if count <= 0:
        return []
    return [f"{count:,} more {what} not shown here (`--format json` lists them all).", ""]
