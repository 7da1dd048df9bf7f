"""Looking for an unanswered submission's job: when not finding it proves nothing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio

from kling_batch import kling_o3
from kling_batch.adoption import JobFinder, Look
from kling_batch.clock import ScaledClock
from kling_batch.joblist import JobPage, NextPage
from kling_batch.lockfile import Charge, Lockfile, LockWriter, new_entry
from kling_batch.payloads import JobState
from kling_batch.plan import build_plan

ONE = '[[shots]]\nid = "a"\nprompt = "a lighthouse"\n'
SENT = datetime.now(UTC) - timedelta(seconds=30)


def job(n: int, *, minutes_before: float = 0, request: dict[str, Any] | None = None) -> JobState:
    """A listed job created `minutes_before` the submission."""
    created = SENT - timedelta(minutes=minutes_before)
    return JobState(
        f"j{n}",
        "pending",
        "processing",
        request=request or {"prompt": f"other {n}"},
        created_at=created,
    )


class Pages:
    """A job list answering `pages` in turn, each pointing on to the next."""

    def __init__(self, *pages: list[JobState], ended: bool = True) -> None:
        self.clock = ScaledClock(1.0)
        self.pages = list(pages)
        self.asked: list[NextPage | None] = []
        self.ended = ended

    async def list_jobs_page(self, *, page: NextPage | None = None, **_: Any) -> JobPage:
        self.asked.append(page)
        index = min(len(self.asked), len(self.pages)) - 1
        last = index == len(self.pages) - 1
        following = None if last else NextPage(params={"after": f"p{index + 1}"})
        return JobPage(self.pages[index], ended=last and self.ended, next=following)


def look(project: Callable[..., Path], lister: Pages) -> Look:
    """Look for render `a`, recorded uncertain, sent at SENT."""
    plan = build_plan(project(ONE), now=SENT)
    render = plan.items[0].render
    charge = Charge(fingerprint=render.fingerprint, submitted_at=SENT, cost_usd=render.cost)
    entry = new_entry(render, "uncertain", updated_at=SENT, submissions=[charge])
    writer = LockWriter(plan.lock_path, Lockfile(shots={"a": entry}))
    return anyio.run(JobFinder(lister, writer).find, entry)


def test_reading_stops_once_the_list_is_older_than_the_submission(project) -> None:
    """A page reaching past the submission (and its clock skew) ends the look: complete."""
    lister = Pages([job(1), job(2, minutes_before=6)], [job(3, minutes_before=30)])
    found = look(project, lister)
    assert (found.job, found.complete, len(lister.asked)) == (None, True, 1)


def test_a_page_repeated_instead_of_the_next_proves_nothing(project) -> None:
    """An API ignoring the cursor answers the first page again: the look is not complete."""
    page = [job(1), job(2)]
    found = look(project, Pages(page, page))
    assert not found.complete and "same page again" in (found.gap or "")


def test_a_list_not_newest_first_is_read_to_its_end(project) -> None:
    """A list sorted oldest first: its first page reaches back past the submission, yet our
    job is on the next page. A job newer than one before it shows the order; the look reads
    on and finds it, instead of calling itself complete and letting the render be resent."""
    ours = job(9, request=our_request(project))
    lister = Pages([job(1, minutes_before=40), job(2, minutes_before=20)], [job(3), ours])
    found = look(project, lister)
    assert found.job is not None and found.job.job_id == "j9"
    assert len(lister.asked) == 2


def test_jobs_listed_without_their_request_prove_nothing(project) -> None:
    """A list that does not echo requests cannot rule out that one job is ours."""
    opaque = JobState("j9", "pending", "processing", created_at=SENT)
    found = look(project, Pages([job(1), opaque]))
    assert not found.complete and "does not say what 1 job(s)" in (found.gap or "")


def our_request(project: Callable[..., Path]) -> dict[str, Any]:
    """The request render `a` sends."""
    return dict(build_plan(project(ONE), now=SENT).items[0].render.body)


def test_our_job_echoed_with_whole_numbers_as_floats_and_nulls_is_found(project) -> None:
    """The list echoes our request as the API holds it (`duration` 5.0, unset fields null):
    it is still our job, adopted, not proof that none was made."""
    body = our_request(project)
    echoed = {**body, "duration": float(body["duration"]), "negative_prompt": None}
    found = look(project, Pages([job(1), job(2, request=echoed)]))
    assert found.job is not None and found.job.job_id == "j2"


def test_a_job_of_our_prompt_whose_request_reads_otherwise_proves_nothing(project) -> None:
    """The list shows a job since the submission with our prompt but a request written
    otherwise (a field the API filled in itself, say): it may be ours, so the look is not
    complete and `--resubmit-uncertain` sends nothing again."""
    echoed = {**our_request(project), "sound_effects": "auto"}
    found = look(project, Pages([job(1), job(2, request=echoed)]))
    assert found.job is None and not found.complete and not found.may_resend("look")
    assert "same prompt" in (found.gap or "")


class Live:
    """A job list that shows whatever jobs it holds now, in one page."""

    def __init__(self, jobs: list[JobState]) -> None:
        self.clock = ScaledClock(1.0)
        self.jobs = jobs
        self.reads = 0

    async def list_jobs_page(self, **_: Any) -> JobPage:
        self.reads += 1
        return JobPage(list(self.jobs), ended=True)


def test_a_submission_made_after_the_list_was_read_is_looked_for_afresh(project) -> None:
    """One look reads the list; a submission made later in the run (a dead teammate's
    claim taken over) is looked for in the list read again, not in the pages of the
    first look, which cannot show it: else the look would call itself complete, and
    `--resubmit-uncertain` would pay for the render a second time."""
    two = ONE + '[[shots]]\nid = "b"\nprompt = "a harbour"\n'
    plan = build_plan(project(two), now=SENT)
    first, later = (item.render for item in plan.items)
    charge = Charge(fingerprint=first.fingerprint, submitted_at=SENT, cost_usd=first.cost)
    entry = new_entry(first, "uncertain", updated_at=SENT, submissions=[charge])
    lister = Live([job(1, minutes_before=60)])
    finder = JobFinder(lister, LockWriter(plan.lock_path, Lockfile(shots={"a": entry})))
    assert anyio.run(finder.find, entry).complete  # a's look: read once, nothing there
    sent = datetime.now(UTC)
    body = dict(later.body)
    lister.jobs.insert(0, JobState("j-b", "pending", "queued", request=body, created_at=sent))
    charge = Charge(
        fingerprint=later.fingerprint,
        submitted_at=sent,
        cost_usd=later.cost,
        sent=kling_o3.sent_digest(body),
    )
    entry_b = new_entry(later, "uncertain", updated_at=sent, submissions=[charge])
    found = anyio.run(finder.find, entry_b)
    assert found.job is not None and found.job.job_id == "j-b"
    assert lister.reads == 2
