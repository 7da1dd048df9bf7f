"""TOML syntax errors name a line of the file, also when the error is at its very end."""

from __future__ import annotations

from pathlib import Path

import pytest

from kling_batch.errors import UserError
from kling_batch.lockfile import load_lockfile
from kling_batch.manifest import load_manifest


def test_an_unterminated_string_names_the_last_line_of_the_manifest(tmp_path: Path) -> None:
    """The parser counts a line past the final newline; the error names line 3 of 3."""
    path = tmp_path / "m.toml"
    path.write_text('version = 1\nname = """\nstill open\n')
    with pytest.raises(UserError) as caught:
        load_manifest(path)
    assert caught.value.line == 3
    assert "Unterminated string at the end of the file" in str(caught.value)
    assert "end of document" not in str(caught.value)


def test_a_missing_value_at_the_end_of_a_lockfile_names_its_last_line(tmp_path: Path) -> None:
    path = tmp_path / "m.lock"
    path.write_text("version = 2\nmodel =")
    with pytest.raises(UserError) as caught:
        load_lockfile(path)
    assert caught.value.line == 2
    assert "at the end of the file" in str(caught.value)


def test_an_error_inside_the_text_keeps_its_own_line(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text('version = 1\nname = "a"\nname = "b"\n[vars]\n')
    with pytest.raises(UserError) as caught:
        load_manifest(path)
    assert caught.value.line == 3
    assert "column" not in str(caught.value)
