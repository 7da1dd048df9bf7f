"""`polling.follow_job` through the job board: one list read serves many jobs, and a job
the list cannot serve is polled on its own (issue 13)."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from types import SimpleNamespace
from typing import cast

import anyio
import pytest

from kling_batch.clock import VirtualClock
from kling_batch.errors import AuthError, JobNotFound, ServerError
from kling_batch.jobboard import JobBoard
from kling_batch.joblist import JobPage, NextPage
from kling_batch.lockfile import Entry
from kling_batch.pacing import JobWatch, PollPacing
from kling_batch.payloads import JobState
from kling_batch.polling import Lost, _Lines, follow_job

URL = "https://cdn.example.com/out.mp4"
BILL = Decimal("0.84")


class FakeApi:
    """Jobs that end at set model times; a list that shows some of them (or fails, or is
    not offered); every request counted."""

    def __init__(
        self, clock: VirtualClock, ends: dict[str, float], *, listed: set[str] | None = None
    ) -> None:
        self.clock = clock
        self.ends = ends
        self.listed = set(ends) if listed is None else listed
        self.lists = 0
        self.gets: list[str] = []
        self.offered = True
        self.failing = False
        self.with_url = True
        self.with_bill = True  # list lines of ended jobs carry the bill
        self.list_word: str | None = None  # every list line says this instead (frozen)
        self.get_404 = False  # every job's own GET answers 404 (a lagging replica)
        self.list_refreshes_end = False  # a frozen list still shows each job's end
        self.forbidden = False
        self.fails = False  # jobs end failed (after their video: billed)

    def state(self, job_id: str, *, listing: bool) -> JobState:
        now, end = self.clock.monotonic(), self.ends[job_id]
        if now < end:
            return JobState(job_id, "pending", "processing", progress=round(now / end, 3))
        url = URL if self.with_url or not listing else None
        bill = BILL if self.with_bill or not listing else None
        if self.fails:
            return JobState(job_id, "failed", "failed", progress=1.0, billed_usd=bill)
        return JobState(
            job_id, "succeeded", "completed", progress=1.0, video_url=url, billed_usd=bill
        )

    def line(self, job_id: str) -> JobState:
        frozen = self.list_word is not None
        if frozen and not (self.list_refreshes_end and self.clock.monotonic() >= self.ends[job_id]):
            return JobState(job_id, "pending", str(self.list_word), progress=0.0)
        return self.state(job_id, listing=True)

    async def get_job(self, job_id: str, poll_url: str | None = None) -> JobState:
        self.gets.append(job_id)
        if self.get_404:
            raise JobNotFound("no such job", status=404)
        return self.state(job_id, listing=False)

    async def list_jobs_page(
        self, *, status: str | None = None, limit: int = 100, page: NextPage | None = None
    ) -> JobPage | None:
        self.lists += 1
        if not self.offered:
            return None
        if self.failing:
            raise ServerError("503 from the list")
        if self.forbidden:
            raise AuthError("this key may not list jobs", status=403)
        jobs = [self.line(job_id) for job_id in sorted(self.listed)]
        return JobPage(jobs, ended=True)


def follow_all(api: FakeApi, window: float = 3.0) -> dict[str, JobState | Lost]:
    """Follow every job of `api` at once through one board; each one's end."""
    board = JobBoard(api, window=window)
    pacer = PollPacing(list_window=window)
    ended: dict[str, JobState | Lost] = {}

    async def one(job_id: str) -> None:
        entry = cast(Entry, SimpleNamespace(job_id=job_id, poll_url=None, submitted_at=None))
        watch = JobWatch(api.clock, pacer, tier="standard", seconds=Decimal(5), patience=1800.0)
        ended[job_id] = await follow_job(board, api, entry, watch, lambda _: None)

    async def main() -> None:
        async with anyio.create_task_group() as group:
            for job_id in api.ends:
                group.start_soon(one, job_id)

    anyio.run(main)
    return ended


def test_one_list_read_serves_every_job_in_flight() -> None:
    """Jobs ending together are all seen ended by list reads: no job is asked about alone."""
    clock = VirtualClock()
    api = FakeApi(clock, {f"job_{n}": 60.0 + n for n in range(8)})
    ended = follow_all(api)
    assert all(isinstance(job, JobState) and job.video_url == URL for job in ended.values())
    assert api.gets == []
    assert api.lists < 8


def test_a_job_the_list_does_not_show_is_polled_on_its_own() -> None:
    """A job missing from the list's page is asked about with its own request."""
    clock = VirtualClock()
    api = FakeApi(clock, {"job_a": 50.0, "job_b": 52.0}, listed={"job_a"})
    ended = follow_all(api)
    assert {job_id: job.status for job_id, job in ended.items() if isinstance(job, JobState)} == {
        "job_a": "succeeded",
        "job_b": "succeeded",
    }
    assert "job_a" not in api.gets
    assert "job_b" in api.gets


def test_a_listed_end_without_its_bill_is_fetched() -> None:
    """A completed job whose list line does not say what it billed is asked on its own:
    the bill is what the run summary and `spend` report."""
    clock = VirtualClock()
    api = FakeApi(clock, {"job_a": 40.0})
    api.with_bill = False
    ended = follow_all(api)
    assert isinstance(ended["job_a"], JobState) and ended["job_a"].billed_usd == BILL
    assert api.gets == ["job_a"]


def test_a_listed_failure_without_its_bill_is_fetched() -> None:
    """A job failed after its video was made may be billed: a list line saying it failed
    without its bill is asked on its own, and the bill it answers with is kept."""
    clock = VirtualClock()
    api = FakeApi(clock, {"job_a": 40.0})
    api.fails, api.with_bill = True, False
    ended = follow_all(api)
    assert isinstance(ended["job_a"], JobState) and ended["job_a"].status == "failed"
    assert ended["job_a"].billed_usd == BILL
    assert api.gets == ["job_a"]


def test_a_listed_end_without_its_result_url_is_fetched() -> None:
    """A completed job whose list line lacks the result URL is fetched on its own."""
    clock = VirtualClock()
    api = FakeApi(clock, {"job_a": 40.0})
    api.with_url = False
    ended = follow_all(api)
    assert isinstance(ended["job_a"], JobState) and ended["job_a"].video_url == URL
    assert api.gets == ["job_a"]


@pytest.mark.parametrize("list_answer", ["absent", "forbidden"])
def test_no_job_list_means_polling_each_job_as_before(list_answer: str) -> None:
    """An API without a list (404), or one whose list this key may not read (403: the run
    goes on), is probed once; every job is then polled on its own."""
    clock = VirtualClock()
    api = FakeApi(clock, {"job_a": 40.0, "job_b": 45.0})
    api.offered = list_answer != "absent"
    api.forbidden = list_answer == "forbidden"
    ended = follow_all(api)
    assert all(isinstance(job, JobState) and job.status == "succeeded" for job in ended.values())
    assert api.lists == 1
    assert set(api.gets) == {"job_a", "job_b"}


def test_a_failing_list_falls_back_to_own_polls() -> None:
    """While the list answers errors each job is polled on its own; the board then closes."""
    clock = VirtualClock()
    api = FakeApi(clock, {"job_a": 200.0})
    api.failing = True
    ended = follow_all(api)
    assert isinstance(ended["job_a"], JobState) and ended["job_a"].status == "succeeded"
    assert api.lists == 3
    assert api.gets


def test_list_lines_that_never_change_are_checked_with_the_job_itself() -> None:
    """A list that keeps saying "queued" (its shape is provisional) does not keep a job
    waiting until its deadline: after a few identical lines the job is asked on its own."""
    clock = VirtualClock()
    api = FakeApi(clock, {"job_a": 60.0})
    api.list_word = "queued"
    ended = follow_all(api)
    assert isinstance(ended["job_a"], JobState) and ended["job_a"].status == "succeeded"
    assert api.gets and clock.monotonic() < 300.0


def test_list_lines_with_an_unknown_status_are_checked_with_the_job_itself() -> None:
    """A status word kling-batch does not know is never read as the job's answer."""
    clock = VirtualClock()
    api = FakeApi(clock, {"job_a": 60.0})
    api.list_word = "weird"
    ended = follow_all(api)
    assert isinstance(ended["job_a"], JobState) and ended["job_a"].status == "succeeded"
    assert api.gets[0] == "job_a" and clock.monotonic() < 300.0


def test_a_job_the_list_shows_is_never_forgotten_on_a_404_of_its_own() -> None:
    """The list keeps showing a job (the same line, so it is also asked on its own) while
    its own GET answers 404: a hiccup, not a job the API forgot. The job is followed to
    the end the list shows, never recorded as lost (that would price a second render)."""
    clock = VirtualClock()
    api = FakeApi(clock, {"job_a": 120.0})
    api.list_word, api.get_404, api.list_refreshes_end = "queued", True, True
    ended = follow_all(api)  # the entries carry no submission time: "over an hour old"
    assert isinstance(ended["job_a"], JobState) and ended["job_a"].status == "succeeded"
    assert api.gets  # asked on its own, answered 404, and still not given up


class SlowList(FakeApi):
    """A list read that waits `turn` model seconds for its turn in the request budget, is
    taken then, and is answered `after` seconds later."""

    def __init__(self, clock: VirtualClock, ends: dict[str, float], *, turn: float, after: float):
        super().__init__(clock, ends)
        self.turn, self.after = turn, after

    async def list_jobs_page(
        self, *, status: str | None = None, limit: int = 100, page: NextPage | None = None
    ) -> JobPage | None:
        self.lists += 1
        await self.clock.sleep(self.turn)
        if self.failing:
            raise ServerError("503 from the list")
        if self.forbidden:
            raise AuthError("this key may not list jobs", status=403)
        jobs = [self.line(job_id) for job_id in sorted(self.listed)]
        await self.clock.sleep(self.after)
        return JobPage(jobs, ended=True)


def ask_at(board: JobBoard, asks: dict[str, float]) -> dict[str, JobState | None]:
    """After the board's first read (its probe), each job asks at its model time; what
    the board answered each."""
    answers: dict[str, JobState | None] = {}

    async def ask(job_id: str, at: float) -> None:
        await board.clock.sleep(at - board.clock.monotonic())
        answers[job_id] = await board.ask(job_id)

    async def main() -> None:
        await board.ask("probe")
        async with anyio.create_task_group() as group:
            for job_id, at in asks.items():
                group.start_soon(ask, job_id, at)

    anyio.run(main)
    return answers


def test_a_job_due_while_a_read_is_under_way_takes_that_read() -> None:
    """job_b falls due while job_a's read waits its turn; that read, taken after job_b
    ended, tells it so: no second read for the same news."""
    clock = VirtualClock()
    api = SlowList(clock, {"job_a": 10.0, "job_b": 10.5}, turn=2.0, after=0.5)
    answers = ask_at(JobBoard(api, window=3.0), {"job_a": 11.0, "job_b": 12.0})
    assert {job_id: job.status if job else None for job_id, job in answers.items()} == {
        "job_a": "succeeded",
        "job_b": "succeeded",
    }
    assert api.lists == 2  # the probe and one round


def test_a_full_page_under_way_that_does_not_show_the_job_sends_it_to_its_own_poll() -> None:
    """The read job_b waited for holds a full page of newer jobs: job_b may be on a later
    page, so it is told at once to ask on its own, as a round of its own would tell it."""
    clock = VirtualClock()
    newer = {f"job_{n:03d}": 50.0 for n in range(100)}
    api = SlowList(clock, {"job_a": 10.0, "job_b": 10.5, **newer}, turn=2.0, after=0.5)
    api.listed = {"job_a", *newer}
    answers = ask_at(JobBoard(api, window=3.0), {"job_a": 11.0, "job_b": 12.0})
    assert answers["job_a"] is not None and answers["job_a"].status == "succeeded"
    assert answers["job_b"] is None
    assert api.lists == 2  # the probe and the one read
    assert clock.monotonic() == 13.5


@pytest.mark.parametrize("trouble", ["failing", "forbidden"])
def test_a_read_under_way_that_fails_answers_its_waiters_at_once(trouble: str) -> None:
    """The read job_b waited for failed (a 503 after the client's retries, or a 403 that
    closes the board): job_b is told the list cannot answer, to ask on its own now, not
    sent to wait through another read."""
    clock = VirtualClock()
    api = SlowList(clock, {"job_a": 10.0, "job_b": 10.5}, turn=2.0, after=0.5)
    board = JobBoard(api, window=3.0)

    async def main() -> dict[str, JobState | None]:
        await board.ask("job_a")  # the probe
        setattr(api, trouble, True)
        answers: dict[str, JobState | None] = {}

        async def ask(job_id: str, at: float) -> None:
            await clock.sleep(at - clock.monotonic())
            answers[job_id] = await board.ask(job_id)

        async with anyio.create_task_group() as group:
            group.start_soon(ask, "job_a", 11.0)
            group.start_soon(ask, "job_b", 12.0)
        return answers

    assert anyio.run(main) == {"job_a": None, "job_b": None}
    assert api.lists == 2  # the probe and the read that failed
    assert clock.monotonic() == 13.0  # both told when the read failed


def test_a_read_under_way_that_does_not_show_the_job_is_followed_by_a_round_of_its_own() -> None:
    """A read taken before job_b was submitted cannot answer for it: job_b gets a round of
    its own, never a None that would send it to its own GET."""
    clock = VirtualClock()
    api = SlowList(clock, {"job_a": 10.0, "job_b": 13.0}, turn=0.5, after=2.0)
    api.listed = {"job_a"}
    board = JobBoard(api, window=3.0)
    ask = board.ask

    async def submitted_then_asks(job_id: str) -> JobState | None:
        if job_id == "job_b":
            api.listed.add(job_id)  # at 12.0: after job_a's read was taken at 11.5
        return await ask(job_id)

    board.ask = submitted_then_asks  # type: ignore[method-assign]
    answers = ask_at(board, {"job_a": 11.0, "job_b": 12.0})
    assert answers["job_b"] is not None and answers["job_b"].status == "succeeded"
    assert api.lists == 3


@pytest.mark.parametrize("due", [10.0, 9.99])
def test_a_round_waits_for_the_next_predicted_end_of_another_job_only(due: float) -> None:
    """job_a, due (on time, or it woke a little late), starts a round: the round waits for
    job_b's predicted end so one read finds both ended, but not also for job_c's, further
    than half the window after it: two jobs would wait for it."""
    clock = VirtualClock()
    api = FakeApi(clock, {"job_a": 9.9, "job_b": 14.0, "job_c": 19.5})
    board = JobBoard(api, window=10.0)
    for job_id, at in {"job_a": due, "job_b": 14.0, "job_c": 19.5}.items():
        seat = board.follow(job_id)
        seat.due, seat.predicted = at, True
    answers = ask_at(board, {"job_a": 10.0})
    assert clock.monotonic() == 14.0  # the round was read at job_b's end
    assert answers["job_a"] is not None and answers["job_a"].status == "succeeded"
    assert [line.job.status for line in board.follow("job_b").lines][-1] == "succeeded"
    assert api.lists == 2


def test_ends_close_together_share_one_read() -> None:
    """Each end predicted soon after the one before (within the window shared among the
    jobs that would wait for it) joins the round: one read finds all three ended."""
    clock = VirtualClock()
    api = FakeApi(clock, {"job_a": 9.9, "job_b": 14.0, "job_c": 16.0})
    board = JobBoard(api, window=10.0)
    for job_id, at in {"job_a": 10.0, "job_b": 14.0, "job_c": 16.0}.items():
        seat = board.follow(job_id)
        seat.due, seat.predicted = at, True
    ask_at(board, {"job_a": 10.0})
    assert clock.monotonic() == 16.0  # the round was read at job_c's end
    assert [line.job.status for line in board.follow("job_c").lines][-1] == "succeeded"
    assert api.lists == 2


def noticed_among_rounds(api: FakeApi, rounds: Sequence[float]) -> float:
    """When following job_a alone noticed its end, while other jobs asked the board for
    rounds at the model times `rounds`."""
    clock = api.clock
    board = JobBoard(api, window=3.0)
    noticed: list[float] = []

    async def follow() -> None:
        entry = cast(Entry, SimpleNamespace(job_id="job_a", poll_url=None, submitted_at=None))
        watch = JobWatch(clock, PollPacing(), tier="standard", seconds=Decimal(5), patience=60.0)
        job = await follow_job(board, api, entry, watch, lambda _: None)
        assert isinstance(job, JobState) and job.status == "succeeded"
        noticed.append(clock.monotonic())

    async def others_read() -> None:
        for at in rounds:
            await clock.sleep(at - clock.monotonic())
            await board.ask("job_other")

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(follow)
            group.start_soon(others_read)

    anyio.run(main)
    assert noticed
    return noticed[0]


def test_progress_read_for_other_jobs_brings_a_job_s_poll_to_its_predicted_end() -> None:
    """Rounds other jobs asked for show job_a rendering twice: its next poll moves from
    its first look (30 s) to its predicted end, so its end is noticed on time."""
    api = FakeApi(VirtualClock(), {"job_a": 10.0})
    assert noticed_among_rounds(api, [2.0, 4.0]) < 11.0
    assert api.lists == 3  # the two rounds of the others, and job_a's own at its end


def test_a_repeated_list_line_is_checked_once_every_few_lines() -> None:
    """After a check with the job's own GET, the count of identical lines starts again."""
    lines = _Lines()
    same = JobState("job_a", "pending", "queued", progress=0.0)
    assert [lines.trusted(same) for _ in range(7)] == [True, True, False, True, True, False, True]


def test_a_frozen_list_read_often_for_other_jobs_still_sends_a_job_to_its_own_poll() -> None:
    """Rounds other jobs ask for every 2 s keep showing job_a "queued" with no progress:
    job_a is still asked on its own after a few such lines, and its end noticed soon after
    it comes, not once the other jobs stop reading."""
    api = FakeApi(VirtualClock(), {"job_a": 20.0})
    api.list_word = "queued"
    assert noticed_among_rounds(api, [2.0 * n for n in range(1, 301)]) < 120.0
    assert "job_a" in api.gets
