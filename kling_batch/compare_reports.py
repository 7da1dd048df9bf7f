"""`plan --compare` reports: a table, a pull-request comment in Markdown, and JSON.

Each opens with the cost of the manifest at the base and now and the difference, then the
plan's own summary and budget, then only what changed between the two (each render added,
removed or changed with its cost change and changed fields), unchanged renders as a count,
and the word-level diff of every changed prompt.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.text import Text

from kling_batch import markdown, worddiff
from kling_batch.compare import Comparison, FieldChange, RenderChange, RenderFacts
from kling_batch.reports import (
    budget_lines,
    json_amount,
    markdown_head,
    markdown_tail,
    plan_json,
    summary_line,
    usd,
)
from kling_batch.tables import Columns, Justify

SYMBOLS = {"added": "+", "removed": "-", "changed": "~"}
STYLES = {"added": "green", "removed": "red", "changed": "yellow"}
_SHORT = 40


def signed(amount: Decimal) -> str:
    """`+$0.28`, `-$1.12`."""
    return f"-{usd(-amount)}" if amount < 0 else f"+{usd(amount)}"


def cost_line(comparison: Comparison) -> str:
    """`Cost of the manifest: $10.08 → $11.20 (+$1.12)`."""
    return "Cost of the manifest: " + _from_to(comparison.base_cost, comparison.head_cost)


def change_cost(change: RenderChange) -> str:
    """`+$1.40` (added), `-$1.12` (removed), `$1.12 → $1.40 (+$0.28)` (changed)."""
    if change.kind == "added":
        return signed(change.head_cost)
    if change.kind == "removed":
        return signed(-change.base_cost)
    return _from_to(change.base_cost, change.head_cost)


def change_text(change: RenderChange) -> str:
    """`added`, `removed`, or the changed fields: `model_tier: standard → pro; prompt`."""
    if change.kind != "changed":
        return change.kind
    return "; ".join(_field_text(field, change.head) for field in change.fields) or "fingerprint"


def _from_to(before: Decimal, after: Decimal) -> str:
    if before == after:
        return f"{usd(after)} (no change)"
    return f"{usd(before)} → {usd(after)} ({signed(after - before)})"


def _field_text(change: FieldChange, head: RenderFacts | None) -> str:
    if change.field == "prompt":
        return "prompt (diff below)"
    if change.content:
        return f"content of {_asset_ref(change.field, head)} changed"
    if change.field == "rate_usd_per_s":
        return f"price: ${change.base}/s → ${change.head}/s"
    if change.base is None:
        return f"{change.field} added: {_short(change.head)}"
    if change.head is None:
        return f"{change.field} removed (was {_short(change.base)})"
    return f"{change.field}: {_short(change.base)} → {_short(change.head)}"


def _asset_ref(key: str, head: RenderFacts | None) -> str:
    """The file a media key (`image`, `reference_images.1`) names in the request."""
    if head is None:
        return key
    name, _, index = key.partition(".")
    value = str(head.request.get(name, key))
    if index.isdigit():
        items = value.split(",")
        return items[int(index)] if int(index) < len(items) else key
    return value


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= _SHORT else text[: _SHORT - 3] + "..."


def _unchanged(count: int) -> str:
    return f"{count:,} render{'s' if count != 1 else ''} unchanged"


# -- table ----------------------------------------------------------------------------------


def render_table(comparison: Comparison, console: Console) -> None:
    """Print the comparison: costs and summary first, one row per change, prompt diffs."""
    plan = comparison.plan
    console.print(Text(f"{cost_line(comparison)}, compared with {comparison.base}", style="bold"))
    if comparison.note:
        console.print(comparison.note)
    console.print(Text(summary_line(plan), style="bold"))
    for line in budget_lines(plan):
        console.print(Text(line, style="bold red" if line.startswith("Warning") else ""))
    if comparison.changes:
        columns: list[tuple[str, Justify]] = [
            ("", "left"),
            ("render", "left"),
            ("change", "left"),
            ("cost", "right"),
        ]
        table = Columns(columns, overflow="fold")
        for change in comparison.changes:
            style = STYLES[change.kind]
            table.add_row(
                Text(SYMBOLS[change.kind], style=style),
                Text(change.id, style=style),
                change_text(change),
                change_cost(change),
            )
        console.print(table)
    if comparison.unchanged:
        console.print(_unchanged(comparison.unchanged))
    for change in comparison.changes:
        pieces = change.prompt_diff
        if pieces is not None:
            console.print(f"Prompt of {change.id} ([-removed-] {{+added+}}):", markup=False)
            console.print(Text("  " + worddiff.render(pieces).replace("\n", "\n  ")))


# -- markdown -------------------------------------------------------------------------------


def render_markdown(comparison: Comparison) -> str:
    """The comparison as a pull-request comment (ends with the hidden marker)."""
    plan = comparison.plan
    headline = f"**{cost_line(comparison)}**, compared with {markdown.code(comparison.base)}"
    summary = [
        headline,
        *([markdown.escape(comparison.note)] if comparison.note else []),
        f"**{summary_line(plan)}**",
    ]
    lines = markdown_head(plan, summary)
    listed = comparison.changes[: markdown.MAX_ROWS]
    if listed:
        lines.extend(["| | render | change | cost |", "|---|---|---|--:|"])
        for change in listed:
            lines.append(
                f"| {SYMBOLS[change.kind]} | {markdown.code(change.id, cell=True)} "
                f"| {markdown.escape(change_text(change))} | {change_cost(change)} |"
            )
        lines.append("")
    lines.extend(markdown.not_listed(len(comparison.changes) - len(listed), "changed renders"))
    if comparison.unchanged:
        lines.extend([_unchanged(comparison.unchanged) + ".", ""])
    diffs = [(c.id, pieces) for c in listed if (pieces := c.prompt_diff) is not None]
    for render_id, pieces in diffs[: markdown.MAX_PROMPT_DIFFS]:
        lines.extend(markdown.prompt_details(render_id, pieces))
    lines.extend(markdown.not_listed(len(diffs) - markdown.MAX_PROMPT_DIFFS, "prompt diffs"))
    return markdown_tail(plan, lines)


# -- json -----------------------------------------------------------------------------------


def comparison_json(comparison: Comparison) -> dict[str, Any]:
    """The comparison as one JSON object, with the plan made now under `plan`."""
    return {
        "manifest": comparison.plan.loaded.path.name,
        "base": comparison.base,
        "base_kind": comparison.base_kind,
        "note": comparison.note,
        "cost_usd": _costs(comparison.base_cost, comparison.head_cost),
        "added": [_facts_json(c.head) for c in comparison.of_kind("added") if c.head],
        "removed": [_facts_json(c.base) for c in comparison.of_kind("removed") if c.base],
        "changed": [_changed_json(c) for c in comparison.of_kind("changed")],
        "unchanged": comparison.unchanged,
        "plan": plan_json(comparison.plan),
    }


def _costs(before: Decimal, after: Decimal) -> dict[str, int | float]:
    return {
        "base": json_amount(before),
        "head": json_amount(after),
        "diff": json_amount(after - before),
    }


def _facts_json(facts: RenderFacts) -> dict[str, Any]:
    return {
        "id": facts.id,
        "cost_usd": json_amount(facts.cost),
        "model_tier": facts.model_tier,
        "workflow": facts.workflow,
        "seconds": json_amount(facts.seconds),
    }


def _changed_json(change: RenderChange) -> dict[str, Any]:
    pieces = change.prompt_diff
    return {
        "id": change.id,
        "cost_usd": _costs(change.base_cost, change.head_cost),
        "fields": [
            {"field": f.field, "base": _plain(f.base), "head": _plain(f.head), "content": f.content}
            for f in change.fields
        ],
        "prompt_diff": None if pieces is None else [{"op": p.op, "text": p.text} for p in pieces],
    }


def _plain(value: Any) -> Any:
    return json_amount(value) if isinstance(value, Decimal) else value


def dumps_json(comparison: Comparison) -> str:
    """The JSON report as text."""
    return json.dumps(comparison_json(comparison), indent=2, ensure_ascii=False) + "\n"
