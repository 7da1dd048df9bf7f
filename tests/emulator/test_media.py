"""Media: cached outputs, the padded large variant and its streaming in flat memory."""

from __future__ import annotations

import tracemalloc
from decimal import Decimal

import anyio
import httpx
import mutagen.mp4

from kling_batch.emulator.media import padded_size, render_mp4, stream_output


def test_outputs_are_cached_by_aspect_and_length():
    """Rendering the same aspect and length twice returns the same bytes object."""
    assert render_mp4("1:1", Decimal("4")) is render_mp4("1:1", Decimal("4.000"))


def test_large_output_is_a_valid_mp4_of_the_requested_size(make_api, tmp_path):
    """With large_output_bytes the download is that many bytes and still a 5 s MP4."""
    api = make_api(large_output_bytes=3_000_000)
    target = tmp_path / "out.mp4"
    with httpx.stream("GET", api.render()["result"]["video_url"]) as response:
        assert response.headers["content-length"] == "3000000"
        with open(target, "wb") as out:
            for chunk in response.iter_raw():
                out.write(chunk)
    assert target.stat().st_size == 3_000_000
    assert mutagen.mp4.MP4(target).info.length == 5.0


def test_large_output_streams_in_flat_memory(make_api):
    """Downloading a 64 MB output never holds more than a few MB in Python memory."""
    api = make_api(large_output_bytes=64_000_000)
    url = api.render()["result"]["video_url"]
    tracemalloc.start()
    try:
        received = 0
        with httpx.stream("GET", url) as response:
            for chunk in response.iter_raw():
                received += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == 64_000_000
    assert peak < 16_000_000


def test_padding_past_four_gib_uses_a_64_bit_box():
    """A free box larger than 4 GiB is written with size 1 and a 64-bit length."""
    mp4 = render_mp4("16:9", Decimal(3))
    total = 5 * 1024**3

    async def first_two() -> list[bytes]:
        chunks = []
        async for chunk in stream_output(mp4, total):
            chunks.append(chunk)
            if len(chunks) == 2:
                break
        return chunks

    _, header = anyio.run(first_two)
    assert header[:8] == b"\x00\x00\x00\x01free"
    assert int.from_bytes(header[8:16], "big") == total - len(mp4)


def test_padding_never_shrinks_an_output():
    """A target below the MP4's size serves the MP4 as it is."""
    assert padded_size(5000, 100) == 5000
    assert padded_size(5000, None) == 5000
