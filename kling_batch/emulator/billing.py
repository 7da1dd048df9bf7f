"""Billing: the price row a job falls under (read from the model data), holds and the ledger.

A submit holds its estimated cost against the credits; completion turns the hold into a
ledger entry; failure and cancellation release it (or charge it, with the `bill_failed` and
`bill_cancelled` switches). Every amount is a `Decimal`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import Any

from kling_batch.model_data import model_schema


@dataclass(frozen=True)
class PriceRow:
    """One `pricing_rows` entry: a label, a rate per video-second and what it applies to."""

    label: str
    rate: Decimal
    applies_to: Mapping[str, Any]

    def matches(self, facts: Mapping[str, Any]) -> bool:
        """Whether every selector key of this row equals the corresponding fact."""
        return all(facts.get(key) == value for key, value in self.applies_to.items())


@cache
def price_rows() -> tuple[PriceRow, ...]:
    """The model's price rows, in file order."""
    return tuple(
        PriceRow(label=row["label"], rate=Decimal(row["price"]), applies_to=row["applies_to"])
        for row in model_schema()["pricing_rows"]
    )


def price_row_for(tier: str, *, video_input: bool, sound: bool) -> PriceRow:
    """The single row whose `applies_to` matches; rows without a `sound` key ignore it."""
    facts = {"model_tier": tier, "video_input": video_input, "sound": sound}
    found = [row for row in price_rows() if row.matches(facts)]
    if len(found) != 1:
        raise LookupError(f"{len(found)} price rows match {facts}; the model data is wrong")
    return found[0]


@dataclass(frozen=True)
class LedgerEntry:
    """One charge: a completed job's billed seconds at its row's rate."""

    job_id: str
    label: str
    seconds: Decimal
    rate: Decimal
    amount: Decimal
    wall: float

    def to_json(self) -> dict[str, Any]:
        """JSON numbers for the ledger endpoint (exact to the printed digits).

        The emulator encodes its numbers itself, not with `kling_batch.canonical`: it
        stands for the server, and sharing the client's rule would hide a disagreement.
        """
        return {
            "job_id": self.job_id,
            "label": self.label,
            "seconds": float(self.seconds),
            "rate_usd_per_s": float(self.rate),
            "amount_usd": float(self.amount),
            "wall": self.wall,
        }


class Ledger:
    """Charges, holds and the credit balance of the one emulated account."""

    def __init__(
        self, credits: Decimal | None, before_read: Callable[[], None] | None = None
    ) -> None:
        self.credits = credits
        self._before_read = before_read or (lambda: None)
        self._entries: list[LedgerEntry] = []
        self._total = Decimal(0)
        self._holds: dict[str, Decimal] = {}
        self._held = Decimal(0)
        self._lock = threading.Lock()

    def entries(self) -> list[LedgerEntry]:
        """Charges in the order jobs completed."""
        self._before_read()
        with self._lock:
            return list(self._entries)

    @property
    def total(self) -> Decimal:
        """Sum of every charge."""
        self._before_read()
        return self._total

    @property
    def held(self) -> Decimal:
        """Estimated cost of jobs still queued or processing."""
        self._before_read()
        return self._held

    @property
    def available(self) -> Decimal | None:
        """Credits minus charges minus holds; None when credits are unlimited."""
        self._before_read()
        return self.available_now()

    def available_now(self) -> Decimal | None:
        """`available` without settling first (for the job table, which settles itself)."""
        if self.credits is None:
            return None
        return self.credits - self._total - self._held

    def hold(self, job_id: str, amount: Decimal) -> None:
        """Reserve `amount` for a job that was just accepted."""
        with self._lock:
            self._holds[job_id] = amount
            self._held += amount

    def release(self, job_id: str) -> None:
        """Drop a job's hold without charging (failed or cancelled)."""
        with self._lock:
            self._held -= self._holds.pop(job_id, Decimal(0))

    def charge(self, entry: LedgerEntry) -> None:
        """Turn a job's hold into a charge."""
        with self._lock:
            self._held -= self._holds.pop(entry.job_id, Decimal(0))
            self._entries.append(entry)
            self._total += entry.amount

    def to_json(self) -> dict[str, Any]:
        """The ledger endpoint's body."""
        entries = self.entries()
        available = self.available_now()
        return {
            "entries": [e.to_json() for e in entries],
            "total_usd": float(self._total),
            "held_usd": float(self._held),
            "credits_usd": None if self.credits is None else float(self.credits),
            "available_usd": None if available is None else float(available),
        }
