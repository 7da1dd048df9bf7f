"""TOML syntax errors as kling-batch reports them: the parser's message without its
position, and the line of the file it points at."""

from __future__ import annotations

import re

import tomli

_POSITION = re.compile(r"\s*\((?:at line (\d+), column \d+|at end of document)\)")


def syntax_problem(exc: tomli.TOMLDecodeError, text: str) -> tuple[str, int | None]:
    """(message, line) of a syntax error in `text`. An error at the end of the text (an
    unterminated string, a value missing) names the text's last line and says so: the
    parser counts one line past a final newline."""
    found = _POSITION.search(str(exc))
    message = _POSITION.sub("", str(exc))
    if found is None:
        return message, None
    if found.group(1) is None:
        return f"{message} at the end of the file", len(text.splitlines()) or None
    return message, int(found.group(1))
