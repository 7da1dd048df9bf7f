"""examples/ci/github-actions.yml is valid YAML and every kling-batch command in it exists."""

from __future__ import annotations

import shlex
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
