"""The end of a run, told: a table for people, or `run --format json` for scripts.

The JSON object (on stdout; the table then goes to stderr with the other people's lines):

    {"manifest": "launch.toml", "emulator": false,
     "renders": [{"id": "story", "action": "new", "state": "done",
                  "output": "renders/story.mp4", "estimated_cost_usd": 2.8,
                  "billed_usd": 2.8, "job_id": "job_…", "reason": "renders/story.mp4"}],
     "totals": {"renders": 1, "done": 1, "failed": 0, "cancelled": 0, "uncertain": 0,
                "pending": 0, "skipped": 0, "estimated_cost_usd": 2.8, "billed_usd": 2.8},
     "stopped": null, "interrupted": false}

One entry per render the run handled. `estimated_cost_usd` is the estimate of what this
run submitted for it (0 when it submitted nothing: a restore, a resumed job), `billed_usd`
what the API said it billed for that submission (null when it did not say), rounded up to
the tenth of a cent as every cost is. The totals' `billed_usd` is null unless the API said
so for every submission. A render whose job was cancelled (on the API's side) ends
`cancelled` and is counted in `totals.cancelled`, not in `failed`, as `status` and `spend`
say it (the run still exits 1 for it).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from kling_batch import ui
from kling_batch.errors import UserError
from kling_batch.lockfile import UNSETTLED, Entry, Lockfile, load_lockfile, submission_marks
from kling_batch.lockname import lock_path
from kling_batch.outcomes import Outcome, RunReport
from kling_batch.plan import Plan, PlanItem
from kling_batch.pricing import round_cost
from kling_batch.recall import RememberedJob, read_job, remembered
from kling_batch.reports import json_amount
from kling_batch.state import StateDir

STATES = ("done", "failed", "cancelled", "uncertain", "pending", "skipped")


def summarise(
    plan: Plan, items: Sequence[PlanItem], report: RunReport, lock: Lockfile, *, fmt: str
) -> None:
    """Tell how the run ended: the table on stdout, or JSON there and the table on stderr."""
    if fmt == "json":
        ui.write_data(json.dumps(run_summary(plan, items, report, lock), indent=2) + "\n")
    if items:
        ui.print_summary(report, sys.stderr if fmt == "json" else None)


def run_summary(
    plan: Plan, items: Sequence[PlanItem], report: RunReport, lock: Lockfile
) -> dict[str, Any]:
    """The JSON summary of a run (see the module's docstring)."""
    outcomes = {outcome.id: outcome for outcome in report.outcomes}
    renders = [_render(item, outcomes.get(item.render.id), report, lock) for item in items]
    counts = {state: sum(1 for r in renders if r["state"] == state) for state in STATES}
    billed = report.billed_cost
    return {
        "manifest": plan.loaded.path.name,
        "emulator": plan.lock_path == lock_path(plan.loaded.path, emulator=True),
        "renders": renders,
        "totals": {
            "renders": len(renders),
            **counts,
            "estimated_cost_usd": json_amount(report.estimated_cost),
            "billed_usd": None if billed is None else json_amount(billed),
        },
        "stopped": report.stopped,
        "interrupted": report.interrupted,
    }


def _render(
    item: PlanItem, outcome: Outcome | None, report: RunReport, lock: Lockfile
) -> dict[str, Any]:
    render_id = item.render.id
    entry = lock.shots.get(render_id)
    billed = report.billed.get(render_id)
    return {
        "id": render_id,
        "action": item.action,
        # A render the run never got to (a second Ctrl-C) is still to do.
        "state": outcome.said if outcome is not None else "pending",
        "output": str(item.render.output),
        "estimated_cost_usd": json_amount(report.submitted.get(render_id, Decimal(0))),
        "billed_usd": None if billed is None else json_amount(round_cost(billed)),
        "job_id": entry.job_id if entry is not None else None,
        "reason": outcome.detail if outcome is not None else "not finished",
    }


def tell_in_flight(lock: Lockfile, lock_file: Path, state: StateDir) -> None:
    """After a run that could not write its lockfile (`LockWriteError`): each render whose
    job (or unanswered submission) may be paid for, with where it is recorded on disk, so
    none is lost unseen (the run's own record, in memory, is the only sure one)."""
    lines = in_flight(lock, lock_file, state)
    if not lines:
        return
    ui.say(
        f"{lock_file.name} could not be written. Jobs that may be paid for, and where they "
        "are recorded (the next run resumes each one recorded on disk):"
    )
    for line in lines:
        ui.say(f"  {line}")


def in_flight(lock: Lockfile, lock_file: Path, state: StateDir) -> list[str]:
    """One line per render of `lock` (as the run holds it) in flight: what it is and where
    it is recorded on disk (the lockfile as saved, the remembered jobs), with its job or
    as unanswered (what was sent, which the next run looks for in the job list)."""
    saved = _saved(lock_file)
    lines = []
    for key, entry in sorted(lock.shots.items()):
        if entry.state not in UNSETTLED:
            continue
        names = _submission(entry)
        places: dict[str, list[str]] = {"job": [], "sent": []}
        if saved is not None:
            _place(places, lock_file.name, _recorded(saved.shots.get(key)), *names)
        memo = remembered(entry, lock.api) if lock.api is not None else None
        if memo is not None:
            where = state.remembered_job(lock_file, memo.fingerprint).relative_to(state.root)
            _place(places, where.as_posix(), _kept(state, lock_file, memo), *names)
        what = f"job {entry.job_id}" if entry.job_id else f"a submission {entry.state}"
        lines.append(f"{key}: {what}; {_where(places)}")
    return lines


def _where(places: dict[str, list[str]]) -> str:
    """Where a submission is recorded, in words."""
    said = [f"recorded in {', '.join(places['job'])}"] if places["job"] else []
    if places["sent"]:
        unanswered = "unanswered in" if said else "recorded unanswered in"
        said.append(
            f"{unanswered} {', '.join(places['sent'])} (the next run looks for its job in "
            "the job list)"
        )
    return "; ".join(said) or "recorded nowhere on disk: keep this line, no run can know of it"


def _submission(entry: Entry) -> tuple[str | None, str | None]:
    """What names the submission an entry in flight follows: its job id (None while
    unanswered), and what was sent when (None when not recorded)."""
    if entry.job_id is None:
        charge = entry.unanswered()
        return None, charge.sending if charge is not None else None
    charge = next((c for c in reversed(entry.submissions) if c.job_id == entry.job_id), None)
    return entry.job_id, charge.sending if charge is not None else None


def _place(
    places: dict[str, list[str]],
    name: str,
    marks: frozenset[str] | None,
    job: str | None,
    sending: str | None,
) -> None:
    """Add `name` to `places` if the marks recorded there (None: nothing in flight) name
    the submission: under "sent" when only what was sent is, its job id not."""
    if marks is None:
        return
    if (job is None and sending is None) or (job is not None and job in marks):
        places["job"].append(name)  # nothing names it: any record in flight may be it
    elif sending is not None and sending in marks:
        places["job" if job is None else "sent"].append(name)


def _saved(lock_file: Path) -> Lockfile | None:
    """The lockfile as last saved, if it can be read."""
    try:
        return load_lockfile(lock_file)
    except (UserError, OSError):
        return None


def _recorded(entry: Entry | None) -> frozenset[str] | None:
    """What names the submissions a saved entry in flight records (None when it is not in
    flight)."""
    if entry is None or entry.state not in UNSETTLED:
        return None
    return frozenset(submission_marks(entry))


def _kept(state: StateDir, lock_file: Path, memo: RememberedJob) -> frozenset[str] | None:
    """What names the submission the remembered jobs hold for `memo`'s request (None when
    they hold none)."""
    found = read_job(state, lock_file, memo.fingerprint)
    return None if found is None else frozenset({found.mark})
