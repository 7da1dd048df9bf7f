"""The `run` command end to end: plan, refuse or confirm, lock, execute, summarise."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import anyio

from kling_batch import ui
from kling_batch.adoption import Resubmit
from kling_batch.atomic import sweep_temps
from kling_batch.claims import LEASE_SECONDS, RunIdentity
from kling_batch.client import EmpirioClient
from kling_batch.clock import ScaledClock
from kling_batch.endpoint import api_identity, api_key_from_env, resolve_base_url
from kling_batch.errors import LockWriteError, RefusedError, RunError
from kling_batch.executor import Executor
from kling_batch.following import RunOptions
from kling_batch.limits import MAX_RENDERS
from kling_batch.lockfile import LockWriter, check_api
from kling_batch.lockname import lock_path
from kling_batch.outcomes import RunReport
from kling_batch.plan import Plan, PlanItem, build_plan
from kling_batch.push import describe_unpushed
from kling_batch.reports import summary_line, usd
from kling_batch.resend import Resend, resend
from kling_batch.run_summary import summarise, tell_in_flight
from kling_batch.runlock import hold_run_lock
from kling_batch.shared_outputs import refuse_shared_outputs
from kling_batch.state import StateDir
from kling_batch.team import Shared, Team, connect
from kling_batch.ui import RunUI

# Emulator runs go fast: one modelled minute of rendering lasts 0.6 real seconds.
EMULATOR_TIME_SCALE = 0.01


@dataclass(frozen=True)
class RunRequest:
    """Everything the `run` command was asked to do."""

    manifest: Path
    jobs: int = 4
    rpm: int = 50
    max_cost: Decimal | None = None
    only: Sequence[str] = ()
    force: Sequence[str] = ()
    yes: bool = False
    fail_fast: bool = False
    emulator: bool = False
    api_base: str | None = None
    resubmit_uncertain: Resubmit = "off"
    job_timeout: float | None = None  # API seconds after submission; None: per tier
    # Real seconds per API second: only for an emulator started with --time-scale.
    time_scale: float = 1.0
    allow_insecure_http: bool = False
    max_renders: int = MAX_RENDERS
    # Called with the plan made under the run lock, before anything is spent: a saved
    # plan (`run PLAN.json`) refuses there when what it was made from has changed.
    check_plan: Callable[[Plan], None] | None = None
    # "json": the end-of-run summary as JSON on stdout (people's lines stay on stderr).
    fmt: str = "table"
    # The team's shared store: `--remote` / KLING_BATCH_REMOTE over the manifest's `remote`.
    remote: str | None = None
    require_remote: bool = False  # refuse to render alone when the store cannot be reached
    claim_lease: float = LEASE_SECONDS


def run_command(request: RunRequest) -> int:
    """Run a manifest; returns the process exit code (errors raise KlingBatchError)."""
    if not request.emulator:  # plain http refused before anything is written or sent
        insecure = request.allow_insecure_http
        resolve_base_url(request.api_base, allow_insecure_http=insecure, warn=ui.warn)
    lock_file = lock_path(request.manifest, emulator=request.emulator)
    with hold_run_lock(StateDir(request.manifest.parent), lock_file):
        sweep_temps(lock_file)  # a run killed mid-save leaves `.<lock>.*.tmp` behind
        plan = build_plan(
            request.manifest,
            api=_api_identity(request),
            now=datetime.now(UTC),
            only=request.only,
            force=request.force,
            emulator=request.emulator,
            max_renders=request.max_renders,
            remote=request.remote,
        )
        if request.check_plan is not None:
            request.check_plan(plan)
        items = [item for item in plan.items if item.action != "unchanged"]
        items += plan.followups  # orphaned jobs that may be paid for: followed to their end
        if not items:
            ui.say(f"{summary_line(plan)}. Nothing to do.")
            summarise(plan, [], RunReport(), plan.lock, fmt=request.fmt)
            return 0
        refuse_shared_outputs(plan, items)
        check_api(plan.lock, plan.lock_path, _api_identity(request))
        again = resend(plan, request.resubmit_uncertain)  # counted in cost, budget, question
        _refuse_over_budget(plan, request, again.to_run_cost)
        if not request.emulator:
            api_key_from_env()  # a missing key is said before the question, not after
        shared = connect(plan.remote, emulator=request.emulator, require=request.require_remote)
        _confirm(plan, again, request)
        return anyio.run(_execute, plan, items, request, shared)


def _api_identity(request: RunRequest) -> str:
    """What the lockfile records as its API: the emulator, or the API's origin."""
    return api_identity(emulator=request.emulator, api_base=request.api_base)


def _refuse_over_budget(plan: Plan, request: RunRequest, cost: Decimal) -> None:
    """Exit 3 before any request when the cost to run exceeds --max-cost or budget_usd."""
    if request.max_cost is not None and cost > request.max_cost:
        raise RefusedError(
            f"the cost to run is {usd(cost)}, over --max-cost {usd(request.max_cost)}; "
            "nothing was submitted"
        )
    budget = plan.budget
    if budget is not None and cost > budget:
        raise RefusedError(
            f"the cost to run is {usd(cost)}, over the manifest's budget_usd {usd(budget)}; "
            "nothing was submitted"
        )


def _confirm(plan: Plan, again: Resend, request: RunRequest) -> None:
    """Ask on a terminal before spending; without one, --yes is required.

    Emulator runs spend nothing and are not asked about (their budget still applies).
    """
    if again.paid == 0 or request.yes or request.emulator:
        return  # nothing to pay, already confirmed, or the emulator (no real money)
    question = again.question()
    if not ui.can_ask():
        raise RefusedError(f"{question} Not a terminal: pass --yes to confirm.")
    ui.show_plan(plan)
    if not ui.confirm(question):
        raise RefusedError("not confirmed; nothing was submitted")


async def _execute(
    plan: Plan, items: list[PlanItem], request: RunRequest, shared: Shared | None
) -> int:
    writer = LockWriter(plan.lock_path, plan.lock)
    writer.claim_api(_api_identity(request))
    options = RunOptions(
        jobs=request.jobs,
        fail_fast=request.fail_fast,
        resubmit_uncertain=request.resubmit_uncertain,
        job_timeout=request.job_timeout,
    )
    team: Team | None = None
    failure: str | None = None
    with RunUI(len(items)) as ui:
        ui.note(summary_line(plan))
        async with _api(request) as client:
            if shared is not None:
                team = _team(shared, client, writer, plan, request, ui.say)
            executor = Executor(
                root=plan.loaded.root,
                client=client,
                writer=writer,
                events=ui,
                options=options,
                team=team,
            )
            try:
                async with contextlib.AsyncExitStack() as stack:
                    if team is not None:
                        await stack.enter_async_context(team.session())
                    report = await _run_with_signals(executor, items, ui)
                await writer.commit()  # what the pushes marked as held by the store
            except* (LockWriteError, OSError) as group:
                # The lockfile cannot be written: nothing more can be recorded safely, so
                # the run stops; what was recorded before stays valid.
                failure = f"cannot write to disk: {group.exceptions[0]}"
    report = executor.report
    summarise(plan, items, report, writer.lock, fmt=request.fmt)
    if failure is not None:
        # The jobs this run submitted may be recorded only in memory: each is named.
        tell_in_flight(writer.lock, plan.lock_path, executor.state)
        raise RunError(failure)
    if team is not None and team.unpushed:
        flag = " --emulator" if request.emulator else ""
        command = f"kling-batch push {request.manifest}{flag}"
        ui.say(describe_unpushed(team.unpushed, str(team.store.url), command))
    return report.exit_code


def _team(
    shared: Shared,
    client: EmpirioClient,
    writer: LockWriter,
    plan: Plan,
    request: RunRequest,
    say: Callable[[str], None],
) -> Team:
    """This run's claims and pushes in the shared store, on the client's API account."""
    me = RunIdentity.new(client.upload_scope)
    team = Team(
        shared.store,
        me,
        writer,
        StateDir(plan.loaded.root),
        lease=request.claim_lease,
        require=request.require_remote,
        api=_api_identity(request),
        say=say,
    )
    if shared.problem is not None:
        team.health.down(shared.problem)
    return team


@contextlib.asynccontextmanager
async def _api(request: RunRequest) -> AsyncIterator[EmpirioClient]:
    """A client for the real API, or for an emulator started in-process (--emulator)."""
    if not request.emulator:
        client = EmpirioClient(
            api_key=api_key_from_env(),
            base_url=request.api_base,  # resolved (and checked) by the client
            rpm=request.rpm,
            clock=ScaledClock(request.time_scale),
            allow_insecure_http=request.allow_insecure_http,
        )
        async with client:
            yield client
        return
    try:
        from kling_batch.emulator import EmulatorConfig, running_async
    except ImportError as exc:
        raise RunError(
            f"--emulator needs the emulator extra: pip install 'kling-batch[emulator]' ({exc})"
        ) from None
    config = EmulatorConfig(time_scale=EMULATOR_TIME_SCALE, rpm=request.rpm)
    async with running_async(config) as served:
        client = EmpirioClient(
            api_key=served.api_key,
            base_url=served.base_url,
            rpm=request.rpm,
            clock=ScaledClock(EMULATOR_TIME_SCALE),
        )
        async with client:
            yield client


async def _run_with_signals(executor: Executor, items: list[PlanItem], ui: RunUI) -> RunReport:
    """First Ctrl-C: submit nothing new, finish what is in flight. Second: leave now."""

    async def watch(scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                executor.report.interrupted = True
                if signum == signal.SIGINT and not executor.stop_submitting.is_set():
                    executor.stop("interrupted (Ctrl-C)")
                    ui.note(
                        "Stopping: nothing new is submitted; renders in flight finish. "
                        "Press Ctrl-C again to leave now (they stay recorded for the next run)."
                    )
                    continue
                if executor.team is not None:
                    executor.team.abandon()  # leave now: no waiting for pushes either
                # A submit waits shielded for its turn or a retry: the stop drops it unsent.
                executor.stop_submitting.set()
                scope.cancel()

    async with anyio.create_task_group() as group:
        group.start_soon(watch, group.cancel_scope)
        try:
            await executor.run(items)
        finally:
            group.cancel_scope.cancel()
    return executor.report
