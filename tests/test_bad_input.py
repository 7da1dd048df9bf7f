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
from collections.abc import Callable
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
    # values of the wrong type are refused as the manifest's schema says, not converted
    "takes_as_text": E(f"{T}:20", "teaser", "takes", "valid integer (got '2')"),
    "sound_as_word": E(f"{T}:20", "teaser", "sound", "valid boolean (got 'no')"),
    "duration_as_bool": E(f"{T}:20", "teaser", "duration", "valid number (got True)"),
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
    "scene_prefix_fractional": E(T, "teaser", "prompt", "scene 1 lasts 4.5s", "use 4 or 5"),
    "scene_prefix_loose": E(T, "teaser", "prompt", "'10 s:'", "write its length as '10s:'"),
    "duration_fractional": E(T, "teaser", "duration", "duration 7.5", "use 7 or 8"),
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
    "manifest_toml_and_json_twins": E(T, None, None, "manifest.json would share one lockfile"),
    "lock_future_version": E(L, None, "version", "lockfile version 3", "newer kling-batch"),
    "lock_damaged_entry": E(L, "opener", "state", "damaged lockfile", "'done'"),
    # a job in flight whose job id was deleted by hand: refused, not followed as job None
    "lock_job_without_id": E(L, "opener", "job_id", "submitted entry without the job id"),
    # files that are not regular files (issue 9): refused without reading them
    "lock_symlink_dev_zero": E(L, None, None, "the lockfile must be a regular file", "character"),
    "lock_is_a_folder": E(L, None, None, "the lockfile must be a regular file", "a folder"),
    "manifest_symlink_dev_zero": E(T, None, None, "a manifest must be a regular file", "character"),
    "include_symlink_dev_zero": E(T, None, "include", "'shots/*.toml' leads outside"),
    # resource bombs in templates (issue 9): each refused in seconds
    "template_power_bomb": E(T, "teaser", "prompt", "'**' would make a number", "1,000 digits"),
    "template_range_too_big": E(T, "teaser", "prompt", "range() of 100,000 numbers", "10,000"),
    "template_loop_too_slow": E(T, "teaser", "prompt", "took over 1 s to render"),
    "template_repeat_bomb": E(T, "teaser", "prompt", "'*' repetition would be over 100,000"),
    "template_lipsum_bomb": E(T, "teaser", "prompt", "lipsum() of up to 10,000,000 words"),
    # a random text would change the request on every plan, billing it again each time
    "template_lipsum_random": E(T, "teaser", "prompt", "lipsum() gives another text on every"),
    "template_random_filter": E(T, "teaser", "prompt", "random filter gives another text"),
    "template_prints_address": E(T, "teaser", "prompt", "Cycler object at 0x...>', whose memory"),
    # numbers no int() should meet: refused in one line, not an OverflowError
    "matrix_exclude_all_bomb": E(
        T, "teaser-{{ a }}-{{ b }}-{{ c }}-{{ d }}", "matrix", "up to 100,000,001 renders"
    ),
    "duration_infinite": E(T, "teaser", "duration", "duration inf is not 3-15 whole seconds"),
    "scene_length_huge_number": E(T, "teaser", "prompt", "scene 1 starts '999", "must be 3-15s"),
    "template_field_too_long": E(T, "teaser", "prompt", "rendered text would be over 100,000"),
    "template_center_bomb": E(T, "teaser", "prompt", "center() would do too much work"),
    "template_method_bomb": E(T, "teaser", "prompt", "ljust() would do too much work"),
    "template_printf_width_bomb": E(T, "teaser", "prompt", "'%' format width", "100,000"),
    "template_concat_bomb": E(T, "teaser", "prompt", "'~' result would be over 100,000"),
    "template_namespace_bomb": E(T, "teaser", "prompt", "output value would be over 100,000"),
    "template_sum_of_lists": E(T, "teaser", "prompt", "the sum filter adds numbers only"),
    # expansion bombs: counted before expanding (1 render for 'opener' comes first)
    "matrix_render_bomb": E(
        T,
        "teaser-{{ a }}-{{ b }}-{{ c }}-{{ d }}",
        "matrix",
        "expands to 100,000,001 renders (100,000,000 from this shot)",
        "limit of 100,000",
        "--max-renders",
    ),
    "takes_over_matrix_bomb": E(
        T, "teaser-{{ a }}-{{ b }}", "matrix", "1,000,001 renders (1,000,000 from this shot)"
    ),
    "render_count_summed_over_shots": E(
        T, "outro-{{ a }}-{{ b }}", "matrix", "120,001 renders (60,000 from this shot)"
    ),
    # paths no file system can hold, refused before paying for the render
    "output_nul": E(T, "teaser", "output", "'x\\x00.mp4' contains a NUL character"),
    "output_name_too_long": E(T, "teaser", "output", "has a 284-byte name", "at most 255 bytes"),
    "output_existing_folder": E(T, "teaser", "output", "renders/teaser is an existing folder"),
    "output_case_collision": E(
        T,
        "Opener",
        "output",
        "renders/Opener.mp4 and renders/opener.mp4, the output of 'opener'",
        "differ only in letter case",
    ),
    "output_dir_nul": E(T, None, "output_dir", "'renders\\x00' contains a NUL character"),
    "output_dir_name_too_long": E(T, None, "output_dir", "has a 320-byte name"),
    "media_path_nul": E(T, "teaser", "image", "'assets/trail\\x00shoe.png' contains a NUL"),
    "media_name_too_long": E(T, "teaser", "image", "has a 334-byte name", "at most 255 bytes"),
    "include_nul": E(T, None, "include", "'shots/\\x00.toml' contains a NUL character"),
    "include_name_too_long": E(T, None, "include", "has a 300-byte name"),
    "template_include_name_too_long": E(T, "teaser", "prompt", "has a 303-byte name"),
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
    assert_refused(tmp_path, work, manifest, expect)


def assert_refused(tmp_path: Path, work: Path, manifest: str, expect: Expect) -> None:
    """`plan MANIFEST` in `work` fails as `expect` says, within 30 s, changing nothing."""
    before = snapshot(tmp_path)

    result = subprocess.run(
        [sys.executable, "-m", "kling_batch", "plan", manifest],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=30,  # a hang detector: every case ends in about a second
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


# Cases git cannot store (FIFOs, files of hundreds of MB) are built by the test itself.
MANIFEST = """\
version = 1
name = "bad-input"
output_dir = "renders"
include = ["shots/*.toml"]

[defaults]
model_tier = "standard"
duration = 5

[[shots]]
id = "teaser"
prompt = "{% include 'prompts/style.j2' %} Northwind trail shoe"
"""
_MB = 1024 * 1024


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _sparse(size: int) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        with open(path, "wb") as f:
            f.truncate(size)  # a hole: no disk space used

    return make


def _text(text: str) -> Callable[[Path], None]:
    return lambda path: path.write_text(text)


DEEP = "[" * 100_000 + "]" * 100_000  # 200 KB: well inside the size cap

GENERATED: dict[str, tuple[str, Callable[[Path], None], Expect]] = {
    "toml_nested_too_deep": (
        T,
        _text(f'version = 1\nname = "deep"\n\n[vars]\na = {DEEP}\n'),
        E(T, None, None, "nested too deeply"),
    ),
    "json_nested_too_deep": (
        J,
        _text(f'{{"version": 1, "name": "deep", "vars": {{"a": {DEEP}}}}}'),
        E(J, None, None, "nested too deeply"),
    ),
    "lock_nested_too_deep": (
        L,
        _text(f"version = 1\n\n[uploads]\nx = {DEEP}\n"),
        E(L, None, None, "the lockfile is nested too deeply"),
    ),
    "lock_fifo": (L, _fifo, E(L, None, None, "the lockfile must be a regular file", "a FIFO")),
    "lock_huge": (L, _sparse(600 * _MB), E(L, None, None, "is 600 MB", "at most 512 MB")),
    "manifest_fifo": (T, _fifo, E(T, None, None, "a manifest must be a regular file", "a FIFO")),
    "manifest_huge": (T, _sparse(11 * _MB), E(T, None, None, "is 11 MB", "at most 10 MB")),
    "include_fifo": (
        "shots/extra.toml",
        _fifo,
        E("shots/extra.toml", None, None, "a shot file must be a regular file", "a FIFO"),
    ),
    "include_huge": (
        "shots/extra.toml",
        _sparse(11 * _MB),
        E("shots/extra.toml", None, None, "a shot file is 11 MB", "at most 10 MB"),
    ),
    "partial_huge": (
        "prompts/style.j2",
        _sparse(2 * _MB),
        E(T, "teaser", "prompt", "include 'prompts/style.j2'", "2 MB", "at most 1 MB"),
    ),
    "partial_fifo": (
        "prompts/style.j2",
        _fifo,
        E(T, "teaser", "prompt", "include not found: prompts/style.j2"),
    ),
    "partial_symlink_loop": (
        "prompts/style.j2",
        lambda path: path.symlink_to(path.name),
        E(T, "teaser", "prompt", "prompts/style.j2 (its symlinks go round in a loop)"),
    ),
    "shot_file_symlink_loop": (
        "shots/extra.toml",
        lambda path: path.symlink_to(path.name),
        E(T, None, "include", "shots/extra.toml's symlinks go round in a loop"),
    ),
}


@pytest.mark.parametrize("case", sorted(GENERATED))
def test_plan_refuses_files_git_cannot_hold(case: str, tmp_path: Path) -> None:
    """A FIFO, an oversized or endlessly nested file where a manifest, shot file, partial
    or lockfile should be: `plan` refuses it without blocking or crashing, in one line."""
    where, make, expect = GENERATED[case]
    work = tmp_path / case
    (work / "shots").mkdir(parents=True)
    (work / "prompts").mkdir()
    (work / T).write_text(MANIFEST)
    (work / "shots" / "more.toml").write_text('[[shots]]\nid = "outro"\nprompt = "Outro"\n')
    (work / "prompts" / "style.j2").write_text("Moody light.")
    (work / where).unlink(missing_ok=True)
    make(work / where)
    if where == J:
        (work / T).unlink()  # one manifest per name: the JSON one is planned
    assert_refused(tmp_path, work, J if where == J else T, expect)
