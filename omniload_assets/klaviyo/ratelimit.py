"""Client-side pacing to Klaviyo's per-endpoint burst (1 s) and steady (60 s) limits.

Klaviyo counts requests per account in fixed windows. A sliding-window log is at least as strict as
any fixed window of the same length, so pacing with one keeps a run under both limits; 429s then only
happen when something else (another process, another tool) shares the account.

For that case the limiter also reads what Klaviyo says of the steady window: every non-429 response
carries ``RateLimit-Limit``, ``RateLimit-Remaining`` and ``RateLimit-Reset`` (seconds until the window
resets; Klaviyo's guide "Rate limits, status codes, and errors" — the OpenAPI document lists no response
headers). When few requests remain, callers wait for the reset instead of running into a 429.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from omniload_assets.klaviyo.catalog import RateLimit

#: Fractions of the published limits the client allows itself (room for clock and network skew).
BURST_HEADROOM = 0.9
STEADY_HEADROOM = 0.98
#: Requests of the server's steady window left unused (a fraction of its limit, at least 1): room for
#: requests already on their way when a response's count was taken.
SERVER_RESERVE = 0.02
#: Reported resets this far apart (seconds, whole-second rounding) belong to the same fixed window.
SAME_WINDOW_S = 1.5


@dataclass(frozen=True)
class ServerWindow:
    """What one response's ``RateLimit-*`` headers say of the steady window."""

    limit: int
    remaining: int
    reset_s: float


def read_headers(headers: Mapping[str, str]) -> ServerWindow | None:
    """The ``RateLimit-*`` headers of a response, or None when absent or malformed."""
    try:
        limit = int(headers["RateLimit-Limit"])
        remaining = int(headers["RateLimit-Remaining"])
        reset_s = float(headers["RateLimit-Reset"])
    except (KeyError, ValueError, TypeError):
        return None
    if limit <= 0 or remaining < 0 or not 0 <= reset_s <= 3600:
        return None
    return ServerWindow(limit, min(remaining, limit), reset_s)


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
        #: The server's steady window as last reported: requests this limiter may still send in it
        #: (reserve deducted) and when it resets (``clock()`` time); None when nothing is known.
        self._server_budget: int | None = None
        self._server_reset_at = 0.0

    @classmethod
    def for_rate_limit(
        cls,
        limit: RateLimit,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> SlidingWindowLimiter:
        return cls(
            [
                (1.0, int(limit.burst_per_s * BURST_HEADROOM)),
                (60.0, int(limit.steady_per_min * STEADY_HEADROOM)),
            ],
            clock=clock,
            sleep=sleep,
        )

    def observe(self, window: ServerWindow) -> None:
        """Take in a response's report of the server's steady window.

        Responses of one window can arrive out of order, so within a window the lowest count wins;
        a report of a later window replaces it, one of an earlier window is ignored.
        """
        with self._lock:
            now = self._clock()
            reset_at = now + window.reset_s
            budget = window.remaining - max(1, int(window.limit * SERVER_RESERVE))
            current = self._server_budget
            if (
                current is None
                or now >= self._server_reset_at
                or reset_at > self._server_reset_at + SAME_WINDOW_S
            ):
                self._server_budget, self._server_reset_at = budget, reset_at
            elif reset_at >= self._server_reset_at - SAME_WINDOW_S:
                self._server_budget = min(current, budget)
                self._server_reset_at = max(self._server_reset_at, reset_at)

    def _server_delay(self, now: float) -> float:
        """Seconds until the server's window resets when its budget is spent, else 0 (lock held)."""
        if self._server_budget is None:
            return 0.0
        if now >= self._server_reset_at:
            self._server_budget = None
            return 0.0
        return self._server_reset_at - now if self._server_budget <= 0 else 0.0

    def acquire(self) -> float:
        """Wait for a slot, take it, and return the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                delay = self._server_delay(now)
                for span, count, log in self._windows:
                    while log and log[0] <= now - span:
                        log.popleft()
                    if len(log) >= count:
                        delay = max(delay, log[0] + span - now)
                if delay <= 0:
                    for _, _, log in self._windows:
                        log.append(now)
                    if self._server_budget is not None:
                        self._server_budget -= 1
                    return waited
            self._sleep(delay)
            waited += delay


_registry: dict[tuple[str, str, RateLimit], SlidingWindowLimiter] = {}
_registry_lock = threading.Lock()


def limiter_for(account: str, path: str, limit: RateLimit) -> SlidingWindowLimiter:
    """The process-wide limiter of one endpoint of one account at one limit, shared by every client
    (profiles with predictive analytics have their own, lower limit)."""
    key = (account, path, limit)
    with _registry_lock:
        limiter = _registry.get(key)
        if limiter is None:
            limiter = _registry[key] = SlidingWindowLimiter.for_rate_limit(limit)
        return limiter
