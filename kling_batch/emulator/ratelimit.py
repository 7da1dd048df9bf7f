"""RateLimiter: the per-account sliding-window request budget behind 429 `rate_limit_exceeded`."""

from __future__ import annotations

import threading
from collections import deque


class RateLimiter:
    """At most `limit` admitted requests per account in any `window` real seconds; 0 = off.

    Refused requests are not counted: a client that backs off gets in as soon as the
    oldest admitted request leaves the window.
    """

    def __init__(self, limit: int, window: float) -> None:
        self._limit = limit
        self._window = window
        self._admitted: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def admit(self, account: str, now: float) -> float | None:
        """Count the request and return None, or return the real seconds until one would pass."""
        if self._limit <= 0:
            return None
        with self._lock:
            times = self._admitted.setdefault(account, deque())
            horizon = now - self._window
            while times and times[0] <= horizon:
                times.popleft()
            if len(times) < self._limit:
                times.append(now)
                return None
            return times[0] - horizon

    def remaining(self, account: str, now: float) -> int | None:
        """Requests the account may still make in the window now; None when there is no limit."""
        if self._limit <= 0:
            return None
        with self._lock:
            horizon = now - self._window
            times = self._admitted.get(account, deque())
            return self._limit - sum(1 for t in times if t > horizon)
