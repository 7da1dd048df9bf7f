"""Real sockets: the failures httpx actually raises land in the classes the tree promises."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest

from kling_batch.client import RetryPolicy
from kling_batch.errors import AmbiguousSubmit, ConnectionFailed, TruncatedDownload

pytestmark = pytest.mark.anyio

Behaviour = Callable[[anyio.abc.SocketStream], Awaitable[None]]


@asynccontextmanager
async def serve(behaviour: Behaviour) -> AsyncIterator[str]:
    """A one-behaviour HTTP/1.1 server on a loopback port; yields its base URL."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await read_request(stream)
            await behaviour(stream)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield f"http://127.0.0.1:{port}"
        tg.cancel_scope.cancel()


async def read_request(stream: anyio.abc.SocketStream) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive()
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        body += await stream.receive()


async def hang_up(stream: anyio.abc.SocketStream) -> None:
    """Read the request, then close without answering."""


async def short_body(stream: anyio.abc.SocketStream) -> None:
    """Promise 100 bytes, send 10, close."""
    await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")


async def test_hang_up_after_a_submit_is_ambiguous(make_client):
    """A server that reads the POST and closes gives AmbiguousSubmit after one send."""
    async with serve(hang_up) as url, make_client(base_url=url, transport=None) as client:
        with pytest.raises(AmbiguousSubmit):
            await client.submit({"prompt": "p"})


async def test_hang_up_on_a_poll_is_retried_then_connection_failed(make_client):
    """The same hang-up on a GET is retried, ending as ConnectionFailed."""
    retry = RetryPolicy(max_attempts=2, random=lambda: 0.0)
    async with (
        serve(hang_up) as url,
        make_client(base_url=url, transport=None, retry=retry) as client,
    ):
        with pytest.raises(ConnectionFailed) as info:
            await client.get_job("j")
    assert info.value.attempts == 2


async def test_short_body_on_the_wire_is_truncated(make_client, tmp_path):
    """A connection closed before Content-Length bytes arrive is a TruncatedDownload."""
    retry = RetryPolicy(max_attempts=1)
    async with (
        serve(short_body) as url,
        make_client(base_url=url, transport=None, retry=retry) as client,
    ):
        with pytest.raises(TruncatedDownload):
            await client.download(f"{url}/out.mp4", tmp_path / "x")


async def test_refused_connection_is_retried_even_for_a_submit(make_client):
    """Nothing listening means nothing was sent: a submit retries, then ConnectionFailed."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()
    retry = RetryPolicy(max_attempts=2, random=lambda: 0.0)
    async with make_client(base_url=f"http://127.0.0.1:{port}", transport=None, retry=retry) as c:
        with pytest.raises(ConnectionFailed) as info:
            await c.submit({"prompt": "p"})
    assert info.value.attempts == 2
