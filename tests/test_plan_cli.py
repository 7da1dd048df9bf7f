"""`kling-batch plan` through the real entry point: formats, --check, budget, examples."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from kling_batch.lockfile import new_entry
from kling_batch.lockname import lock_path
from kling_batch.manifest_schema import manifest_schema_text
from kling_batch.plan import build_plan
from tests.conftest import EXAMPLES, NOW

ROOT = EXAMPLES.parent
EXAMPLE_MANIFESTS = sorted(
    p
    for p in EXAMPLES.rglob("*")
    if p.suffix in {".toml", ".json"}
    and not any(part.startswith(".") for part in p.relative_to(EXAMPLES).parts)
)


def kb(
    *args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m kling_batch` and capture its output (`env` added to the environment)."""
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "kling_batch", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        check=False,
    )


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    """A scratch copy of examples/ (plans write a hash cache beside the manifest)."""
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    return tmp_path / "examples"


def test_examples_exist() -> None:
    """The quickstart, product launch, storyboard and edit examples are present."""
    names = {p.name for p in EXAMPLE_MANIFESTS}
    assert {"quickstart.toml", "launch.toml", "storyboard.json", "edit.toml"} <= names


@pytest.mark.parametrize("fmt", ["table", "markdown", "json"])
@pytest.mark.parametrize("manifest", EXAMPLE_MANIFESTS, ids=lambda p: p.name)
def test_every_example_plans_in_every_format(examples: Path, manifest: Path, fmt: str) -> None:
    """Each example plans cleanly in each format, with a summary or totals."""
    result = kb("plan", examples / manifest.relative_to(EXAMPLES), "--format", fmt)
    assert result.returncode == 0, result.stderr
    if fmt == "json":
        assert json.loads(result.stdout)["totals"]["to_run"] > 0
    else:
        assert "Plan: " in result.stdout and "to render ($" in result.stdout


def test_json_follows_design_key_for_key(examples: Path) -> None:
    """The JSON report has exactly DESIGN.md's keys at every level."""
    data = json.loads(kb("plan", examples / "quickstart.toml", "--format", "json").stdout)
    assert list(data) == ["manifest", "model", "shots", "orphans", "warnings", "totals"]
    assert list(data["totals"]) == ["shots", "to_run", "cost_usd", "to_run_cost_usd"]
    assert list(data["shots"][0]) == [
        "id",
        "shot",
        "take",
        "action",
        "workflow",
        "model_tier",
        "sound",
        "seconds",
        "rate_usd_per_s",
        "cost_usd",
        "output",
        "fingerprint",
        "request",
        "reasons",
        "assumptions",
        "tags",
    ]
    assert (data["manifest"], data["model"]) == ("quickstart.toml", "kling-o3")


def test_json_numbers_are_the_quickstart_prices(examples: Path) -> None:
    """Quickstart: 5 s standard+sound, 5 s standard silent, 12 s pro+sound, by the model card."""
    data = json.loads(kb("plan", examples / "quickstart.toml", "--format", "json").stdout)
    got = {s["id"]: (s["seconds"], s["rate_usd_per_s"], s["cost_usd"]) for s in data["shots"]}
    assert got == {"sunrise": (5, 0.224, 1.12), "rain": (5, 0.168, 0.84), "story": (12, 0.28, 3.36)}
    assert data["totals"] == {"shots": 3, "to_run": 3, "cost_usd": 5.32, "to_run_cost_usd": 5.32}


def test_json_numbers_have_at_most_three_decimals(examples: Path) -> None:
    """Every number in the JSON has at most three decimals."""
    text = kb("plan", examples / "edit" / "edit.toml", "--format", "json").stdout

    def walk(value: object) -> None:
        if isinstance(value, float):
            assert round(value, 3) == value
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(json.loads(text))


def test_table_starts_with_summary_line(examples: Path) -> None:
    """The table's first line is the Terraform-style summary."""
    out = kb("plan", examples / "quickstart.toml").stdout
    assert out.splitlines()[0] == "Plan: 3 to render ($5.32)"


def test_table_shows_assumption_beside_seconds(project: Callable[..., Path]) -> None:
    """An assumed length is marked beside the seconds and explained in the row."""
    path = project('[[shots]]\nid = "e"\nprompt = "p"\nvideo = "https://x.test/v.mp4"\n')
    out = kb("plan", path).stdout
    row = next(line for line in out.splitlines() if " e " in line)
    assert "10s*" in row and "assumes remote video" in row


def test_markdown_is_a_pr_comment(examples: Path) -> None:
    """Markdown has a heading, the bold summary and a table row per render."""
    out = kb("plan", examples / "quickstart.toml", "--format", "markdown").stdout
    assert out.startswith("### kling-batch plan: `quickstart`")
    assert "**Plan: 3 to render ($5.32)**" in out
    assert out.count("| + new |") == 3


def test_markdown_stays_comment_sized(project: Callable[..., Path]) -> None:
    """Beyond 100 renders to change, the Markdown lists 100 and counts the rest."""
    shots = "".join(f'[[shots]]\nid = "s{n:03d}"\nprompt = "scene {n}"\n' for n in range(130))
    out = kb("plan", project(shots), "--format", "markdown").stdout
    assert out.count("| + new |") == 100
    assert "30 more renders to change not shown here (`--format json` lists them all)." in out


HOSTILE = '<img src="https://evil.example/p.png"> [Approve](https://evil.example) `x` \u202egnp'


def test_markdown_shows_lockfile_and_manifest_text_as_text(
    project: Callable[..., Path],
) -> None:
    """HTML, a link, a backtick or a bidi override in the manifest's name, a lockfile error or
    an orphaned entry's id (never checked against the id pattern) is shown, not rendered."""
    shots = '[[shots]]\nid = "a"\nprompt = "p"\n'
    name = 'name = "t` <img src=x> [A](https://evil.example) \\u202eevil"\n'
    path = project(f'version = 1\n{name}[[shots]]\nid = "b"\nprompt = "q"\n{shots}', header=False)
    plan = build_plan(path, now=NOW)
    old, current = (item.render for item in plan.items)
    plan.lock.shots["a"] = new_entry(current, "failed", error=HOSTILE)
    orphan = "z` <b>x</b> [A](https://evil.example) \u202e"
    plan.lock.shots[orphan] = new_entry(old, "submitted", job_id="job_1", submitted_at=NOW)
    plan.lock.save(lock_path(path))
    path.write_text(f"version = 1\n{name}{shots}")
    lines = kb("plan", path, "--format", "markdown").stdout.splitlines()
    assert lines[0] == "### kling-batch plan: ``t` <img src=x> [A](https://evil.example) evil``"
    assert lines[6] == (
        "| ! retry | `a` | t2v | pro | 5s | $1.40 | last attempt failed: "
        '&lt;img src="https://evil.example/p.png"&gt; \\[Approve\\](https://evil.example) '
        "\\`x\\` gnp |"
    )
    assert lines[8] == (
        "Orphaned lockfile entries (no longer in the manifest): "
        "``z` <b>x</b> [A](https://evil.example) ``"
    )
    assert lines[12].startswith(
        "- z\\` &lt;b&gt;x&lt;/b&gt; \\[A\\](https://evil.example) : removed from the manifest"
    )


def test_check_exit_codes(project: Callable[..., Path], tmp_path: Path) -> None:
    """--check exits 1 when something would render and 0 when nothing would."""
    path = project('[[shots]]\nid = "a"\nprompt = "p"\nenabled = false\n')
    assert kb("plan", path, "--check").returncode == 0
    path.write_text(path.read_text().replace("enabled = false", ""))
    assert kb("plan", path, "--check").returncode == 1


def test_budget_shown_and_warning_when_exceeded(project: Callable[..., Path]) -> None:
    """The budget is shown against the cost to run, with a warning line when exceeded."""
    path = project('budget_usd = 1\n[[shots]]\nid = "a"\nprompt = "p"\n')
    out = kb("plan", path).stdout
    assert "Budget: $1.40 to run of $1.00" in out
    assert "exceeds budget_usd ($1.00) by $0.40" in out


def test_schema_command_matches_checked_in_file() -> None:
    """`kling-batch schema manifest` prints schemas/manifest.schema.json exactly."""
    checked_in = (ROOT / "schemas" / "manifest.schema.json").read_text()
    assert manifest_schema_text() == checked_in, "regenerate: kling-batch schema manifest"
    assert kb("schema", "manifest").stdout == checked_in


def test_schema_rejects_unknown_keys_for_editors() -> None:
    """The schema forbids unknown keys, so editors flag typos as the loader does."""
    schema = json.loads(manifest_schema_text())
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["Shot"]["additionalProperties"] is False


@pytest.mark.parametrize("manifest", EXAMPLE_MANIFESTS, ids=lambda p: p.name)
def test_examples_point_editors_at_the_schema(manifest: Path) -> None:
    """TOML examples start with `#:schema`, JSON examples carry `$schema`, both resolving."""
    if manifest.suffix == ".toml":
        first = manifest.read_text().splitlines()[0]
        assert first.startswith("#:schema ")
        target = first.removeprefix("#:schema ").strip()
    else:
        target = json.loads(manifest.read_text())["$schema"]
    assert (manifest.parent / target).resolve() == ROOT / "schemas" / "manifest.schema.json"


def test_errors_are_one_line_without_traceback(project: Callable[..., Path]) -> None:
    """A bad manifest prints one line to stderr and exits 2; -v adds the traceback."""
    path = project('[[shots]]\nid = "a"\nprompt = "p"\nmodel_tier = "ultra"\n')
    quiet = kb("plan", path)
    assert quiet.returncode == 2
    assert quiet.stderr.count("\n") == 1 and "Traceback" not in quiet.stderr
    assert "shot 'a'" in quiet.stderr and "field 'model_tier'" in quiet.stderr
    loud = kb("-v", "plan", path)
    assert loud.returncode == 2 and "Traceback" in loud.stderr


# Prompts Jinja would render differently in each process: an object's memory address
# (however cut or changed on the way), or a set's order (it follows string hashes).
UNSTABLE_PROMPTS = [
    "{{ (joiner() | string)[-6:] }}",
    "{{ cycler(1) | replace('at 0x', '') }}",
    "{{ ('%r' % [cycler(1)])[-8:] }}",
    "{{ ['a'] | map(attribute='upper') | join | urlencode }}",
    "{{ ({'a': 1, 'b': 2, 'c': 3, 'd': 4, 'e': 5}.keys() - []) | join }}",
]


@pytest.mark.parametrize("prompt", UNSTABLE_PROMPTS)
def test_a_prompt_is_the_same_in_every_process(project: Callable[..., Path], prompt: str) -> None:
    """Two plans in two processes agree (here: both refuse the prompt, in one line naming
    shot and field), so a rerun never sees the shot changed and pays for it again."""
    path = project(f'[[shots]]\nid = "a"\nprompt = "dawn {prompt}"\n')
    first = kb("plan", path, "--format", "json", env={"PYTHONHASHSEED": "1"})
    second = kb("plan", path, "--format", "json", env={"PYTHONHASHSEED": "2"})
    assert (second.returncode, second.stdout, second.stderr) == (
        first.returncode,
        first.stdout,
        first.stderr,
    )
    assert first.returncode == 2, first.stdout
    assert first.stderr.count("\n") == 1
    assert "manifest.toml, shot 'a', field 'prompt': " in first.stderr


def test_off_a_terminal_a_row_is_one_line_however_wide(project: Callable[..., Path]) -> None:
    """A CI log is grepped by render id: with no COLUMNS set, a row far wider than any
    terminal stays on one line, id and notes whole."""
    long_id = "launch-" + "-".join(f"variant{n:02d}" for n in range(20))
    path = project(f'[[shots]]\nid = "{long_id}"\nprompt = "p"\nduration = 3\n')
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    result = subprocess.run(
        [sys.executable, "-m", "kling_batch", "plan", str(path)],
        capture_output=True,
        text=True,
        env={**env, "NO_COLOR": "1"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (row,) = [line for line in result.stdout.splitlines() if long_id in line]
    assert row.startswith(f"+  {long_id}  t2v") and "$" in row
