"""Every emulator fault against the real client: what is retried, what is raised, what exists."""

from __future__ import annotations

import mutagen
import pytest

from kling_batch.client import RetryPolicy, Timeouts
from kling_batch.clock import model_seconds
from kling_batch.errors import AmbiguousSubmit, ConnectionFailed, TruncatedDownload

pytestmark = pytest.mark.anyio

BODY = {"model": "kling-o3", "prompt": "a fox runs through snow"}
SUBMIT = "/v1/videos/generations"
# Slow-answer tests: the emulator holds a poll 0.5 s real, the client gives up after 0.15 s.
SLOW_SCALE = 0.001
SLOW = ("slow=first1,on=poll,delay=500",)
SHORT_POLL = Timeouts(poll=0.15)


def statuses(served, **filters):
    return [e.status for e in served.emulator.journal.entries(**filters)]


async def test_server_errors_on_a_poll_are_retried_to_success(serve, connect, render):
    """Two 5xx answers on polls are retried and the render still succeeds."""
    served = serve(faults=("5xx=first2,on=poll",))
    async with connect(served) as client:
        state = await render(client)
    assert state.status == "succeeded"
    polls = statuses(served, method="GET", path=f"/v1/jobs/{state.job_id}")
    assert [s is not None and s >= 500 for s in polls] == [True, True, False]


async def test_server_error_on_a_submit_is_retried_and_creates_one_job(serve, connect):
    """A 503 on submit is a definite refusal: retried, two POSTs, exactly one job."""
    served = serve(faults=("503=first1,on=submit",))
    async with connect(served) as client:
        submission = await client.submit(BODY)
    assert statuses(served, path=SUBMIT) == [503, 200]
    assert [e.job_id for e in served.emulator.journal.submissions()] == [None, submission.job_id]
    assert len(served.emulator.jobs) == 1


async def test_dropped_poll_is_retried(serve, connect, render):
    """A poll whose connection closes without an answer is retried and succeeds."""
    served = serve(faults=("drop=first1,on=poll",))
    async with connect(served) as client:
        state = await render(client)
    polls = served.emulator.journal.entries(method="GET", path=f"/v1/jobs/{state.job_id}")
    assert state.status == "succeeded"
    assert [(e.dropped, e.status) for e in polls] == [(True, None), (False, 200)]


async def test_dropped_poll_every_time_ends_as_connection_failed(serve, connect):
    """When every attempt is dropped the client stops after `max_attempts` with ConnectionFailed."""
    served = serve(faults=("drop=1.0,on=poll",))
    retry = RetryPolicy(max_attempts=3, random=lambda: 1.0)
    async with connect(served, retry=retry) as client:
        submission = await client.submit(BODY)
        with pytest.raises(ConnectionFailed) as info:
            await client.get_job(submission.job_id)
    assert info.value.attempts == 3
    assert len(served.emulator.journal.entries(method="GET")) == 3


async def test_dropped_submit_is_ambiguous_after_one_post(serve, connect):
    """A submit dropped before it was handled raises AmbiguousSubmit after exactly one POST."""
    served = serve(faults=("drop=first1,on=submit",))
    async with connect(served) as client:
        with pytest.raises(AmbiguousSubmit):
            await client.submit(BODY)
    assert len(served.emulator.journal.submissions()) == 1
    assert len(served.emulator.jobs) == 0


async def test_ambiguous_submit_is_raised_after_one_post(serve, connect):
    """A submit handled but never answered raises AmbiguousSubmit and is not sent again."""
    served = serve(faults=("ambiguous=first1",))
    async with connect(served) as client:
        with pytest.raises(AmbiguousSubmit) as info:
            await client.submit(BODY)
    assert info.value.attempts == 1
    assert len(served.emulator.journal.submissions()) == 1


async def test_ambiguous_submit_left_a_job_the_client_can_find(serve, connect):
    """The job behind an AmbiguousSubmit exists, and `list_jobs` shows it."""
    served = serve(faults=("ambiguous=first1",))
    async with connect(served) as client:
        with pytest.raises(AmbiguousSubmit):
            await client.submit(BODY)
        listed = await client.list_jobs()
    (post,) = served.emulator.journal.submissions()
    assert post.job_id is not None
    assert listed is not None
    assert [job.job_id for job in listed] == [post.job_id]


async def test_truncated_download_raises_truncated_download(serve, connect, render, tmp_path):
    """With no retries left, a result cut off mid-body raises TruncatedDownload."""
    served = serve(faults=("truncate=first1",))
    async with connect(served, retry=RetryPolicy(max_attempts=1)) as client:
        state = await render(client)
        with pytest.raises(TruncatedDownload):
            await client.download(state.video_url, tmp_path / "out.mp4")


async def test_download_again_after_truncation_gets_the_whole_file(
    serve, connect, render, tmp_path
):
    """After a TruncatedDownload, calling `download` again writes the complete, playable file."""
    served = serve(faults=("truncate=first1",))
    async with connect(served, retry=RetryPolicy(max_attempts=1)) as client:
        state = await render(client)
        with pytest.raises(TruncatedDownload):
            await client.download(state.video_url, tmp_path / "out.mp4")
        await client.download(state.video_url, tmp_path / "out.mp4")
    assert mutagen.File(tmp_path / "out.mp4").info.length == 5.0


async def test_truncated_download_is_retried_within_one_call(serve, connect, render, tmp_path):
    """With retries allowed, one `download` call survives a truncation: two GETs, one file."""
    served = serve(faults=("truncate=first1",))
    async with connect(served) as client:
        state = await render(client)
        result = await client.download(state.video_url, tmp_path / "out.mp4")
    cdn = [e for e in served.emulator.journal.entries() if e.path.startswith("/cdn/")]
    assert [e.dropped for e in cdn] == [True, False]
    assert result.size == (tmp_path / "out.mp4").stat().st_size


async def test_failed_job_reports_its_code(serve, connect, render):
    """A job the emulator fails reads as failed with error code `content_moderation`."""
    served = serve(faults=("fail=first1",))
    async with connect(served) as client:
        state = await render(client)
    assert (state.status, state.raw_status) == ("failed", "failed")
    assert state.error is not None
    assert state.error.code == "content_moderation"
    assert state.video_url is None


async def test_slow_poll_past_the_timeout_is_retried(serve, connect, render, transport):
    """A poll answered later than the client's read timeout is abandoned and retried."""
    served = serve(faults=SLOW, time_scale=SLOW_SCALE)
    async with connect(served, timeouts=SHORT_POLL, transport=transport) as client:
        state = await render(client)
    # The journal records an answer when it is sent, so the abandoned poll is not in it yet.
    assert state.status == "succeeded"
    assert [method for method, _ in transport.sent] == ["POST", "GET", "GET"]
    assert [a.method for a in transport.answers] == ["POST", "GET"]


async def test_slow_poll_every_time_ends_as_connection_failed(serve, connect):
    """Polls that always outlast the timeout end as ConnectionFailed after every attempt."""
    served = serve(faults=("slow=1.0,on=poll,delay=500",), time_scale=SLOW_SCALE)
    retry = RetryPolicy(max_attempts=2, random=lambda: 1.0)
    async with connect(served, timeouts=SHORT_POLL, retry=retry) as client:
        submission = await client.submit(BODY)
        with pytest.raises(ConnectionFailed) as info:
            await client.get_job(submission.job_id)
    assert info.value.attempts == 2


async def test_storm_answers_429_then_the_request_succeeds(serve, connect):
    """During a 429 storm the client waits it out and its request then succeeds."""
    served = serve(faults=("storm=100",))
    async with connect(served) as client:
        model = await client.get_model()
    codes = statuses(served)
    assert model["id"] == "kling-o3"
    assert codes[-1] == 200
    assert set(codes[:-1]) == {429}
    assert len(codes) >= 2


async def test_storm_wait_is_at_least_the_servers_retry_after(serve, connect, transport):
    """Each wait after a storm 429 is at least the `retry-after-ms` that answer carried."""
    served = serve(faults=("storm=100",))
    async with connect(served, transport=transport) as client:
        await client.get_model()
    refusals = [a for a in transport.answers if a.status == 429]
    asked = [model_seconds(client.clock, int(a.headers["retry-after-ms"]) / 1000) for a in refusals]
    assert refusals
    assert len(client.clock.sleeps) == len(asked)
    assert all(slept >= want for slept, want in zip(client.clock.sleeps, asked, strict=True))
