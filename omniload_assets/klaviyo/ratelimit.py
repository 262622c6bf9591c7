"""Client-side pacing to Klaviyo's per-endpoint burst (1 s) and steady (60 s) limits.

Klaviyo counts requests per account in fixed windows. A sliding-window log is at least as strict as
any fixed window of the same length, so pacing with one keeps a run under both limits; 429s then only
happen when something else (another process, another tool) shares the account.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from omniload_assets.klaviyo.catalog import RateLimit

#: Fractions of the published limits the client allows itself (room for clock and network skew).
BURST_HEADROOM = 0.9
STEADY_HEADROOM = 0.98


class SlidingWindowLimiter:
    """Blocks callers of :meth:`acquire` until a request fits under every window's limit."""

    def __init__(
        self,
        limits: list[tuple[float, int]],
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._windows = [(span, max(1, count), deque[float]()) for span, count in limits]
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep

    @classmethod
    def for_rate_limit(cls, limit: RateLimit) -> SlidingWindowLimiter:
        return cls(
            [
                (1.0, int(limit.burst_per_s * BURST_HEADROOM)),
                (60.0, int(limit.steady_per_min * STEADY_HEADROOM)),
            ]
        )

    def acquire(self) -> float:
        """Wait for a slot, take it, and return the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                delay = 0.0
                for span, count, log in self._windows:
                    while log and log[0] <= now - span:
                        log.popleft()
                    if len(log) >= count:
                        delay = max(delay, log[0] + span - now)
                if delay <= 0:
                    for _, _, log in self._windows:
                        log.append(now)
                    return waited
            self._sleep(delay)
            waited += delay


_registry: dict[tuple[str, str], SlidingWindowLimiter] = {}
_registry_lock = threading.Lock()


def limiter_for(account: str, path: str, limit: RateLimit) -> SlidingWindowLimiter:
    """The process-wide limiter of one endpoint of one account, shared by every client."""
    key = (account, path)
    with _registry_lock:
        limiter = _registry.get(key)
        if limiter is None:
            limiter = _registry[key] = SlidingWindowLimiter.for_rate_limit(limit)
        return limiter
