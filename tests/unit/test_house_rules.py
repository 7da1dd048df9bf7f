"""House rules of the package that a reader would otherwise have to check by hand."""

from __future__ import annotations

import ast
from pathlib import Path

import kling_batch

PACKAGE = Path(kling_batch.__file__).parent
MOST_LINES = 50
WHY = "# long because"  # a function may be longer when a comment in it says why


def test_no_function_is_over_fifty_lines_without_saying_why() -> None:
    """Each function reads as one decision: at most 50 lines, unless it says why not."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            assert node.end_lineno is not None
            body = lines[node.lineno - 1 : node.end_lineno]
            if len(body) > MOST_LINES and not any(WHY in line for line in body):
                long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} {len(body)}")
    assert long == []
