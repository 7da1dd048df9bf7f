"""The API key goes to the API origin only and never appears in an error, repr or log."""

from __future__ import annotations

import logging
import traceback

import httpx
import pytest

from kling_batch.errors import (
    AmbiguousSubmit,
    AuthError,
    ConnectionFailed,
    RunFatal,
    ServerError,
    UserError,
)

pytestmark = pytest.mark.anyio

JOB = "/v1/jobs/job_1"


def full_text(exc: BaseException) -> str:
    """Everything a traceback, str or repr of the error could print."""
    return "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)


async def test_key_echoed_in_an_error_body_is_redacted(api, make_client, key):
    """A server that echoes the key in its 401 message does not leak it through the error."""
    body = {"error": {"message": f"invalid key {key}", "code": key, "param": key}}
    api.on("POST", "/v1/videos/generations", httpx.Response(401, json=body))
    async with make_client() as client:
        with pytest.raises(AuthError) as info:
            await client.submit({"prompt": "p"})
    assert key not in full_text(info.value)
    assert "[redacted]" in info.value.message


async def test_key_in_a_transport_error_is_redacted_and_not_chained(api, make_client, key):
    """An httpx error whose text contains the key is reported redacted, without the original."""
    api.on("GET", JOB, *[httpx.ConnectError(f"proxy said Bearer {key}") for _ in range(6)])
    async with make_client() as client:
        with pytest.raises(ConnectionFailed) as info:
            await client.get_job("job_1")
    assert key not in full_text(info.value)
    assert info.value.__cause__ is None


async def test_key_in_a_header_encoding_error_is_not_leaked(api, make_client, key):
    """A LocalProtocolError quoting the Authorization header value leaks nothing."""
    api.on("GET", JOB, httpx.LocalProtocolError(f"Illegal header value b'Bearer {key}'"))
    async with make_client() as client:
        with pytest.raises(RunFatal) as info:
            await client.get_job("job_1")
    assert key not in full_text(info.value)


async def test_ambiguous_submit_text_has_no_key(api, make_client, key):
    """Even the ambiguous-submit report built from a raw httpx error is redacted."""
    api.on("POST", "/v1/videos/generations", httpx.ReadTimeout(f"timed out ({key})"))
    async with make_client() as client:
        with pytest.raises(AmbiguousSubmit) as info:
            await client.submit({"prompt": "p"})
    assert key not in full_text(info.value)


async def test_repr_of_the_client_has_no_key(make_client, key):
    """The client's repr names the base URL and rate, never the key."""
    async with make_client() as client:
        assert key not in repr(client)
        assert "api.empiriolabs.ai" in repr(client)


async def test_logs_never_contain_the_key(api, make_client, error_response, key, caplog):
    """Debug and info logs of failures and retries do not contain the key."""
    api.on("GET", JOB, error_response(503, f"bad {key}"), {"status": "queued"})
    with caplog.at_level(logging.DEBUG):
        async with make_client() as client:
            await client.get_job("job_1")
    assert caplog.records
    assert key not in caplog.text


async def test_client_logs_leave_out_signed_query_strings(api, make_client, tmp_path, caplog):
    """The client's own logs never contain a result URL's signed token."""
    api.default = lambda request: httpx.Response(500)
    with caplog.at_level(logging.DEBUG, logger="kling_batch"):
        async with make_client() as client:
            with pytest.raises(ServerError):
                await client.download("https://cdn.example/v.mp4?token=SECRET", tmp_path / "v")
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("kling_batch")]
    assert ours
    assert not any("SECRET" in line for line in ours)


async def test_download_from_another_host_carries_no_key(api, make_client, tmp_path):
    """A result URL on a CDN host is fetched without the Authorization header."""
    api.on("GET", "/out.mp4", httpx.Response(200, content=b"mp4"))
    async with make_client() as client:
        await client.download("https://cdn.example/out.mp4", tmp_path / "out.mp4")
    assert api.seen[0].auth is None


async def test_download_from_the_api_host_carries_the_key(api, make_client, tmp_path, key):
    """A result served by the API host itself (as the emulator does) is authorised."""
    api.on("GET", "/v1/files/out.mp4", httpx.Response(200, content=b"mp4"))
    async with make_client() as client:
        await client.download("https://api.empiriolabs.ai/v1/files/out.mp4", tmp_path / "o")
    assert api.seen[0].auth == f"Bearer {key}"


async def test_same_host_on_another_port_is_foreign(api, make_client, tmp_path):
    """Only the exact origin (scheme, host, port) receives the key."""
    api.on("GET", "/out.mp4", httpx.Response(200, content=b"mp4"))
    async with make_client() as client:
        await client.download("https://api.empiriolabs.ai:8443/out.mp4", tmp_path / "o")
    assert api.seen[0].auth is None


async def test_redirect_from_the_api_host_to_a_cdn_drops_the_key(api, make_client, tmp_path):
    """A download redirected off the API origin loses the Authorization header."""
    api.on(
        "GET",
        "/v1/results/r1",
        httpx.Response(302, headers={"Location": "https://cdn.example/r1.mp4"}),
    )
    api.on("GET", "/r1.mp4", httpx.Response(200, content=b"mp4"))
    async with make_client() as client:
        await client.download("https://api.empiriolabs.ai/v1/results/r1", tmp_path / "o")
    assert [s.request.url.host for s in api.seen] == ["api.empiriolabs.ai", "cdn.example"]
    assert api.seen[1].auth is None


def test_key_with_surrounding_whitespace_is_stripped(make_client, key):
    """A trailing newline from an env file does not end up in the header."""
    client = make_client(api_key=f"  {key}\n")
    assert client._key == key


def test_unusable_key_is_refused_without_echoing_it(make_client):
    """A key with inner spaces is refused with a message that does not contain it."""
    with pytest.raises(UserError) as info:
        make_client(api_key="sk-empiriolabs-has space")
    assert "has space" not in str(info.value)
