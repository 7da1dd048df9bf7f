"""Fault injection: the spec syntax and each fault as a client sees it."""

from __future__ import annotations

import io
from decimal import Decimal

import httpx
import mutagen.mp4
import pytest
from click.testing import CliRunner

from kling_batch.cli import cli
from kling_batch.emulator import Fault, parse_fault
from kling_batch.emulator.faults import KINDS
from kling_batch.emulator.media import render_mp4

SUBMIT = "/v1/videos/generations"
BODY = {"model": "kling-o3", "prompt": "a fox"}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("5xx=0.1", Fault(kind="5xx", rate=0.1)),
        ("503=10%", Fault(kind="5xx", rate=0.1, status=503)),
        ("drop=first2,on=poll", Fault(kind="drop", first=2, on="poll")),
        ("storm=30,at=60", Fault(kind="storm", length=30, at=60)),
        ("ambiguous=1", Fault(kind="ambiguous")),
        ("truncate=0.5,keep=0.25", Fault(kind="truncate", rate=0.5, keep=0.25)),
        ("fail=0.05,code=upstream_error", Fault(kind="fail", rate=0.05, code="upstream_error")),
        ("slow=1,delay=12", Fault(kind="slow", delay=12)),
        ("truncate=1,length=none", Fault(kind="truncate", declare_length=False)),
        ("swap=first1,seconds=4.5", Fault(kind="swap", first=1, seconds=4.5)),
        ("stall=0.5", Fault(kind="stall", rate=0.5)),
        ("status-word=1,word=finished", Fault(kind="status-word", word="finished")),
        ("revoke=after3", Fault(kind="revoke", after=3)),
        ("error-200=first1", Fault(kind="error-200", first=1)),
    ],
)
def test_fault_specs_parse(spec, expected):
    """Each documented spec form parses to the matching `Fault`."""
    assert parse_fault(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "boom=1",
        "drop",
        "drop=lots",
        "drop=2",
        "drop=1,on=moon",
        "drop=1,color=red",
        "truncate=1,on=poll",
        "504=1",
        "5xx=1,status=504",
        "truncate=1,length=12",
        "drop=1,length=none",
        "swap=1,on=poll",
        "swap=1,seconds=0",
        "status-word=1,word=not a word",
        "error-200=1,on=poll",
    ],
)
def test_bad_fault_specs_are_refused(spec):
    """A malformed spec raises ValueError naming the spec."""
    with pytest.raises(ValueError, match="fault"):
        parse_fault(spec)


def test_emulator_help_lists_every_fault_kind():
    """`kling-batch emulator --help` documents each kind `--fault` accepts."""
    result = CliRunner().invoke(cli, ["emulator", "--help"])
    assert result.exit_code == 0
    for kind in KINDS:
        assert f"  {kind}=" in result.output, kind


def test_ambiguous_targets_submits_and_truncate_downloads_by_default():
    """ambiguous applies to submits and truncate to downloads unless `on=` says otherwise."""
    assert (parse_fault("ambiguous=1").target, parse_fault("truncate=1").target) == (
        "submit",
        "download",
    )


def test_storm_answers_429_to_every_v1_request(make_api):
    """During a storm every /v1 request gets 429 with Retry-After."""
    api = make_api(faults=(parse_fault("storm=60"),))
    responses = [api.client.get("/v1/models"), api.submit()]
    assert [r.status_code for r in responses] == [429, 429]
    assert all(int(r.headers["Retry-After"]) >= 1 for r in responses)


def test_storm_ends_after_its_length(make_api):
    """Requests pass again once the storm's modelled seconds are over."""
    api = make_api(faults=(parse_fault("storm=60"),))
    api.emu.advance(61)
    assert api.client.get("/v1/models").status_code == 200


def test_storm_starts_at_its_offset(make_api):
    """`at=` delays the storm: requests pass before it, fail during it."""
    api = make_api(faults=(parse_fault("storm=30,at=100"),))
    assert api.client.get("/v1/models").status_code == 200
    api.emu.advance(100)
    assert api.client.get("/v1/models").status_code == 429


def test_5xx_answers_a_server_error_envelope(make_api):
    """`5xx=1` answers 500, 502 or 503 with an api_error envelope."""
    api = make_api(faults=(parse_fault("5xx=1"),))
    response = api.client.get("/v1/models")
    assert response.status_code in (500, 502, 503)
    assert response.json()["error"]["type"] == "api_error"


def test_fixed_status_5xx(make_api):
    """`503=1` always answers 503 `model_unavailable`."""
    api = make_api(faults=(parse_fault("503=1"),))
    response = api.client.get("/v1/models")
    assert (response.status_code, response.json()["error"]["code"]) == (503, "model_unavailable")


def test_first_n_strikes_only_the_first_requests(make_api):
    """`firstN` hits exactly the first N matching requests."""
    api = make_api(faults=(parse_fault("500=first2,on=models"),))
    statuses = [api.client.get("/v1/models").status_code for _ in range(4)]
    assert statuses == [500, 500, 200, 200]


def test_revoked_key_works_for_n_requests_then_never(make_api):
    """`revoke=afterN` accepts the key N times, then answers 401 `invalid_api_key`."""
    api = make_api(faults=(parse_fault("revoke=after2"),))
    responses = [api.client.get("/v1/models") for _ in range(2)] + [api.submit() for _ in range(2)]
    assert [r.status_code for r in responses] == [200, 200, 401, 401]
    assert responses[-1].json()["error"]["code"] == "invalid_api_key"
    assert len(api.emu.jobs) == 0


def test_error_200_answers_a_submit_with_an_error_and_creates_no_job(make_api):
    """`error-200=1` answers a submit 200 with an error envelope and no job id; no job."""
    api = make_api(faults=(parse_fault("error-200=1,code=upstream_error"),))
    response = api.submit()
    assert response.status_code == 200
    assert response.json()["error"]["code"] == "upstream_error"
    assert "job_id" not in response.json()
    assert len(api.emu.jobs) == 0


def test_5xx_on_submit_creates_no_job(make_api):
    """A submit answered by an injected 5xx never reached the job table."""
    api = make_api(faults=(parse_fault("502=1,on=submit"),))
    assert api.submit().status_code == 502
    assert len(api.emu.jobs) == 0


def test_same_seed_gives_the_same_faults(make_api):
    """Two emulators with one seed strike the same requests."""

    def outcomes(seed):
        api = make_api(faults=(parse_fault("500=0.5"),), seed=seed)
        return [api.client.get("/v1/models").status_code for _ in range(20)]

    first = outcomes(7)
    assert first == outcomes(7)
    assert set(first) == {200, 500}


def test_drop_closes_without_a_response(make_api):
    """A dropped request surfaces in httpx as a protocol error, not an HTTP status."""
    api = make_api(faults=(parse_fault("drop=1,on=models"),))
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        api.client.get("/v1/models")
    (entry,) = api.emu.journal.entries()
    assert (entry.status, entry.dropped, entry.fault) == (None, True, "drop")


def test_drop_on_submit_creates_no_job(make_api):
    """A submit dropped before handling left no job behind."""
    api = make_api(faults=(parse_fault("drop=1,on=submit"),))
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        api.submit()
    assert len(api.emu.jobs) == 0


def test_ambiguous_submit_creates_and_bills_the_job_but_drops_the_answer(make_api):
    """The ambiguous case: the client sees a broken connection, yet a job exists and is billed."""
    api = make_api(faults=(parse_fault("ambiguous=first1"),))
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        api.submit(duration=10)
    (entry,) = api.emu.journal.submissions()
    assert (entry.status, entry.dropped, entry.fault) == (200, True, "ambiguous")
    listed = api.client.get("/v1/jobs").json()["data"]
    assert [job["job_id"] for job in listed] == [entry.job_id]
    api.finish(entry.job_id)
    assert [e.job_id for e in api.emu.ledger.entries()] == [entry.job_id]


def test_truncated_download_sends_fewer_bytes_than_announced(make_api):
    """A truncated download ends early; httpx reports the short body."""
    api = make_api(faults=(parse_fault("truncate=1,keep=0.5"),))
    url = api.render()["result"]["video_url"]
    received = 0
    with pytest.raises(httpx.RemoteProtocolError), httpx.stream("GET", url) as response:
        announced = int(response.headers["content-length"])
        for chunk in response.iter_raw():
            received += len(chunk)
    assert received < announced
    assert api.emu.journal.entries()[-1].fault == "truncate"


def test_failed_job_reports_content_moderation_and_is_not_billed(make_api):
    """`fail=1` ends jobs `failed` with error code content_moderation and no charge."""
    api = make_api(faults=(parse_fault("fail=1"),))
    job = api.finish(api.submit_ok()["job_id"])
    assert job["status"] == "failed"
    assert job["error"]["code"] == "content_moderation"
    assert job["error"]["message"]
    assert (job["result"], job["completed_at"] is not None) == (None, True)
    assert "billing" not in job
    assert api.emu.ledger.entries() == []
    assert api.emu.ledger.held == 0


def test_failure_code_is_configurable(make_api):
    """`code=` sets the failed job's error code."""
    api = make_api(faults=(parse_fault("fail=1,code=upstream_error"),))
    job = api.finish(api.submit_ok()["job_id"])
    assert job["error"]["code"] == "upstream_error"


def test_slow_response_still_answers(make_api):
    """A slowed request answers normally and is journaled as slow."""
    api = make_api(faults=(parse_fault("slow=1,delay=1"),), time_scale=0.001)
    assert api.client.get("/v1/models").status_code == 200
    assert api.emu.journal.entries()[-1].fault == "slow"


def test_truncate_without_length_ends_cleanly_and_short(make_api):
    """`length=none`: the download is chunked and ends early without any protocol error."""
    api = make_api(faults=(parse_fault("truncate=1,keep=0.5,length=none"),))
    url = api.render(duration=4)["result"]["video_url"]
    response = httpx.get(url)
    assert response.status_code == 200
    assert "content-length" not in response.headers
    assert response.headers["transfer-encoding"] == "chunked"
    assert 0 < len(response.content) < len(render_mp4("16:9", Decimal(4))) * 0.6
    assert api.emu.journal.entries()[-1].fault == "truncate"


def test_swap_serves_another_whole_video(make_api):
    """`swap=1,seconds=3` serves a whole 3-second MP4 for a 4-second job, length declared."""
    api = make_api(faults=(parse_fault("swap=1,seconds=3"),))
    url = api.render(duration=4)["result"]["video_url"]
    response = httpx.get(url)
    assert int(response.headers["content-length"]) == len(response.content)
    assert mutagen.mp4.MP4(io.BytesIO(response.content)).info.length == 3.0


def test_stalled_job_stays_processing_and_is_never_billed(make_api):
    """`stall=1`: however long the clock runs, the job is processing and nothing is charged."""
    api = make_api(faults=(parse_fault("stall=1"),))
    job_id = api.submit_ok(duration=4)["job_id"]
    api.emu.advance(100_000)
    job = api.job(job_id)
    assert (job["status"], job["result"]) == ("processing", None)
    assert api.emu.ledger.entries() == []


def test_status_word_replaces_every_status_but_the_job_still_renders(make_api):
    """`status-word=1,word=finished` shows the word from submit to end; the render bills."""
    api = make_api(faults=(parse_fault("status-word=1,word=finished"),))
    job_id = api.submit_ok(duration=4)["job_id"]
    assert api.job(job_id)["status"] == "finished"
    job = api.finish(job_id)
    assert job["status"] == "finished"
    assert job["result"]["video_url"]
    assert len(api.emu.ledger.entries()) == 1
