"""TOML syntax errors as kling-batch reports them: the parser's message without its
position, and the line of the file it points at."""

from __future__ import annotations

import tomli


def syntax_problem(exc: tomli.TOMLDecodeError, text: str) -> tuple[str, int | None]:
    """(message, line) of a syntax error in `text`. An error at the end of the text (an
    unterminated string, a value missing) names the text's last line and says so: the
    parser counts one line past a final newline."""
    if exc.pos >= len(text):
        return f"{exc.msg} at the end of the file", len(text.splitlines()) or None
    return exc.msg, exc.lineno
