"""A local emulator of the EmpirioLabs video API for kling-o3 (Starlette on uvicorn).

In-process::

    with running(EmulatorConfig(time_scale=0.001)) as served:
        httpx.get(f"{served.base_url}/v1/models", headers={"x-api-key": served.api_key})
        served.emulator.journal.entries()      # every request, in order
        served.emulator.ledger.entries()       # every charge (Decimal amounts)
        served.emulator.advance(3600)          # move the clock one modelled hour

`Emulator(config).app` is the bare ASGI app (e.g. for `httpx.ASGITransport`);
`running_async` is the async form of `running`. Routes are listed in
`kling_batch.emulator.routes`, the `--fault` syntax in `kling_batch.emulator.faults`.
"""

from kling_batch.emulator.app import Emulator
from kling_batch.emulator.billing import LedgerEntry
from kling_batch.emulator.config import DEFAULT_API_KEY, EmulatorConfig, Latency
from kling_batch.emulator.faults import Fault, parse_fault
from kling_batch.emulator.gateway import ConnectionDropped
from kling_batch.emulator.journal import JournalEntry
from kling_batch.emulator.server import RunningEmulator, running, running_async

__all__ = [
    "DEFAULT_API_KEY",
    "ConnectionDropped",
    "Emulator",
    "EmulatorConfig",
    "Fault",
    "JournalEntry",
    "Latency",
    "LedgerEntry",
    "RunningEmulator",
    "parse_fault",
    "running",
    "running_async",
]
