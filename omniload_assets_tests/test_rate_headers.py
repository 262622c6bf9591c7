"""Klaviyo's ``RateLimit-*`` response headers: the simulator sends them, the client's pacer heeds them.

Klaviyo documents them in its guide "Rate limits, status codes, and errors" (the OpenAPI document lists
no response headers): every non-429 response carries ``RateLimit-Limit``, ``RateLimit-Remaining`` and
``RateLimit-Reset`` (seconds) for the steady (1 min) window; a 429 carries only ``Retry-After``.
Time is a fake clock throughout: nothing sleeps for real.
"""

from __future__ import annotations

import httpx
import pytest

from omniload_assets.klaviyo import client as client_module
from omniload_assets.klaviyo.catalog import get_table
from omniload_assets.klaviyo.client import ClientStats, KlaviyoClient
from omniload_assets.klaviyo.ratelimit import ServerWindow, SlidingWindowLimiter, read_headers
from omniload_assets_tests.simulator import KlaviyoSimulator

KEY = "pk_rate_headers_test_7d1e4c9a"
BASE = "https://a.klaviyo.com"
TAGS = get_table("tags")


class FakeClock:
    """A clock that only moves when someone sleeps on it (shared by pacer and simulator)."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


def headers(limit: int, remaining: int, reset: int) -> dict[str, str]:
    return {
        "RateLimit-Limit": str(limit),
        "RateLimit-Remaining": str(remaining),
        "RateLimit-Reset": str(reset),
    }


def empty_page() -> dict:
    return {"data": [], "links": {"self": f"{BASE}/api/tags", "next": None, "prev": None}}


# -- reading the headers -------------------------------------------------------------------------


def test_read_headers_takes_the_three_headers_case_insensitively() -> None:
    assert read_headers(
        httpx.Headers({"ratelimit-limit": "60", "RATELIMIT-REMAINING": "7", "RateLimit-Reset": "12"})
    ) == (ServerWindow(60, 7, 12.0))


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"RateLimit-Limit": "60", "RateLimit-Remaining": "7"},
        headers(60, 7, 12) | {"RateLimit-Remaining": "many"},
        headers(0, 0, 12),
        headers(60, -1, 12),
        headers(60, 7, 12) | {"RateLimit-Reset": "86400"},
    ],
)
def test_absent_or_malformed_headers_are_ignored(bad) -> None:
    assert read_headers(httpx.Headers(bad)) is None


# -- the pacer -----------------------------------------------------------------------------------


def test_one_remaining_makes_the_next_request_wait_for_the_reset() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter([(1.0, 100), (60.0, 1000)], clock=clock, sleep=clock.sleep)
    assert limiter.acquire() == 0
    limiter.observe(ServerWindow(limit=60, remaining=1, reset_s=30))
    assert limiter.acquire() == pytest.approx(30)
    assert clock.now == pytest.approx(30)
    assert limiter.acquire() == 0  # a new window: nothing known, nothing to wait for


def test_plenty_remaining_costs_nothing_and_the_budget_is_spent_locally() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter([(1.0, 100), (60.0, 1000)], clock=clock, sleep=clock.sleep)
    limiter.observe(ServerWindow(limit=60, remaining=4, reset_s=20))  # 3 usable, 1 kept in reserve
    assert [limiter.acquire() for _ in range(3)] == [0, 0, 0]
    assert limiter.acquire() == pytest.approx(20)  # before any further report, the 4th waits


def test_reports_of_one_window_keep_the_lowest_and_a_later_window_replaces_them() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter([(1.0, 100), (60.0, 1000)], clock=clock, sleep=clock.sleep)
    limiter.observe(ServerWindow(limit=60, remaining=1, reset_s=30))
    limiter.observe(ServerWindow(limit=60, remaining=40, reset_s=30))  # an older response, arriving late
    assert limiter.acquire() == pytest.approx(30)
    limiter.observe(ServerWindow(limit=60, remaining=1, reset_s=60))
    limiter.observe(ServerWindow(limit=60, remaining=50, reset_s=120))  # the next window
    assert limiter.acquire() == 0


def test_the_client_waits_when_a_response_says_one_request_remains(httpx_mock, monkeypatch) -> None:
    clock = FakeClock(1000.0)
    limiter = SlidingWindowLimiter.for_rate_limit(TAGS.rate_limit, clock=clock, sleep=clock.sleep)
    monkeypatch.setattr(client_module, "limiter_for", lambda account, path, limit: limiter)
    httpx_mock.add_response(json=empty_page(), headers=headers(60, 1, 42))
    httpx_mock.add_response(json=empty_page(), headers=headers(60, 59, 60))
    httpx_mock.add_response(json=empty_page(), headers=headers(60, 58, 59))
    stats = ClientStats()
    with KlaviyoClient(KEY, sleep=clock.sleep) as client:
        client.get_json(TAGS, "/api/tags", stats=stats)
        assert clock.sleeps == []
        client.get_json(TAGS, "/api/tags", stats=stats)
        assert clock.sleeps == [pytest.approx(42)]
        client.get_json(TAGS, "/api/tags", stats=stats)  # the new window has room: no wait
    assert clock.sleeps == [pytest.approx(42)]
    assert stats.pacing_wait_s == pytest.approx(42)
    assert stats.throttled == 0


def test_an_unpaced_client_ignores_the_headers(httpx_mock, monkeypatch) -> None:
    def no_limiter(*args):
        raise AssertionError("pace=False must not touch the limiter")

    monkeypatch.setattr(client_module, "limiter_for", lambda account, path, limit: no_limiter)
    httpx_mock.add_response(json=empty_page(), headers=headers(60, 0, 42))
    httpx_mock.add_response(json=empty_page(), headers=headers(60, 0, 42))
    sleeps: list[float] = []
    with KlaviyoClient(KEY, pace=False, sleep=sleeps.append) as client:
        client.get_json(TAGS, "/api/tags")
        client.get_json(TAGS, "/api/tags")
    assert sleeps == []


# -- the simulator -------------------------------------------------------------------------------


def test_the_simulator_reports_the_steady_window_on_every_response_but_a_429() -> None:
    clock = FakeClock(1_700_000_000.25)  # 39.75 s before a minute ends
    with KlaviyoSimulator(seed=3, clock=clock) as sim:
        auth = {"Authorization": f"Klaviyo-API-Key {sim.api_key}", "revision": "2026-10-15"}
        sim.set_rate_limit("tags", burst=100, steady=5)
        with httpx.Client(base_url=sim.base_url, headers=auth) as c:
            ok = c.get("/api/tags")
            bad = c.get("/api/tags", params={"filter": "nonsense("})
            sim.set_fault("503", count=1, path="/api/tags")
            unavailable = c.get("/api/tags")
            unauthorised = c.get("/api/tags", headers={"Authorization": "Klaviyo-API-Key pk_wrong"})
            rest = [c.get("/api/tags") for _ in range(4)]
    assert (ok.status_code, bad.status_code, unavailable.status_code, unauthorised.status_code) == (
        200,
        400,
        503,
        401,
    )
    assert read_headers(ok.headers) == ServerWindow(5, 4, 40)
    assert read_headers(bad.headers) == ServerWindow(5, 3, 40)  # counted, then refused
    assert read_headers(unavailable.headers) == ServerWindow(5, 3, 40)  # not counted
    assert read_headers(unauthorised.headers) == ServerWindow(5, 5, 40)  # another key's window
    assert [r.status_code for r in rest] == [200, 200, 200, 429]
    assert [r.headers.get("RateLimit-Remaining") for r in rest] == ["2", "1", "0", None]
    assert rest[-1].headers["Retry-After"] == "40"


def _burst(sim: KlaviyoSimulator, clock: FakeClock, monkeypatch, requests: int) -> ClientStats:
    """Another client takes 15 of the 20 requests of the window; then ours sends ``requests``."""
    auth = {"Authorization": f"Klaviyo-API-Key {sim.api_key}", "revision": "2026-10-15"}
    with httpx.Client(base_url=sim.base_url, headers=auth) as other:
        assert {other.get("/api/tags").status_code for _ in range(15)} == {200}
    limiter = SlidingWindowLimiter.for_rate_limit(TAGS.rate_limit, clock=clock, sleep=clock.sleep)
    monkeypatch.setattr(client_module, "limiter_for", lambda account, path, limit: limiter)
    stats = ClientStats()
    with KlaviyoClient(sim.api_key, base_url=sim.base_url, sleep=clock.sleep) as client:
        for _ in range(requests):
            client.get_json(TAGS, "/api/tags", stats=stats)
    return stats


def test_a_burst_near_the_limit_gets_no_429_from_the_simulator(monkeypatch) -> None:
    clock = FakeClock(1_700_000_000.25)
    with KlaviyoSimulator(seed=3, clock=clock) as sim:
        sim.set_rate_limit("tags", burst=100, steady=20)  # below the 60/min the catalogue paces to
        stats = _burst(sim, clock, monkeypatch, requests=30)
        assert sim.stats.throttled == 0
        assert sim.stats.statuses.get(429, 0) == 0
    assert stats.throttled == 0 and stats.requests == 30
    assert stats.pacing_wait_s >= 39  # it waited for the window to reset, instead of a 429


def test_without_the_headers_the_same_burst_is_throttled(monkeypatch) -> None:
    """The control: pacing only to the catalogue's limits runs into the server's 429s."""
    monkeypatch.setattr(client_module, "read_headers", lambda response_headers: None)
    clock = FakeClock(1_700_000_000.25)
    with KlaviyoSimulator(seed=3, clock=clock) as sim:
        sim.set_rate_limit("tags", burst=100, steady=20)
        stats = _burst(sim, clock, monkeypatch, requests=30)
        assert sim.stats.throttled > 0
    assert stats.throttled > 0
