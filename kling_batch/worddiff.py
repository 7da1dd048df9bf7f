"""Word-level diffs of prompts, written as `git diff --word-diff` does: `[-old-]{+new+}`."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Literal

# Words, and line breaks kept as their own tokens: a multi-scene prompt keeps its lines.
_TOKENS = re.compile(r"\n|[^\s]+")

Op = Literal["equal", "delete", "insert"]


@dataclass(frozen=True, slots=True)
class Piece:
    """A run of words the two texts share, or that only the old or the new one has."""

    op: Op
    text: str


def word_diff(before: str, after: str) -> list[Piece]:
    """The pieces that turn `before` into `after`, word by word."""
    old, new = _TOKENS.findall(before), _TOKENS.findall(after)
    pieces: list[Piece] = []
    matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            pieces.append(Piece("equal", _joined(old[i1:i2])))
            continue
        if i2 > i1:
            pieces.append(Piece("delete", _joined(old[i1:i2])))
        if j2 > j1:
            pieces.append(Piece("insert", _joined(new[j1:j2])))
    return pieces


def render(pieces: list[Piece]) -> str:
    """`a runner [-sprints-] {+walks+} through the city`: deletions and insertions marked."""
    parts = []
    for piece in pieces:
        if piece.op == "delete":
            parts.append(f"[-{piece.text}-]")
        elif piece.op == "insert":
            parts.append(f"{{+{piece.text}+}}")
        else:
            parts.append(piece.text)
    return _joined(parts)


def _joined(tokens: list[str]) -> str:
    """Tokens joined by spaces, except around line breaks."""
    text = ""
    for token in tokens:
        if text and not text.endswith("\n") and not token.startswith("\n"):
            text += " "
        text += token
    return text
