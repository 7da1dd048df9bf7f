"""`plan --compare BASE` through the real CLI: a git ref or a saved plan, in three formats."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kling_batch.lockfile import new_entry
from kling_batch.lockname import lock_path
from kling_batch.plan import build_plan
from tests.conftest import NOW
from tests.run.conftest import PNG, Project, emulator

HERE = Path(__file__).resolve().parent

# The base of the realistic change: five shots, rendered and committed with their lockfile.
BASE = '''\
version = 1
name = "spring-launch"
output_dir = "renders"
budget_usd = 10

[defaults]
model_tier = "standard"
aspect_ratio = "9:16"
duration = 5

[[shots]]
id = "teaser"
prompt = "A trail shoe on a misty ridge at dawn"
tags = ["social"]

[[shots]]
id = "story"
prompt = """
4s: the logo forms from falling rain
6s: a runner sprints through the city at night
"""
model_tier = "pro"

[[shots]]
id = "detail"
prompt = "Close-up of the sole gripping wet rock"
sound = false

[[shots]]
id = "outro"
prompt = "The logo on a white background"
duration = 3

[[shots]]
id = "banner"
prompt = "A wide banner shot of the mountains"
'''

BANNER = """
[[shots]]
id = "banner"
prompt = "A wide banner shot of the mountains"
"""

PACKSHOT = """
[[shots]]
id = "packshot"
prompt = "The shoe turning on a pedestal"
model_tier = "4k"
duration = 4
"""


GIT = [
    "git",
    "-c",
    "user.name=Test",
    "-c",
    "user.email=t@example.com",
    "-c",
    "commit.gpgsign=false",
]


def git(repo: Path, *args: str) -> str:
    """Run git in `repo` as a fixed author; its output."""
    done = subprocess.run([*GIT, *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout


def kb(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m kling_batch ARGS` in `cwd`, output captured."""
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "kling_batch", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        check=False,
        timeout=120,
    )


def realistic_change(manifest: Path) -> None:
    """Two prompts edited, one shot added, one removed, one tier changed."""
    text = manifest.read_text()
    edits = [
        ("misty ridge at dawn", "misty ridge at sunrise"),
        ("sprints through the city", "sprints through the rainy city"),
        (
            'prompt = "Close-up of the sole gripping wet rock"\n',
            ('prompt = "Close-up of the sole gripping wet rock"\nmodel_tier = "pro"\n'),
        ),
        (BANNER, PACKSHOT),
    ]
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    manifest.write_text(text)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """main: the base manifest, rendered, with its lockfile committed; the working tree: the
    realistic change on a branch."""
    root = tmp_path_factory.mktemp("repo")
    git(root, "init", "-q", "-b", "main")
    (root / ".gitignore").write_text("renders/\n")
    video = root / "video"
    video.mkdir()
    manifest = video / "launch.toml"
    manifest.write_text(BASE)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "base")
    with emulator() as served:
        result = Project(video, manifest, served).run()
    assert result.returncode == 0, result.stderr
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "rendered")
    git(root, "checkout", "-q", "-b", "change")
    realistic_change(manifest)
    yield root


def test_markdown_of_a_realistic_change_is_the_hand_written_comment(repo: Path) -> None:
    """The PR comment for the change equals tests/compare/pr-comment.md (written by hand)."""
    result = kb("plan", "video/launch.toml", "--compare", "main", "--format", "markdown", cwd=repo)
    assert result.returncode == 0, result.stderr
    commit = git(repo, "rev-parse", "--short=7", "main").strip()
    expected = (HERE / "pr-comment.md").read_text().replace("COMMIT", commit)
    assert result.stdout == expected


def test_json_of_the_change(repo: Path) -> None:
    """The JSON report holds the costs, each render added, removed and changed, with fields."""
    result = kb("plan", "video/launch.toml", "--compare", "main", "--format", "json", cwd=repo)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["base_kind"] == "git" and data["base"].startswith("main (")
    # Standard + sound $0.224/s, standard silent $0.168/s, pro + sound $0.28/s, pro silent
    # $0.224/s, 4K $0.525/s: base 5×0.224 + 10×0.28 + 5×0.168 + 3×0.224 + 5×0.224.
    assert data["cost_usd"] == {"base": 6.552, "head": 7.812, "diff": 1.26}
    assert [(r["id"], r["cost_usd"]) for r in data["added"]] == [("packshot", 2.1)]
    assert [(r["id"], r["cost_usd"]) for r in data["removed"]] == [("banner", 1.12)]
    changed = {r["id"]: r for r in data["changed"]}
    assert list(changed) == ["teaser", "story", "detail"]
    assert changed["detail"]["fields"] == [
        {"field": "model_tier", "base": "standard", "head": "pro", "content": False}
    ]
    assert changed["detail"]["cost_usd"] == {"base": 0.84, "head": 1.12, "diff": 0.28}
    assert changed["detail"]["prompt_diff"] is None
    assert [p for p in changed["teaser"]["prompt_diff"] if p["op"] != "equal"] == [
        {"op": "delete", "text": "dawn"},
        {"op": "insert", "text": "sunrise"},
    ]
    assert data["unchanged"] == 1
    assert data["plan"]["totals"]["to_run_cost_usd"] == 7.14


def test_table_of_the_change(repo: Path) -> None:
    """The table starts with the cost line and lists each change with its cost."""
    result = kb("plan", "video/launch.toml", "--compare", "main", cwd=repo)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Cost of the manifest: $6.552 → $7.812 (+$1.26), compared with main")
    assert lines[1] == "Plan: 4 to render ($7.14), 1 unchanged, 1 orphaned"
    rows = {line.split()[1]: line for line in lines if line[:1] in "~+-" and len(line.split()) > 2}
    assert rows["detail"].split()[0] == "~" and "model_tier: standard → pro" in rows["detail"]
    assert rows["detail"].rstrip().endswith("$0.84 → $1.12 (+$0.28)")
    assert rows["packshot"].rstrip().endswith("+$2.10")
    assert rows["banner"].rstrip().endswith("-$1.12")
    assert "  A trail shoe on a misty ridge at [-dawn-] {+sunrise+}" in lines


def test_compare_with_a_saved_plan(tmp_path: Path) -> None:
    """BASE may be a plan saved with --out: the comparison is with that plan's renders."""
    manifest = tmp_path / "launch.toml"
    manifest.write_text(BASE)
    assert kb("plan", manifest, "--out", tmp_path / "base.json", cwd=tmp_path).returncode == 0
    realistic_change(manifest)
    result = kb("plan", manifest, "--compare", "base.json", "--format", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["base"], data["base_kind"], data["note"]) == ("base.json", "plan", None)
    assert data["cost_usd"] == {"base": 6.552, "head": 7.812, "diff": 1.26}
    assert [r["id"] for r in data["changed"]] == ["teaser", "story", "detail"]


def test_changed_asset_and_included_file_at_a_ref(tmp_path: Path) -> None:
    """An image's new content and an included shot file's edit show as changes from the ref."""
    manifest = tmp_path / "launch.toml"
    manifest.write_text(
        'version = 1\nname = "x"\ninclude = ["shots/*.toml"]\n\n'
        '[[shots]]\nid = "still"\nprompt = "p"\nimage = "still.png"\n'
    )
    (tmp_path / "still.png").write_bytes(PNG)
    (tmp_path / "shots").mkdir()
    (tmp_path / "shots" / "more.toml").write_text('[[shots]]\nid = "more"\nprompt = "q"\n')
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "base")
    (tmp_path / "still.png").write_bytes(PNG + b"\x00")
    (tmp_path / "shots" / "more.toml").write_text(
        '[[shots]]\nid = "more"\nprompt = "q"\nduration = 8\n'
    )
    result = kb("plan", manifest, "--compare", "HEAD", "--format", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    changed = {r["id"]: r["fields"] for r in json.loads(result.stdout)["changed"]}
    assert [(f["field"], f["content"]) for f in changed["still"]] == [("image", True)]
    assert [(f["field"], f["base"], f["head"]) for f in changed["more"]] == [("duration", 5, 8)]
    table = kb("plan", manifest, "--compare", "HEAD", cwd=tmp_path).stdout
    assert "content of still.png changed" in table


def committed_folder(root: Path, attributes: str, *config: tuple[str, str]) -> Path:
    """A manifest in `video/` with included shot files and an image, committed with
    `attributes` as the repository's `.gitattributes` (and `config` set first); the
    manifest's path."""
    git(root, "init", "-q", "-b", "main")
    for name, value in config:
        git(root, "config", name, value)
    video = root / "video"
    (video / "shots").mkdir(parents=True)
    manifest = video / "launch.toml"
    manifest.write_text(
        'version = 1\nname = "x"\ninclude = ["shots/*.toml"]\n\n'
        '[[shots]]\nid = "still"\nprompt = "p"\nimage = "still.png"\n'
    )
    (video / "still.png").write_bytes(PNG)
    (video / "shots" / "a.toml").write_text('[[shots]]\nid = "a"\nprompt = "q"\n')
    (video / "shots" / "b.toml").write_text('[[shots]]\nid = "b"\nprompt = "r"\n')
    (root / ".gitattributes").write_text(attributes)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "base")
    return manifest


@pytest.mark.parametrize(
    "attributes",
    [
        "video/shots/b.toml export-ignore\n",
        "*.png export-ignore\n",
        "video/** export-ignore\n",
    ],
)
def test_files_marked_export_ignore_are_compared(tmp_path: Path, attributes: str) -> None:
    """Files `git archive` would leave out (`export-ignore`) are read at the ref all the
    same: an unchanged manifest compares as unchanged, not as renders added or an error."""
    manifest = committed_folder(tmp_path, attributes)
    result = kb("plan", manifest, "--compare", "main", "--format", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["added"], data["removed"], data["changed"]) == ([], [], [])
    assert data["cost_usd"] == {"base": 4.2, "head": 4.2, "diff": 0}


def test_an_asset_behind_a_filter_is_compared_as_checked_out(tmp_path: Path) -> None:
    """An image stored through a clean/smudge filter (as Git LFS stores assets) and kept out
    of archives is read at the ref as a checkout writes it: unchanged, not content changed."""
    b64 = [("clean", "base64"), ("smudge", "base64 -d"), ("required", "true")]
    config = [(f"filter.b64.{name}", value) for name, value in b64]
    manifest = committed_folder(tmp_path, "*.png filter=b64 export-ignore\n", *config)
    assert git(tmp_path, "show", "main:video/still.png").encode() != PNG  # stored as base64
    result = kb("plan", manifest, "--compare", "main", "--format", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["changed"] == []


def test_a_manifest_marked_export_subst_is_compared_as_committed(tmp_path: Path) -> None:
    """A prompt holding `$Format:%H$` in a file marked `export-subst` is compared as written,
    not with the commit's hash put in its place by `git archive`."""
    manifest = committed_folder(tmp_path, "video/launch.toml export-subst\n")
    manifest.write_text(manifest.read_text().replace('"p"', '"build $Format:%H$"'))
    git(tmp_path, "commit", "-q", "-am", "subst")
    result = kb("plan", manifest, "--compare", "main", "--format", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["changed"] == []


def test_a_manifest_new_since_the_ref_is_all_added(tmp_path: Path) -> None:
    """A manifest the ref does not have: base cost $0, every render added, and a note."""
    git(tmp_path, "init", "-q", "-b", "main")
    (tmp_path / "README").write_text("x")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "first")
    manifest = tmp_path / "launch.toml"
    manifest.write_text(BASE)
    result = kb("plan", manifest, "--compare", "main", "--format", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["cost_usd"] == {"base": 0, "head": 6.552, "diff": 6.552}
    assert len(data["added"]) == 5 and not data["removed"] and not data["changed"]
    assert "launch.toml is not in main" in data["note"]


def test_only_compares_the_same_renders_on_both_sides(tmp_path: Path) -> None:
    """A render in flight is planned whatever `--only` says; the ref's side has it too, so
    an unchanged manifest shows no render added and no cost change."""
    manifest = tmp_path / "launch.toml"
    manifest.write_text(BASE)
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "base")
    plan = build_plan(manifest, now=NOW)
    story = next(item.render for item in plan.items if item.render.id == "story")
    plan.lock.shots["story"] = new_entry(story, "submitted", job_id="job_1", submitted_at=NOW)
    plan.lock.save(lock_path(manifest))
    args = ("plan", manifest, "--only", "teaser", "--compare", "main", "--format")
    data = json.loads(kb(*args, "json", cwd=tmp_path).stdout)
    assert (data["added"], data["removed"], data["changed"]) == ([], [], [])
    assert data["cost_usd"] == {"base": 3.92, "head": 3.92, "diff": 0}
    text = kb(*args, "markdown", cwd=tmp_path).stdout
    assert "**Cost of the manifest: $3.92 (no change)**, compared with `main (" in text
    assert "| + |" not in text and "2 renders unchanged." in text


def test_a_changed_value_is_shown_as_text_in_markdown(tmp_path: Path) -> None:
    """A manifest value with HTML, a link, a backtick, emphasis, math or a bidi override is
    shown in the change column as text, never rendered."""
    manifest = tmp_path / "launch.toml"
    still = '[[shots]]\nid = "a"\nprompt = "p"\nworkflow = "i2v"\nimage = "{}"\n'
    manifest.write_text('version = 1\nname = "x"\n' + still.format("https://e.example/a.png"))
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "base")
    hostile = "https://e.x/<b>[A](//e)`_y_*~$\\u202e.png"
    manifest.write_text('version = 1\nname = "x"\n' + still.format(hostile))
    result = kb("plan", manifest, "--compare", "main", "--format", "markdown", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("| ~ |"))
    assert row == (
        "| ~ | `a` | image: https://e.example/a.png → "
        "https://e.x/&lt;b&gt;\\[A\\](//e)\\`\\_y\\_\\*\\~\\$.png | $1.40 (no change) |"
    )


def test_unknown_ref_exits_2(repo: Path) -> None:
    """A BASE that is neither a saved plan nor a git ref is refused with exit 2."""
    result = kb("plan", "video/launch.toml", "--compare", "no-such-branch", cwd=repo)
    assert result.returncode == 2
    assert "'no-such-branch' is neither a saved plan nor a git ref" in result.stderr


def test_outside_a_repository_a_ref_exits_2(tmp_path: Path) -> None:
    """A git ref for a manifest outside any repository is refused with exit 2."""
    manifest = tmp_path / "launch.toml"
    manifest.write_text(BASE)
    result = kb("plan", manifest, "--compare", "main", cwd=tmp_path)
    assert result.returncode == 2
    assert "is not in a git repository" in result.stderr
