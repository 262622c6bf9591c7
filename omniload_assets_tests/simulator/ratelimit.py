"""Klaviyo's per-account, per-endpoint fixed-window rate limits (1 s burst, 60 s steady)."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .endpoints import Tier


@dataclass(frozen=True)
class Decision:
    """The outcome of one request against the limits."""

    allowed: bool
    retry_after: int
    limit: int
    remaining: int
    reset: int


class RateLimiter:
    """Counts requests per (api key, bucket) in fixed 1 s and 60 s windows of ``clock()``."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._counts: dict[tuple[str, str, str, int], int] = {}
        self._lock = threading.Lock()

    def hit(self, api_key: str, bucket: str, tier: Tier) -> Decision:
        """Count a request if both windows have room, else refuse it with a Retry-After."""
        now = self.clock()
        second = math.floor(now)
        minute = math.floor(now / 60)
        burst_key = (api_key, bucket, "s", second)
        steady_key = (api_key, bucket, "m", minute)
        reset = max(1, math.ceil((minute + 1) * 60 - now))
        with self._lock:
            burst = self._counts.get(burst_key, 0)
            steady = self._counts.get(steady_key, 0)
            if steady >= tier.steady:
                return Decision(False, reset, tier.steady, 0, reset)
            if burst >= tier.burst:
                return Decision(False, max(1, math.ceil(second + 1 - now)), tier.steady, 0, reset)
            self._counts[burst_key] = burst + 1
            self._counts[steady_key] = steady + 1
            if len(self._counts) > 4096:
                self._prune(second, minute)
        return Decision(True, 0, tier.steady, tier.steady - steady - 1, reset)

    def state(self, api_key: str, bucket: str, tier: Tier) -> Decision:
        """The steady window as it stands, without counting a request (for non-counted responses)."""
        now = self.clock()
        minute = math.floor(now / 60)
        reset = max(1, math.ceil((minute + 1) * 60 - now))
        with self._lock:
            steady = self._counts.get((api_key, bucket, "m", minute), 0)
        return Decision(steady < tier.steady, 0, tier.steady, max(0, tier.steady - steady), reset)

    @staticmethod
    def headers(decision: Decision) -> dict[str, str]:
        """Klaviyo's headers on every non-429 response: the state of the steady window."""
        return {
            "RateLimit-Limit": str(decision.limit),
            "RateLimit-Remaining": str(decision.remaining),
            "RateLimit-Reset": str(decision.reset),
        }

    def _prune(self, second: int, minute: int) -> None:
        current = {("s", second), ("m", minute)}
        self._counts = {k: v for k, v in self._counts.items() if (k[2], k[3]) in current}

    def reset(self) -> None:
        """Forget all counts."""
        with self._lock:
            self._counts.clear()
