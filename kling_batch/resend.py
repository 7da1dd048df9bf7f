"""What sending uncertain renders again may cost: `run`'s cost to run, budget and question,
and the figure `plan --resubmit-uncertain[=blind]` shows before anything runs.

Every uncertain render a mode may send again counts at its full price: with `look` it is
sent only when a complete look at the job list did not find its job (so it was never
created), with `blind` whatever the look found short of its job (so it may be paid twice).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal

from kling_batch.adoption import Resubmit
from kling_batch.canonical import json_number
from kling_batch.plan import Plan, PlanItem
from kling_batch.pricing import TENTH_OF_A_CENT
from kling_batch.reports import plan_json, usd


@dataclass(frozen=True)
class Resend:
    """The uncertain renders a run may send again under `mode`, and what the run may cost."""

    mode: Resubmit
    items: list[PlanItem]
    to_run_cost: Decimal  # the plan's cost to run, these renders included
    paid: int  # renders the run may pay for, these included
    budget: Decimal | None = None  # the manifest's budget_usd

    @property
    def cost(self) -> Decimal:
        """The price of the renders that may be sent again."""
        return sum((item.render.cost for item in self.items), Decimal(0))

    @property
    def flag(self) -> str:
        """The flag as typed."""
        return "--resubmit-uncertain" + ("=blind" if self.mode == "blind" else "")

    def question(self) -> str:
        """What `run` asks before spending (and says when it cannot ask)."""
        count = f"{self.paid} shot{'s' if self.paid != 1 else ''}"
        if self.mode != "blind" or not self.items:
            return f"Render {count} for {usd(self.to_run_cost)}?"
        return (
            f"Render {count} for {usd(self.to_run_cost)}, sending {self._uncertain()} again "
            f"without a complete look ({usd(self.cost)}: it may be paid twice)?"
        )

    def line(self) -> str:
        """The cost to run under this flag, for `plan`."""
        if not self.items:
            return f"With {self.flag}: no uncertain render to send again."
        why = (
            "each may be paid twice"
            if self.mode == "blind"
            else "each is sent only if a complete look at the API's job list does not find it"
        )
        over = ""
        if self.budget is not None and self.to_run_cost > self.budget:
            over = f" It exceeds budget_usd ({usd(self.budget)}): run will refuse it."
        return (
            f"With {self.flag} the cost to run is {usd(self.to_run_cost)}: {self._uncertain()} "
            f"({usd(self.cost)}) may be sent again; {why}.{over}"
        )

    def _uncertain(self) -> str:
        count = len(self.items)
        return f"{count} uncertain render{'s' if count != 1 else ''}"


def resend(plan: Plan, mode: Resubmit) -> Resend:
    """What `run` with `mode` may send again of `plan`, and the cost to run with it."""
    items = [item for item in plan.items if item.action == "uncertain"] if mode != "off" else []
    cost = plan.totals.to_run_cost + sum((item.render.cost for item in items), Decimal(0))
    paid = sum(1 for item in plan.items if item.paid) + len(items)
    return Resend(mode, items, cost, paid, plan.budget)


def plan_json_text(plan: Plan, mode: Resubmit) -> str:
    """`plan --format json` with `totals.resubmit_uncertain`: the mode, the renders it may
    send again, their cost and the cost to run with them."""
    data = plan_json(plan)
    again = resend(plan, mode)
    data["totals"]["resubmit_uncertain"] = {
        "mode": mode,
        "renders": [item.render.id for item in again.items],
        "cost_usd": json_number(again.cost.quantize(TENTH_OF_A_CENT)),
        "to_run_cost_usd": json_number(again.to_run_cost.quantize(TENTH_OF_A_CENT)),
    }
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
