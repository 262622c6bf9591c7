"""Jittered exponential backoff: the pause before the next attempt of anything retried.

Shared by Klaviyo's request retries (``klaviyo.retry``) and the wait for DuckDB's file lock
(``warehouse.connection``). Pure: the random draw is passed in, so tests give a fixed one.
"""

from __future__ import annotations

import random
from collections.abc import Callable

#: Draws the jitter factor in ``[low, high]``; ``random.uniform`` unless a test fixes it.
Jitter = Callable[[float, float], float]


def backoff_s(attempt: int, first_s: float, cap_s: float, jitter: Jitter = random.uniform) -> float:
    """The pause before retry ``attempt`` (1 for the first): ``first_s`` doubled per attempt, at most
    ``cap_s``, times a factor drawn in [0.5, 1] so that clients failing together retry apart."""
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    exponent = min(attempt - 1, 62)  # 2**62 s is past any cap; larger exponents would overflow
    return min(cap_s, first_s * 2.0**exponent) * jitter(0.5, 1.0)
