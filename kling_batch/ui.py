"""Everything kling-batch says: the one place that writes to the terminal.

Data for scripts (plan JSON and Markdown, status JSON, schemas) goes to stdout through
`write_data`; tables go to stdout through `stdout_console`; lines for people (notes,
errors, questions) go to stderr through `say` and `confirm`. A run's progress is drawn by
`RunUI`: live bars on a terminal, one plain line per event in CI logs; its end-of-run
summary goes to stdout (`print_summary`). Colour only on a terminal and without NO_COLOR.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

# Plans and run reports are imported only where printed: `plan` answered from its
# up-to-date stamp (`kling_batch.uptodate`) prints through this module without them.
if TYPE_CHECKING:
    from kling_batch.outcomes import RunReport
    from kling_batch.plan import Plan

_FINAL = frozenset({"done", "failed", "uncertain", "pending", "skipped"})


def interactive(stream: IO[str]) -> bool:
    """True on a terminal without NO_COLOR: progress bars and colour are welcome."""
    return stream.isatty() and not os.environ.get("NO_COLOR")


def write_data(text: str) -> None:
    """Data for scripts (JSON, Markdown, schemas) on stdout, as is."""
    sys.stdout.write(text)


def say(message: str) -> None:
    """One line for people on stderr."""
    click.echo(message, err=True)


def warn(message: str) -> None:
    """`warning: <message>` on stderr."""
    say(f"warning: {message}")


def error(message: str, *, traceback_too: bool = False) -> None:
    """`error: <message>` on stderr (after the traceback being handled, when asked)."""
    if traceback_too:
        traceback.print_exc()
    say(f"error: {message}")


def can_ask() -> bool:
    """True when a person can answer a question (stdin and stderr are terminals)."""
    return sys.stdin.isatty() and sys.stderr.isatty()


def confirm(question: str) -> bool:
    """Ask a yes/no question on stderr; no is the default."""
    return click.confirm(question, default=False, err=True)


# Off a terminal (a CI log, a pipe) lines are never wrapped or cut, and tables are as wide
# as their rows: a log is grepped by render id, path and total. COLUMNS still sets a width.
_LOG_WIDTH = 10_000


def log_width(stream: IO[str]) -> int | None:
    """The width a console on `stream` lays out to: the terminal's, else COLUMNS if set,
    else wide enough that nothing wraps."""
    if stream.isatty():
        return None
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else _LOG_WIDTH


def show_plan(plan: Plan) -> None:
    """The plan table on stderr, for a person about to confirm a run."""
    from kling_batch.reports import render_table

    console = Console(
        file=sys.stderr,
        width=log_width(sys.stderr),
        no_color=not interactive(sys.stderr) or None,
        highlight=False,
        soft_wrap=not sys.stderr.isatty(),
    )
    render_table(plan, console)


def stdout_console() -> Console:
    """A rich console on stdout: colour only on a terminal and without NO_COLOR; off a
    terminal, whole lines (`log_width`)."""
    terminal = sys.stdout.isatty()
    return Console(
        file=sys.stdout,
        width=log_width(sys.stdout),
        no_color=not terminal or None,
        highlight=False,
        soft_wrap=not terminal,
    )


def print_lines(console: Console, lines: Sequence[tuple[str, str]]) -> None:
    """Print report lines (text, rich style), each as it is: no markup read in them."""
    for text, style in lines:
        console.print(Text(text, style=style))


class RunUI:
    """Receives executor events; draws progress (TTY) or prints plain lines (CI)."""

    def __init__(
        self, total: int, *, stream: IO[str] | None = None, live: bool | None = None
    ) -> None:
        self.stream = stream or sys.stderr
        self.live = interactive(self.stream) if live is None else live
        # Off a terminal every line stays whole (soft wrap): CI logs are grepped by id.
        self.console = Console(
            file=self.stream,
            highlight=False,
            no_color=not self.live or None,
            soft_wrap=not self.live,
        )
        self.total = total
        self.counts: Counter[str] = Counter()
        self._started = time.monotonic()
        self._progress: Progress | None = None
        self._overall: TaskID | None = None
        self._renders: dict[str, TaskID] = {}
        self._live: Live | None = None
        self._status = Text()

    def __enter__(self) -> RunUI:
        if self.live and self.total:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._overall = self._progress.add_task("renders", total=self.total)
            self._live = Live(
                Group(self._progress, self._status),
                console=self.console,
                refresh_per_second=8,
                transient=True,
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def note(self, message: str) -> None:
        """A free-form line for people (stderr)."""
        self.console.print(message)

    def say(self, message: str) -> None:
        """A line for people taken as it is (an error from elsewhere may hold [brackets])."""
        self.console.print(message, markup=False)

    def event(self, render_id: str, state: str, detail: str = "") -> None:
        """A render changed state."""
        if state in _FINAL:
            self.counts[state] += 1
        if self._progress is None:
            stamp = time.strftime("%H:%M:%S")
            line = f"{stamp} {state:<10} {render_id}" + (f"  {detail}" if detail else "")
            self.console.print(line, markup=False)  # an API message may hold [brackets]
            return
        if state in _FINAL:
            assert self._overall is not None
            self._progress.advance(self._overall)
            task = self._renders.pop(render_id, None)
            if task is not None:
                self._progress.remove_task(task)
            if state in {"failed", "uncertain"}:
                self._progress.console.print(f"[red]{state}[/] {render_id}: {detail}")
        elif render_id not in self._renders:
            self._renders[render_id] = self._progress.add_task(f"  {render_id}", total=1.0)
        self._status.plain = "  ".join(f"{k}: {v}" for k, v in sorted(self.counts.items()))

    def progress(self, render_id: str, fraction: float | None) -> None:
        """A render's job reported progress (0..1)."""
        if self._progress is None or fraction is None:
            return
        task = self._renders.get(render_id)
        if task is not None:
            self._progress.update(task, completed=min(max(fraction, 0.0), 1.0))


def print_summary(report: RunReport, out: IO[str] | None = None) -> None:
    """The end-of-run table: outcomes, estimated and billed cost, what to do next."""
    from kling_batch.reports import usd

    out = out or sys.stdout
    console = Console(
        file=out,
        highlight=False,
        no_color=not interactive(out) or None,
        width=log_width(out),
        soft_wrap=not out.isatty(),
    )
    counts = Counter(o.said for o in report.outcomes)
    table = Table(title=None, box=None, show_header=True, header_style="bold")
    for column in ("state", "renders"):
        table.add_column(column)
    for state in ("done", "failed", "cancelled", "uncertain", "pending", "skipped"):
        if counts[state]:
            table.add_row(state, str(counts[state]))
    console.print(table)
    console.print(f"Estimated cost of renders submitted: {usd(report.estimated_cost)}")
    billed = report.billed_cost
    if billed is not None:
        console.print(f"Billed by the API: {usd(billed)}")
    for outcome in report.outcomes:
        if outcome.state in {"failed", "pending", "uncertain"}:
            console.print(f"- {outcome.said} {outcome.id}: {outcome.detail}")
    uncertain = [o for o in report.outcomes if o.state == "uncertain"]
    if uncertain:
        console.print(
            f"{len(uncertain)} submission(s) may have reached the API without an answer and "
            "may be billed: " + ", ".join(o.id for o in uncertain)
        )
        console.print(
            "  Check your EmpirioLabs dashboard; `kling-batch run --resubmit-uncertain` looks "
            "them up in the job list and sends again only those a complete look does not "
            "find; `--resubmit-uncertain=blind` sends them again anyway (each may be paid twice)."
        )
    if report.stopped:
        console.print(f"Stopped early: {report.stopped}")
