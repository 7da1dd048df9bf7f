"""`plan --out PLAN.json` and `run PLAN.json`: exactly the saved plan runs, or nothing does."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kling_batch.canonical import fingerprint_of
from kling_batch.lockfile import load_lockfile
from tests.run.conftest import PNG, Project
from tests.run.test_uncertain import lost_answer, sent

MANIFEST = """\
version = 1
name = "saved"
output_dir = "renders"
include = ["more/*.toml"]

[defaults]
model_tier = "standard"
duration = 3

[[shots]]
id = "dawn"
prompt = "{% include 'prompts/style.j2' %} dawn over the harbour"

[[shots]]
id = "still"
prompt = "The harbour wakes"
image = "still.png"
"""

EXTRA = '[[shots]]\nid = "dusk"\nprompt = "Dusk falls"\n'


@pytest.fixture
def project(make_project: Callable[..., Project]) -> Project:
    """A manifest with an included shot file, a template partial and an image."""
    made = make_project(MANIFEST)
    (made.root / "more").mkdir()
    (made.root / "more" / "extra.toml").write_text(EXTRA)
    (made.root / "prompts").mkdir()
    (made.root / "prompts" / "style.j2").write_text("Cinematic,")
    return made


def save_plan(project: Project, *args: str) -> Path:
    """`kling-batch plan MANIFEST --out plan.json ARGS`; the plan file's path."""
    out = project.root / "plan.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kling_batch",
            "plan",
            str(project.manifest),
            "--out",
            str(out),
            *args,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"Saved the plan to {out}" in result.stderr
    return out


def run_plan(project: Project, plan: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`kling-batch run PLAN.json` against the project's emulator."""
    command = project.command(*args)
    command[command.index(str(project.manifest))] = str(plan)
    return subprocess.run(
        command, capture_output=True, text=True, env=project.env(), check=False, timeout=120
    )


def saved(plan: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(plan.read_text())
    return data


def test_saved_plan_records_what_it_was_made_from(project: Project) -> None:
    """The file is marked as a plan and names the manifest, included files, asset, lockfile
    and model data it was made from."""
    data = saved(save_plan(project))
    assert next(iter(data)) == "kling_batch_plan"
    assert data["manifest"] == "shots.toml"
    inputs = data["inputs"]
    assert list(inputs["manifest"]) == ["shots.toml"]
    assert sorted(inputs["included"]) == ["more/extra.toml", "prompts/style.j2"]
    assert list(inputs["assets"]) == ["still.png"]
    assert inputs["lockfile"] == {"shots.lock": None}
    assert list(inputs["model_data"]) == ["schemas/kling-o3.json"]
    assert [s["id"] for s in data["plan"]["shots"]] == ["dawn", "still", "dusk"]


def test_run_plan_renders_exactly_the_saved_plan(project: Project) -> None:
    """`run PLAN.json` submits each planned render once, with the planned fingerprints."""
    plan = save_plan(project, "--only", "dawn", "--only", "dusk")
    result = run_plan(project, plan)
    assert result.returncode == 0, result.stderr
    planned = {s["id"]: s["fingerprint"] for s in saved(plan)["plan"]["shots"]}
    assert set(planned) == {"dawn", "dusk"}
    lock = load_lockfile(project.lock)
    assert {key: entry.fingerprint for key, entry in lock.shots.items()} == planned
    assert project.submissions() == 2


def stale(project: Project, plan: Path) -> str:
    """Run a stale plan: it must exit 2 without a request; its one line of error."""
    result = run_plan(project, plan)
    assert result.returncode == 2, result.stderr
    assert project.requests() == 0
    (line,) = result.stderr.splitlines()
    return line


def test_changed_manifest_makes_the_plan_stale(project: Project) -> None:
    """An edit to the manifest after the plan is refused, naming the manifest."""
    plan = save_plan(project)
    project.edit("dawn over", "sunrise over")
    line = stale(project, plan)
    assert line.endswith("stale plan: shots.toml changed since the plan was made; plan again")


def test_changed_included_file_makes_the_plan_stale(project: Project) -> None:
    """An edit to an included shot file is refused, naming that file."""
    plan = save_plan(project)
    (project.root / "more" / "extra.toml").write_text(EXTRA.replace("Dusk", "Night"))
    assert "stale plan: the included file more/extra.toml changed since" in stale(project, plan)


def test_changed_template_partial_makes_the_plan_stale(project: Project) -> None:
    """An edit to an `{% include %}`d partial is refused, naming the partial."""
    plan = save_plan(project)
    (project.root / "prompts" / "style.j2").write_text("Documentary,")
    assert "stale plan: the included file prompts/style.j2 changed since" in stale(project, plan)


def test_changed_asset_makes_the_plan_stale(project: Project) -> None:
    """New content in a local image is refused, naming the asset."""
    plan = save_plan(project)
    (project.root / "still.png").write_bytes(PNG + b"\x00")
    assert "stale plan: the asset still.png changed since" in stale(project, plan)


def test_changed_lockfile_makes_the_plan_stale(project: Project) -> None:
    """A run between the plan and `run PLAN.json` changed the lockfile: refused."""
    plan = save_plan(project)
    assert project.run("--only", "dusk").returncode == 0
    before = project.requests()
    result = run_plan(project, plan)
    assert result.returncode == 2
    assert "stale plan: the lockfile shots.lock changed since the plan was made" in result.stderr
    assert project.requests() == before


def test_other_model_data_makes_the_plan_stale(project: Project) -> None:
    """A plan made with other model data (prices, rules) is refused, naming it."""
    plan = save_plan(project)
    data = saved(plan)
    data["inputs"]["model_data"]["schemas/kling-o3.json"] = "sha256:" + "0" * 64
    data["digest"] = fingerprint_of(data["inputs"])  # as another kling-batch would write it
    plan.write_text(json.dumps(data))
    line = stale(project, plan)
    assert "stale plan: the model data (schemas/kling-o3.json) changed since" in line


def test_a_changed_decision_makes_the_plan_stale(project: Project) -> None:
    """Same inputs, but an output deleted since: what the run would do changed, refused."""
    assert project.run().returncode == 0
    plan = save_plan(project)
    (project.root / "renders" / "dusk.mp4").unlink()
    before = project.requests()
    result = run_plan(project, plan)
    assert result.returncode == 2
    assert "what the run does with dusk changed (action: unchanged → restore)" in result.stderr
    assert project.requests() == before


def test_a_saved_plan_fixes_its_selection(project: Project) -> None:
    """`--only` or `--force` beside a saved plan is refused: plan again with them."""
    plan = save_plan(project)
    result = run_plan(project, plan, "--only", "dawn")
    assert result.returncode == 2
    assert "a saved plan fixes which renders run; plan again with --only" in result.stderr
    assert project.requests() == 0


@pytest.mark.parametrize("mode", ["look", "blind"])
def test_a_saved_plan_never_resends_an_uncertain_render_it_priced_at_nothing(
    make_project: Callable[..., Project], mode: str
) -> None:
    """A render left uncertain is priced at nothing by `plan --out` (a plain run leaves it
    alone); `run plan.json --resubmit-uncertain` is refused, naming the way that prices the
    resend first: the render is never sent a second time."""
    made, fingerprint = lost_answer(make_project, faults=("5xx=1,on=list",))
    plan = made.root / "plan.json"
    subprocess.run(
        [sys.executable, "-m", "kling_batch", "plan", str(made.manifest), "--out", str(plan)],
        capture_output=True,
        env=made.env(),
        check=True,
    )
    result = run_plan(made, plan, f"--resubmit-uncertain={mode}")
    assert result.returncode == 2, result.stderr
    assert "run the manifest with --resubmit-uncertain instead" in result.stderr
    assert sent(made, fingerprint) == 1


def test_an_emulator_plan_runs_against_the_emulator(project: Project) -> None:
    """A plan saved with --emulator runs in-process against the emulator, on its own lockfile."""
    plan = save_plan(project, "--emulator", "--only", "dusk")
    result = subprocess.run(
        [sys.executable, "-m", "kling_batch", "run", str(plan)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lock = load_lockfile(project.manifest.with_name("shots.emulator.lock"))
    assert list(lock.shots) == ["dusk"] and lock.shots["dusk"].state == "done"
    assert not project.lock.exists() and project.requests() == 0


def test_planning_a_saved_plan_points_at_its_manifest(project: Project) -> None:
    """`plan PLAN.json` is a mistake: exit 2, saying to run it or plan its manifest."""
    plan = save_plan(project)
    result = subprocess.run(
        [sys.executable, "-m", "kling_batch", "plan", str(plan)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "this is a saved plan, not a manifest" in result.stderr
    assert str(project.manifest) in result.stderr


def test_an_edited_plan_is_refused_as_damaged(project: Project) -> None:
    """Inputs edited by hand no longer match the plan's digest: refused before any request."""
    plan = save_plan(project)
    data = saved(plan)
    data["inputs"]["assets"]["still.png"] = "sha256:" + "1" * 64
    plan.write_text(json.dumps(data))
    line = stale(project, plan)
    assert "damaged saved plan: its digest does not match the inputs it lists" in line
