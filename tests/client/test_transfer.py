"""Uploads (multipart, streamed from disk) and downloads (streamed, size-checked, hashed)."""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import AsyncIterator

import httpx
import pytest

from kling_batch.client import RetryPolicy
from kling_batch.errors import BadResponse, ResultExpired, TruncatedDownload

pytestmark = pytest.mark.anyio

UPLOAD = "/v1/files/upload"
CDN = "https://cdn.example/out.mp4"
MIB = 1024 * 1024


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class StreamingSink(httpx.AsyncBaseTransport):
    """A transport that consumes request bodies chunk by chunk, keeping only a count."""

    def __init__(self, reply: dict[str, object]) -> None:
        self.reply = reply
        self.received = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        async for chunk in request.stream:
            self.received += len(chunk)
        return httpx.Response(200, json=self.reply)


async def test_upload_sends_one_multipart_file_field(api, make_client, tmp_path, key):
    """The file goes as multipart field `file` with its name, type and bytes, authorised."""
    image = tmp_path / "shoe.png"
    image.write_bytes(b"\x89PNG fake")
    api.on("POST", UPLOAD, {"path": "bunny://uploads/a/shoe.png"})
    async with make_client() as client:
        await client.upload(image)
    request = api.seen[0].request
    assert request.headers["authorization"] == f"Bearer {key}"
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    body = request.content
    assert b'Content-Disposition: form-data; name="file"; filename="shoe.png"' in body
    assert b"Content-Type: image/png" in body
    assert b"\x89PNG fake" in body


async def test_upload_content_type_can_be_given(api, make_client, tmp_path):
    """An explicit content type overrides the guess from the file name."""
    clip = tmp_path / "clip.bin"
    clip.write_bytes(b"data")
    api.on("POST", UPLOAD, {"path": "bunny://x"})
    async with make_client() as client:
        await client.upload(clip, content_type="video/mp4")
    assert b"Content-Type: video/mp4" in api.seen[0].request.content


@pytest.mark.parametrize(
    ("payload", "url", "size"),
    [
        ({"path": "bunny://u/a.png"}, None, 4),
        ({"bunny_path": "bunny://u/a.png", "size": 99}, None, 99),
        ({"url": "bunny://u/a.png"}, None, 4),
        (
            {"data": {"path": "bunny://u/a.png", "url": "https://cdn.example/a.png"}},
            "https://cdn.example/a.png",
            4,
        ),
        ({"data": [{"url": "bunny://u/a.png"}]}, None, 4),
        (
            {"path": "bunny://u/a.png", "url": "https://cdn.example/a.png"},
            "https://cdn.example/a.png",
            4,
        ),
    ],
    ids=["path", "bunny_path+size", "url", "data", "data-list", "path+https-url"],
)
async def test_upload_response_is_read_in_every_shape(
    api, make_client, tmp_path, payload, url, size
):
    """The bunny:// path is found under path, bunny_path, url or nested data."""
    image = tmp_path / "a.png"
    image.write_bytes(b"data")
    api.on("POST", UPLOAD, httpx.Response(201, json=payload))
    async with make_client() as client:
        upload = await client.upload(image)
    assert (upload.path, upload.url, upload.size) == ("bunny://u/a.png", url, size)


async def test_upload_without_a_bunny_path_is_a_bad_response(api, make_client, tmp_path):
    """An upload answer with no bunny:// path is retried, then raised as BadResponse."""
    image = tmp_path / "a.png"
    image.write_bytes(b"data")
    api.on("POST", UPLOAD, {"url": "https://x/a.png"}, {"ok": True})
    async with make_client(retry=RetryPolicy(max_attempts=2, random=lambda: 0.0)) as client:
        with pytest.raises(BadResponse):
            await client.upload(image)


async def test_upload_retry_sends_the_whole_file_again(api, make_client, tmp_path, error_response):
    """After a 503 the file is re-opened and sent in full."""
    image = tmp_path / "a.png"
    image.write_bytes(b"0123456789")
    api.on("POST", UPLOAD, error_response(503, "busy"), {"path": "bunny://a"})
    async with make_client() as client:
        await client.upload(image)
    assert [s.request.content.count(b"0123456789") for s in api.seen] == [1, 1]


async def test_an_upload_carries_the_hash_of_the_bytes_its_answered_attempt_sent(
    api, make_client, tmp_path, error_response
):
    """The file rewritten between a refused attempt and the answered one: the upload's
    hash is that of what the answered attempt sent, not of what was there before."""
    image = tmp_path / "a.png"
    image.write_bytes(b"first bytes")

    def busy_then_rewritten(request: httpx.Request) -> httpx.Response:
        image.write_bytes(b"second bytes")
        return error_response(503, "busy")

    api.on("POST", UPLOAD, busy_then_rewritten, {"path": "bunny://a"})
    async with make_client() as client:
        upload = await client.upload(image)
    assert [b"first bytes" in s.request.content for s in api.seen] == [True, False]
    assert upload.sha256 == digest(b"second bytes")


@pytest.fixture
def big_file(tmp_path):
    """A 32 MiB sparse file (no RAM or disk used to make it)."""
    path = tmp_path / "big.mp4"
    with open(path, "wb") as f:
        f.truncate(32 * MIB)
    return path


async def test_upload_streams_from_disk_in_constant_memory(make_client, big_file):
    """A 32 MiB upload never holds the file in memory."""
    big = big_file
    sink = StreamingSink({"path": "bunny://big"})
    async with make_client(transport=sink) as client:
        tracemalloc.start()
        try:
            await client.upload(big)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert sink.received > 32 * MIB
    assert peak < 4 * MIB


async def test_download_writes_the_body_and_hashes_it(api, make_client, tmp_path):
    """The body lands in exactly `dest`, with its size and sha256."""
    api.on("GET", "/out.mp4", httpx.Response(200, content=b"ftyp-video-bytes"))
    dest = tmp_path / "part" / "x.tmp"
    dest.parent.mkdir()
    async with make_client() as client:
        result = await client.download(CDN, dest)
    assert dest.read_bytes() == b"ftyp-video-bytes"
    assert (result.size, result.sha256) == (16, digest(b"ftyp-video-bytes"))
    assert [p.name for p in dest.parent.iterdir()] == ["x.tmp"]


async def test_download_says_whether_the_server_declared_a_length(api, make_client, tmp_path):
    """A body with Content-Length is `length_declared`; a streamed body without one is not."""

    async def chunked() -> AsyncIterator[bytes]:
        yield b"ftyp-"
        yield b"video"

    api.on(
        "GET",
        "/out.mp4",
        httpx.Response(200, content=b"ftyp-video"),
        httpx.Response(200, content=chunked()),
    )
    async with make_client() as client:
        declared = await client.download(CDN, tmp_path / "a")
        undeclared = await client.download(CDN, tmp_path / "b")
    assert (declared.length_declared, undeclared.length_declared) == (True, False)
    assert undeclared.sha256 == digest(b"ftyp-video")


async def test_download_replaces_what_was_in_dest(api, make_client, tmp_path):
    """A leftover partial file at `dest` is overwritten, not appended to."""
    dest = tmp_path / "x.tmp"
    dest.write_bytes(b"old partial data that is long")
    api.on("GET", "/out.mp4", httpx.Response(200, content=b"new"))
    async with make_client() as client:
        await client.download(CDN, dest)
    assert dest.read_bytes() == b"new"


@pytest.mark.parametrize("declared", ["100", "2"])
async def test_size_not_matching_content_length_is_truncated(api, make_client, tmp_path, declared):
    """A body shorter (or longer) than Content-Length raises the retryable TruncatedDownload."""
    short = httpx.Response(200, content=b"abc", headers={"Content-Length": declared})
    api.on("GET", "/out.mp4", short)
    async with make_client(retry=RetryPolicy(max_attempts=1)) as client:
        with pytest.raises(TruncatedDownload) as info:
            await client.download(CDN, tmp_path / "x")
    assert info.value.retryable


async def test_truncated_download_is_retried_from_scratch(api, make_client, tmp_path):
    """After a short body the download starts over and the file holds only the full body."""
    short = httpx.Response(200, content=b"abc", headers={"Content-Length": "6"})
    api.on("GET", "/out.mp4", short, httpx.Response(200, content=b"abcdef"))
    async with make_client() as client:
        result = await client.download(CDN, tmp_path / "x")
    assert (tmp_path / "x").read_bytes() == b"abcdef"
    assert result.sha256 == digest(b"abcdef")


async def test_connection_cut_mid_body_is_truncated(api, make_client, tmp_path):
    """A read error after some bytes arrived is a TruncatedDownload, chained to the cause."""

    async def cut() -> AsyncIterator[bytes]:
        yield b"abc"
        raise httpx.RemoteProtocolError("peer closed connection without sending complete body")

    api.on("GET", "/out.mp4", httpx.Response(200, content=cut()))
    async with make_client(retry=RetryPolicy(max_attempts=1)) as client:
        with pytest.raises(TruncatedDownload) as info:
            await client.download(CDN, tmp_path / "x")
    assert isinstance(info.value.__cause__, httpx.RemoteProtocolError)


@pytest.mark.parametrize("status", [403, 404, 410])
async def test_gone_result_url_is_expired_and_not_retried(api, make_client, tmp_path, status):
    """403, 404 and 410 on a result URL mean it expired: ResultExpired after one request."""
    api.on("GET", "/out.mp4", httpx.Response(status, text="AccessDenied"))
    async with make_client() as client:
        with pytest.raises(ResultExpired) as info:
            await client.download(CDN + "?token=SECRET", tmp_path / "x")
    assert (info.value.status, len(api.seen)) == (status, 1)
    assert "SECRET" not in str(info.value)


async def test_server_error_on_a_download_is_retried(api, make_client, tmp_path):
    """A CDN 503 is transient: the download is tried again."""
    api.on("GET", "/out.mp4", httpx.Response(503), httpx.Response(200, content=b"ok"))
    async with make_client() as client:
        assert (await client.download(CDN, tmp_path / "x")).size == 2


async def test_cdn_downloads_skip_the_rate_limiter(api, make_client, tmp_path, clock):
    """Result downloads from a CDN do not wait for the API request budget."""
    for _ in range(3):
        api.on("GET", "/out.mp4", httpx.Response(200, content=b"ok"))
    async with make_client(rpm=1) as client:
        for _ in range(3):
            await client.download(CDN, tmp_path / "x")
    assert [s.at for s in api.seen] == [0.0, 0.0, 0.0]


async def test_download_streams_in_constant_memory(api, make_client, tmp_path):
    """A 64 MiB body is written through without being held in memory."""
    chunk = b"\1" * (64 * 1024)
    total = 64 * MIB

    async def body() -> AsyncIterator[bytes]:
        for _ in range(total // len(chunk)):
            yield chunk

    api.on(
        "GET",
        "/out.mp4",
        httpx.Response(200, content=body(), headers={"Content-Length": str(total)}),
    )
    async with make_client() as client:
        tracemalloc.start()
        try:
            result = await client.download(CDN, tmp_path / "big")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert result.size == total
    assert peak < 8 * MIB
