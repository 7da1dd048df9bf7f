"""examples/ci/github-actions.yml is valid YAML and every kling-batch command in it exists."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import click
import yaml

from kling_batch.cli import cli

WORKFLOW = Path(__file__).resolve().parent.parent / "examples" / "ci" / "github-actions.yml"
_OPERATORS = {"|", "||", "&&", ";", ">", ">>", "<", "&"}


def workflow() -> dict[Any, Any]:
    data = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(data, dict)
    return data


def steps(job: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = workflow()["jobs"][job]["steps"]
    return found


def commands(job: str) -> list[list[str]]:
    """Each `kling-batch ...` command in the job's `run:` scripts (where a command starts:
    first on its line or after a shell operator), up to the next shell operator."""
    found = []
    for step in steps(job):
        for line in step.get("run", "").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            tokens = list(lexer)
            for start, token in enumerate(tokens):
                if token == "kling-batch" and (start == 0 or tokens[start - 1] in _OPERATORS):
                    rest = tokens[start + 1 :]
                    end = next((i for i, t in enumerate(rest) if t in _OPERATORS), len(rest))
                    found.append(rest[:end])
    return found


def test_the_workflow_is_valid_yaml_with_both_triggers() -> None:
    """It parses, and runs on pull requests and on pushes to main."""
    data = workflow()
    triggers = data.get("on", data.get(True))  # YAML 1.1 reads a bare `on` as true
    assert set(triggers) == {"pull_request", "push"}
    assert triggers["push"]["branches"] == ["main"]


def test_every_command_exists_with_its_flags() -> None:
    """Each kling-batch command names a real subcommand and only options it has."""
    every = commands("plan") + commands("render")
    assert every, "no kling-batch command found"
    for argv in every:
        name, *rest = argv
        assert isinstance(cli, click.Group)
        command = cli.commands.get(name)
        assert command is not None, f"no command {name!r}"
        options = {opt for param in command.params for opt in param.opts + param.secondary_opts}
        for token in rest:
            if token.startswith("-"):
                assert token.split("=")[0] in options, f"{name}: no option {token}"


def test_pull_requests_get_the_compared_plan_and_the_check() -> None:
    """On a pull request: plan --compare origin/main --format markdown, and plan --check."""
    plan = commands("plan")
    assert ["plan", "$MANIFEST", "--compare", "origin/main", "--format", "markdown"] in plan
    assert ["plan", "$MANIFEST", "--check"] in plan
    checkout = next(s for s in steps("plan") if s.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"]["fetch-depth"] == 0  # origin/main must be in the clone


def test_the_comment_is_found_again_by_its_hidden_marker() -> None:
    """The comment step looks for the same marker the Markdown plan ends with."""
    script = next(s for s in steps("plan") if "github-script" in s.get("uses", ""))
    assert "<!-- kling-batch-plan: ${process.env.MANIFEST} -->" in script["with"]["script"]
    assert "updateComment" in script["with"]["script"]


def test_merges_run_with_the_key_from_secrets() -> None:
    """On push to main: run --yes, the key from the repository's secrets."""
    render = next(s for s in steps("render") if "kling-batch run" in s.get("run", ""))
    assert ["run", "$MANIFEST", "--yes", "--format", "json"] in commands("render")
    assert render["env"]["EMPIRIOLABS_API_KEY"] == "${{ secrets.EMPIRIOLABS_API_KEY }}"


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=False, env=_git_env(cwd)
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _git_env(cwd: Path) -> dict[str, str]:
    """Git with a name and no user or system configuration."""
    config = cwd.parent / "gitconfig"
    config.touch()
    return {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "GIT_CONFIG_GLOBAL": str(config),
        "GIT_CONFIG_NOSYSTEM": "1",
    }


def test_a_lockfile_is_pushed_even_when_main_moved_during_the_run(tmp_path: Path) -> None:
    """Another pull request merged while a render ran: the run's lockfile commit still
    reaches main, on top of it (a rejected push lost every job id and bill of the run, and
    the next run, knowing none of them, paid for the same renders again)."""
    origin = tmp_path / "origin.git"
    _git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    seed = tmp_path / "seed"
    _git(tmp_path, "clone", "-q", str(origin), str(seed))
    (seed / "video").mkdir()
    (seed / "video" / "launch.toml").write_text("version = 1\n")
    (seed / "video" / "launch.lock").write_text("# @generated by kling-batch\nversion = 2\n")
    _git(seed, "add", "-A")
    _git(seed, "commit", "-qm", "first merge")
    _git(seed, "push", "-q", "origin", "HEAD:main")
    runner = tmp_path / "runner"  # the render job's checkout, at the first merge
    _git(tmp_path, "clone", "-q", str(origin), str(runner))
    (seed / "video" / "launch.toml").write_text('version = 1\nname = "second"\n')
    _git(seed, "commit", "-qam", "second merge, while the first renders")
    _git(seed, "push", "-q", "origin", "HEAD:main")
    paid = '# @generated by kling-batch\nversion = 2\n\n[shots.a]\njob_id = "job_1"\n'
    (runner / "video" / "launch.lock").write_text(paid)
    step = next(s for s in steps("render") if s.get("name") == "Commit the lockfile")
    env = {**_git_env(runner), "MANIFEST": "video/launch.toml"}
    done = subprocess.run(
        ["bash", "-e", "-c", step["run"]], cwd=runner, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    on_main = _git(origin, "show", "main:video/launch.lock")
    assert on_main == paid
    assert 'name = "second"' in _git(origin, "show", "main:video/launch.toml")


def test_a_queued_render_starts_from_the_lockfile_its_predecessor_pushed() -> None:
    """The render job checks out the tip of main (with the lockfile the run before it
    committed), not the commit that triggered it; and the Actions cache keeps the render
    cache's index, so even a lockfile that was lost restores its renders for free."""
    checkout = next(s for s in steps("render") if s.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"]["ref"] == "${{ github.ref }}"
    kept = workflow()["env"]["RENDERS"].split()
    assert "video/.kling-batch/cache-index" in kept
