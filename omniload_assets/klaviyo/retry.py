"""When to retry a Klaviyo request: a pure function of one attempt's outcome.

:func:`decide` takes what an attempt came to (status, headers, the error if no answer came), how
many attempts failed and were throttled before, and the policy; it says wait and retry, or raise.
It makes no request and never sleeps, so every rule is unit-tested without HTTP
(``test_retry.py``); the client (``klaviyo.client``) only acts on what it says.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from omniload_assets.backoff import Jitter, backoff_s
from omniload_assets.klaviyo.errors import KlaviyoError, KlaviyoQuotaExhausted, KlaviyoUnavailableError

#: Statuses worth another try: timeouts and the server's (or its CDN's) transient failures.
RETRYABLE_STATUS = frozenset({408, 500, 502, 503, 504, 520, 522, 524})
#: Longest pause between two retries of a failed request, whatever the attempt.
MAX_BACKOFF_S = 30.0
#: 429s in a row on one request before the run gives up (another client is using the quota).
MAX_THROTTLES = 50
#: Most jitter added to a 429's ``Retry-After``, so that throttled workers do not return together.
THROTTLE_JITTER_S = 0.25


@dataclass(frozen=True)
class RetryPolicy:
    """How long a request may keep trying (the resource's settings of the same names)."""

    max_retries: int = 5
    max_retry_after_s: float = 120.0
    retry_backoff_s: float = 0.5
    timeout_s: float = 60.0
    max_throttles: int = MAX_THROTTLES


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to: an HTTP status and headers, or the problem that left none
    (a transport error, a timeout, a body that would not decode)."""

    status: int | None
    headers: Mapping[str, str]
    problem: str = ""
    timed_out: bool = False


@dataclass(frozen=True)
class Decision:
    """Retry after ``wait_s`` seconds (``throttled``: a 429's wait), or raise ``error``, or
    (neither) the answer stands: a status to report as the API's own error."""

    wait_s: float = 0.0
    throttled: bool = False
    error: KlaviyoError | None = None
    final: bool = False


def decide(
    outcome: Outcome,
    *,
    path: str,
    failures: int,
    throttles: int,
    policy: RetryPolicy,
    now: datetime | None = None,
    jitter: Jitter = random.uniform,
) -> Decision:
    """What to do after ``outcome``, the attempt's ``failures`` and ``throttles`` before it counted.

    A 429 waits its ``Retry-After`` (plus a little jitter) unless that is beyond
    ``max_retry_after_s`` (a daily quota) or the request was throttled ``max_throttles`` times
    already. A retryable status or a failed attempt backs off exponentially, up to ``max_retries``.
    Any other status is final: the caller reports it as Klaviyo's error.
    """
    status = outcome.status
    if status == 429:
        return _throttled(outcome, path, throttles + 1, policy, now or datetime.now(UTC), jitter)
    if status is not None and status not in RETRYABLE_STATUS:
        return Decision(final=True)
    attempt = failures + 1
    problem = f"HTTP {status}" if status is not None else outcome.problem
    if attempt > policy.max_retries:
        advice = "raise timeout_s or max_retries" if outcome.timed_out else "raise max_retries"
        return Decision(
            error=KlaviyoUnavailableError(
                f"Klaviyo {path} failed {attempt} times (last: {problem}); Klaviyo may be "
                f"down or slow: re-run later or {advice}"
            )
        )
    return Decision(wait_s=backoff_s(attempt, policy.retry_backoff_s, MAX_BACKOFF_S, jitter))


def _throttled(
    outcome: Outcome, path: str, throttles: int, policy: RetryPolicy, now: datetime, jitter: Jitter
) -> Decision:
    wait = retry_after_s(outcome.headers, now)
    if wait > policy.max_retry_after_s:
        until = (now + timedelta(seconds=wait)).strftime("%Y-%m-%d %H:%M UTC")
        message = (
            f"Klaviyo throttled {path} with Retry-After {wait:.0f} s (until about {until}), longer "
            f"than max_retry_after_s={policy.max_retry_after_s:.0f}: the account's API quota is "
            "exhausted; re-run after that time, or raise max_retry_after_s to wait instead"
        )
        return Decision(error=KlaviyoQuotaExhausted(message, status=429, path=path, retry_after_s=wait))
    if throttles > policy.max_throttles:
        message = (
            f"Klaviyo throttled {path} more than {policy.max_throttles} times in a row; another "
            "client may be using the account's quota: re-run later"
        )
        return Decision(error=KlaviyoQuotaExhausted(message, status=429, path=path, retry_after_s=wait))
    return Decision(wait_s=wait + jitter(0, THROTTLE_JITTER_S), throttled=True)


def retry_after_s(headers: Mapping[str, str], now: datetime) -> float:
    """Seconds to wait from ``Retry-After`` (seconds or an HTTP date); 1 when absent or bad."""
    raw = (headers.get("Retry-After") or "1").strip()
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return 1.0
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())
