"""TOML syntax errors name a line of the file, also when the error is at its very end, in
manifests, lockfiles and picks files alike."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kling_batch.errors import UserError
from kling_batch.lockfile import load_lockfile
from kling_batch.manifest import load_manifest
from kling_batch.picks import read_picks


def read_picks_file(path: Path) -> Any:
    """`read_picks` of the manifest whose picks file `path` is."""
    return read_picks(path.with_name("m.toml"))


LOADERS: dict[str, tuple[str, Callable[[Path], Any]]] = {
    "manifest": ("m.toml", load_manifest),
    "lockfile": ("m.lock", load_lockfile),
    "picks": ("m.picks.toml", read_picks_file),
}


@pytest.mark.parametrize(
    ("kind", "text", "line", "says"),
    [
        # The parser counts a line past the final newline; the error names line 3 of 3.
        (
            "manifest",
            'version = 1\nname = """\nstill open\n',
            3,
            "Unterminated string at the end of the file",
        ),
        ("lockfile", "version = 2\nmodel =", 2, "Invalid value at the end of the file"),
        ("picks", "version = 1\npicks = [\n", 2, "at the end of the file"),
        (
            "manifest",
            'version = 1\nname = "a"\nname = "b"\n[vars]\n',
            3,
            "Cannot overwrite a value",
        ),
        ("picks", 'version = 1\nversion = 2\npicks = ["a"]\n', 2, "Cannot overwrite a value"),
    ],
)
def test_a_syntax_error_names_its_line(
    tmp_path: Path, kind: str, text: str, line: int, says: str
) -> None:
    name, load = LOADERS[kind]
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserError) as caught:
        load(path)
    assert caught.value.line == line
    assert says in str(caught.value)
    for position in ("end of document", "column", "at line"):
        assert position not in str(caught.value)
