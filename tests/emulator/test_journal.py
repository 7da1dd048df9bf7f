"""Journal: every request recorded with its digest, headers, status and RPM flag."""

from __future__ import annotations

import hashlib
import json
import socket
import time

import httpx

from kling_batch.emulator import EmulatorConfig, running

SUBMIT = "/v1/videos/generations"


def _raw_submit(api, raw: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    headers = {"content-type": "application/json", **(headers or {})}
    return api.client.post(SUBMIT, content=raw, headers=headers)


def test_submit_entry_records_request_and_answer(api):
    """A submit's entry has method, path, sha256 of the raw body, status, job id and times."""
    raw = json.dumps({"model": "kling-o3", "prompt": "a fox"}).encode()
    job_id = _raw_submit(api, raw).json()["job_id"]
    (entry,) = api.emu.journal.entries()
    assert (entry.method, entry.path, entry.status, entry.job_id) == ("POST", SUBMIT, 200, job_id)
    assert entry.body_digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert entry.body_size == len(raw)
    assert entry.counted is True
    assert entry.mono > 0 and entry.wall > 1_600_000_000


def test_kling_batch_and_idempotency_headers_are_kept(api):
    """Headers named x-kling-batch-* or idempotency-key are journaled; others are not."""
    raw = json.dumps({"model": "kling-o3", "prompt": "a fox"}).encode()
    headers = {
        "X-Kling-Batch-Fingerprint": "sha256:abc",
        "x-kling-batch-shot": "teaser",
        "Idempotency-Key": "k1",
    }
    _raw_submit(api, raw, headers)
    (entry,) = api.emu.journal.entries()
    assert entry.headers == {
        "x-kling-batch-fingerprint": "sha256:abc",
        "x-kling-batch-shot": "teaser",
        "idempotency-key": "k1",
    }


def test_rejected_requests_are_journaled_too(api):
    """A 400 and a 401 are recorded with their status; the 401 is not counted."""
    api.submit(prompt="")
    httpx.get(f"{api.served.base_url}/v1/models")
    statuses = [(e.status, e.counted) for e in api.emu.journal.entries()]
    assert statuses == [(400, True), (401, False)]


def test_downloads_are_journaled_as_not_counted(api):
    """A result download is recorded with counted=False."""
    url = api.render()["result"]["video_url"]
    httpx.get(url)
    entry = api.emu.journal.entries()[-1]
    assert (entry.path.startswith("/cdn/"), entry.status, entry.counted) == (True, 200, False)


def test_submissions_are_grouped_by_header(api):
    """count_by_header and jobs_by_header group submits by a header's value."""
    for fingerprint in ("sha256:a", "sha256:a", "sha256:b"):
        api.client.post(
            SUBMIT,
            json={"model": "kling-o3", "prompt": "x"},
            headers={"x-kling-batch-fingerprint": fingerprint},
        )
    journal = api.emu.journal
    assert journal.count_by_header("x-kling-batch-fingerprint") == {"sha256:a": 2, "sha256:b": 1}
    jobs = journal.jobs_by_header("X-Kling-Batch-Fingerprint")
    assert [len(jobs["sha256:a"]), len(jobs["sha256:b"])] == [2, 1]


def test_journal_endpoint_serves_entries_after_a_sequence_number(api):
    """`GET /_emulator/journal?since=N` returns entries with seq > N and is itself unrecorded."""
    api.client.get("/v1/models")
    api.client.get("/livez")
    url = f"{api.served.base_url}/_emulator/journal"
    everything = httpx.get(url).json()["data"]
    assert [e["path"] for e in everything] == ["/v1/models", "/livez"]
    later = httpx.get(url, params={"since": everything[0]["seq"]}).json()["data"]
    assert [e["path"] for e in later] == ["/livez"]
    assert len(api.emu.journal) == 2


def test_listeners_see_each_entry(api):
    """A subscribed listener is called with every new entry until unsubscribed."""
    seen = []
    unsubscribe = api.emu.journal.subscribe(seen.append)
    api.client.get("/v1/models")
    unsubscribe()
    api.client.get("/v1/models")
    assert [(e.path, e.status) for e in seen] == [("/v1/models", 200)]


def test_journal_keeps_only_the_newest_entries_past_its_cap():
    """With `journal_max_entries=2` the oldest entries fall off."""
    with running(EmulatorConfig(journal_max_entries=2, rpm=0)) as served:
        for _ in range(3):
            httpx.get(f"{served.base_url}/livez")
        assert [e.seq for e in served.emulator.journal.entries()] == [2, 3]


def test_client_vanishing_mid_body_is_journaled_unanswered(api):
    """A client that hangs up halfway through its body leaves an unanswered entry, no job."""
    host, port = api.served.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/videos/generations HTTP/1.1\r\nHost: x\r\n"
            b'x-api-key: sk-empiriolabs-emulator\r\nContent-Length: 100\r\n\r\n{"model":'
        )
    for _ in range(500):
        if api.emu.journal.entries():
            break
        time.sleep(0.01)
    (entry,) = api.emu.journal.entries()
    assert (entry.status, entry.dropped, entry.job_id) == (None, True, None)
    assert len(api.emu.jobs) == 0
