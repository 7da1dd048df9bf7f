"""Malformed manifests and lockfiles: the real `kling-batch plan` refuses each one cleanly.

Every folder in `tests/bad_input/` holds one mistake. For each, `plan` must exit 2 and print
exactly one line, `error: FILE[:LINE][, shot 'ID'][, field 'NAME']: message`, that points at
the mistake, with no traceback, and must write nothing (no `.kling-batch/`, no lockfile).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

BAD_INPUT = Path(__file__).resolve().parent / "bad_input"


@dataclass(frozen=True, slots=True)
class Expect:
    """The one stderr line: exact location, shot and field (None: absent), message words."""

    where: str
    shot: str | None
    field: str | None
    words: tuple[str, ...]
    bug: str | None = None


def E(
    where: str, shot: str | None, field: str | None, *words: str, bug: str | None = None
) -> Expect:
    return Expect(where, shot, field, words, bug)


T, J, L = "manifest.toml", "manifest.json", "manifest.lock"

# case folder → where (FILE[:LINE], exact), shot, field, words the message must contain.
CASES: dict[str, Expect] = {
    # syntax
    "toml_syntax_error": E(f"{T}:19", None, None, "TOML syntax error"),
    "json_syntax_error": E(f"{J}:22", None, None, "JSON syntax error"),
    "json_not_object": E(f"{J}:1", None, None, "must be a JSON object"),
    "included_file_syntax_error": E("shots/extra.toml:3", None, None, "TOML syntax error"),
    # unknown keys
    "unknown_top_level_key": E(f"{T}:4", None, "budget", "did you mean 'budget_usd'"),
    "unknown_shot_key_promt": E(f"{T}:19", "teaser", "promt", "did you mean 'prompt'"),
    "unknown_shot_key_json": E(f"{J}:21", "teaser", "promt", "did you mean 'prompt'"),
    "unknown_defaults_key": E(f"{T}:10", None, "defaults.aspect", "did you mean 'aspect_ratio'"),
    "included_file_unknown_key": E(
        "shots/b-bad.toml:7", "outro", "duraton", "did you mean 'duration'"
    ),
    # types and versions
    "wrong_type_takes": E(f"{T}:20", "teaser", "takes", "valid integer", "'two'"),
    "wrong_type_budget": E(f"{T}:4", None, "budget_usd", "valid decimal", "'lots'"),
    "wrong_type_shots": E(f"{T}:4", None, "shots", "valid list"),
    "version_missing": E(T, None, "version", "missing"),
    "version_2": E(f"{T}:1", None, "version", "invalid value 2"),
    "shot_id_missing": E(T, "shots[1]", "id", "missing"),
    "shot_id_missing_not_last": E(
        T,
        "shots[1]",
        "id",
        "missing",
    ),
    # numbers out of range
    "duration_too_long": E(f"{T}:20", "teaser", "duration", "less than or equal to 15"),
    "duration_too_short": E(f"{T}:11", None, "defaults.duration", "greater than or equal to 3"),
    "takes_zero": E(f"{T}:20", "teaser", "takes", "greater than or equal to 1"),
    # `duration` appears three times in the file: no line is better than a wrong one.
    "json_out_of_range_later_shot": E(J, "teaser", "duration", "less than or equal to 15"),
    # enums
    "enum_model_tier": E(f"{T}:20", "teaser", "model_tier", "invalid value 'ultra'"),
    "enum_aspect_ratio": E(f"{T}:20", "teaser", "aspect_ratio", "invalid value '4:3'"),
    "enum_workflow": E(f"{T}:20", "teaser", "workflow", "invalid value 'magic'"),
    "enum_from_matrix_template": E(T, "teaser-ultra", "model_tier", "'ultra'", "'4k'"),
    # prompts and scenes
    "prompt_empty": E(T, "teaser", "prompt", "at least 1 character"),
    "prompt_blank": E(T, "teaser", "prompt", "prompt is empty"),
    "prompt_seven_scenes": E(T, "teaser", "prompt", "7 scenes", "at most 6"),
    "scene_prefix_out_of_range": E(T, "teaser", "prompt", "scene 2 is 20s", "3-15s"),
    # templates
    "template_undefined_variable": E(T, "teaser", "prompt", "'brnad' is undefined"),
    "template_syntax_error": E(T, "teaser", "prompt", "template syntax error"),
    "template_sandbox_escape": E(T, "teaser", "prompt", "sandbox", "'__class__'"),
    "template_include_outside": E(T, "teaser", "prompt", "../x.j2", "must stay inside"),
    "template_include_symlink_outside": E(
        T, "teaser", "prompt", "prompts/style.j2", "must stay inside"
    ),
    "template_include_itself": E(
        T,
        "teaser",
        "prompt",
        "recurs",
    ),
    "template_recursive_macro": E(
        T,
        "teaser",
        "prompt",
        "recurs",
    ),
    # includes
    "include_glob_matches_nothing": E(T, None, "include", "'shots/*.toml' matches no file"),
    "include_glob_outside": E(T, None, "include", "'../*.toml'", "relative glob inside"),
    # assets
    "asset_missing": E(T, "teaser", "image", "'assets/trail-shoe.png': no such file"),
    "asset_outside_dotdot": E(T, "teaser", "image", "'../outside.png' lies outside"),
    "asset_symlink_outside": E(T, "teaser", "image", "'assets/trail-shoe.png' lies outside"),
    "asset_absolute_path": E(T, "teaser", "image", "'/etc/passwd' lies outside"),
    "asset_reference_outside": E(T, "teaser", "reference_images[1]", "lies outside"),
    "asset_http_url": E(T, "teaser", "image", "http:// is refused"),
    "asset_file_url": E(T, "teaser", "image", "'file:///etc/passwd'", "https://"),
    "video_not_a_video": E(T, "teaser", "video", "cannot read the length of street.mp4"),
    # ids and outputs
    "duplicate_id_after_expansion": E(T, "teaser", "id", "duplicate id"),
    "id_bad_characters": E(T, "my shot!", "id", "may only use letters"),
    "output_escapes_output_dir": E(T, "teaser", "output", "'../../x.mp4'", "inside output_dir"),
    "output_dir_outside": E(T, None, "output_dir", "'../renders' leads outside"),
    "output_duplicate": E(T, "teaser", "output", "also the output of 'opener'"),
    # workflow rules
    "4k_with_video": E(T, "teaser", "model_tier", "4k takes no video input"),
    "4k_with_reference_video": E(T, "teaser", "model_tier", "4k takes no video input"),
    "i2v_without_image": E(T, "teaser", "image", "i2v needs an image"),
    "image_end_without_image": E(T, "teaser", "image_end", "needs an image"),
    "video_edit_without_video": E(T, "teaser", "video", "video_edit needs a video"),
    "reference_without_references": E(T, "teaser", "reference_images", "reference needs"),
    "reference_item_with_comma": E(T, "teaser", "reference_images", "contains a comma"),
    # matrices
    "matrix_empty": E(T, "teaser", "matrix", "the matrix is empty"),
    "matrix_key_empty_list": E(T, "teaser-{{ colour }}", "matrix.colour", "has no values"),
    "matrix_exclude_unknown_key": E(
        T, "teaser-{{ colour }}", "matrix.exclude", "'color', not a matrix key"
    ),
    # lockfiles
    "lock_not_toml": E(f"{L}:5", None, None, "not valid TOML"),
    "lock_future_version": E(L, None, "version", "lockfile version 2", "newer kling-batch"),
    "lock_damaged_entry": E(L, "opener", "state", "damaged lockfile", "'done'"),
}

# A folder without a row still runs, and fails, so no case goes untested by accident.
_FOLDERS = sorted(path.name for path in BAD_INPUT.iterdir() if path.is_dir())
PARAMS = [
    pytest.param(
        name,
        expect,
        id=name,
        marks=[pytest.mark.xfail(strict=True, reason=f"BUG: {expect.bug}")] if expect.bug else [],
    )
    for name, expect in CASES.items()
] + [pytest.param(name, None, id=name) for name in _FOLDERS if name not in CASES]

LOCATED = re.compile(
    r"error: (?P<where>[^\s,:]+(?::\d+)?)"
    r"(?:, shot '(?P<shot>[^']*)')?"
    r"(?:, field '(?P<field>[^']*)')?"
    r": (?P<message>.+)"
)


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under `root` (symlinks not followed) → (file type, size, mtime in ns)."""
    entries: dict[str, tuple[int, int, int]] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            info = path.lstat()
            entries[path.relative_to(root).as_posix()] = (
                stat.S_IFMT(info.st_mode),
                info.st_size,
                info.st_mtime_ns,
            )
    return entries


@pytest.mark.parametrize(("case", "expect"), PARAMS)
def test_plan_refuses_bad_input(case: str, expect: Expect | None, tmp_path: Path) -> None:
    """`plan` exits 2 with one line naming the file, shot, field and cause, writing nothing."""
    assert expect is not None, f"tests/bad_input/{case}/ has no row in CASES"
    for shared in BAD_INPUT.iterdir():
        if shared.is_file():
            shutil.copy2(shared, tmp_path / shared.name)
    work = tmp_path / case
    shutil.copytree(BAD_INPUT / case, work, symlinks=True)
    manifest = next(name for name in ("manifest.toml", "manifest.json") if (work / name).exists())
    before = snapshot(tmp_path)

    result = subprocess.run(
        [sys.executable, "-m", "kling_batch", "plan", manifest],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1"},
    )

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    located = LOCATED.fullmatch(lines[0])
    assert located, f"not `error: FILE[:LINE][, shot 'ID'][, field 'NAME']: ...`: {lines[0]}"
    assert located["where"] == expect.where, lines[0]
    assert located["shot"] == expect.shot, lines[0]
    assert located["field"] == expect.field, lines[0]
    for word in expect.words:
        assert word in located["message"], lines[0]
    assert snapshot(tmp_path) == before, "plan wrote or changed files"
