"""The executor against a scripted fake API: the money edges, one behaviour each."""

from __future__ import annotations

import contextlib
import hashlib
import io
import signal
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import anyio
import httpx
import pytest

from kling_batch.atomic import atomic_write
from kling_batch.client import EmpirioClient
from kling_batch.clock import Clock, ScaledClock, VirtualClock
from kling_batch.errors import (
    AmbiguousSubmit,
    ApiError,
    ConnectionFailed,
    JobNotFound,
    LockWriteError,
    ResultExpired,
    RunFatal,
    ServerError,
    ShotRejected,
)
from kling_batch.executor import Executor
from kling_batch.following import RunOptions
from kling_batch.joblist import JobPage
from kling_batch.lockfile import Entry, LockWriter, load_lockfile, new_entry
from kling_batch.outcomes import Quiet, RunReport
from kling_batch.payloads import Download, ErrorInfo, JobState, Submission, Upload, parse_job
from kling_batch.plan import Plan, build_plan
from kling_batch.run_summary import run_summary
from kling_batch.runner import _run_with_signals
from kling_batch.spend import spend_report
from kling_batch.ui import print_summary
from tests.conftest import NOW

# The top-level boxes of an MP4 (ftyp, an empty moov, mdat); each download appends a `free`
# box holding its URL, so each result is a different, structurally whole file.
MP4 = (
    b"\x00\x00\x00\x14ftypisom\x00\x00\x02\x00isom\x00\x00\x00\x08moov\x00\x00\x00\x48mdat"
    + bytes(64)
)


def free_box(payload: bytes) -> bytes:
    """A `free` box carrying `payload`."""
    return (len(payload) + 8).to_bytes(4, "big") + b"free" + payload


class FakeApi:
    """An API that creates jobs which finish at once; `script` overrides any operation."""

    def __init__(self) -> None:
        self.clock = ScaledClock(1e-5)
        self.upload_scope = "fake-account"
        self.submits: list[Mapping[str, Any]] = []
        self.polls = 0
        self.downloads = 0
        self.script: dict[str, Callable[..., Any]] = {}

    async def submit(
        self, body: Mapping[str, Any], *, headers: Any = None, halt: Any = None
    ) -> Submission:
        if "submit" in self.script:
            self.script["submit"]()
        self.submits.append(body)
        job = f"job{len(self.submits)}"
        return Submission(job, f"https://api.test/v1/jobs/{job}")

    async def get_job(self, job_id: str, poll_url: str | None = None) -> JobState:
        self.polls += 1
        if "get_job" in self.script:
            result = self.script["get_job"](job_id)
            if result is not None:
                return result  # type: ignore[no-any-return]
        return JobState(
            job_id,
            "succeeded",
            "completed",
            1.0,
            video_url=f"https://cdn.test/{job_id}.mp4",
            billed_usd=Decimal("1.4"),
        )

    async def list_jobs_page(self, **_: Any) -> JobPage | None:
        if "list_jobs_page" in self.script:
            return self.script["list_jobs_page"]()  # type: ignore[no-any-return]
        return JobPage([], ended=True)

    async def upload(self, path: Path, *, content_type: str | None = None) -> Upload:
        if "upload" in self.script:
            self.script["upload"](path)
        data = await anyio.Path(path).read_bytes()
        sent = "sha256:" + hashlib.sha256(data).hexdigest()
        return Upload("bunny://up/" + path.name, None, len(data), sent)

    async def download(self, url: str, dest: Path) -> Download:
        self.downloads += 1
        if "download" in self.script:
            self.script["download"](url)
        data = MP4 + free_box(url.encode())
        await anyio.Path(dest).write_bytes(data)
        return Download(len(data), "sha256:" + hashlib.sha256(data).hexdigest())


def run(plan: Plan, api: FakeApi, **options: Any) -> RunReport:
    """Run every actionable item of `plan` against `api`."""
    writer = LockWriter(plan.lock_path, plan.lock)

    executor = Executor(
        root=plan.loaded.root,
        client=api,
        writer=writer,
        events=Quiet(),
        options=RunOptions(**options),
    )
    items = [item for item in plan.items if item.action != "unchanged"]
    return anyio.run(executor.run, items)


ONE = '[[shots]]\nid = "a"\nprompt = "a lighthouse"\n'


def test_run_records_done_with_hash(project: Callable[..., Path]) -> None:
    """A render goes submit → poll → download and is recorded done with its file's hash."""
    api = FakeApi()
    report = run(build_plan(project(ONE), now=NOW), api)
    entry = load_lockfile(project(ONE).with_suffix(".lock")).shots["a"]
    assert report.exit_code == 0 and entry.state == "done"
    data = (project(ONE).parent / entry.output).read_bytes()
    assert entry.output_sha256 == "sha256:" + hashlib.sha256(data).hexdigest()
    assert report.estimated_cost == Decimal("1.400") and report.billed_cost == Decimal("1.4")


def test_fresh_url_unreachable_keeps_the_paid_job(project: Callable[..., Path]) -> None:
    """Expired URL + the API briefly unreachable: the render stays completed, not failed."""
    api = FakeApi()

    def expired(url: str) -> None:
        raise ResultExpired("gone", status=410)

    polls = iter([None])

    def flaky(job_id: str) -> JobState | None:
        if next(polls, "down") == "down":
            raise ConnectionFailed("unreachable")
        return None

    api.script.update(download=expired, get_job=flaky)
    path = project(ONE)
    report = run(build_plan(path, now=NOW), api)
    entry = load_lockfile(path.with_suffix(".lock")).shots["a"]
    assert entry.state == "completed"
    assert [o.state for o in report.outcomes] == ["pending"]
    assert build_plan(path, now=NOW).items[0].action == "resume"


def test_success_without_video_url_is_not_failed(project: Callable[..., Path]) -> None:
    """A completed job whose answer has no readable URL stays on record, never re-paid."""
    api = FakeApi()
    api.script["get_job"] = lambda job_id: JobState(job_id, "succeeded", "completed", 1.0)
    path = project(ONE)
    report = run(build_plan(path, now=NOW), api)
    assert load_lockfile(path.with_suffix(".lock")).shots["a"].state == "submitted"
    assert report.outcomes[0].state == "pending"
    assert build_plan(path, now=NOW).totals.to_run == 0


def test_the_bill_of_a_job_completed_without_a_video_url_is_kept(
    project: Callable[..., Path],
) -> None:
    """A completed job whose answer has a bill but no readable URL: the bill is on record
    (the API forgets it with the job an hour later), so `spend` counts what was billed."""
    api = FakeApi()
    api.script["get_job"] = lambda job_id: JobState(
        job_id, "succeeded", "completed", 1.0, billed_usd=Decimal("1.4")
    )
    path = project(ONE)
    run(build_plan(path, now=NOW), api)
    entry = load_lockfile(path.with_suffix(".lock")).shots["a"]
    assert entry.state == "submitted" and entry.submissions[-1].billed_usd == Decimal("1.4")
    assert spend_report(path).totals().billed == Decimal("1.4")


def test_cost_counts_submissions_even_when_polling_is_refused(
    project: Callable[..., Path],
) -> None:
    """A 401 while polling still reports the render submitted this run as spent."""
    api = FakeApi()

    def refused(job_id: str) -> None:
        raise RunFatal("key revoked", status=401)

    api.script["get_job"] = refused
    report = run(build_plan(project(ONE), now=NOW), api)
    assert report.estimated_cost == Decimal("1.400")
    assert report.billed_cost is None
    assert report.stopped is not None


def test_missing_input_file_fails_only_its_render(
    project: Callable[..., Path], image: Callable[[str], Path]
) -> None:
    """An image deleted between plan and upload fails that render; the other renders."""
    picture = image("still.png")
    path = project(ONE + '[[shots]]\nid = "b"\nprompt = "p"\nimage = "still.png"\n')
    plan = build_plan(path, now=NOW)
    picture.unlink()
    api = FakeApi()
    report = run(plan, api)
    states = {o.id: o.state for o in report.outcomes}
    assert states == {"a": "done", "b": "failed"}
    assert len(api.submits) == 1


def test_identical_requests_are_paid_once(project: Callable[..., Path]) -> None:
    """Two shots with the same request render once; the second is a free copy."""
    path = project(ONE + '[[shots]]\nid = "twin"\nprompt = "a lighthouse"\n')
    plan = build_plan(path, now=NOW)
    assert [i.action for i in plan.items] == ["new", "restore"]
    assert plan.totals.to_run_cost == Decimal("1.400")
    api = FakeApi()
    report = run(plan, api)
    assert len(api.submits) == 1
    assert {o.id: o.state for o in report.outcomes} == {"a": "done", "twin": "done"}
    root = path.parent
    assert (root / "renders/a.mp4").read_bytes() == (root / "renders/twin.mp4").read_bytes()


def test_stop_after_saving_submitting_sends_nothing(project: Callable[..., Path]) -> None:
    """A stop that lands between saving `submitting` and the POST puts the record back."""
    api = FakeApi()
    path = project(ONE)
    plan = build_plan(path, now=NOW)
    writer = LockWriter(plan.lock_path, plan.lock)

    executor = Executor(root=path.parent, client=api, writer=writer, events=Quiet())
    real_commit = writer.commit

    async def commit_then_stop() -> None:
        await real_commit()
        if any(e.state == "submitting" for e in writer.lock.shots.values()):
            executor.stop("test stop")

    writer.commit = commit_then_stop  # type: ignore[method-assign]
    report = anyio.run(executor.run, list(plan.items))
    assert api.submits == []
    assert [o.state for o in report.outcomes] == ["skipped"]
    assert "a" not in load_lockfile(path.with_suffix(".lock")).shots


def test_uncertain_entry_with_fractional_duration_is_settled(
    project: Callable[..., Path],
) -> None:
    """A recorded Decimal duration (7.5, from an older lockfile) does not break matching."""
    path = project('[[shots]]\nid = "a"\nprompt = "p"\nduration = 7\n')
    plan = build_plan(path, now=NOW)
    entry = new_entry(plan.items[0].render, "uncertain", updated_at=NOW)
    entry.request["duration"] = Decimal("7.5")
    plan.lock.shots["a"] = entry
    plan.lock.save(plan.lock_path)
    again = build_plan(path, now=NOW)
    report = run(again, FakeApi())
    assert [o.state for o in report.outcomes] == ["uncertain"]


def test_early_404_on_a_fresh_job_is_asked_again(project: Callable[..., Path]) -> None:
    """A 404 on a job submitted minutes ago is a hiccup: polled again, never re-paid."""
    api = FakeApi()
    answers = iter(["missing"])

    def once_missing(job_id: str) -> None:
        if next(answers, None) == "missing":
            raise JobNotFound("no such job", status=404)

    api.script["get_job"] = once_missing
    # The job's hour of keeping must outlast the test's real delays on a loaded machine:
    # at the usual 1e-5 it is 36 ms, after which a 404 rightly means "forgotten".
    api.clock = ScaledClock(1e-3)
    path = project(ONE)
    report = run(build_plan(path, now=NOW), api)
    assert [o.state for o in report.outcomes] == ["done"]
    assert len(api.submits) == 1 and api.polls == 2


TWINS = ONE + '[[shots]]\nid = "twin"\nprompt = "a lighthouse"\n'


def test_a_twin_whose_first_render_fails_is_skipped_not_paid(
    project: Callable[..., Path],
) -> None:
    """The first of two identical renders fails: the copy is skipped, nothing paid twice."""
    api = FakeApi()
    api.script["get_job"] = lambda job_id: JobState(
        job_id, "failed", "failed", error=ErrorInfo("refused", "moderation")
    )
    report = run(build_plan(project(TWINS), now=NOW), api)
    outcomes = {o.id: (o.state, o.detail) for o in report.outcomes}
    assert outcomes["a"][0] == "failed"
    assert outcomes["twin"] == ("skipped", "a (same request) did not finish; the next run plans it")
    assert len(api.submits) == 1


def test_a_restore_from_the_cache_touches_no_api(project: Callable[..., Path]) -> None:
    """An output deleted after its render: the run copies it from the cache, no request."""
    path = project(ONE)
    run(build_plan(path, now=NOW), FakeApi())
    output = path.parent / "renders" / "a.mp4"
    data = output.read_bytes()
    output.unlink()
    plan = build_plan(path, now=NOW)
    (item,) = plan.items
    assert item.action == "restore" and item.restore is not None
    assert item.restore.kind == "cache"
    api = FakeApi()
    api.script["download"] = lambda url: pytest.fail(f"downloaded {url}")
    report = run(plan, api)
    assert [o.state for o in report.outcomes] == ["done"]
    assert output.read_bytes() == data and api.submits == [] and api.polls == 0


def test_a_refused_restore_url_whose_job_is_gone_is_forgotten(
    project: Callable[..., Path],
) -> None:
    """Output and cache lost, its URL refused, its job gone: the next plan prices it."""
    path = project(ONE)
    run(build_plan(path, now=NOW), FakeApi())
    (path.parent / "renders" / "a.mp4").unlink()
    for cached in (path.parent / ".kling-batch" / "cache").iterdir():
        cached.chmod(0o644)
        cached.unlink()
    plan = build_plan(path, now=NOW)
    assert plan.items[0].action == "restore" and plan.items[0].restore.kind == "url"  # type: ignore[union-attr]
    api = FakeApi()

    def refused(url: str) -> None:
        raise ResultExpired("signature refused", status=403)

    def gone(job_id: str) -> None:
        raise JobNotFound("no such job", status=404)

    api.script.update(download=refused, get_job=gone)
    report = run(plan, api)
    (outcome,) = report.outcomes
    assert outcome.state == "failed" and "the URL is forgotten" in outcome.detail
    assert build_plan(path, now=NOW).items[0].action == "changed"


def test_an_input_edited_since_the_plan_is_not_sent_for_it(
    project: Callable[..., Path], image: Callable[[str], Path]
) -> None:
    """An image edited after the plan hashed it (a long run uploads it only when its render
    starts): nothing is submitted for the old content and no upload is recorded under its
    hash; the render fails saying to plan again, and the next plan renders what the file
    holds, its upload recorded under that content."""
    picture = image("still.png")
    path = project('[[shots]]\nid = "b"\nprompt = "p"\nimage = "still.png"\n')
    plan = build_plan(path, now=NOW)
    edited = picture.read_bytes() + b"retouched"
    picture.write_bytes(edited)
    api = FakeApi()
    report = run(plan, api)
    lock = load_lockfile(path.with_suffix(".lock"))
    assert api.submits == [] and lock.uploads == {}
    assert report.count("failed") == 1 and lock.shots["b"].state == "failed"
    assert "still.png changed since it was planned" in (lock.shots["b"].error or "")
    report = run(build_plan(path, now=NOW), api)
    lock = load_lockfile(path.with_suffix(".lock"))
    content = "sha256:" + hashlib.sha256(edited).hexdigest()
    assert lock.shots["b"].state == "done" and len(api.submits) == 1
    assert lock.shots["b"].assets["image"] == content
    assert [set(table) for table in lock.uploads.values()] == [{content}]


def test_the_bill_of_a_failed_job_is_kept(project: Callable[..., Path]) -> None:
    """A job that fails with a bill in its answer (rejected after its video was made, say):
    the lockfile, the run's report and `spend` all count what the API billed."""
    api = FakeApi()
    api.script["get_job"] = lambda job_id: JobState(
        job_id,
        "failed",
        "failed",
        1.0,
        error=ErrorInfo("output rejected by moderation", code="content_moderation"),
        billed_usd=Decimal("1.4"),
    )
    path = project(ONE)
    report = run(build_plan(path, now=NOW), api)
    entry = load_lockfile(path.with_suffix(".lock")).shots["a"]
    assert entry.state == "failed" and "output rejected by moderation" in (entry.error or "")
    assert entry.submissions[-1].billed_usd == Decimal("1.4")
    assert report.billed == {"a": Decimal("1.4")}
    assert spend_report(path).totals().billed == Decimal("1.4")


def test_a_completed_job_with_its_video_and_an_error_object_is_downloaded(
    project: Callable[..., Path],
) -> None:
    """A job that says `completed`, offers its video and reports its bill, beside an
    `error` object (a warning: no sound, say), made its paid video: the run downloads it
    instead of recording a failure that the next plan would pay to render again."""
    api = FakeApi()
    api.script["get_job"] = lambda job_id: parse_job(
        {
            "job_id": job_id,
            "status": "completed",
            "progress": 1,
            "result": {"video_url": f"https://cdn.test/{job_id}.mp4"},
            "error": {"code": "audio_skipped", "message": "sound could not be generated"},
            "cost": "1.4",
        }
    )
    path = project(ONE)
    report = run(build_plan(path, now=NOW), api)
    entry = load_lockfile(path.with_suffix(".lock")).shots["a"]
    assert [o.state for o in report.outcomes] == ["done"]
    assert entry.state == "done" and api.downloads == 1
    assert report.billed == {"a": Decimal("1.4")}
    assert build_plan(path, now=NOW).items[0].action == "unchanged"


def test_a_refused_url_and_an_early_404_keep_the_fresh_paid_job(
    project: Callable[..., Path],
) -> None:
    """The result URL of a job finished minutes ago is refused (a CDN hiccup) and the job's
    own GET answers 404 once: the API keeps a job an hour after it ends, so that 404 is a
    hiccup too, as it is while polling. The render stays completed with its URL, for a free
    rerun, instead of failing into a re-render the next plan would pay for."""
    api = FakeApi()
    api.clock = ScaledClock(1e-3)  # the hour of keeping outlasts the test's real delays
    reads = iter(["poll"])

    def missing_after_the_poll(job_id: str) -> None:
        if next(reads, None) is None:
            raise JobNotFound("no such job", status=404)

    def refused(url: str) -> None:
        raise ResultExpired("signature refused", status=403)

    api.script.update(get_job=missing_after_the_poll, download=refused)
    path = project(ONE)
    report = run(build_plan(path, now=NOW), api)
    entry = load_lockfile(path.with_suffix(".lock")).shots["a"]
    assert [o.state for o in report.outcomes] == ["pending"]
    assert entry.state == "completed" and entry.result_url == "https://cdn.test/job1.mp4"
    assert build_plan(path, now=NOW).items[0].action == "resume"
    del api.script["get_job"], api.script["download"]  # the CDN and the API recover
    report = run(build_plan(path, now=NOW), api)
    assert [o.state for o in report.outcomes] == ["done"] and len(api.submits) == 1


def test_the_run_summary_rounds_each_bill_up_as_its_totals_do(
    project: Callable[..., Path],
) -> None:
    """A bill finer than the tenth of a cent (billed on a fractional length, say) is
    rounded up in `run --format json`'s line for its render, as in its totals and in
    `spend`: never shown below what the API billed, nor the lines below their total."""
    api = FakeApi()
    api.script["get_job"] = lambda job_id: JobState(
        job_id,
        "succeeded",
        "completed",
        1.0,
        video_url=f"https://cdn.test/{job_id}.mp4",
        billed_usd=Decimal("1.4004"),
    )
    path = project(ONE)
    plan = build_plan(path, now=NOW)
    report = run(plan, api)
    summary = run_summary(plan, plan.items, report, load_lockfile(path.with_suffix(".lock")))
    (line,) = summary["renders"]
    assert line["billed_usd"] == summary["totals"]["billed_usd"] == 1.401
    assert spend_report(path).totals().billed == Decimal("1.401")


def cancelled_on_the_api(job_id: str) -> JobState:
    """A job cancelled on the API's side (from its dashboard, say), as a poll reads it."""
    return parse_job({"job_id": job_id, "status": "cancelled", "progress": 0.2})


def test_the_run_summary_says_a_cancelled_job_is_cancelled(
    project: Callable[..., Path],
) -> None:
    """A render whose job was cancelled on the API's side ends `cancelled` in `run --format
    json`, counted as cancelled and not as failed (the run still exits 1)."""
    api = FakeApi()
    api.script["get_job"] = cancelled_on_the_api
    path = project(ONE)
    plan = build_plan(path, now=NOW)
    report = run(plan, api)
    summary = run_summary(plan, plan.items, report, load_lockfile(path.with_suffix(".lock")))
    assert [line["state"] for line in summary["renders"]] == ["cancelled"]
    assert (summary["totals"]["cancelled"], summary["totals"]["failed"]) == (1, 0)
    assert report.exit_code == 1


def test_the_run_table_says_a_cancelled_job_is_cancelled(
    project: Callable[..., Path],
) -> None:
    """The end-of-run table counts a render whose job was cancelled as `cancelled`, and
    lists it so, not as failed."""
    api = FakeApi()
    api.script["get_job"] = cancelled_on_the_api
    report = run(build_plan(project(ONE), now=NOW), api)
    out = io.StringIO()
    print_summary(report, out)
    rows = [line.split() for line in out.getvalue().splitlines()]
    assert ["cancelled", "1"] in rows and not any(row[:1] == ["failed"] for row in rows)
    assert "- cancelled a: job job1 cancelled" in out.getvalue()


def test_a_completed_entry_without_its_url_asks_its_job_again(
    project: Callable[..., Path],
) -> None:
    """A `completed` entry whose result URL was deleted (by hand, or in a merge): the run
    asks its job for the URL while the API keeps it and downloads the paid video, instead
    of failing on the missing URL at every run until the job is gone."""
    path = project(ONE)
    run(build_plan(path, now=NOW), FakeApi())
    lock = load_lockfile(path.with_suffix(".lock"))
    done = lock.shots["a"]
    blank = {"output_sha256": None, "output_size": None, "result_url": None}
    lock.shots["a"] = done.model_copy(update={"state": "completed", **blank})
    lock.save(path.with_suffix(".lock"))
    (path.parent / done.output).unlink()
    for cached in (path.parent / ".kling-batch" / "cache").iterdir():
        cached.chmod(0o644)
        cached.unlink()
    plan = build_plan(path, now=NOW)
    assert [item.action for item in plan.items] == ["resume"]
    api = FakeApi()
    report = run(plan, api)
    entry = load_lockfile(path.with_suffix(".lock")).shots["a"]
    assert [o.state for o in report.outcomes] == ["done"]
    assert entry.state == "done" and api.polls >= 1 and api.submits == []
    assert (path.parent / entry.output).is_file()


def lost_answer(path: Path, api: FakeApi, state: str) -> Entry:
    """Run `path` once with its submission unanswered; the record, left `state`
    (`submitting`: as if the run was stopped before the answer came)."""

    def lost() -> None:
        raise AmbiguousSubmit("the connection dropped after the request went out")

    api.script["submit"] = lost
    run(build_plan(path, now=NOW), api)
    del api.script["submit"]
    lock = load_lockfile(path.with_suffix(".lock"))
    lock.shots["b"] = lock.shots["b"].model_copy(update={"state": state})
    lock.save(path.with_suffix(".lock"))
    return lock.shots["b"]


def refuse_uploads(api: FakeApi) -> None:
    """Every upload of `api` fails; its inputs, on record under another upload scope, are
    uploaded again."""

    def refused(upload: Path) -> None:
        raise ServerError("storage unavailable", status=503)

    api.script["upload"] = refused
    api.upload_scope = "another-account"


@pytest.mark.parametrize("state", ["uncertain", "submitting"])
def test_a_blind_resend_that_fails_before_its_post_stays_uncertain(
    project: Callable[..., Path], image: Callable[[str], Path], state: str
) -> None:
    """`--resubmit-uncertain=blind` resends an unanswered submission the job list cannot
    rule out, and its input upload fails: nothing new was sent, so the record stays exactly
    as it was (the first submission may have made a paid job) and the next plain run
    does not send it again."""
    image("still.png")
    path = project('[[shots]]\nid = "b"\nprompt = "p"\nimage = "still.png"\n')
    api = FakeApi()
    api.script["list_jobs_page"] = lambda: None  # no job list: a look never rules a job out
    unanswered = lost_answer(path, api, state)
    refuse_uploads(api)
    report = run(build_plan(path, now=NOW), api, resubmit_uncertain="blind")
    (outcome,) = report.outcomes
    assert outcome.state == "failed" and "upload of still.png failed" in outcome.detail
    assert "stays uncertain" in outcome.detail
    assert api.submits == []
    assert load_lockfile(path.with_suffix(".lock")).shots["b"] == unanswered
    plan = build_plan(path, now=NOW)
    assert plan.items[0].action == "uncertain"
    run(plan, api)
    assert api.submits == []
    assert load_lockfile(path.with_suffix(".lock")).shots["b"] == unanswered


@pytest.mark.parametrize(
    "refusal",
    [ShotRejected("prompt refused", status=400), RunFatal("no credits left", status=402)],
    ids=["rejected", "out of credits"],
)
def test_a_blind_resend_the_api_refuses_stays_uncertain(
    project: Callable[..., Path], image: Callable[[str], Path], refusal: ApiError
) -> None:
    """`--resubmit-uncertain=blind` resends an unanswered submission and the API refuses
    the resend: that proves nothing of the first submission, which may have made a paid
    job, so the render stays uncertain (not failed, which the next plain run would send
    again without looking)."""
    image("still.png")
    path = project('[[shots]]\nid = "b"\nprompt = "p"\nimage = "still.png"\n')
    api = FakeApi()
    api.script["list_jobs_page"] = lambda: None  # no job list: a look never rules a job out
    unanswered = lost_answer(path, api, "uncertain")

    def refused() -> None:
        raise refusal

    api.script["submit"] = refused
    with contextlib.suppress(RunFatal):  # out of credits stops the run
        run(build_plan(path, now=NOW), api, resubmit_uncertain="blind")
    del api.script["submit"]
    entry = load_lockfile(path.with_suffix(".lock")).shots["b"]
    assert entry.state == "uncertain", entry.error
    assert entry.submissions == unanswered.submissions
    plan = build_plan(path, now=NOW)
    assert plan.items[0].action == "uncertain"
    run(plan, api)
    assert api.submits == []


def test_a_resend_after_a_complete_look_that_fails_before_its_post_is_retried(
    project: Callable[..., Path], image: Callable[[str], Path]
) -> None:
    """`--resubmit-uncertain` resends only once the job list proved the first submission
    made no job; its upload failing leaves the render failed, that submission marked
    jobless, and the next plain run retries it (nothing can be paid twice)."""
    image("still.png")
    path = project('[[shots]]\nid = "b"\nprompt = "p"\nimage = "still.png"\n')
    api = FakeApi()
    api.clock = VirtualClock(wall=NOW)  # no time passes: the job list still shows any job
    lost_answer(path, api, "uncertain")
    refuse_uploads(api)
    run(build_plan(path, now=NOW), api, resubmit_uncertain="look")
    entry = load_lockfile(path.with_suffix(".lock")).shots["b"]
    assert entry.state == "failed" and [c.no_job for c in entry.submissions] == [True]
    assert api.submits == []
    assert build_plan(path, now=NOW).items[0].action == "retry"


@pytest.mark.parametrize("earlier", [None, "uncertain"])
def test_a_stop_while_inputs_upload_again_sends_no_resend(
    project: Callable[..., Path], image: Callable[[str], Path], earlier: str | None
) -> None:
    """The API refuses a submission for an upload path it forgot; Ctrl-C lands while the
    input uploads again: the resend is not POSTed, and the record is what a stop before
    any POST leaves (nothing new, or the earlier unanswered submission still uncertain),
    so the next plan renders it anew or still looks for its job first."""
    image("still.png")
    path = project('[[shots]]\nid = "b"\nprompt = "p"\nimage = "still.png"\n')
    api = FakeApi()
    api.script["list_jobs_page"] = lambda: None  # no job list: a look never rules a job out
    unanswered = lost_answer(path, api, earlier) if earlier else None
    plan = build_plan(path, now=NOW)
    writer = LockWriter(plan.lock_path, plan.lock)
    executor = Executor(
        root=path.parent,
        client=api,
        writer=writer,
        events=Quiet(),
        options=RunOptions(resubmit_uncertain="blind"),
    )
    posts: list[str] = []

    def forgotten() -> None:
        posts.append("POST")
        raise ShotRejected("unknown or expired upload path bunny://up/still.png", status=400)

    def stop_once_refused(upload: Path) -> None:
        if posts:
            executor.stop("interrupted (Ctrl-C)")

    api.script.update(submit=forgotten, upload=stop_once_refused)
    report = anyio.run(executor.run, list(plan.items))
    assert posts == ["POST"] and api.submits == []
    assert [o.state for o in report.outcomes] == ["skipped"]
    lock = load_lockfile(path.with_suffix(".lock"))
    assert lock.shots.get("b") == unanswered
    assert build_plan(path, now=NOW).items[0].action == (earlier or "new")


def test_a_cancel_while_inputs_upload_again_puts_the_record_back(
    project: Callable[..., Path], image: Callable[[str], Path]
) -> None:
    """A second Ctrl-C while the input uploads again for a refused submission: nothing was
    created, so the next plan renders the shot as new instead of holding it uncertain."""
    image("still.png")
    path = project('[[shots]]\nid = "b"\nprompt = "p"\nimage = "still.png"\n')
    api = FakeApi()
    plan = build_plan(path, now=NOW)
    writer = LockWriter(plan.lock_path, plan.lock)
    executor = Executor(root=path.parent, client=api, writer=writer, events=Quiet())
    posts: list[str] = []
    scopes: list[anyio.CancelScope] = []

    def forgotten() -> None:
        posts.append("POST")
        raise ShotRejected("unknown or expired upload path bunny://up/still.png", status=400)

    def cancel_once_refused(upload: Path) -> None:
        if posts:
            scopes[0].cancel()  # the second Ctrl-C

    async def main() -> None:
        with anyio.CancelScope() as leave:
            scopes.append(leave)
            await executor.run(list(plan.items))

    api.script.update(submit=forgotten, upload=cancel_once_refused)
    anyio.run(main)
    assert posts == ["POST"]
    assert "b" not in load_lockfile(path.with_suffix(".lock")).shots
    assert build_plan(path, now=NOW).items[0].action == "new"


def five_minutes_busy() -> httpx.Response:
    """A 429 asking for five minutes: the refused submit waits, shielded, to retry."""
    headers = {"retry-after-ms": "300000"}
    return httpx.Response(429, json={"error": {"code": "rate_limited"}}, headers=headers)


def scripted_client(
    answer: Callable[[httpx.Request], httpx.Response], clock: Clock | None = None
) -> EmpirioClient:
    """A client whose every request `answer` answers (no request budget)."""
    return EmpirioClient(
        api_key="sk-empiriolabs-TESTKEY-0123456789abcdef",
        transport=httpx.MockTransport(answer),
        clock=clock or VirtualClock(wall=NOW),
        rpm=None,
    )


def test_a_stop_while_a_refused_submit_waits_to_retry_sends_nothing_more(
    project: Callable[..., Path],
) -> None:
    """The API answers a submission 429, asking for five minutes, as Ctrl-C lands: the
    retry due after that wait never goes out, and the shot is left as never submitted."""
    path = project(ONE)
    plan = build_plan(path, now=NOW)
    writer = LockWriter(plan.lock_path, plan.lock)
    posts: list[str] = []
    executors: list[Executor] = []

    def busy(request: httpx.Request) -> httpx.Response:
        posts.append(request.url.path)
        executors[0].stop("interrupted (Ctrl-C)")
        return five_minutes_busy()

    async def main() -> RunReport:
        async with scripted_client(busy) as client:
            executors.append(
                Executor(root=path.parent, client=client, writer=writer, events=Quiet())
            )
            return await executors[0].run(list(plan.items))

    report = anyio.run(main)
    assert posts == ["/v1/videos/generations"]
    assert [o.state for o in report.outcomes] == ["skipped"]
    assert "a" not in load_lockfile(path.with_suffix(".lock")).shots


def test_a_lockfile_that_cannot_be_written_stops_a_submit_waiting_to_retry(
    project: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One submission is answered 429 with five minutes to wait; meanwhile the lockfile
    can no longer be written and the run ends: the retry, whose job the run could not
    record, never goes out."""
    path = project('[[shots]]\nid = "a"\nprompt = "one"\n[[shots]]\nid = "b"\nprompt = "two"\n')
    plan = build_plan(path, now=NOW)
    writer = LockWriter(plan.lock_path, plan.lock)
    posts: list[str] = []
    broken: list[bool] = []

    def save(target: Path, data: object, **_: object) -> None:
        if broken:
            raise OSError(28, "No space left on device")
        atomic_write(target, data)  # type: ignore[arg-type]

    def api(request: httpx.Request) -> httpx.Response:
        posts.append(request.url.path)
        if len(posts) == 1:
            broken.append(True)  # from now on the disk is full
            return five_minutes_busy()
        return httpx.Response(200, json={"job_id": f"job_{len(posts)}", "status": "queued"})

    monkeypatch.setattr("kling_batch.lockfile.atomic_write", save)

    async def main() -> None:
        # The five minutes last 3 s: the failed save comes first.
        async with scripted_client(api, ScaledClock(0.01)) as client:
            executor = Executor(root=path.parent, client=client, writer=writer, events=Quiet())
            await executor.run(list(plan.items))

    with pytest.raises(BaseException) as raised:
        anyio.run(main)
    assert (
        raised.group_contains(LockWriteError)
        if isinstance(raised.value, BaseExceptionGroup)
        else isinstance(raised.value, LockWriteError)
    )
    assert posts == ["/v1/videos/generations"] * 2


def test_sigterm_while_a_refused_submit_waits_to_retry_sends_nothing_more(
    project: Callable[..., Path],
) -> None:
    """SIGTERM (leave now, with no Ctrl-C before it) as a submission is answered 429 with
    five minutes to wait: the run leaves without sending the retry."""
    path = project(ONE)
    plan = build_plan(path, now=NOW)
    writer = LockWriter(plan.lock_path, plan.lock)
    posts: list[str] = []

    def busy(request: httpx.Request) -> httpx.Response:
        posts.append(request.url.path)
        if len(posts) == 1:
            signal.raise_signal(signal.SIGTERM)
        return five_minutes_busy()

    async def main() -> None:
        async with scripted_client(busy) as client:
            executor = Executor(root=path.parent, client=client, writer=writer, events=Quiet())
            await _run_with_signals(executor, list(plan.items), cast(Any, None))

    anyio.run(main)
    assert posts == ["/v1/videos/generations"]
    assert "a" not in load_lockfile(path.with_suffix(".lock")).shots
