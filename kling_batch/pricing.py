"""Price of one render: a rate row of `schemas/kling-o3.json` times billed seconds, in Decimal."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from functools import cache
from typing import Any

from kling_batch.model_data import model_schema

TENTH_OF_A_CENT = Decimal("0.001")


@dataclass(frozen=True, slots=True)
class PriceRow:
    """One row of the model's price table."""

    label: str
    rate: Decimal
    applies_to: tuple[tuple[str, Any], ...]

    def matches(self, facts: dict[str, Any]) -> bool:
        """True when every condition of the row holds for `facts`."""
        return all(facts.get(key) == value for key, value in self.applies_to)


@dataclass(frozen=True, slots=True)
class Price:
    """What one render costs and why."""

    row: PriceRow
    seconds: Decimal
    cost: Decimal

    @property
    def rate(self) -> Decimal:
        """Dollars per second of video."""
        return self.row.rate


@cache
def price_rows() -> tuple[PriceRow, ...]:
    """The price table, in the order the model card lists it."""
    rows = []
    for entry in model_schema()["pricing_rows"]:
        if entry.get("unit") != "video-second":
            continue
        conditions = tuple(sorted(entry["applies_to"].items()))
        rows.append(PriceRow(entry["label"], Decimal(entry["price"]), conditions))
    return tuple(rows)


@cache
def select_row(tier: str, *, video_input: bool, sound: bool) -> PriceRow:
    """The row that bills a render of this tier, input kind and sound setting."""
    facts = {"model_tier": tier, "video_input": video_input, "sound": sound}
    for row in price_rows():
        if row.matches(facts):
            return row
    raise LookupError(f"no kling-o3 price row for {facts}")


def round_cost(amount: Decimal) -> Decimal:
    """A cost to the tenth of a cent, rounded up: estimates and bills round alike."""
    return amount.quantize(TENTH_OF_A_CENT, rounding=ROUND_CEILING)


def price(tier: str, *, video_input: bool, sound: bool, seconds: Decimal) -> Price:
    """Rate × seconds, rounded up to the tenth of a cent so a cost is never under-reported."""
    row = select_row(tier, video_input=video_input, sound=sound)
    cost = round_cost(row.rate * seconds)
    return Price(row, seconds, cost)
