"""Following a submitted job: asked about, paced by `pacing.JobWatch`, until it ends.

Polling decides nothing about money: it reports the job's end (`JobState` succeeded or
failed) or why it stopped asking (`Lost`: forgotten by the API, unreachable, or past its
deadline), and the executor records what that means.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import anyio

from kling_batch.clock import Clock
from kling_batch.errors import ApiError, JobNotFound, RetryableError, RunFatal
from kling_batch.jobboard import JobBoard, Seat
from kling_batch.lockfile import Entry
from kling_batch.pacing import JobWatch, measured_speed
from kling_batch.payloads import JobState, is_known_status

JOB_RETENTION = timedelta(hours=1)  # job state after completion (API reference §3.1)


class JobReader(Protocol):
    """The one API call this module needs."""

    async def get_job(self, job_id: str, poll_url: str | None = None) -> JobState: ...


async def follow_job(
    board: JobBoard,
    client: JobReader,
    entry: Entry,
    watch: JobWatch,
    progress: Callable[[float | None], None],
) -> JobState | Lost:
    """`poll_job` through the job board: each poll joins a round of the API's job list,
    and a round that shows the job ended wakes it at once. Polls the job on its own when
    the list does not show it (or the API has none), and to complete a list line of a
    finished job that lacks its result URL."""
    assert entry.job_id is not None
    if not board.open:
        return await poll_job(client, entry, watch, progress)
    follower = board.follow(entry.job_id)
    lines = _Lines()
    try:
        while True:
            listed = await _next_reading(board, follower, watch, progress)
            job: JobState | Lost | None = listed
            if not lines.trusted(listed):
                # A 404 while the list shows the job is a hiccup, never a forgotten job.
                job = await _read(client, entry, watch, listed=listed is not None)
                if isinstance(job, JobState) and job.status == "pending":
                    watch.answered(job.progress)
                    progress(job.progress)
            if job is None:
                continue  # unreachable for now: ask again later
            if isinstance(job, Lost) or job.status != "pending":
                return job
            if watch.overdue:
                return Lost(False, overdue_detail(entry.job_id, watch, job))
    finally:
        board.leave(entry.job_id)


_STALE_LINES = 3  # list lines in a row that say the same before the job is asked itself


class _Lines:
    """Whether the job list's line of a job is enough, or the job must be asked on its
    own: when the list does not show it, shows it finished without its video URL or its
    bill (the download needs one, the summary and `spend` the other), failed without its
    bill (a job that failed after its video was made may be billed), with a status word
    kling-batch does not know, or the same status
    and progress `_STALE_LINES` times in a row (the list's shape is provisional: a list
    that does not refresh a job must not keep it waiting until its deadline)."""

    def __init__(self) -> None:
        self._last: tuple[str, float | None] | None = None
        self._same = 0

    def trusted(self, line: JobState | None) -> bool:
        """True when `line` can stand for the job's own answer."""
        if line is None or not is_known_status(line.raw_status):
            return False
        if line.status == "succeeded":  # the download needs its URL, the summary its bill
            return bool(line.video_url) and line.billed_usd is not None
        if line.status == "failed":  # a job failed after its video may be billed: ask it
            return line.billed_usd is not None
        seen = (line.raw_status, line.progress)
        self._same = self._same + 1 if seen == self._last else 0
        self._last = seen
        if self._same + 1 >= _STALE_LINES:
            self._last, self._same = None, 0  # counted afresh after the job's own answer
            return False
        return True


async def _next_reading(
    board: JobBoard, follower: Seat, watch: JobWatch, progress: Callable[[float | None], None]
) -> JobState | None:
    """Wait until the job is due, or a round shows it ended: that line (no request), else
    its line in a round asked for now (None if the list does not show it).

    Each round read meanwhile is taken as a reading at once and the wait planned afresh:
    the second reading of a rendering job measures its speed, so its due moves to its
    predicted end, and rounds gather on it (`JobBoard._gather`), long before the wait
    planned without it would have ended. A line that tells nothing new (the status and
    progress of the one before) goes to the caller instead, as does any once the job is
    overdue: rounds read often for other jobs must not keep a job whose list line never
    changes from its own poll (`_Lines`) or its deadline."""
    before: tuple[str, float | None] | None = None
    while True:
        delay = watch.delay()
        follower.due = board.clock.monotonic() + delay
        follower.predicted = measured_speed(watch.readings) is not None
        if not await _due(board.clock, delay, follower.news):
            break
        seen = _apply(follower, watch, progress)
        if seen is None:
            continue
        said = (seen.raw_status, seen.progress)
        if seen.status != "pending" or said == before or watch.overdue:
            return seen
        before = said
    seen = _apply(follower, watch, progress)
    if seen is not None:
        return seen
    listed = await board.ask(follower.job_id) if board.open else None
    return _apply(follower, watch, progress) or listed


def _apply(
    follower: Seat, watch: JobWatch, progress: Callable[[float | None], None]
) -> JobState | None:
    """Take the job's lines read so far as readings; the line that ends it, else the
    last one (None when there is none)."""
    last = None
    for line in follower.take():
        if line.job.status != "pending":
            return line.job
        watch.answered(line.job.progress, at=line.at)
        progress(line.job.progress)
        last = line.job
    return last


async def _due(clock: Clock, delay: float, news: anyio.Event) -> bool:
    """Sleep `delay` model seconds, or less if `news` is set meanwhile: True if it was."""
    if news.is_set():
        return True
    async with anyio.create_task_group() as group:

        async def alarm() -> None:
            await clock.sleep(delay)
            group.cancel_scope.cancel()

        group.start_soon(alarm)
        await news.wait()
        group.cancel_scope.cancel()
    return news.is_set()


@dataclass(frozen=True)
class Lost:
    """Polling stopped before the job ended: the API `forgotten` it, or it cannot be asked
    now (the job stays recorded and the next run asks again)."""

    forgotten: bool
    detail: str = ""


async def poll_job(
    client: JobReader,
    entry: Entry,
    watch: JobWatch,
    progress: Callable[[float | None], None],
) -> JobState | Lost:
    """Ask about the entry's job, paced by `watch`, until it succeeds, fails, or answers
    still pending past its deadline (`Lost`, saying how it answered). An unreachable job
    is bounded by the watch's patience instead."""
    assert entry.job_id is not None
    while True:
        await watch.wait()
        job = await _read(client, entry, watch)
        if job is None:
            continue  # unreachable for now: ask again later
        if isinstance(job, Lost) or job.status != "pending":
            return job
        watch.answered(job.progress)
        progress(job.progress)
        if watch.overdue:
            return Lost(False, overdue_detail(entry.job_id, watch, job))


def overdue_detail(job_id: str, watch: JobWatch, last: JobState) -> str:
    """Why polling a job stopped at its deadline, and what happens next."""
    if is_known_status(last.raw_status):
        answer = f"is still {last.raw_status!r}"
    else:
        word = last.raw_status[:40] or "no status"
        answer = f"answers {word!r}, a status kling-batch does not know"
    deadline = watch.deadline or 0.0
    return (
        f"job {job_id} {answer} after {watch.elapsed:.0f} s, past its deadline of "
        f"{deadline:.0f} s; it stays submitted and the next run asks again at no new cost "
        "(--job-timeout SECONDS to wait longer)"
    )


async def _read(
    client: JobReader, entry: Entry, watch: JobWatch, *, listed: bool = False
) -> JobState | Lost | None:
    """One poll: the job; None to ask again later; or `Lost`. `listed`: the API's job list
    shows the job right now, so a 404 from its own GET cannot mean it was forgotten."""
    assert entry.job_id is not None
    try:
        return await client.get_job(entry.job_id, entry.poll_url)
    except JobNotFound as exc:
        if not listed and may_be_forgotten(watch.clock, entry):
            return Lost(forgotten=True)
        # The API keeps a job an hour after it completes: a 404 sooner is a hiccup, not a
        # lost job. Ask again later rather than re-pay.
        trouble: ApiError = exc
    except RetryableError as exc:
        trouble = exc
    except RunFatal:
        raise
    except ApiError as exc:
        return Lost(False, f"cannot poll job {entry.job_id} ({exc}); rerun to resume it")
    if watch.unreachable():
        return Lost(False, f"job {entry.job_id} unreachable ({trouble}); rerun to resume it")
    return None


def may_be_forgotten(clock: Clock, entry: Entry) -> bool:
    """True once a job could have completed and been dropped (kept 1 h after completion)."""
    if entry.submitted_at is None:
        return True
    return model_age(clock, entry.submitted_at) > JOB_RETENTION.total_seconds()


def model_age(clock: Clock, since: datetime) -> float:
    """Model seconds since a recorded wall-clock time (0 if the clock went backwards)."""
    return max((clock.now() - since).total_seconds(), 0.0) / clock.time_scale
