"""Crash harness: SIGKILL `kling-batch run` at a chosen request, then rerun until it is done.

A `KillPoint` names the n-th request of a run (or the n-th of one request class: `submit`,
`poll`, `download`, `upload`, `list`, as `kling_batch.emulator.faults.classify` names them;
jobs in flight are polled through the job list, so `list` kills of a first run land in
polling).
The emulator journal calls its listeners on the server thread just before an answer goes
out, so with `delay=0` the run dies with the request served but its answer unseen (a submit
has created and billed its job; a download has its temp file open). With `delay > 0` a
timer kills it that many real seconds later: after the answer, somewhere in the lockfile
write or the download that follows.

`run_trial` plays one `Scenario` in a fresh project against a fresh emulator and returns
the facts (`Trial`); the tests decide what must hold.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import mutagen

from kling_batch.canonical import canonical_json
from kling_batch.emulator import JournalEntry
from kling_batch.emulator.faults import classify
from kling_batch.errors import UserError
from kling_batch.lockfile import load_lockfile
from kling_batch.plan import build_plan
from kling_batch.submission import FINGERPRINT_HEADER
from tests.run.conftest import Project, emulator, write_project

# Seven renders: two pairs of takes with identical requests (one pair sharing a local image,
# so an upload happens), a pro multi-scene shot and three aspect ratios.
CRASH_MANIFEST = """\
version = 1
name = "crash"
output_dir = "renders"

[defaults]
model_tier = "standard"
duration = 3

[[shots]]
id = "dawn"
prompt = "Dawn over a harbour"

[[shots]]
id = "night"
prompt = "4s: night falls on the harbour | 3s: the lights come on"
model_tier = "pro"
sound = false

[[shots]]
id = "still"
prompt = "The harbour wakes"
image = "still.png"
aspect_ratio = "9:16"
takes = 2

[[shots]]
id = "twin"
prompt = "Two boats leave the harbour"
aspect_ratio = "1:1"
takes = 2

[[shots]]
id = "wide"
prompt = "A wide bay at noon"
aspect_ratio = "16:9"
duration = 5
"""
RENDERS = 7
# What a user changes while renders are in flight (`Scenario.edit`): `dawn` renamed, `wide`
# given a second take (its first take keeps the request), `night` moved to another output.
EDITS = (
    ('id = "dawn"', 'id = "dawn-renamed"'),
    ("duration = 5\n", "duration = 5\ntakes = 2\n"),
    ("sound = false\n", 'sound = false\noutput = "moved/night.mp4"\n'),
)
RENDERS_AFTER_EDITS = 8
# Every run of CRASH_MANIFEST sends at least 7 submits, 3 reads of the job list (polling
# every job in flight at once; 4 to 10 seen, fewer on a loaded machine, where more jobs
# end between two reads), 7 downloads and 1 upload.
MIN_REQUESTS = 18
MAX_RERUNS = 6
RUN_ARGS = ("--jobs", "3")
RESUME_ARGS = ("--jobs", "3", "--resubmit-uncertain")


@dataclass(frozen=True)
class KillPoint:
    """SIGKILL the run at its `nth` request (of class `on`, if given), `delay` s later."""

    nth: int
    on: str | None = None
    delay: float = 0.0

    def __str__(self) -> str:
        what = f"{_ordinal(self.nth)} {self.on or 'request'}"
        when = "before its answer" if not self.delay else f"{self.delay * 1000:.1f} ms after it"
        return f"{what}, {when}"


@dataclass(frozen=True)
class Scenario:
    """Where the first run dies and, optionally, where the first rerun dies too."""

    first: KillPoint
    resume: KillPoint | None = None
    edit: bool = False  # apply `EDITS` to the manifest after the first run

    def __str__(self) -> str:
        text = f"kill at the {self.first}"
        if self.edit:
            text += "; rename a shot, add a take, move an output"
        if self.resume is not None:
            text += f"; kill the rerun at its {self.resume}"
        return text


@dataclass
class Kill:
    """Where one SIGKILL landed and what it left on disk."""

    point: KillPoint
    entry_class: str  # class of the request that triggered it
    first_run: bool  # in the first run (job-list reads poll), or a rerun (they adopt first)
    lock_error: str | None  # a lockfile that would not load
    states: dict[str, str]  # render id → lockfile state right after the kill
    unsent_submits: int  # renders left `submitting` whose POST never reached the server
    part_files: list[str]  # download temp files left in the output folder
    lock_temps: list[str]  # lockfile temp files left beside the manifest

    @property
    def phase(self) -> str:
        """The phase of the run the request that triggered the kill belongs to."""
        if self.point.delay:
            article = "an" if self.entry_class[0] in "aeiou" else "a"
            return f"just after {article} {self.entry_class} answer"
        return {
            "upload": "before submit (upload)",
            "submit": "between POST and answer",
            "poll": "polling",
            "download": "download",
            "list": "polling" if self.first_run else "job-list adoption",
        }.get(self.entry_class, self.entry_class)

    @property
    def evidence(self) -> list[str]:
        """What the kill interrupted, as seen on disk afterwards."""
        found = []
        if self.unsent_submits:
            found.append("before submit (`submitting` recorded, POST not sent)")
        if self.part_files:
            found.append("download (temp file left)")
        if self.lock_temps:
            found.append("lockfile write (temp file left)")
        return found


@dataclass
class Output:
    """A final output file as found on disk, beside what the lockfile and plan say."""

    render: str
    path: str
    exists: bool
    sha256: str | None
    locked_sha256: str | None
    seconds: float | None
    planned_seconds: float


@dataclass
class Trial:
    """The facts of one scenario played to the end."""

    scenario: Scenario
    kills: list[Kill] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)
    rerun_errors: list[str] = field(default_factory=list)
    jobs_by_fingerprint: dict[str, list[str]] = field(default_factory=dict)
    lost_answers: set[str] = field(default_factory=set)  # jobs the run had not recorded
    fingerprints: dict[str, str] = field(default_factory=dict)  # render id → fingerprint
    requests: dict[str, str] = field(default_factory=dict)  # render id → canonical request
    final_states: dict[str, str] = field(default_factory=dict)
    final_job_ids: dict[str, str | None] = field(default_factory=dict)
    outputs: list[Output] = field(default_factory=list)
    part_files: list[str] = field(default_factory=list)
    lock_temps: list[str] = field(default_factory=list)
    billed: Decimal = Decimal(0)
    planned_cost: Decimal = Decimal(0)
    last_stderr: str = ""

    @property
    def done(self) -> bool:
        """True when a rerun finished with exit 0."""
        return bool(self.exit_codes) and self.exit_codes[-1] == 0


def scenarios(seed: int) -> list[Scenario]:
    """The kill points of the harness: spread over the whole run, reproducible from `seed`."""
    rng = random.Random(seed)
    points: list[Scenario] = []
    # The n-th request of any kind, one per stratum of requests 2..MIN_REQUESTS (the first
    # request is always the first submit, covered below).
    strata = 10
    span = MIN_REQUESTS - 1
    for s in range(strata):
        low = 2 + s * span // strata
        high = max(low, 1 + (s + 1) * span // strata)
        points.append(Scenario(KillPoint(rng.randint(low, high))))
    # Submits whose answer is lost (the job exists), downloads mid-transfer, polls, the upload.
    points += [Scenario(KillPoint(k, "submit")) for k in sorted(rng.sample(range(1, 8), 6))]
    points += [Scenario(KillPoint(k, "download")) for k in sorted(rng.sample(range(1, 8), 4))]
    points += [Scenario(KillPoint(k, "list")) for k in sorted(rng.sample(range(1, 4), 3))]
    points.append(Scenario(KillPoint(1, "upload")))
    # After an answer arrived: in the lockfile commit or the download that follows it.
    for on in ("upload", "submit", "submit", "list", "download"):
        delay = round(rng.uniform(0.001, 0.02), 4)
        nth = 1 if on == "upload" else rng.randint(1, 3 if on == "list" else 6)
        points.append(Scenario(KillPoint(nth, on, delay)))
    # Crash during resume: lose a submit's answer, then kill the rerun that settles it.
    for resume in (
        KillPoint(1, "list"),
        KillPoint(1, "submit"),
        KillPoint(1, "download"),
        KillPoint(2, None, round(rng.uniform(0.001, 0.01), 4)),
    ):
        points.append(Scenario(KillPoint(rng.randint(1, 3), "submit"), resume))
    unique = list(dict.fromkeys(points))
    return unique


def run_trial(root: Path, scenario: Scenario) -> Trial:
    """Play `scenario` in `root` against a fresh emulator; rerun until exit 0 (bounded)."""
    trial = Trial(scenario)
    # The API keeps a finished job an hour; at the tests' time scale that is 7.2 real
    # seconds, which a loaded machine can spend between a kill and the rerun, and the rerun
    # then rightly finds the job forgotten and plans a paid re-render. These trials are
    # about crashes, not retention: jobs are kept 30 days here.
    with emulator(job_retention_seconds=30 * 86400) as served:
        project = write_project(root, served, CRASH_MANIFEST)
        journal = served.emulator.journal
        first = _run_and_kill(project, RUN_ARGS, scenario.first)
        if isinstance(first, Kill):
            trial.kills.append(first)
            trial.lost_answers |= _unrecorded_jobs(project)
        if scenario.edit:
            for old, new in EDITS:
                project.edit(old, new)
        for attempt in range(MAX_RERUNS):
            point = scenario.resume if attempt == 0 else None
            result = _run_and_kill(project, RESUME_ARGS, point)
            if isinstance(result, Kill):
                trial.kills.append(result)
                trial.lost_answers |= _unrecorded_jobs(project)
                continue
            code, stderr = result
            trial.exit_codes.append(code)
            trial.last_stderr = stderr
            if code == 0:
                break
        trial.jobs_by_fingerprint = journal.jobs_by_header(FINGERPRINT_HEADER)
        trial.billed = served.emulator.ledger.total
        _collect_final(project, trial)
    return trial


def part_files(project: Project) -> list[str]:
    """Download temp files (`*.part`) under the output folder."""
    folder = project.root / "renders"
    return sorted(p.relative_to(project.root).as_posix() for p in folder.rglob("*.part"))


def lock_temps(project: Project) -> list[str]:
    """Lockfile temp files (`.shots.lock.*.tmp`) beside the manifest."""
    return sorted(p.name for p in project.root.glob(f".{project.lock.name}.*.tmp"))


def sha256_of(path: Path) -> str:
    """`sha256:<hex>` of a file, as the lockfile records it."""
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


# -- internals ---------------------------------------------------------------------------


class _Killer:
    """A journal listener that SIGKILLs one process at its chosen request."""

    def __init__(self, point: KillPoint, proc: subprocess.Popen[str], since: int) -> None:
        self.point = point
        self.proc = proc
        self.since = since
        self.seen = 0
        self.entry: JournalEntry | None = None
        self.fired = threading.Event()
        self.dead = threading.Event()
        self.timer: threading.Timer | None = None

    def __call__(self, entry: JournalEntry) -> None:
        if self.fired.is_set() or entry.seq <= self.since:
            return
        request_class = classify(entry.method, entry.path)
        if self.point.on is not None and request_class != self.point.on:
            return
        self.seen += 1
        if self.seen < self.point.nth:
            return
        self.entry = entry
        self.fired.set()
        if self.point.delay:
            self.timer = threading.Timer(self.point.delay, self._kill)
            self.timer.start()
        else:
            self._kill()  # on the server thread: the answer waits until the run is dead

    def _kill(self) -> None:
        # send_signal skips a child already reaped, so a recycled pid is never hit.
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        _wait_dead(self.proc)
        self.dead.set()


def _run_and_kill(
    project: Project, args: tuple[str, ...], point: KillPoint | None
) -> Kill | tuple[int, str]:
    """Run once; a `Kill` if `point` was reached, else the exit code and stderr."""
    journal = project.served.emulator.journal
    since = max((e.seq for e in journal.entries()), default=0)
    proc = subprocess.Popen(
        project.command(*args),
        env=project.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    killer = _Killer(point, proc, since) if point is not None else None
    unsubscribe = journal.subscribe(killer) if killer is not None else None
    try:
        _, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()  # a hung run: stop it (ours, by its Popen handle) and fail the trial
        proc.communicate()
        raise
    finally:
        if unsubscribe is not None:
            unsubscribe()
        if killer is not None and killer.timer is not None:
            killer.timer.join()
    if killer is not None and killer.entry is not None and proc.returncode == -signal.SIGKILL:
        killer.dead.wait(10)
        return _inspect_kill(project, killer.point, killer.entry, first_run=args == RUN_ARGS)
    return proc.returncode, stderr


def _inspect_kill(
    project: Project, point: KillPoint, entry: JournalEntry, *, first_run: bool
) -> Kill:
    lock_error: str | None = None
    states: dict[str, str] = {}
    unsent = 0
    try:
        lock = load_lockfile(project.lock)
    except UserError as exc:
        lock_error = str(exc)
    else:
        states = {key: e.state for key, e in lock.shots.items()}
        sent = project.served.emulator.journal.count_by_header(FINGERPRINT_HEADER)
        unsent = sum(
            1 for e in lock.shots.values() if e.state == "submitting" and e.fingerprint not in sent
        )
    return Kill(
        point=point,
        entry_class=classify(entry.method, entry.path),
        first_run=first_run,
        lock_error=lock_error,
        unsent_submits=unsent,
        states=states,
        part_files=part_files(project) if (project.root / "renders").exists() else [],
        lock_temps=lock_temps(project),
    )


def _unrecorded_jobs(project: Project) -> set[str]:
    """Jobs the emulator created whose id the (parsable) lockfile does not hold."""
    created = {
        job
        for jobs in project.served.emulator.journal.jobs_by_header(FINGERPRINT_HEADER).values()
        for job in jobs
    }
    try:
        lock = load_lockfile(project.lock)
    except UserError:
        return created
    return created - {e.job_id for e in lock.shots.values() if e.job_id}


def _collect_final(project: Project, trial: Trial) -> None:
    try:
        lock = load_lockfile(project.lock)
    except UserError as exc:
        trial.rerun_errors.append(f"final lockfile does not load: {exc}")
        return
    trial.final_states = {key: e.state for key, e in lock.shots.items()}
    trial.final_job_ids = {key: e.job_id for key, e in lock.shots.items()}
    plan = build_plan(project.manifest, now=datetime.now(UTC))
    trial.planned_cost = plan.totals.cost
    for item in plan.items:
        render = item.render
        trial.fingerprints[render.id] = render.fingerprint
        trial.requests[render.id] = canonical_json(dict(render.body))
        path = project.root / render.output
        entry = lock.shots.get(render.id)
        length: float | None = None
        if path.is_file():
            info = mutagen.File(path)
            length = info.info.length if info is not None else None
        trial.outputs.append(
            Output(
                render=render.id,
                path=render.output.as_posix(),
                exists=path.is_file(),
                sha256=sha256_of(path) if path.is_file() else None,
                locked_sha256=entry.output_sha256 if entry else None,
                seconds=length,
                planned_seconds=float(render.seconds),
            )
        )
    trial.part_files = part_files(project)
    trial.lock_temps = lock_temps(project)


def _wait_dead(proc: subprocess.Popen[str], timeout: float = 10.0) -> None:
    """Return once the child is a zombie or reaped (SIGKILL is asynchronous)."""
    deadline = time.monotonic() + timeout
    while proc.returncode is None and time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{proc.pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return
        if stat.rpartition(")")[2].split()[0] in ("Z", "X"):
            return
        time.sleep(0.0005)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def summary(trials: list[Trial]) -> str:
    """Landed kills per phase (by triggering request, and by what was left on disk)."""
    kills = [kill for trial in trials for kill in trial.kills]
    by_phase = Counter(kill.phase for kill in kills)
    by_evidence = Counter(found for kill in kills for found in kill.evidence)
    lines = [f"{len(trials)} trials, {len(kills)} kills landed"]
    lines += [f"  trigger: {phase}: {n}" for phase, n in by_phase.most_common()]
    lines += [f"  left on disk: {what}: {n}" for what, n in by_evidence.most_common()]
    lost = sum(len(trial.lost_answers) for trial in trials)
    lines.append(f"  submit answers lost (jobs to adopt): {lost}")
    swapped = sum(
        1 for trial in trials for jobs in trial.jobs_by_fingerprint.values() if len(jobs) != 1
    )
    lines.append(f"  fingerprints whose job went to a sibling take: {swapped}")
    left = [trial for trial in trials if trial.part_files or trial.lock_temps]
    lines.append(
        f"  after the final run: *.part left in {sum(1 for t in left if t.part_files)} "
        f"trials, lockfile *.tmp left in {sum(1 for t in left if t.lock_temps)} trials"
    )
    return "\n".join(lines)
