"""Submit, poll and download: the happy paths of the real client against the emulator."""

from __future__ import annotations

import hashlib
from decimal import Decimal

import av
import mutagen
import pytest

from kling_batch.emulator import Latency
from kling_batch.errors import JobNotFound, ResultExpired, ShotRejected

pytestmark = pytest.mark.anyio

MULTI_SCENE = "5s: a fox runs through snow | 4s: close-up of the fox looking at camera"
DAY = 24 * 3600.0


async def test_multi_scene_render_downloads_an_mp4_as_long_as_its_scenes(
    serve, connect, render, tmp_path
):
    """A `5s: … | 4s: …` prompt, polled through queue and render, downloads a 9-second MP4."""
    served = serve(latency=Latency.realistic(), time_scale=0.001)
    async with connect(served) as client:
        state = await render(client, prompt=MULTI_SCENE)
        assert state.status == "succeeded"
        await client.download(state.video_url, tmp_path / "fox.mp4")
    assert mutagen.File(tmp_path / "fox.mp4").info.length == 9.0


async def test_polling_sees_the_job_pending_before_it_succeeds(serve, connect, render):
    """With realistic latency the client polls pending states before the final one."""
    served = serve(latency=Latency.realistic(), time_scale=0.003)
    async with connect(served) as client:
        state = await render(client, prompt=MULTI_SCENE)
    polls = served.emulator.journal.entries(method="GET", path=f"/v1/jobs/{state.job_id}")
    assert state.status == "succeeded"
    assert len(polls) > 1


async def test_duration_without_prefixes_sets_each_scene(served, connect, render, tmp_path):
    """Two unprefixed scenes at `duration` 4 give an 8-second video."""
    async with connect(served) as client:
        state = await render(client, prompt="a harbour at dawn | boats leave", duration=4)
        await client.download(state.video_url, tmp_path / "harbour.mp4")
    assert mutagen.File(tmp_path / "harbour.mp4").info.length == 8.0


async def test_portrait_request_downloads_a_portrait_video(served, connect, render, tmp_path):
    """`aspect_ratio` 9:16 gives a video taller than it is wide, lasting the requested 6 s."""
    async with connect(served) as client:
        state = await render(client, aspect_ratio="9:16", duration=6)
        await client.download(state.video_url, tmp_path / "tall.mp4")
    with av.open(str(tmp_path / "tall.mp4")) as container:
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
    assert width * 16 == height * 9
    assert mutagen.File(tmp_path / "tall.mp4").info.length == 6.0


async def test_download_hash_and_size_match_the_file_on_disk(served, connect, render, tmp_path):
    """`Download` reports the size and sha256 of exactly the bytes written."""
    async with connect(served) as client:
        state = await render(client)
        result = await client.download(state.video_url, tmp_path / "out.mp4")
    data = (tmp_path / "out.mp4").read_bytes()
    assert (result.size, result.sha256) == (len(data), "sha256:" + hashlib.sha256(data).hexdigest())


async def test_completed_job_reports_its_cost(served, connect, render):
    """The job's billing block is read as `billed_usd` and matches the emulator's ledger."""
    async with connect(served) as client:
        state = await render(client, model_tier="standard", duration=5, sound=False)
    (charge,) = served.emulator.ledger.entries()
    assert state.billed_usd == charge.amount == Decimal("0.84")


@pytest.mark.parametrize("poll_url_style", ["absolute", "relative", "absent", "location"])
async def test_every_poll_url_style_polls_the_right_job(serve, connect, render, poll_url_style):
    """Absolute, relative and missing `poll_url` (with a 202 submit), and a job named by the
    202's Location alone, all poll `/v1/jobs/{id}`."""
    served = serve(poll_url_style=poll_url_style, submit_status=202)
    async with connect(served) as client:
        state = await render(client)
    assert state.status == "succeeded"
    assert {e.path for e in served.emulator.journal.entries(method="GET")} == {
        f"/v1/jobs/{state.job_id}"
    }


async def test_get_model_returns_the_kling_o3_schema(served, connect):
    """`get_model` reads the model description with its price rows."""
    async with connect(served) as client:
        model = await client.get_model()
    assert model["id"] == "kling-o3"
    assert len(model["pricing_rows"]) == 7


async def test_unknown_model_is_rejected_with_its_code(served, connect):
    """`get_model` of an unknown id is a ShotRejected 404 `model_not_found`, not retried."""
    async with connect(served) as client:
        with pytest.raises(ShotRejected) as info:
            await client.get_model("kling-o9")
    assert (info.value.status, info.value.code, info.value.attempts) == (404, "model_not_found", 1)


async def test_list_jobs_returns_submitted_jobs_newest_first(served, connect):
    """`list_jobs` finds every job this account submitted, newest first."""
    async with connect(served) as client:
        ids = [(await client.submit({**_body(), "seed": n})).job_id for n in range(3)]
        listed = await client.list_jobs()
    assert listed is not None
    assert [job.job_id for job in listed] == ids[::-1]


async def test_cancelled_job_reads_as_failed_and_is_not_billed(serve, connect):
    """A job cancelled while queued reads `cancelled` (normalised to failed) and costs nothing."""
    served = serve(latency=Latency.realistic(), time_scale=1.0)
    async with connect(served) as client:
        submission = await client.submit(_body())
        cancelled = await client.cancel_job(submission.job_id)
        served.emulator.advance(3000)
        later = await client.get_job(submission.job_id)
    assert cancelled is not None
    assert (cancelled.status, cancelled.raw_status) == ("failed", "cancelled")
    assert later.raw_status == "cancelled"
    assert served.emulator.ledger.entries() == []


async def test_job_past_its_retention_is_not_found(served, connect, render):
    """Two modelled hours after completion the job's state is gone: JobNotFound."""
    async with connect(served) as client:
        state = await render(client)
        served.emulator.advance(2 * 3600)
        with pytest.raises(JobNotFound) as info:
            await client.get_job(state.job_id)
    assert (info.value.status, info.value.code) == (404, "job_not_found")


async def test_result_url_past_its_lifetime_is_expired(served, connect, render, tmp_path):
    """Eight modelled days later the signed result URL is refused: ResultExpired, not retried."""
    async with connect(served) as client:
        state = await render(client)
        served.emulator.advance(8 * DAY)
        with pytest.raises(ResultExpired) as info:
            await client.download(state.video_url, tmp_path / "late.mp4")
    assert (info.value.status, info.value.attempts) == (403, 1)


def _body() -> dict[str, object]:
    return {"model": "kling-o3", "prompt": "a fox runs through snow"}
