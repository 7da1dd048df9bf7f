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
        f"> **Emulator**: planned against the bundled emulator's lockfile ({code(lock_name)}); "
        "nothing here is rendered or billed by the real API."
    )


# Line breaks of every kind: a cell or a list item is one line.
_BREAKS = re.compile("[\n\r\t\v\f\x1c-\x1e\x85\u2028\u2029]+")
# Invisible characters that can hide or reorder text: other controls, bidi marks, embeddings,
# overrides and isolates, zero-width spaces, the byte-order mark, tag characters. (The
# zero-width joiners stay: emoji and several scripts need them.)
_INVISIBLE = re.compile(
    "[\x00-\x08\x0e-\x1b\x1f\x7f-\x9f\u061c\u180e\u200b\u200e\u200f"
    "\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\U000e0000-\U000e007f]"
)
# Markdown punctuation that can open a link, an image, emphasis, code, strikethrough, math or a
# cell, escaped with a backslash; `_` is left alone inside a word (`model_tier`), where it
# cannot make emphasis. `(`, `)` and `!` are harmless once `[` and `]` are escaped.
_PUNCTUATION = re.compile(r"[\\`*\[\]~|$]|(?<![^\W_])_|_(?![^\W_])")
# What would start a block at the head of a list item: a heading, a list, a thematic break.
_BLOCK_START = re.compile(r"^([#+-]|\d+[.)](?=\s|$))")


def plain(text: str) -> str:
    """`text` on one line, without the invisible characters that could hide or reorder it."""
    return _INVISIBLE.sub("", _BREAKS.sub(" ", text))


def escape(text: str) -> str:
    """Untrusted text made inert in a table cell or a paragraph of GitHub-flavoured
    Markdown: one line, no invisible characters, `& < >` as HTML entities (no tag, comment
    or autolink), and no link, image, emphasis, code span, strikethrough or math."""
    text = _html(plain(text).strip())
    text = _PUNCTUATION.sub(lambda match: "\\" + match.group(), text)
    return _BLOCK_START.sub(lambda match: match.group()[:-1] + "\\" + match.group()[-1], text)


def code(text: str, *, cell: bool = False) -> str:
    """Inline code that survives backticks inside `text`, on one line, without invisible
    characters; `cell`: for a table cell, whose pipes split it even inside code."""
    text = plain(text)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * (longest + 1)
    edge = text[:1] + text[-1:]
    if "`" in edge or (edge == "  " and text.strip()):
        text = f" {text} "  # the spaces a code span strips, so the text keeps its own
    if cell:
        text = text.replace("|", "\\|")
    return f"{ticks}{text}{ticks}"


def fenced(text: str, info: str = "text") -> list[str]:
    """A fenced block longer than any backtick run in `text`."""
    longest = max((len(run) for run in re.findall(r"`{3,}", text)), default=2)
    fence = "`" * (longest + 1)
    return [f"{fence}{info}", *(_INVISIBLE.sub("", line) for line in text.splitlines()), fence]


def prompt_details(render_id: str, pieces: list[worddiff.Piece]) -> list[str]:
    """A collapsed block with the word-level diff of one render's prompt."""
    summary = (
        f"<details><summary>Prompt of <code>{_html(render_id)}</code> "
        "(<code>[-removed-]</code> <code>{+added+}</code>)</summary>"
    )
    return [summary, "", *fenced(worddiff.render(pieces)), "", "</details>", ""]


def _html(text: str) -> str:
    text = plain(text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def not_listed(count: int, what: str) -> list[str]:
    """`30 more <what> not shown here (`--format json` lists them all).`, or nothing."""
    if count <= 0:
        return []
    return [f"{count:,} more {what} not shown here (`--format json` lists them all).", ""]
