"""Plan reports: a Terraform-like table, a pull-request Markdown summary, and JSON."""

from __future__ import annotations

import json
from collections import defaultdict
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.text import Text

from kling_batch import markdown
from kling_batch.canonical import json_number
from kling_batch.lockfile import UNSETTLED
from kling_batch.lockname import lock_path
from kling_batch.plan import Plan, PlanItem, stray_warning
from kling_batch.pricing import TENTH_OF_A_CENT
from kling_batch.tables import Columns
from kling_batch.ui import print_lines
from kling_batch.worddiff import Piece, word_diff

SYMBOLS = {
    "new": "+",
    "changed": "~",
    "retry": "!",
    "resume": ">",
    "restore": "<",
    "unchanged": "=",
    "uncertain": "?",
}
STYLES = {
    "new": "green",
    "changed": "yellow",
    "retry": "red",
    "resume": "cyan",
    "restore": "blue",
    "unchanged": "dim",
    "uncertain": "magenta",
}
# Beyond this many renders, unchanged ones are counted, not listed (as Terraform does).
LIST_UNCHANGED_UP_TO = 100


def usd(amount: Decimal) -> str:
    """`$1,234.56`, or to the tenth of a cent when the amount needs it."""
    quantized = amount.quantize(TENTH_OF_A_CENT)
    text = f"{quantized:,.3f}"
    if text.endswith("0"):
        text = text[:-1]
    return f"${text}"


def seconds_text(seconds: Decimal) -> str:
    """`10s`, `7.5s`."""
    normal = seconds.normalize()
    return f"{normal:f}s"


def summary_line(plan: Plan) -> str:
    """`Plan: 12 to render ($9.84), 40 unchanged, 2 orphaned` and the other non-zero counts."""
    totals = plan.totals
    counts = totals.by_action
    parts = [f"{totals.to_run} to render ({usd(totals.to_run_cost)})"]
    labelled = [
        ("restore", "to restore (free)"),
        ("resume", "to resume"),
        ("uncertain", "uncertain"),
        ("unchanged", "unchanged"),
    ]
    parts.extend(f"{counts[action]} {label}" for action, label in labelled if counts[action])
    if plan.orphans:
        followed = f", {len(plan.followups)} followed to its end" if plan.followups else ""
        parts.append(f"{len(plan.orphans)} orphaned{followed}")
    return "Plan: " + ", ".join(parts)


def budget_lines(plan: Plan) -> list[str]:
    """The cost to run against the manifest's budget, and a warning when it is exceeded."""
    if plan.budget is None:
        return []
    cost = plan.totals.to_run_cost
    lines = [f"Budget: {usd(cost)} to run of {usd(plan.budget)}"]
    if plan.over_budget:
        lines.append(
            f"Warning: the cost to run ({usd(cost)}) exceeds budget_usd ({usd(plan.budget)}) by "
            f"{usd(cost - plan.budget)}; run will refuse it"
        )
    return lines


def _notes(item: PlanItem) -> str:
    notes = list(item.reasons)
    notes.extend(f"assumes {text}" for text in item.render.assumptions)
    return "; ".join(notes)


def _listed(plan: Plan) -> tuple[list[PlanItem], int]:
    if len(plan.items) <= LIST_UNCHANGED_UP_TO and plan.settled is None:
        return list(plan.items), 0
    listed = [item for item in plan.items if item.action != "unchanged"]
    return listed, plan.totals.renders - len(listed)


# A line of the table report: its text and its rich style.
Line = tuple[str, str]
LEGEND: Line = (
    "Legend: + new  ~ changed  ! retry  > resume  < restore  ? uncertain  = unchanged; "
    "(cost) is not paid by this run",
    "dim",
)


def render_table(plan: Plan, console: Console) -> None:
    """Print the plan as a table: the summary first, then one row per render."""
    listed, hidden = _listed(plan)
    print_lines(console, _head_lines(plan))
    if listed:
        console.print(_table(listed))
    print_lines(console, _tail_lines(plan, listed, hidden))


def quiet_lines(plan: Plan) -> list[Line] | None:
    """The table report of a plan that lists no render (more renders than are listed when
    unchanged, every one unchanged) as its lines; None for a plan with rows to show."""
    listed, hidden = _listed(plan)
    if listed:
        return None
    return [*_head_lines(plan), *_tail_lines(plan, listed, hidden)]


def _head_lines(plan: Plan) -> list[Line]:
    lines = [(summary_line(plan), "bold")]
    for line in budget_lines(plan):
        lines.append((line, "bold red" if line.startswith("Warning") else ""))
    return lines


def _table(listed: list[PlanItem]) -> Columns:
    table = Columns(
        [
            ("", "left"),
            ("id", "left"),
            ("workflow", "left"),
            ("tier", "left"),
            ("seconds", "right"),
            ("cost", "right"),
            ("notes", "left"),
        ],
        overflow="fold",
    )
    for item in listed:
        render = item.render
        style = STYLES[item.action]
        cost = usd(render.cost) if item.paid else f"({usd(render.cost)})"
        seconds = seconds_text(render.seconds) + ("*" if render.assumptions else "")
        table.add_row(
            Text(SYMBOLS[item.action], style=style),
            Text(render.id, style=style),
            render.workflow,
            render.tier,
            seconds,
            cost,
            _notes(item),
        )
    return table


def _tail_lines(plan: Plan, listed: list[PlanItem], hidden: int) -> list[Line]:
    lines: list[Line] = []
    if hidden:
        lines.append((f"{hidden:,} unchanged renders not listed (--format json lists all)", ""))
    if any(item.render.assumptions for item in listed):
        lines.append(("* seconds assumed; see notes", ""))
    for orphan in plan.orphans:
        if orphan.state not in UNSETTLED:
            text = f"- {orphan.id} ({orphan.state}): in the lockfile, no longer in the manifest"
            lines.append((text, ""))
    lines.extend((f"warning: {warning}", "yellow") for warning in _grouped_warnings(plan))
    lines.append(LEGEND)
    return lines


def _grouped_warnings(plan: Plan) -> list[str]:
    """Warnings, each text once, with the renders it concerns."""
    groups: dict[str, list[str]] = defaultdict(list)
    for render_id, text in plan.render_warnings():
        groups[text].append(render_id)
    lines = []
    for text, ids in groups.items():
        shown = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
        lines.append(f"{shown}: {text}")
    # Orphaned jobs that may be paid for: said in every format, not only in JSON.
    lines.extend(stray_warning(o.id, o.state) for o in plan.orphans if o.state in UNSETTLED)
    return lines


def render_markdown(plan: Plan) -> str:
    """The plan as a pull-request comment: summary and budget first, then only what changes
    (unchanged renders as a count), prompt diffs collapsed, and the hidden marker last."""
    lines = markdown_head(plan, [f"**{summary_line(plan)}**"])
    changing = [item for item in plan.items if item.action != "unchanged"]
    listed = changing[: markdown.MAX_ROWS]
    if listed:
        lines.append("| | id | workflow | tier | seconds | cost | notes |")
        lines.append("|---|---|---|---|--:|--:|---|")
        for item in listed:
            render = item.render
            cost = usd(render.cost) if item.paid else f"({usd(render.cost)})"
            lines.append(
                f"| {SYMBOLS[item.action]} {item.action} | {markdown.code(render.id, cell=True)} "
                f"| {render.workflow} | {render.tier} | {seconds_text(render.seconds)} | {cost} "
                f"| {_md_escape(_notes(item))} |"
            )
        lines.append("")
    lines.extend(markdown.not_listed(len(changing) - len(listed), "renders to change"))
    unchanged = plan.totals.renders - len(changing)
    if unchanged:
        lines.extend([f"{unchanged:,} unchanged render{'s' if unchanged != 1 else ''}.", ""])
    diffs = [(item.render.id, diff) for item in listed if (diff := _prompt_diff(plan, item))]
    for render_id, diff in diffs[: markdown.MAX_PROMPT_DIFFS]:
        lines.extend(markdown.prompt_details(render_id, diff))
    lines.extend(markdown.not_listed(len(diffs) - markdown.MAX_PROMPT_DIFFS, "prompt diffs"))
    return markdown_tail(plan, lines)


def _prompt_diff(plan: Plan, item: PlanItem) -> list[Piece] | None:
    """How a changed render's prompt differs from the one on record, if it does."""
    entry = plan.records.shots.get(item.render.id)
    before = entry.request.get("prompt") if entry is not None else None
    after = item.render.body.get("prompt")
    if item.action != "changed" or not isinstance(before, str) or before == after:
        return None
    return word_diff(before, str(after))


def is_emulator(plan: Plan) -> bool:
    """True when the plan is against the emulator's lockfile."""
    return plan.lock_path == lock_path(plan.loaded.path, emulator=True)


def markdown_head(plan: Plan, summary: list[str]) -> list[str]:
    """Title, the emulator marker when it applies, the summary lines and the budget."""
    lines = [f"### kling-batch plan: {markdown.code(plan.loaded.manifest.name)}", ""]
    if is_emulator(plan):
        lines.extend([markdown.emulator_marker(plan.lock_path.name), ""])
    for line in summary:
        lines.extend([line, ""])
    budget = budget_lines(plan)
    if budget:
        lines.extend([*(f"> {line}" for line in budget), ""])
    return lines


def markdown_tail(plan: Plan, lines: list[str]) -> str:
    """`lines` with the orphans, the warnings and the hidden marker added: the comment."""
    if plan.orphans:
        lines.append(
            "Orphaned lockfile entries (no longer in the manifest): "
            + ", ".join(markdown.code(orphan.id) for orphan in plan.orphans)
        )
        lines.append("")
    warnings = _grouped_warnings(plan)
    if warnings:
        lines.append("<details><summary>Warnings</summary>")
        lines.append("")
        lines.extend(f"- {_md_escape(w)}" for w in warnings)
        lines.extend(["", "</details>", ""])
    lines.append(markdown.hidden_marker(plan.loaded.path))
    return "\n".join(lines) + "\n"


def _md_escape(text: str) -> str:
    return markdown.escape(text)


def plan_json(plan: Plan) -> dict[str, Any]:
    """The plan as DESIGN.md's JSON object: one item per render."""
    assert plan.settled is None, "a plan of an edit holds items for its changed renders only"
    totals = plan.totals
    return {
        "manifest": plan.loaded.path.name,
        "model": "kling-o3",
        "shots": [_item_json(plan, item) for item in plan.items],
        "orphans": [{"id": o.id, "state": o.state, "output": o.output} for o in plan.orphans],
        "warnings": list(plan.warnings),
        "totals": {
            "shots": totals.renders,
            "to_run": totals.to_run,
            "cost_usd": json_amount(totals.cost),
            "to_run_cost_usd": json_amount(totals.to_run_cost),
        },
    }


def _item_json(plan: Plan, item: PlanItem) -> dict[str, Any]:
    render = item.render
    return {
        "id": render.id,
        "shot": render.shot,
        "take": render.take,
        "action": item.action,
        "workflow": render.workflow,
        "model_tier": render.tier,
        "sound": render.sound,
        "seconds": json_amount(render.seconds),
        "rate_usd_per_s": json_amount(render.price.rate),
        "cost_usd": json_amount(render.cost),
        "output": str(render.output),
        "fingerprint": render.fingerprint,
        "request": dict(render.body),
        "reasons": list(item.reasons),
        "assumptions": list(render.assumptions),
        "tags": list(render.tags),
    }


def json_amount(value: Decimal) -> int | float:
    """A JSON number with at most three decimals."""
    return json_number(value.quantize(TENTH_OF_A_CENT))


def dumps_json(plan: Plan) -> str:
    """The JSON report as text."""
    return json.dumps(plan_json(plan), indent=2, ensure_ascii=False) + "\n"
