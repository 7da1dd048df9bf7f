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
from typing import Any

from kling_batch import ui
from kling_batch.lockfile import Lockfile
from kling_batch.lockname import lock_path
from kling_batch.outcomes import Outcome, RunReport
from kling_batch.plan import Plan, PlanItem
from kling_batch.pricing import round_cost
from kling_batch.reports import json_amount

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
