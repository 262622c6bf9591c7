"""A fault's ``fired`` event, and the bench simulator process's ``fault``/``heal``/``stats`` commands."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from omniload_assets_tests.simulator.faults import Fault, FaultInjector

EVENTS_PATH = "/api/events"
START, END = "2024-01-01T00:00:00+00:00", "2024-01-03T00:00:00+00:00"


# -- Fault.fired ------------------------------------------------------------------------------


def test_fired_is_not_set_while_the_fault_lets_requests_through() -> None:
    injector = FaultInjector(seed=1)
    fault = Fault("503", after=2)
    injector.add(fault)
    assert injector.pick(EVENTS_PATH) is None
    assert injector.pick(EVENTS_PATH) is None
    assert not fault.fired.is_set()
    assert injector.pick(EVENTS_PATH) is fault
    assert fault.fired.wait(timeout=0)


def test_fired_ignores_requests_for_another_path() -> None:
    injector = FaultInjector(seed=1)
    fault = Fault("429", path="/api/profiles")
    injector.add(fault)
    assert injector.pick(EVENTS_PATH) is None
    assert not fault.fired.is_set()
    assert injector.pick("/api/profiles") is fault
    assert fault.fired.is_set()


def test_fired_stays_set_once_a_counted_fault_is_spent() -> None:
    injector = FaultInjector(seed=1)
    fault = Fault("500", count=1)
    injector.add(fault)
    assert injector.pick(EVENTS_PATH) is fault
    assert injector.pick(EVENTS_PATH) is None
    assert fault.fired.is_set()


def test_fired_is_neither_compared_nor_shown() -> None:
    fired, fresh = Fault("503"), Fault("503")
    fired.fired.set()
    assert fired == fresh
    assert "fired" not in repr(fired)
    assert Fault("503").fired is not Fault("503").fired


# -- simserver.py -----------------------------------------------------------------------------


@dataclass
class SimServer:
    """A ``bench.simserver`` process, its command pipe, and an HTTP client for it."""

    process: subprocess.Popen[str]
    http: httpx.Client

    def command(self, line: str) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def events(self) -> int:
        """One request for a page of events; its HTTP status."""
        params = {"filter": f"greater-or-equal(datetime,{START}),less-than(datetime,{END})"}
        return self.http.get(EVENTS_PATH, params=params).status_code


@pytest.fixture(scope="module")
def server() -> Iterator[SimServer]:
    cmd = [
        sys.executable,
        "-m",
        "omniload_assets_tests.bench.simserver",
        "--events=200",
        "--profiles=50",
        f"--start={START}",
        f"--end={END}",
        "--latency=0",
        "--warm=1",
    ]
    process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    hello = json.loads(process.stdout.readline())
    headers = {"Authorization": f"Klaviyo-API-Key {hello['api_key']}", "revision": "2026-10-15"}
    with httpx.Client(base_url=hello["url"], headers=headers, timeout=10) as http:
        sim = SimServer(process, http)
        try:
            yield sim
        finally:
            process.communicate("quit\n", timeout=10)  # no reply: the process exits


@pytest.fixture
def sim(server: SimServer) -> SimServer:
    """The shared process with no fault armed and its counters zeroed."""
    assert server.command("heal") == {"ok": True}
    assert server.command("limits off") == {"ok": True}
    return server


def test_fault_after_2_fails_the_third_request_until_healed(sim: SimServer) -> None:
    reply = sim.command("fault 503 after=2 path=/api/events")
    assert reply == {"ok": True, "fault": {"kind": "503", "after": 2, "path": "/api/events"}}
    assert [sim.events() for _ in range(4)] == [200, 200, 503, 503]
    assert sim.command("heal") == {"ok": True}
    assert sim.events() == 200


def test_fault_429_sends_its_retry_after(sim: SimServer) -> None:
    assert sim.command("fault 429 count=1 retry_after=7200")["ok"] is True
    params = {"filter": f"greater-or-equal(datetime,{START})"}
    first = sim.http.get(EVENTS_PATH, params=params)
    assert (first.status_code, first.headers["Retry-After"]) == (429, "7200")
    assert sim.events() == 200  # count=1: spent


def test_stats_counts_requests_per_path_and_status(sim: SimServer) -> None:
    sim.command("fault 500 count=1")
    statuses = [sim.events() for _ in range(3)]
    sim.http.get("/api/metrics")
    stats = sim.command("stats")
    assert statuses == [500, 200, 200]
    assert stats["requests"] == 4
    assert stats["by_path"] == {"/api/events": 3, "/api/metrics": 1}
    assert stats["by_status"] == {"200": 3, "500": 1}
    assert stats["faults"] == {"500": 1}
    assert stats["cpu_s"] > 0


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("fault", "needs a KIND"),
        ("fault 418", "unknown fault kind"),
        ("fault 503 after", "bad option"),
        ("fault 503 when=3", "bad option"),
        ("fault 503 after=x", "invalid literal"),
        ("frobnicate", "unknown command"),
    ],
)
def test_bad_commands_get_an_error_line_and_arm_nothing(sim: SimServer, line: str, says: str) -> None:
    assert says in sim.command(line)["error"]
    assert sim.events() == 200
