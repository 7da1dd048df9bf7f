"""Files as people have them and as strangers shape them (issue 9), through the real CLI.

BOMs from Windows editors are accepted; a FIFO among the caches never blocks `plan`;
`--max-renders` moves the render limit; `status` never reads an output outside output_dir.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kling_batch.lockfile import Lockfile, new_entry
from kling_batch.plan import build_plan
from tests.conftest import NOW

BOM = "\ufeff"

MANIFEST = """\
version = 1
name = "files"
output_dir = "renders"
include = ["shots/*.toml"]

[defaults]
model_tier = "standard"
duration = 5

[[shots]]
id = "opener"
prompt = "Logo on a wet street at dawn"
"""
SHOTS = '[[shots]]\nid = "outro"\nprompt = "Logo fades to black"\n'


def kb(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m kling_batch ARGS` in `cwd`; a hang fails the test after 30 s."""
    return subprocess.run(
        [sys.executable, "-m", "kling_batch", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"},
        timeout=30,
        check=False,
    )


def write_project(root: Path, *, bom: bool = False) -> Path:
    """A manifest including one shot file, each starting with a BOM when asked."""
    mark = BOM if bom else ""
    (root / "shots").mkdir(parents=True)
    (root / "shots" / "outro.toml").write_text(mark + SHOTS, encoding="utf-8")
    manifest = root / "manifest.toml"
    manifest.write_text(mark + MANIFEST, encoding="utf-8")
    return manifest


def actions(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert result.returncode == 0, result.stderr
    return {shot["id"]: shot["action"] for shot in json.loads(result.stdout)["shots"]}


def test_byte_order_marks_are_accepted(tmp_path: Path) -> None:
    """A BOM at the start of the manifest, an included shot file and the lockfile is
    read as if it were not there: the failed render in the lockfile is retried."""
    manifest = write_project(tmp_path, bom=True)
    render = build_plan(manifest, now=NOW).items[0].render
    lock = Lockfile(shots={"opener": new_entry(render, "failed", error="content_moderation")})
    (tmp_path / "manifest.lock").write_text(BOM + lock.dumps(), encoding="utf-8")

    result = kb("plan", "manifest.toml", "--format", "json", cwd=tmp_path)

    assert actions(result) == {"opener": "retry", "outro": "new"}


def test_byte_order_mark_in_a_json_manifest_is_accepted(tmp_path: Path) -> None:
    """A JSON manifest saved with a BOM plans like one without."""
    body = {"version": 1, "name": "j", "shots": [{"id": "one", "prompt": "A", "duration": 5}]}
    (tmp_path / "m.json").write_text(BOM + json.dumps(body), encoding="utf-8")

    assert actions(kb("plan", "m.json", "--format", "json", cwd=tmp_path)) == {"one": "new"}


def test_fifos_among_the_caches_never_block_plan(tmp_path: Path) -> None:
    """A FIFO where `.kling-batch/` keeps its caches is treated as no cache, not read."""
    write_project(tmp_path)
    (tmp_path / "manifest.lock").write_text(Lockfile().dumps())
    (tmp_path / ".kling-batch").mkdir()
    os.mkfifo(tmp_path / ".kling-batch" / "assets.json")
    os.mkfifo(tmp_path / ".kling-batch" / "manifest.lock.json")

    result = kb("plan", "manifest.toml", "--format", "json", cwd=tmp_path)

    assert actions(result) == {"opener": "new", "outro": "new"}


@pytest.mark.parametrize("swap", ["fifo", "huge"])
def test_a_lockfile_swapped_after_its_caches_were_written_is_refused(
    tmp_path: Path, swap: str
) -> None:
    """With the lockfile's caches written (its digest is all a plan then reads of it), a
    FIFO or an oversized file swapped in for it is refused in one line, never waited on."""
    manifest = write_project(tmp_path)
    render = build_plan(manifest, now=NOW).items[0].render
    lock = Lockfile(shots={"opener": new_entry(render, "failed", error="content_moderation")})
    (tmp_path / "manifest.lock").write_text(lock.dumps())
    assert actions(kb("plan", "manifest.toml", "--format", "json", cwd=tmp_path))["opener"] == (
        "retry"
    )
    assert (tmp_path / ".kling-batch" / "manifest.lock.facts.json").is_file()
    (tmp_path / "manifest.lock").unlink()
    if swap == "fifo":
        os.mkfifo(tmp_path / "manifest.lock")
    else:
        with (tmp_path / "manifest.lock").open("wb") as f:
            f.truncate(600 * 1024 * 1024)  # a hole: no disk space used

    result = kb("plan", "manifest.toml", cwd=tmp_path)

    assert result.returncode == 2 and "Traceback" not in result.stderr
    said = "must be a regular file, and this is a FIFO" if swap == "fifo" else "is 600 MB"
    assert len(result.stderr.splitlines()) == 1 and said in result.stderr, result.stderr


def test_a_fifo_in_place_of_a_file_is_refused_when_hashed(tmp_path: Path) -> None:
    """A FIFO where a file was (swapped in after the plan looked at an input or an output,
    before it read it) is refused at once when hashed, never waited on for a writer."""
    os.mkfifo(tmp_path / "in.png")
    code = (
        "import sys\nfrom kling_batch.canonical import sha256_file\n"
        "try:\n    sha256_file(sys.argv[1])\nexcept OSError:\n    print('refused')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "in.png")],
        capture_output=True,
        text=True,
        timeout=30,  # a hang fails the test
        check=False,
    )
    assert result.stdout.strip() == "refused", result.stderr


def test_max_renders_moves_the_limit(tmp_path: Path) -> None:
    """A 2 × 2 matrix with two takes (8 renders) plus two shots is refused under 10 and
    planned at 10."""
    write_project(tmp_path)
    with (tmp_path / "shots" / "outro.toml").open("a") as f:
        f.write(
            '\n[[shots]]\nid = "m-{{ a }}-{{ b }}"\nprompt = "{{ a }} {{ b }}"\ntakes = 2\n'
            "matrix = { a = [1, 2], b = [3, 4] }\n"
        )

    refused = kb("plan", "manifest.toml", "--max-renders", "9", cwd=tmp_path)
    planned = kb("plan", "manifest.toml", "--max-renders", "10", "--format", "json", cwd=tmp_path)

    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.splitlines() == [
        "error: shots/outro.toml, shot 'm-{{ a }}-{{ b }}', field 'matrix': the manifest "
        "expands to 10 renders (8 from this shot), over the limit of 9; raise it with "
        "--max-renders"
    ]
    assert len(actions(planned)) == 10


def test_status_never_reads_an_output_outside_output_dir(tmp_path: Path) -> None:
    """Lockfile outputs outside `renders/` (`..`, absolute, beside the manifest, through a
    symlink) are `invalid` in status, though the file there holds the recorded content."""
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"not yours")
    digest = "sha256:" + hashlib.sha256(b"not yours").hexdigest()
    root = tmp_path / "project"
    manifest = write_project(root)
    (root / "renders").mkdir()
    (root / "renders" / "inside.mp4").write_bytes(b"not yours")
    (root / "renders" / "link").symlink_to(tmp_path, target_is_directory=True)
    (root / "beside.mp4").write_bytes(b"not yours")
    render = build_plan(manifest, now=NOW).items[0].render
    outputs = {
        "inside": "renders/inside.mp4",
        "dotdot": "../secret.mp4",
        "absolute": str(secret),
        "beside": "beside.mp4",
        "linked": "renders/link/secret.mp4",
    }
    done = {"output_sha256": digest, "output_size": 9}
    shots = {
        key: new_entry(render, "done", **done).model_copy(update={"output": out})
        for key, out in outputs.items()
    }
    (root / "manifest.lock").write_text(Lockfile(shots=shots).dumps())

    result = kb("status", "manifest.toml", "--format", "json", cwd=root)
    table = kb("status", "manifest.toml", cwd=root)

    assert result.returncode == 0, result.stderr
    files = {row["id"]: row["file"] for row in json.loads(result.stdout)["renders"]}
    assert files == {
        "inside": "ok",
        "dotdot": "invalid",
        "absolute": "invalid",
        "beside": "invalid",
        "linked": "invalid",
    }
    assert table.returncode == 0 and table.stdout.count("invalid") == 4


def test_status_of_a_missing_manifest_is_refused(tmp_path: Path) -> None:
    """A mistyped manifest name is an error (exit 2, naming it), not an empty project."""
    result = kb("status", "manifst.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: manifst.toml: file not found"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("looped", ["still.png", "renders"])
def test_a_symlink_loop_is_refused_in_one_line(tmp_path: Path, looped: str) -> None:
    """An image, or the output folder, that is a symlink to itself: one line naming the
    file (exit 2), never a traceback, warm or cold."""
    (tmp_path / "m.toml").write_text(
        'version = 1\nname = "loops"\noutput_dir = "renders"\n\n'
        '[[shots]]\nid = "a"\nprompt = "a calm sea"\nimage = "still.png"\n'
    )
    (tmp_path / "still.png").write_bytes(b"\\x89PNG")
    assert kb("plan", "m.toml", cwd=tmp_path).returncode == 0  # warm caches
    target = tmp_path / looped
    if target.is_file():
        target.unlink()
    target.symlink_to(looped)
    result = kb("plan", "m.toml", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: m.toml") and "Traceback" not in result.stderr
