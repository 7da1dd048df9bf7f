"""The `plan` command: plan, report (or compare with a base), save, check."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from kling_batch import ui, uptodate
from kling_batch.collector import collecting_after
from kling_batch.errors import UserError
from kling_batch.limits import MAX_RENDERS
from kling_batch.lockname import emulator_only_hint
from kling_batch.uptodate import EditBase, StampKey

# Planning, reports and the run's modules (HTTP client, executor, job list) load only when
# a plan needs them: `plan --check` on every save, answered from the up-to-date stamp,
# must not pay for importing them (issue 13).
if TYPE_CHECKING:
    from kling_batch.adoption import Resubmit
    from kling_batch.plan import Plan
    from kling_batch.saved_plan import PlanOptions


@dataclass(frozen=True)
class PlanRequest:
    """Everything the `plan` command was asked to do."""

    manifest: Path
    fmt: str = "table"
    only: Sequence[str] = ()
    force: Sequence[str] = ()
    check: bool = False
    emulator: bool = False
    max_renders: int = MAX_RENDERS
    out: Path | None = None
    compare: str | None = None
    resubmit_uncertain: Resubmit = "off"
    remote: str | None = None  # --remote / KLING_BATCH_REMOTE

    @property
    def options(self) -> PlanOptions:
        """The options that shape the plan (saved with it by --out)."""
        from kling_batch.saved_plan import PlanOptions

        return PlanOptions(
            only=tuple(self.only),
            force=tuple(self.force),
            emulator=self.emulator,
            max_renders=self.max_renders,
        )

    @property
    def stamp_key(self) -> StampKey | None:
        """What an up-to-date stamp is keyed by (`kling_batch.uptodate`); None when the
        report asked for is not the plain table a stamp holds."""
        plain = self.fmt == "table" and self.resubmit_uncertain == "off"
        if not plain or self.only or self.force or self.out or self.compare is not None:
            return None
        return StampKey(self.manifest, self.emulator, self.max_renders, self.remote)


# Paused for the whole command, not just the plan: the stamp and the report walk the plan
# once more, and the collector, resumed between, walked every object of it twice (a
# quarter of a second of a cold plan of 10,000 renders); resumed once the plan is freed.
@collecting_after
def plan_command(request: PlanRequest) -> int:
    """Plan a manifest and report it; returns the exit code (`--check`: 1 if anything runs)."""
    if request.manifest.suffix.lower() == ".json":
        _refuse_saved_plan(request.manifest)
    if not request.emulator:
        hint = emulator_only_hint(request.manifest, "plan")
        if hint is not None:
            ui.say(hint)
    key = request.stamp_key
    started = time.time_ns()
    stamped = uptodate.look(key) if key is not None else None
    if isinstance(stamped, list):  # nothing changed since a plan with nothing to do
        ui.print_lines(ui.stdout_console(), stamped)
        return 0
    edited = _plan_edit(request, stamped) if stamped is not None else None
    if edited is not None:  # only the manifest changed: its edit, planned alone
        _report(edited, "table")
        if key is not None:
            from kling_batch.reports import quiet_lines

            uptodate.restamp(edited, key, quiet_lines(edited), started)
        return 1 if request.check and edited.has_work else 0
    plan = _plan(request)
    if key is not None:
        from kling_batch.reports import quiet_lines

        uptodate.record(plan, key, quiet_lines(plan), started)
    if request.compare is not None:
        _report_comparison(plan, request)
    else:
        _report(plan, request.fmt, request.resubmit_uncertain)
    if request.out is not None:
        from kling_batch.saved_plan import save_plan

        save_plan(plan, request.options, request.out)
        ui.say(f"Saved the plan to {request.out}; `kling-batch run {request.out}` renders it.")
    if request.check:
        return 1 if plan.has_work else 0
    return 0


def _plan(request: PlanRequest) -> Plan:
    from kling_batch.plan import build_plan

    return build_plan(
        request.manifest,
        now=datetime.now(UTC),
        only=request.only,
        force=request.force,
        emulator=request.emulator,
        max_renders=request.max_renders,
        api=partial(_expected_api, request.emulator),  # asked only if a restore is in question
        remote=request.remote,
    )


def _plan_edit(request: PlanRequest, base: EditBase) -> Plan | None:
    """`plan.plan_edit` of the manifest against its stamp; None when the full plan must
    make it, or would list its unchanged renders (a plan of few renders lists them all)."""
    from kling_batch.plan import plan_edit
    from kling_batch.reports import LIST_UNCHANGED_UP_TO

    plan = plan_edit(
        request.manifest,
        base,
        now=datetime.now(UTC),
        emulator=request.emulator,
        max_renders=request.max_renders,
        api=partial(_expected_api, request.emulator),
        remote=request.remote,
    )
    if plan is None or plan.totals.renders <= LIST_UNCHANGED_UP_TO:
        return None
    return plan


def _refuse_saved_plan(path: Path) -> None:
    """A saved plan given to `plan` is refused, naming the manifest to plan instead."""
    from kling_batch.saved_plan import is_saved_plan, load_plan

    if is_saved_plan(path):
        manifest = load_plan(path).manifest
        raise UserError(
            f"this is a saved plan, not a manifest: `kling-batch run {path}` "
            f"renders it; to plan again, plan its manifest ({manifest})",
            file=path,
        )


def _expected_api(emulator: bool) -> str | None:
    """The API a run would use (the environment's base URL, or the emulator), so the plan
    offers the restores that run would make; None when it cannot be told."""
    from kling_batch.endpoint import api_identity

    try:
        return api_identity(emulator=emulator)
    except UserError:
        return None


def _report(plan: Plan, fmt: str, mode: Resubmit = "off") -> None:
    """The plan in `fmt`; with a resubmit mode, also the cost to run under it."""
    from kling_batch import reports

    again = None
    if mode != "off":
        from kling_batch.resend import resend

        again = resend(plan, mode)
    if fmt == "json":
        if again:
            from kling_batch.resend import plan_json_text

            ui.write_data(plan_json_text(plan, mode))
        else:
            ui.write_data(reports.dumps_json(plan))
    elif fmt == "markdown":
        extra = f"\n**{again.line()}**\n" if again else ""
        ui.write_data(reports.render_markdown(plan) + extra)
    else:
        console = ui.stdout_console()
        reports.render_table(plan, console)
        if again:
            console.print(again.line())


def _report_comparison(plan: Plan, request: PlanRequest) -> None:
    from kling_batch import compare_reports
    from kling_batch.compare import compare_with

    assert request.compare is not None
    comparison = compare_with(request.compare, plan, request.options)
    if request.fmt == "json":
        ui.write_data(compare_reports.dumps_json(comparison))
    elif request.fmt == "markdown":
        ui.write_data(compare_reports.render_markdown(comparison))
    else:
        compare_reports.render_table(comparison, ui.stdout_console())
