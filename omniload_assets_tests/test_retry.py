"""The retry policy (``klaviyo.retry.decide``) and backoff, without HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from omniload_assets.backoff import backoff_s
from omniload_assets.klaviyo.errors import KlaviyoQuotaExhausted, KlaviyoUnavailableError
from omniload_assets.klaviyo.retry import (
    MAX_BACKOFF_S,
    THROTTLE_JITTER_S,
    Decision,
    Outcome,
    RetryPolicy,
    decide,
    retry_after_s,
)

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(max_retries=3, max_retry_after_s=120, retry_backoff_s=0.5, timeout_s=10, max_throttles=4)


def highest(low: float, high: float) -> float:
    return high


def lowest(low: float, high: float) -> float:
    return low


def retries(decision: Decision) -> bool:
    return decision.error is None and not decision.final


def decided(outcome: Outcome, failures: int = 0, throttles: int = 0, jitter=highest):  # noqa: ANN001, ANN201
    return decide(
        outcome,
        path="/api/events",
        failures=failures,
        throttles=throttles,
        policy=POLICY,
        now=NOW,
        jitter=jitter,
    )


def test_a_429_waits_its_retry_after_plus_a_little_jitter() -> None:
    decision = decided(Outcome(429, {"Retry-After": "3"}))
    assert retries(decision) and decision.throttled and decision.error is None
    assert decision.wait_s == 3 + THROTTLE_JITTER_S
    assert decided(Outcome(429, {"Retry-After": "3"}), jitter=lowest).wait_s == 3
    assert decided(Outcome(429, {}), jitter=lowest).wait_s == 1  # absent: a second


def test_a_429_beyond_the_longest_wait_is_a_quota_error_naming_when_to_return() -> None:
    decision = decided(Outcome(429, {"Retry-After": "7200"}))
    assert isinstance(decision.error, KlaviyoQuotaExhausted) and not retries(decision)
    assert decision.error.retry_after_s == 7200
    message = str(decision.error)
    assert "Retry-After 7200 s (until about 2026-11-27 14:00 UTC)" in message
    assert "max_retry_after_s=120" in message and "\n" not in message


def test_too_many_429s_in_a_row_give_up() -> None:
    assert retries(decided(Outcome(429, {"Retry-After": "1"}), throttles=3))  # the 4th: allowed
    decision = decided(Outcome(429, {"Retry-After": "1"}), throttles=4)
    assert isinstance(decision.error, KlaviyoQuotaExhausted)
    assert "more than 4 times in a row" in str(decision.error)


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504, 520, 522, 524])
def test_transient_statuses_back_off_exponentially_up_to_the_cap(status: int) -> None:
    waits = [decided(Outcome(status, {}), failures=n).wait_s for n in range(3)]
    assert waits == [0.5, 1.0, 2.0]
    assert all(not decided(Outcome(status, {}), failures=n).throttled for n in range(3))
    assert decided(Outcome(status, {}), failures=1, jitter=lowest).wait_s == 0.5  # jitter halves at most


def test_retries_exhausted_raise_unavailable_naming_the_last_problem() -> None:
    error = decided(Outcome(503, {}), failures=3).error
    assert isinstance(error, KlaviyoUnavailableError)
    assert str(error).startswith("Klaviyo /api/events failed 4 times (last: HTTP 503)")
    assert str(error).endswith("re-run later or raise max_retries")
    timeout = decided(Outcome(None, {}, "ReadTimeout: no response", timed_out=True), failures=3).error
    assert "(last: ReadTimeout: no response)" in str(timeout)
    assert str(timeout).endswith("raise timeout_s or max_retries")


def test_an_attempt_without_an_answer_is_retried_like_a_5xx() -> None:
    decision = decided(Outcome(None, {}, "ConnectError: refused"), failures=1)
    assert retries(decision) and decision.wait_s == 1.0


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_other_statuses_are_final_the_callers_to_report(status: int) -> None:
    decision = decided(Outcome(status, {}))
    assert decision.final and not retries(decision) and decision.error is None


def test_retry_after_as_an_http_date_or_nonsense() -> None:
    when = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    assert retry_after_s({"Retry-After": when}, NOW) == 90
    assert retry_after_s({"Retry-After": "soon"}, NOW) == 1.0
    assert retry_after_s({"Retry-After": "-5"}, NOW) == 0.0
    past = format_datetime(NOW - timedelta(seconds=90), usegmt=True)
    assert retry_after_s({"Retry-After": past}, NOW) == 0.0


def test_backoff_doubles_to_its_cap_and_counts_attempts_from_one() -> None:
    assert [backoff_s(n, 0.5, MAX_BACKOFF_S, highest) for n in (1, 2, 3, 7, 8, 500)] == [
        0.5,
        1.0,
        2.0,
        30.0,
        30.0,
        30.0,
    ]
    assert backoff_s(3, 0.5, MAX_BACKOFF_S, lowest) == 1.0
    with pytest.raises(ValueError, match="counts from 1"):
        backoff_s(0, 0.5, 1.0)
