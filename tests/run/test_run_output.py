"""What `kling-batch run` prints: one line per event off a terminal, JSON for scripts."""

from __future__ import annotations

import json
import os
import pty
import re
from collections.abc import Callable
from decimal import Decimal

from kling_batch.lockfile import load_lockfile
from tests.run.conftest import Project

LONG_ID = "launch-" + "-".join(f"variant{n:02d}" for n in range(14))


def test_events_are_one_line_each_whatever_their_length(
    make_project: Callable[..., Project],
) -> None:
    """Off a terminal, a render id far wider than 80 columns stays on one line with its job id."""
    assert len(LONG_ID) > 120
    project = make_project(
        f'version = 1\nname = "wide"\n\n[[shots]]\nid = "{LONG_ID}"\nprompt = "p"\nduration = 3\n'
    )
    result = project.run(env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    tail = LONG_ID[-12:]
    assert [line for line in lines if tail in line] == [line for line in lines if LONG_ID in line]
    submitted = [line for line in lines if re.search(rf"submitted\s+{LONG_ID}  job_\w+$", line)]
    assert len(submitted) == 1
    done = [line for line in lines if re.search(rf"done\s+{LONG_ID}  renders/{LONG_ID}.mp4$", line)]
    assert len(done) == 1


def test_format_json_puts_the_summary_on_stdout(make_project: Callable[..., Project]) -> None:
    """`run --format json`: stdout is one JSON summary of every render; progress is on stderr."""
    project = make_project()
    plan = project.plan_json()
    result = project.run("--format", "json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    lock = load_lockfile(project.lock)
    planned = {shot["id"]: shot for shot in plan["shots"]}  # type: ignore[attr-defined]
    assert {r["id"] for r in summary["renders"]} == set(planned)
    ledger = {e.job_id: e.amount for e in project.served.emulator.ledger.entries()}
    for render in summary["renders"]:
        shot = planned[render["id"]]
        assert render["state"] == "done" and render["action"] == "new"
        assert render["output"] == shot["output"]
        assert render["estimated_cost_usd"] == shot["cost_usd"]
        assert render["job_id"] == lock.shots[render["id"]].job_id
        assert Decimal(str(render["billed_usd"])) == ledger[render["job_id"]]
    totals = summary["totals"]
    assert totals["renders"] == totals["done"] == len(planned)
    assert totals["estimated_cost_usd"] == plan["totals"]["to_run_cost_usd"]  # type: ignore[index]
    assert Decimal(str(totals["billed_usd"])) == project.served.emulator.ledger.total
    assert "submitted" in result.stderr and "Estimated cost" in result.stderr


def test_format_json_when_nothing_is_to_do(make_project: Callable[..., Project]) -> None:
    """A run with nothing to do still prints a (empty) JSON summary for scripts."""
    project = make_project()
    assert project.run().returncode == 0
    result = project.run("--format", "json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["renders"] == [] and summary["totals"]["renders"] == 0
    assert "Nothing to do" in result.stderr


def test_format_json_reports_a_failed_render(make_project: Callable[..., Project]) -> None:
    """A failed job is in the JSON summary as failed, with the API's reason and no bill."""
    project = make_project(faults=("fail=first1",))
    result = project.run("--jobs", "1", "--format", "json")
    assert result.returncode == 1
    summary = json.loads(result.stdout)
    failed = [r for r in summary["renders"] if r["state"] == "failed"]
    assert len(failed) == 1 and "content_moderation" in failed[0]["reason"]
    assert failed[0]["billed_usd"] is None and failed[0]["job_id"].startswith("job_")
    assert summary["totals"]["failed"] == 1 and summary["totals"]["billed_usd"] is None


def _on_a_terminal(project: Project, env: dict[str, str], answer: bytes) -> tuple[bytes, int]:
    """Run on a pseudo-terminal; answer the question if one comes. (output, exit code)"""
    pid, fd = pty.fork()
    if pid == 0:  # child: stdin/stdout/stderr are the pty
        argv = project.command(yes=False)
        os.execvpe(argv[0], argv, env)
    seen = b""
    while True:
        try:
            chunk = os.read(fd, 1024)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
        if b"[y/N]" in seen and answer:
            os.write(fd, answer)
            answer = b""
    _, status = os.waitpid(pid, 0)
    return seen, os.waitstatus_to_exitcode(status)


def test_terminal_shows_the_plan_table_before_asking(
    make_project: Callable[..., Project],
) -> None:
    """On a terminal the plan's table, one row per render, comes before the question."""
    project = make_project()
    seen, code = _on_a_terminal(project, project.env(), b"n\n")
    assert code == 3
    before = seen[: seen.index(b"[y/N]")].decode()
    assert "Plan: 4 to render" in before
    for render_id in ("dawn", "night", "still-take1", "still-take2"):
        assert re.search(rf"\+\s+{render_id}\s", before), render_id
    assert project.requests() == 0


def test_missing_key_is_said_before_the_question(make_project: Callable[..., Project]) -> None:
    """Without EMPIRIOLABS_API_KEY a terminal run stops with exit 2 and never asks."""
    project = make_project()
    env = {k: v for k, v in project.env().items() if k != "EMPIRIOLABS_API_KEY"}
    seen, code = _on_a_terminal(project, env, b"y\n")
    assert code == 2
    assert b"EMPIRIOLABS_API_KEY is not set" in seen
    assert b"[y/N]" not in seen
    assert project.requests() == 0
