"""Clock: the emulator's one source of time, monotonic with a wall-clock mapping, advanceable."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime


class Clock:
    """Monotonic real seconds plus an offset tests may push forward with `advance`."""

    def __init__(self) -> None:
        self._mono0 = time.monotonic()
        self._wall0 = time.time()
        self._offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        """Monotonic seconds, including every `advance`."""
        return time.monotonic() + self._offset

    def advance(self, real_seconds: float) -> None:
        """Jump forward in time (never backward) by `real_seconds`."""
        if real_seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            self._offset += real_seconds

    def wall(self, mono: float) -> float:
        """Unix time of a monotonic instant from `now()`."""
        return self._wall0 + (mono - self._mono0)


def iso(unix: float) -> str:
    """RFC 3339 UTC with milliseconds, e.g. `2026-07-01T12:00:00.123Z`."""
    moment = datetime.fromtimestamp(unix, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
