"""What a run tells: `Events` as it goes, an `Outcome` per render, the `RunReport` at the end."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal, Protocol

from kling_batch.errors import AuthError, RunFatal
from kling_batch.pricing import round_cost

OutcomeState = Literal["done", "failed", "uncertain", "pending", "skipped"]


class Events(Protocol):
    """Where the executor reports what happens (the console UI, or a test recorder)."""

    def event(self, render_id: str, state: str, detail: str = "") -> None: ...

    def progress(self, render_id: str, fraction: float | None) -> None: ...


class Quiet:
    """Events that go nowhere: for runs nobody watches (tests, benchmarks)."""

    def event(self, render_id: str, state: str, detail: str = "") -> None:
        """Ignore a state change."""

    def progress(self, render_id: str, fraction: float | None) -> None:
        """Ignore progress."""


@dataclass(frozen=True)
class Outcome:
    """How one render ended in this run."""

    id: str
    action: str
    state: OutcomeState
    detail: str = ""
    # Failed because its job was cancelled (on the API's side): reports say `cancelled`.
    cancelled: bool = False

    @property
    def said(self) -> str:
        """The state as reports name it: `cancelled` for a failed render whose job was
        cancelled (counted apart from the failed ones, as `spend` does)."""
        return "cancelled" if self.cancelled and self.state == "failed" else self.state


@dataclass
class RunReport:
    """Every outcome, what this run submitted (and may have paid for), why it stopped."""

    outcomes: list[Outcome] = field(default_factory=list)
    # Render id → estimated cost, for every POST this run made that may have created a job
    # (answered with a job id, or unanswered): counted the moment it happens, so a run
    # cut short still reports what it spent.
    submitted: dict[str, Decimal] = field(default_factory=dict)
    billed: dict[str, Decimal] = field(default_factory=dict)
    stopped: str | None = None
    interrupted: bool = False

    def count(self, state: OutcomeState) -> int:
        """How many renders ended in `state`."""
        return sum(1 for outcome in self.outcomes if outcome.state == state)

    @property
    def estimated_cost(self) -> Decimal:
        """Estimated cost of every submission this run made."""
        return sum(self.submitted.values(), Decimal(0))

    @property
    def billed_cost(self) -> Decimal | None:
        """What the API billed for this run's submissions, if it said so for every one."""
        if not self.submitted or set(self.billed) != set(self.submitted):
            return None
        # Each bill rounded as its estimate was, so a ledger matching the plan shows equal.
        return sum((round_cost(amount) for amount in self.billed.values()), Decimal(0))

    @property
    def exit_code(self) -> int:
        """0 when every render is done; 130 when interrupted; 1 otherwise."""
        if self.interrupted:
            return 130
        if self.stopped or any(o.state != "done" for o in self.outcomes):
            return 1
        return 0


def stop_reason(exc: RunFatal) -> str:
    """Why a refusal of the account stops the run, and what the user can do about it."""
    if isinstance(exc, AuthError) and exc.status == 401:
        return (
            f"the API refused the API key ({exc}); no request was sent after that. Renders "
            "already submitted stay recorded: run again with a valid EMPIRIOLABS_API_KEY to "
            "resume them"
        )
    return f"the API refused the account: {exc}"
