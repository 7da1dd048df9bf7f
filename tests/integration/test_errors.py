"""Error classification end to end: what the emulator answers, the client raises as."""

from __future__ import annotations

from decimal import Decimal

import pytest

from kling_batch.client import EmpirioClient
from kling_batch.clock import model_seconds
from kling_batch.errors import AuthError, CreditsError, ShotRejected, UserError

pytestmark = pytest.mark.anyio

BODY = {"model": "kling-o3", "prompt": "a fox runs through snow"}


async def test_wrong_key_is_an_auth_error_with_its_code(served, connect):
    """A key the account does not have is AuthError 401 `invalid_api_key`, not retried."""
    async with connect(served, api_key="sk-empiriolabs-not-this-one") as client:
        with pytest.raises(AuthError) as info:
            await client.submit(BODY)
    assert (info.value.status, info.value.code, info.value.attempts) == (401, "invalid_api_key", 1)
    assert len(served.emulator.journal.entries()) == 1


async def test_empty_key_is_refused_before_any_request(served):
    """The client refuses an empty key, so the emulator never sees a keyless request."""
    with pytest.raises(UserError):
        EmpirioClient(api_key="  ", base_url=served.base_url)
    assert served.emulator.journal.entries() == []


async def test_out_of_range_duration_is_rejected_naming_the_param(served, connect):
    """`duration` 20 is ShotRejected 400 with param `duration`, sent once, no job created."""
    async with connect(served) as client:
        with pytest.raises(ShotRejected) as info:
            await client.submit({**BODY, "duration": 20})
    assert (info.value.status, info.value.param, info.value.code) == (
        400,
        "duration",
        "invalid_request",
    )
    assert len(served.emulator.journal.submissions()) == 1
    assert len(served.emulator.jobs) == 0


async def test_unknown_field_is_rejected_naming_it(served, connect):
    """A field the model does not have is a 400 whose param names it."""
    async with connect(served) as client:
        with pytest.raises(ShotRejected) as info:
            await client.submit({**BODY, "fps": 60})
    assert (info.value.status, info.value.param) == (400, "fps")


async def test_too_few_credits_is_a_credits_error(serve, connect):
    """A $1.40 render on a $1.00 balance is CreditsError 402 `insufficient_credits`."""
    served = serve(credits=Decimal("1.00"))
    async with connect(served) as client:
        with pytest.raises(CreditsError) as info:
            await client.submit(BODY)
    assert (info.value.status, info.value.code, info.value.attempts) == (
        402,
        "insufficient_credits",
        1,
    )


async def test_rate_limit_is_retried_until_the_request_passes(serve, connect):
    """Against rpm=2, a third quick request gets 429 and is retried to success."""
    served = serve(rpm=2)
    async with connect(served) as client:
        for _ in range(3):
            await client.get_model()
    assert [e.status for e in served.emulator.journal.entries()] == [200, 200, 429, 200]


async def test_client_waits_at_least_the_servers_retry_after(serve, connect, transport):
    """After a 429 the client's clock waited at least the server's `retry-after-ms`."""
    served = serve(rpm=2)
    async with connect(served, transport=transport) as client:
        for _ in range(3):
            await client.get_model()
    (refusal,) = [a for a in transport.answers if a.status == 429]
    asked = model_seconds(client.clock, int(refusal.headers["retry-after-ms"]) / 1000)
    assert max(client.clock.sleeps) >= asked
