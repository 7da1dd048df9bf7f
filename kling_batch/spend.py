"""`kling-batch spend`: what a manifest's renders cost, read from the lockfile (no network).

Every submission an entry records counts (`Entry.submissions`: forced and retried
re-renders included), and so do entries no longer in the manifest: money spent is spent.
The manifest is read only to mark those; when it does not load, spend is still read from
the lockfile, with a warning.

Each submission is one of: `billed` (the API reported its bill), `failed` (its job failed;
failed jobs are not billed), `cancelled` (its job was cancelled, with no bill on record),
`rendering` (its job is still in flight), `unreported` (its job finished but the API
reported no bill), `no bill` (an earlier job of the render with no bill on record: it
failed, was cancelled, or its bill was not reported), `uncertain` (no job id came back: it
may be billed) and `no job` (a complete look at the job list proved none was made).
Totals: `billed_usd` sums the bills (each rounded up to the tenth of a cent, like every
cost); `estimated_usd` sums the estimates of the submissions with a job (a cancelled one
too: its bill is unknown); `missing_bills` counts those jobs without a bill; uncertain
submissions are counted apart (`uncertain`, `may_be_billed_usd`), never as billed and never
as $0.

A job is counted once, however many records of it the lockfile holds (`Duplicate`): a git
merge can keep two (two branches recorded one job under one entry, and whoever resolved
the conflict kept both submission lists; or under two ids, as a job in flight recalled or
adopted under a renamed shot on one branch while the other kept the old id). Records are of
one job when they name its job id for the same request (fingerprint): a job is made for
one request, and job ids mean something only to the API and account that made them, so
a merge of branches that rendered elsewhere may hold one id for two jobs, both counted.
Submissions without a job id have nothing to tell them apart by and each counts, as before.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.text import Text

from kling_batch import ui
from kling_batch.errors import UserError
from kling_batch.inventory import read_inventory
from kling_batch.lockfile import UNSETTLED, Charge, Entry, Lockfile, load_lockfile
from kling_batch.lockname import emulator_only_hint, lock_path
from kling_batch.pricing import round_cost
from kling_batch.reports import json_amount, usd
from kling_batch.tables import Columns

Status = Literal[
    "billed", "failed", "cancelled", "rendering", "unreported", "no bill", "uncertain", "no job"
]
_NO_AMOUNT = "-"
_NUMBERS = frozenset({"submissions", "estimated", "billed", "without bill", "may be billed"})


@dataclass(frozen=True, slots=True)
class Line:
    """One submission, with the render it was made for."""

    render: str
    shot: str
    tags: tuple[str, ...]
    in_manifest: bool | None  # None: the manifest could not be read
    charge: Charge
    status: Status
    # Set on a record of a job counted on another record (`Duplicate`): the render that
    # one is under. Such a line is listed but never summed.
    counted_under: str | None = None

    @property
    def estimate(self) -> Decimal:
        """The submission's estimated cost."""
        return round_cost(self.charge.cost_usd)

    @property
    def billed(self) -> Decimal | None:
        """The bill the API reported, rounded as every cost is; None without one."""
        bill = self.charge.billed_usd
        return None if bill is None else round_cost(bill)

    @property
    def day(self) -> str:
        """The UTC day it was submitted on, `YYYY-MM-DD`."""
        return _utc(self.charge.submitted_at).date().isoformat()


@dataclass(slots=True)
class Sums:
    """Spend over some submissions."""

    submissions: int = 0
    jobs: int = 0
    estimated: Decimal = field(default_factory=Decimal)
    bills: int = 0
    billed: Decimal = field(default_factory=Decimal)
    uncertain: int = 0
    may_be_billed: Decimal = field(default_factory=Decimal)

    def add(self, line: Line) -> None:
        """Count one submission (not a second record of a job already counted)."""
        if line.counted_under is not None:
            return
        self.submissions += 1
        if line.status == "no job":
            return  # nothing was made, so nothing is or will be billed
        if line.status == "uncertain":
            self.uncertain += 1
            self.may_be_billed += line.estimate
            return
        self.jobs += 1
        self.estimated += line.estimate
        if line.billed is not None:
            self.bills += 1
            self.billed += line.billed

    @property
    def missing_bills(self) -> int:
        """Submissions with a job and no bill on record."""
        return self.jobs - self.bills

    def as_json(self) -> dict[str, Any]:
        """The sums as JSON numbers."""
        return {
            "submissions": self.submissions,
            "billed_usd": json_amount(self.billed),
            "bills": self.bills,
            "estimated_usd": json_amount(self.estimated),
            "missing_bills": self.missing_bills,
            "uncertain": self.uncertain,
            "may_be_billed_usd": json_amount(self.may_be_billed),
        }


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A job the lockfile records more than once (a merge kept both records), counted once:
    under `counted_under`, with the highest bill and estimate of its records."""

    job_id: str
    renders: tuple[str, ...]  # the render of each record, in lockfile order
    counted_under: str

    def note(self) -> str:
        """The duplicate in words, so the user can remove the extra record."""
        job, where = self.job_id, self.counted_under
        if len(set(self.renders)) == 1:
            times = "twice" if len(self.renders) == 2 else f"{len(self.renders)} times"
            return f"job {job} is recorded {times} under {where}: counted once"
        names = list(dict.fromkeys(self.renders))
        listed = f"{', '.join(names[:-1])} and {names[-1]}"
        return f"job {job} is recorded under {listed}: counted once, under {where}"


@dataclass(frozen=True)
class SpendReport:
    """Every submission a lockfile records, and how to group them."""

    manifest: Path
    lock_file: Path
    lines: list[Line]
    duplicates: list[Duplicate] = field(default_factory=list)

    def totals(self) -> Sums:
        """Sums over every submission."""
        return _summed(self.lines)

    def by(self, keys: Callable[[Line], Iterable[str]]) -> dict[str, Sums]:
        """Sums per key, sorted by key; a line counts under each of its keys."""
        return _grouped(self.lines, keys)

    def per_render(self) -> dict[str, list[Line]]:
        """Each render's submissions, renders sorted by id."""
        renders: dict[str, list[Line]] = {}
        for line in sorted(self.lines, key=lambda line: line.render):
            renders.setdefault(line.render, []).append(line)
        return renders


def spend_command(manifest: Path, *, fmt: str, emulator: bool) -> int:
    """Print the spend report of a manifest's lockfile; the exit code."""
    lock_file = lock_path(manifest, emulator=emulator)
    if not manifest.exists() and not lock_file.exists():
        raise UserError("no such manifest, and no lockfile beside it", file=manifest)
    report = spend_report(manifest, emulator=emulator)
    hint = None if emulator else emulator_only_hint(manifest, "spend")
    if hint is not None:
        ui.say(hint)
    if fmt == "json":
        for note in duplicate_notes(report):
            ui.say(note)  # for people; scripts read `duplicates`
        ui.write_data(json.dumps(spend_json(report), indent=2, ensure_ascii=False) + "\n")
    else:
        render_spend(report, ui.stdout_console())
    return 0


def spend_report(manifest: Path, *, emulator: bool = False) -> SpendReport:
    """Every submission recorded in the manifest's lockfile, marked present in the manifest
    or not."""
    lock_file = lock_path(manifest, emulator=emulator)
    lock = load_lockfile(lock_file)
    ids = _manifest_ids(manifest, emulator=emulator)
    lines, duplicates = once_per_job(_lines(lock, ids))
    return SpendReport(manifest, lock_file, lines, duplicates)


def lock_totals(lock: Lockfile) -> Sums:
    """Spend over every submission `lock` records, each job once (as `spend` sums it)."""
    return _summed(once_per_job(_lines(lock, None))[0])


def billed_by_render(lock: Lockfile, present: Collection[str]) -> dict[str, Decimal]:
    """What the API billed per render id of `lock`, each job once, as `spend` counts it
    (`present`: the ids still in the manifest, where a job recorded twice counts first)."""
    lines, _ = once_per_job(_lines(lock, frozenset(present)))
    return {render: sums.billed for render, sums in _grouped(lines, lambda x: [x.render]).items()}


def _manifest_ids(manifest: Path, *, emulator: bool) -> frozenset[str] | None:
    """The manifest's render ids; None (with a warning) when it does not load."""
    try:
        return read_inventory(manifest, emulator=emulator).ids
    except UserError as exc:
        ui.say(
            f"warning: {exc}; spend is read from the lockfile alone (renders no longer in "
            "the manifest are not marked)"
        )
        return None


def _lines(lock: Lockfile, ids: frozenset[str] | None) -> list[Line]:
    lines = []
    for key, entry in sorted(lock.shots.items()):
        present = None if ids is None else key in ids
        for charge in entry.submissions:
            status = charge_status(entry, charge)
            lines.append(Line(key, entry.shot, tuple(entry.tags), present, charge, status))
    return lines


def charge_status(entry: Entry, charge: Charge) -> Status:
    """What is known of one submission's bill (see the module docstring)."""
    if charge.billed_usd is not None:
        return "billed"
    if charge.no_job:
        return "no job"  # a complete look at the job list proved none was made
    if charge.job_id is None:
        return "uncertain"
    if charge.job_id != entry.job_id:
        return "no bill"
    if entry.state == "failed":
        return "cancelled" if entry.cancelled else "failed"
    return "rendering" if entry.state in UNSETTLED else "unreported"


# The status a job recorded twice without a bill is said with: the most settled of its
# records' (one branch saw it end, the other only in flight).
_SETTLED: tuple[Status, ...] = (
    "billed",
    "failed",
    "cancelled",
    "unreported",
    "no bill",
    "rendering",
    "uncertain",
    "no job",
)


def once_per_job(lines: list[Line]) -> tuple[list[Line], list[Duplicate]]:
    """`lines` with each job counted on one record only, and the jobs recorded twice (one
    job: one job id for one request, see the module docstring).

    Which record counts: the first whose render is still in the manifest (so the review
    gallery's card of that render shows it), else the first in the lockfile. What it
    counts: the highest bill of the job's records, and the highest estimate. A bill comes
    only from an API answer; a record without one was written before the answer came (a
    branch that saw the job in flight) or never got it, so any bill beats none. Two
    different bills for one job cannot be ordered (neither carries when it was answered:
    a cancel's partial bill, then the completion's, or a hand edit), and the highest is
    never less than the API charged. The other records are listed, not summed.
    """
    records: dict[tuple[str, str], list[int]] = {}  # by job id and request
    for index, line in enumerate(lines):
        if line.charge.job_id is not None:
            records.setdefault((line.charge.job_id, line.charge.fingerprint), []).append(index)
    kept = list(lines)
    duplicates = []
    for (job_id, _), indexes in records.items():
        if len(indexes) < 2:
            continue
        group = [lines[index] for index in indexes]
        where = next((n for n, line in enumerate(group) if line.in_manifest), 0)
        counted = group[where].render
        for n, index in enumerate(indexes):
            line = lines[index]
            again = replace(line, counted_under=counted)
            kept[index] = _merged(line, group) if n == where else again
        duplicates.append(Duplicate(job_id, tuple(line.render for line in group), counted))
    return kept, duplicates


def _merged(line: Line, group: list[Line]) -> Line:
    """`line`, one record of a job, with the highest bill and estimate of all its records."""
    bills = [other.charge.billed_usd for other in group if other.charge.billed_usd is not None]
    charge = line.charge.model_copy(
        update={
            "billed_usd": max(bills, default=None),
            "cost_usd": max(other.charge.cost_usd for other in group),
        }
    )
    status = min((other.status for other in group), key=_SETTLED.index)
    return replace(line, charge=charge, status=status)


def _grouped(lines: Iterable[Line], keys: Callable[[Line], Iterable[str]]) -> dict[str, Sums]:
    """Sums per key, sorted by key; a line counts under each of its keys."""
    groups: dict[str, list[Line]] = {}
    for line in lines:
        for key in keys(line):
            groups.setdefault(key, []).append(line)
    return {key: _summed(groups[key]) for key in sorted(groups)}


def _summed(lines: Iterable[Line]) -> Sums:
    sums = Sums()
    for line in lines:
        sums.add(line)
    return sums


def _utc(moment: datetime) -> datetime:
    """`moment` in UTC (a time recorded without an offset is taken as UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# -- reports ------------------------------------------------------------------------------


def spend_json(report: SpendReport) -> dict[str, Any]:
    """The report as one JSON object: per render (each submission listed), shot, tag, day."""
    return {
        "manifest": report.manifest.name,
        "lockfile": report.lock_file.name,
        "renders": [_render_json(lines) for lines in report.per_render().values()],
        "shots": _groups_json("shot", report.by(lambda line: [line.shot])),
        "tags": _groups_json("tag", report.by(lambda line: line.tags)),
        "days": _groups_json("day", report.by(lambda line: [line.day])),
        "totals": report.totals().as_json(),
        "duplicates": [
            {"job_id": d.job_id, "renders": list(d.renders), "counted_under": d.counted_under}
            for d in report.duplicates
        ],
    }


def _render_json(lines: list[Line]) -> dict[str, Any]:
    first = lines[0]
    return {
        "id": first.render,
        "shot": first.shot,
        "tags": list(first.tags),
        "in_manifest": first.in_manifest,
        "submissions": [
            {
                "submitted_at": _utc(line.charge.submitted_at).isoformat(),
                "job_id": line.charge.job_id,
                "fingerprint": line.charge.fingerprint,
                "status": line.status,
                "estimated_usd": json_amount(line.estimate),
                "billed_usd": None if line.billed is None else json_amount(line.billed),
                # False on a second record of a job counted on another (`duplicates`).
                "counted": line.counted_under is None,
            }
            for line in lines
        ],
        "totals": _summed(lines).as_json(),
    }


def _groups_json(name: str, groups: dict[str, Sums]) -> list[dict[str, Any]]:
    return [{name: key, **sums.as_json()} for key, sums in groups.items()]


def summary_lines(report: SpendReport) -> list[str]:
    """The totals in words: billed, estimated, missing bills, and what may be billed."""
    totals = report.totals()
    lines = [
        f"Spend recorded in {report.lock_file.name}: {usd(totals.billed)} billed by the API "
        f"({_count(totals.bills, 'bill')}); {usd(totals.estimated)} estimated for "
        f"{_count(totals.jobs, 'job')}, {totals.missing_bills} without a bill"
    ]
    if totals.uncertain:
        lines.append(
            f"May be billed: {usd(totals.may_be_billed)} estimated for "
            f"{_count(totals.uncertain, 'uncertain submission')} (no job id came back; look "
            "them up on the EmpirioLabs dashboard, or `kling-batch run --resubmit-uncertain`)"
        )
    return lines + duplicate_notes(report)


def duplicate_notes(report: SpendReport) -> list[str]:
    """One note per job recorded more than once (a merge kept both records)."""
    return [f"Note: {duplicate.note()}." for duplicate in report.duplicates]


def render_spend(report: SpendReport, console: Console) -> None:
    """The report for people: the totals, each submission, then per shot, tag and day."""
    if not report.lines:
        console.print(f"No submissions recorded in {report.lock_file.name}.")
        return
    for line in summary_lines(report):
        console.print(line, soft_wrap=True, markup=False)  # whole lines: logs are grepped
    console.print()
    console.print(_submissions_table(report))
    for title, keys in (
        ("shot", lambda line: [line.shot]),
        ("tag", lambda line: line.tags),
        ("day (UTC)", lambda line: [line.day]),
    ):
        groups = report.by(keys)
        if groups:
            console.print()
            console.print(_groups_table(title, groups))


def _submissions_table(report: SpendReport) -> Columns:
    noted = any(_row_note(line) for line in report.lines)
    columns = ["render", "submitted (UTC)", "job", "status", "estimated", "billed"]
    table = _table([*columns, "note"] if noted else columns)
    for render, lines in report.per_render().items():
        for line in lines:
            note = _row_note(line)
            table.add_row(
                render,
                _utc(line.charge.submitted_at).strftime("%Y-%m-%d %H:%M:%S"),
                line.charge.job_id or _NO_AMOUNT,
                Text(line.status, style="" if line.status == "billed" else "yellow"),
                usd(line.estimate),
                _NO_AMOUNT if line.billed is None else usd(line.billed),
                *([note] if noted else []),
            )
    return table


def _row_note(line: Line) -> str:
    """What the note column says of a submission: it is no longer in the manifest, or it
    is another record of a job counted elsewhere."""
    notes = ["no longer in the manifest"] if line.in_manifest is False else []
    if line.counted_under is not None:
        notes.append(f"another record of this job: counted under {line.counted_under}")
    return "; ".join(notes)


def _groups_table(title: str, groups: dict[str, Sums]) -> Columns:
    columns = [title, "submissions", "estimated", "billed", "without bill", "may be billed"]
    table = _table(columns)
    for key, sums in groups.items():
        table.add_row(
            key,
            str(sums.submissions),
            usd(sums.estimated),
            usd(sums.billed),
            str(sums.missing_bills),
            usd(sums.may_be_billed) if sums.uncertain else _NO_AMOUNT,
        )
    return table


def _table(columns: list[str]) -> Columns:
    return Columns([(name, "right" if name in _NUMBERS else "left") for name in columns])


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
