"""Jobs: lifecycle, result downloads, retention, URL expiry, listing and cancelling."""

from __future__ import annotations

import io
import time
from decimal import Decimal

import av
import httpx
import mutagen.mp4
import pytest

from kling_batch.emulator import EmulatorConfig, Latency

DAY = 24 * 3600


def _download(api, job):
    response = httpx.get(job["result"]["video_url"])
    assert response.status_code == 200, response.text
    return response


def _length(data: bytes) -> float:
    return float(mutagen.mp4.MP4(io.BytesIO(data)).info.length)


def _size(data: bytes) -> tuple[int, int]:
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        return stream.codec_context.width, stream.codec_context.height


def test_submit_answers_job_envelope(api):
    """A submit answers 200 with job_id, status queued, an absolute poll_url and created_at."""
    body = api.submit_ok()
    assert body["status"] == "queued"
    assert body["poll_url"] == f"{api.served.base_url}/v1/jobs/{body['job_id']}"
    assert body["created_at"].endswith("Z")


def test_job_moves_from_queued_through_processing_to_completed(make_api):
    """With realistic latency a job is queued, then processing with rising progress, then done."""
    api = make_api(latency=Latency.realistic())
    job_id = api.submit_ok()["job_id"]
    first = api.job(job_id)
    assert (first["status"], first["progress"], first["completed_at"]) == ("queued", 0.0, None)
    api.emu.advance(21)
    early = api.job(job_id)
    api.emu.advance(20)
    later = api.job(job_id)
    assert (early["status"], later["status"]) == ("processing", "processing")
    assert 0 <= early["progress"] < later["progress"] < 1
    done = api.finish(job_id)
    assert (done["status"], done["progress"]) == ("completed", 1.0)
    assert done["completed_at"] is not None and done["result"] is not None


def test_job_completes_in_real_time_at_a_tiny_time_scale(make_api):
    """At time_scale 0.0005 polling alone sees the job complete, progress never falling."""
    api = make_api(latency=Latency.realistic(), time_scale=0.0005)
    job_id = api.submit_ok()["job_id"]
    seen = []
    for _ in range(2000):
        job = api.job(job_id)
        seen.append(job["progress"])
        if job["status"] == "completed":
            break
        time.sleep(0.002)
    assert job["status"] == "completed"
    assert seen == sorted(seen)


def test_completed_job_carries_request_model_and_result(api):
    """A completed job echoes the request and model and gives video_url, data, duration."""
    job = api.render(duration=7)
    assert job["model"] == "kling-o3"
    assert job["request"] == {
        "model": "kling-o3",
        "prompt": "a fox runs through snow",
        "duration": 7,
    }
    result = job["result"]
    assert result["data"] == [{"url": result["video_url"], "content_type": "video/mp4"}]
    assert result["duration"] == 7
    assert job["error"] is None


@pytest.mark.parametrize(
    ("fields", "seconds"),
    [({"duration": 3}, 3.0), ({"duration": 7.5}, 7.5), ({"prompt": "5s: a | 10s: b"}, 15.0)],
    ids=["3s", "7.5s", "two-scenes-15s"],
)
def test_result_is_a_playable_mp4_of_the_billed_length(api, fields, seconds):
    """The downloaded result is an MP4 whose length equals the billed seconds."""
    response = _download(api, api.render(**fields))
    assert response.headers["content-type"] == "video/mp4"
    assert int(response.headers["content-length"]) == len(response.content)
    assert response.content[4:8] == b"ftyp"
    assert _length(response.content) == seconds


@pytest.mark.parametrize(("aspect", "ratio"), [("16:9", 16 / 9), ("1:1", 1.0), ("9:16", 9 / 16)])
def test_result_has_the_requested_aspect_ratio(api, aspect, ratio):
    """The result's frame size matches the requested aspect ratio."""
    width, height = _size(_download(api, api.render(aspect_ratio=aspect)).content)
    assert width / height == pytest.approx(ratio, rel=0.02)


def test_video_edit_output_keeps_the_clip_length_capped_at_ten(api, clip):
    """video_edit on an uploaded 12 s clip renders a 10 s result."""
    path = api.upload_ok("clip.mp4", clip("12"), "video/mp4")["path"]
    job = api.render(video=path)
    assert job["result"]["duration"] == 10
    assert _length(_download(api, job).content) == 10.0


def test_video_edit_of_a_short_clip_keeps_its_length(api, clip):
    """video_edit on a 6.5 s clip renders and bills 6.5 s."""
    path = api.upload_ok("short.mp4", clip("6.5", "9:16"), "video/mp4")["path"]
    job = api.render(video=path, duration=3)
    assert job["billing"]["seconds"] == 6.5
    assert _length(_download(api, job).content) == 6.5


def test_equal_outputs_reuse_the_same_bytes(api):
    """Two jobs with the same aspect and length download identical files."""
    first = _download(api, api.render(duration=4)).content
    second = _download(api, api.render(duration=4, prompt="another")).content
    assert first == second


def test_job_is_dropped_an_hour_after_completion(api):
    """Polling answers 404 `job_not_found` once the modelled hour after completion passed."""
    job_id = api.submit_ok()["job_id"]
    api.emu.advance(3590)
    assert api.client.get(f"/v1/jobs/{job_id}").status_code == 200
    api.emu.advance(20)
    response = api.client.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "job_not_found"


def test_retention_is_scaled_by_time_scale(make_api):
    """At time_scale 0.01 the hour of retention is 36 real seconds."""
    api = make_api(time_scale=0.01)
    job_id = api.submit_ok()["job_id"]
    api.emu.clock.advance(37)
    assert api.client.get(f"/v1/jobs/{job_id}").status_code == 404


def test_result_url_outlives_the_job(api):
    """The signed URL still downloads days after the job itself was dropped."""
    job = api.render()
    api.emu.advance(3 * DAY)
    assert api.client.get(f"/v1/jobs/{job['job_id']}").status_code == 404
    assert _download(api, job).content[4:8] == b"ftyp"


def test_result_url_expires_after_seven_days(api):
    """After seven modelled days the result URL answers 403 `url_expired`."""
    job = api.render()
    api.emu.advance(7 * DAY + 1)
    response = httpx.get(job["result"]["video_url"])
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "url_expired"


def test_tampered_result_url_is_refused(api):
    """A result URL with a changed expiry answers 403 `invalid_signature`."""
    url = api.render()["result"]["video_url"]
    response = httpx.get(url.replace("expires=1", "expires=2"))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "invalid_signature"


def test_unknown_job_is_404(api):
    """Polling an id that never existed answers 404."""
    assert api.client.get("/v1/jobs/job_nope").status_code == 404


def test_list_is_newest_first_with_limit(api):
    """`GET /v1/jobs?limit=2` gives the two newest jobs and says there are more."""
    ids = [api.submit_ok()["job_id"] for _ in range(3)]
    body = api.client.get("/v1/jobs", params={"limit": 2}).json()
    assert [job["job_id"] for job in body["data"]] == ids[:0:-1]
    assert body["has_more"] is True


@pytest.mark.parametrize("cursor", ["after", "starting_after"])
def test_list_pages_after_its_last_id(api, cursor):
    """Each page names its `last_id`; `after=` it gives the next page, to the end."""
    ids = [api.submit_ok()["job_id"] for _ in range(5)][::-1]
    first = api.client.get("/v1/jobs", params={"limit": 2}).json()
    second = api.client.get("/v1/jobs", params={"limit": 2, cursor: first["last_id"]}).json()
    third = api.client.get("/v1/jobs", params={"limit": 2, cursor: second["last_id"]}).json()
    pages = [[job["job_id"] for job in page["data"]] for page in (first, second, third)]
    assert pages == [ids[:2], ids[2:4], ids[4:]]
    assert [page["has_more"] for page in (first, second, third)] == [True, True, False]
    assert first["last_id"] == ids[1]


def test_list_without_cursor_says_more_but_offers_no_way_on(make_api):
    """`job_list="no-cursor"`: `has_more` with no `last_id`, and `after=` is ignored."""
    api = make_api(job_list="no-cursor")
    ids = [api.submit_ok()["job_id"] for _ in range(3)][::-1]
    body = api.client.get("/v1/jobs", params={"limit": 2, "after": ids[1]}).json()
    assert ([job["job_id"] for job in body["data"]], body["has_more"]) == (ids[:2], True)
    assert "last_id" not in body


def test_list_can_be_absent(make_api):
    """`job_list="absent"`: the API offers no job list, 404."""
    api = make_api(job_list="absent")
    assert api.client.get("/v1/jobs").status_code == 404


def test_list_filters_by_status(make_api):
    """`status=` keeps only jobs in that state."""
    api = make_api(latency=Latency.realistic())
    kept = api.submit_ok()["job_id"]
    cancelled = api.submit_ok()["job_id"]
    api.client.post(f"/v1/jobs/{cancelled}/cancel")
    body = api.client.get("/v1/jobs", params={"status": "queued"}).json()
    assert [job["job_id"] for job in body["data"]] == [kept]


def test_list_defaults_to_25(api):
    """Without `limit` the list holds at most 25 jobs."""
    for _ in range(26):
        api.submit_ok()
    assert len(api.client.get("/v1/jobs").json()["data"]) == 25


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"status": "done"}, "status"),
    ],
    ids=["limit-0", "limit-101", "limit-text", "status-enum"],
)
def test_list_rejects_bad_query(api, params, param):
    """Out-of-range limits and unknown statuses are 400s naming the parameter."""
    response = api.client.get("/v1/jobs", params=params)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_cancelled_job_is_not_billed(make_api):
    """Cancelling a processing job ends it `cancelled` and it is never charged."""
    api = make_api(latency=Latency.realistic())
    job_id = api.submit_ok(duration=10)["job_id"]
    response = api.client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.json()["status"] == "cancelled"
    assert api.finish(job_id)["status"] == "cancelled"
    assert api.emu.ledger.entries() == []
    assert api.emu.ledger.held == Decimal(0)


def test_cancelling_a_completed_job_changes_nothing(api):
    """A completed job is returned unchanged by cancel, and stays billed."""
    job = api.render()
    response = api.client.post(f"/v1/jobs/{job['job_id']}/cancel")
    assert response.json()["status"] == "completed"
    assert len(api.emu.ledger.entries()) == 1


def test_cancelling_an_unknown_job_is_404(api):
    """Cancel on an unknown id answers 404."""
    assert api.client.post("/v1/jobs/job_nope/cancel").status_code == 404


@pytest.mark.parametrize(
    ("style", "expected"),
    [("relative", "/v1/jobs/{id}"), ("absent", None)],
)
def test_poll_url_style_is_configurable(make_api, style, expected):
    """poll_url can be relative or left out, so client tolerance can be tested."""
    body = make_api(poll_url_style=style).submit_ok()
    want = None if expected is None else expected.format(id=body["job_id"])
    assert body.get("poll_url") == want


def test_location_style_names_the_job_in_location_only(make_api):
    """`poll_url_style="location"`: the 201's body has no job id; its Location has the job."""
    api = make_api(poll_url_style="location", submit_status=201)
    response = api.submit()
    assert response.status_code == 201
    assert "job_id" not in response.json() and "poll_url" not in response.json()
    job_id = response.headers["location"].removeprefix("/v1/jobs/")
    assert api.job(job_id)["status"] in ("queued", "processing", "completed")


def test_location_style_needs_a_201_or_202():
    """A 200 has no Location to name a job by: the configuration is refused."""
    with pytest.raises(ValueError, match="201 or 202"):
        EmulatorConfig(poll_url_style="location")


def test_submit_status_can_be_202(make_api):
    """`submit_status=202` answers accepted submits with 202."""
    assert make_api(submit_status=202).submit().status_code == 202
