"""What is priced is exactly what is sent: one scene grammar, the canonical prompt, and only
the fields the resolved workflow reads (issue 8, point 3). Real CLI against the emulator."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from kling_batch.lockfile import load_lockfile
from tests.run.conftest import Project

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
HEADER = 'version = 1\nname = "wire"\noutput_dir = "renders"\n'


def sent(project: Project) -> list[dict[str, object]]:
    """The request bodies the emulator accepted, oldest first."""
    return project.served.emulator.jobs.requests()


def test_bare_carriage_returns_are_priced_as_the_api_bills_them(
    make_project: Callable[..., Project],
) -> None:
    """Six `15s:` scenes split by bare CRs are priced as 90 s: over a $3 budget, refused."""
    prompt = "\\r".join(f"15s: shot {n}" for n in range(6))
    project = make_project(
        HEADER + f'budget_usd = 3\n\n[[shots]]\nid = "cr"\nprompt = "{prompt}"\n'
    )
    plan = project.plan_json()
    (shot,) = plan["shots"]  # type: ignore[misc]
    assert shot["seconds"] == 90
    assert Decimal(str(shot["cost_usd"])) == Decimal("0.280") * 90  # pro with sound
    result = project.run()
    assert result.returncode == 3, result.stderr
    assert project.submissions() == 0
    assert project.served.emulator.ledger.total == 0


def test_the_sent_prompt_is_canonical_and_billed_as_planned(
    make_project: Callable[..., Project],
) -> None:
    """CR, CRLF, U+2028 and `|` all split scenes; the body carries them joined by LF."""
    raw = "4s: dawn\\r3s: noon\\r\\n5s: dusk\\u2028night | 3s: stars"
    project = make_project(HEADER + f'\n[[shots]]\nid = "day"\nprompt = "{raw}"\n')
    planned = project.plan_json()["totals"]["to_run_cost_usd"]  # type: ignore[index]
    assert project.run().returncode == 0
    (body,) = sent(project)
    assert body["prompt"] == "4s: dawn\n3s: noon\n5s: dusk\nnight\n3s: stars"
    # Four prefixed scenes and one of the default 5 s: 20 s at the pro sound rate.
    assert Decimal(str(planned)) == Decimal("0.280") * 20
    assert project.served.emulator.ledger.total == Decimal(str(planned))


def test_only_the_fields_the_workflow_reads_are_sent(
    make_project: Callable[..., Project],
) -> None:
    """An image on a t2v shot is warned about, never uploaded or sent; an edit sends no duration."""
    manifest = HEADER + (
        '\n[[shots]]\nid = "text"\nprompt = "a bay"\nworkflow = "t2v"\nimage = "still.png"\n'
        "keep_original_sound = false\n"
        '\n[[shots]]\nid = "edit"\nprompt = "make it snow"\nvideo = "street.mp4"\nduration = 7\n'
    )
    project = make_project(manifest)
    shutil.copy(FIXTURES / "lock_v1" / "clips" / "street.mp4", project.root / "street.mp4")
    plan = subprocess.run(
        [sys.executable, "-m", "kling_batch", "plan", str(project.manifest)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "image is not used by workflow t2v; it is not sent" in plan.stdout
    assert "keep_original_sound only applies to video_edit" in plan.stdout
    assert "duration is not used by video_edit" in plan.stdout
    assert project.run().returncode == 0
    bodies = {body["prompt"]: body for body in sent(project)}
    text, edit = bodies["a bay"], bodies["make it snow"]
    assert "image" not in text and "keep_original_sound" not in text
    assert "duration" not in edit and edit["keep_original_sound"] is True
    uploads = project.served.emulator.journal.entries(path="/v1/files/upload")
    assert len(uploads) == 1  # the clip only; the unused image is never uploaded
    assert "image" not in load_lockfile(project.lock).shots["text"].assets


def plan_check(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`kling-batch plan shots.toml --check ARGS` in the project folder `work`."""
    return subprocess.run(
        [sys.executable, "-m", "kling_batch", "plan", "shots.toml", "--check", *args],
        cwd=work,
        capture_output=True,
        text=True,
        check=False,
    )


def test_a_version_1_lockfile_plans_as_all_unchanged(tmp_path: Path) -> None:
    """A lockfile written by kling-batch 0.1.0 (old wire form) still says nothing to do."""
    work = tmp_path / "project"
    shutil.copytree(FIXTURES / "lock_v1", work)
    result = plan_check(work)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("Plan: 0 to render ($0.00), 7 unchanged")
    assert "version = 1" in (work / "shots.lock").read_text()  # plan never rewrites it


def _v1_tables(text: str) -> tuple[str, dict[str, str], str]:
    """A v1 lockfile's head, each `[shots.<id>]` table's text, and its uploads."""
    shots, _, uploads = text.partition("\n[uploads.")
    head, *tables = re.split(r"\n(?=\[shots\.[\w-]+\]\n)", shots)
    named = {t.partition("]")[0].removeprefix("[shots."): t for t in tables}
    return head, named, "\n[uploads." + uploads


def test_v1_entries_git_merged_into_a_version_2_lockfile_plan_unchanged(tmp_path: Path) -> None:
    """A branch rendered with kling-batch 0.1.0 merges (cleanly) into one whose lockfile a
    newer kling-batch rewrote as version 2. Its entries were read as v2: `piped` (its
    prompt recorded in the old form) planned as changed, paid again, and neither render's
    bill was in spend. They are migrated like a v1 file's."""
    work = tmp_path / "project"
    shutil.copytree(FIXTURES / "lock_v1", work)
    head, tables, uploads = _v1_tables((work / "shots.lock").read_text())
    base, ours, theirs = (tmp_path / name for name in ("base.lock", "ours.lock", "theirs.lock"))
    base.write_text(head + "\n" + tables["still"] + uploads)
    load_lockfile(base).save(ours)  # the branch where a newer kling-batch ran
    rendered = "".join("\n" + tables[key] for key in ("piped", "plain", "still"))
    theirs.write_text(head + rendered + uploads)  # the branch where kling-batch 0.1.0 ran
    merged = subprocess.run(
        ["git", "merge-file", "-p", str(ours), str(base), str(theirs)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert merged.returncode == 0, merged.stdout  # no conflict: nothing stops anyone
    migrated = load_lockfile(work / "shots.lock")  # the whole v1 file, migrated
    (work / "shots.lock").write_text(merged.stdout)
    lock = load_lockfile(work / "shots.lock")
    assert lock.version == 2
    for key in ("piped", "plain", "still"):
        assert lock.shots[key].fingerprint == migrated.shots[key].fingerprint, key
        assert lock.shots[key].submissions == migrated.shots[key].submissions, key
        assert lock.shots[key].submissions[0].billed_usd is not None, key
    only = ["--only", "piped", "--only", "plain", "--only", "still"]
    result = plan_check(work, *only)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("Plan: 0 to render ($0.00), 3 unchanged")
