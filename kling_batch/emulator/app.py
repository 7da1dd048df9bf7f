"""Emulator: one emulated EmpirioLabs account, its state, and the ASGI app that serves it."""

from __future__ import annotations

from types import TracebackType

from kling_batch.emulator.billing import Ledger
from kling_batch.emulator.clock import Clock
from kling_batch.emulator.config import EmulatorConfig
from kling_batch.emulator.faults import FaultPlan
from kling_batch.emulator.gateway import Gateway
from kling_batch.emulator.jobs import JobTable
from kling_batch.emulator.journal import Journal
from kling_batch.emulator.ratelimit import RateLimiter
from kling_batch.emulator.routes import make_app
from kling_batch.emulator.signing import Signer
from kling_batch.emulator.uploads import UploadStore


class Emulator:
    """The emulator's state and its ASGI `app`; serve it with `running()` or any ASGI server.

    `journal` records every request; `ledger` every charge (reading it settles jobs that
    have completed); `jobs` is the job table; `advance(s)` moves the clock s modelled seconds.
    """

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        cfg = self.config
        self.clock = Clock()
        self.journal = Journal(cfg.journal_max_entries)
        self.faults = FaultPlan(cfg.faults, cfg.seed)
        self.ledger = Ledger(cfg.credits, before_read=lambda: self.jobs.settle())
        self.jobs = JobTable(cfg, self.clock, self.ledger, self.faults)
        self.uploads = UploadStore(
            {
                "image": cfg.max_image_bytes,
                "video": cfg.max_video_bytes,
                "audio": cfg.max_audio_bytes,
            },
            clock=self.clock,
            ttl=cfg.scaled(cfg.upload_ttl_seconds),
        )
        self.signer = Signer()
        self.limiter = RateLimiter(cfg.rpm, cfg.scaled(cfg.rate_window_seconds))
        self.app = Gateway(
            make_app(self),
            config=cfg,
            clock=self.clock,
            journal=self.journal,
            limiter=self.limiter,
            faults=self.faults,
        )

    @property
    def api_key(self) -> str:
        """The key clients must send."""
        return self.config.api_key

    def advance(self, modelled_seconds: float) -> None:
        """Move the clock forward by `modelled_seconds` (times `time_scale` real seconds)."""
        self.clock.advance(self.config.scaled(modelled_seconds))

    def close(self) -> None:
        """Delete uploaded files."""
        self.uploads.close()

    def __enter__(self) -> Emulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
