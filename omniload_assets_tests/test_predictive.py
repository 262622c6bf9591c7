"""Profiles' predictive analytics, an opt-in (``KlaviyoResource.predictive_analytics``): real
materializations of ``klaviyo/profiles`` against the simulator, with the option on and off.

Pacing is observed on a clock that only moves when the client sleeps (no real waiting, no timing
assertions): every request of the run goes through the limiter of the limits the run asked for.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import dagster as dg
import duckdb
import orjson
import pytest

from omniload_assets.assets import asset_key
from omniload_assets.klaviyo import client as client_module
from omniload_assets.klaviyo.catalog import (
    PREDICTIVE_ANALYTICS,
    PREDICTIVE_RATE_LIMIT,
    TABLES,
    RateLimit,
    effective_spec,
    get_table,
)
from omniload_assets.klaviyo.ratelimit import BURST_HEADROOM, ServerWindow, SlidingWindowLimiter
from omniload_assets.klaviyo.resource import KlaviyoResource
from omniload_assets.runner import partition_range_tags
from omniload_assets.warehouse.reads import qualified_name
from omniload_assets_tests.conftest import SIM_END, SIM_START
from omniload_assets_tests.simulator import KlaviyoSimulator

PROFILES = get_table("profiles")
ADDITIONAL = "additional-fields[profile]"
#: Small pages, so a run makes more requests than the slower limit allows in a second.
PAGE_SIZE = 10


# -- the catalogue's entry ------------------------------------------------------------------------


def test_the_option_gives_profiles_the_field_the_column_and_the_slower_limit() -> None:
    spec = effective_spec(PROFILES, predictive_analytics=True)
    assert spec.params[ADDITIONAL] == "subscriptions,predictive_analytics"
    assert spec.columns[PREDICTIVE_ANALYTICS] == "JSON"
    assert list(spec.columns)[:-1] == list(PROFILES.columns)  # a column added, none moved
    assert (spec.rate_limit.burst_per_s, spec.rate_limit.steady_per_min) == (10, 150)
    assert (PROFILES.rate_limit.burst_per_s, PROFILES.rate_limit.steady_per_min) == (75, 750)
    # Keys, strategy, filters and page size stay the catalogue's.
    same = ("path", "primary_key", "strategy", "incremental_key", "filter_operators", "max_page_size")
    assert all(getattr(spec, name) == getattr(PROFILES, name) for name in same)
    assert effective_spec(PROFILES, True) is spec and effective_spec(spec, True) is spec


def test_without_the_option_or_for_other_tables_nothing_changes() -> None:
    for table in TABLES:
        assert effective_spec(table, predictive_analytics=False) is table
        if table.name != "profiles":
            assert effective_spec(table, predictive_analytics=True) is table
    assert PREDICTIVE_ANALYTICS not in PROFILES.columns
    assert PROFILES.params == {ADDITIONAL: "subscriptions"}


def test_the_resource_hands_runs_the_entry_of_its_option() -> None:
    off = KlaviyoResource(api_key="pk_test")
    on = KlaviyoResource(api_key="pk_test", predictive_analytics=True)
    assert off.predictive_analytics is False
    assert off.table_spec(PROFILES) is PROFILES
    assert on.table_spec(PROFILES) is effective_spec(PROFILES, True)
    assert on.table_spec(get_table("events")) is get_table("events")


# -- real materializations ----------------------------------------------------------------------------


class SleepingClock:
    """Seconds that pass only when someone sleeps (thread-safe)."""

    def __init__(self) -> None:
        self._now = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self._now += max(seconds, 0.0)


class Pacing:
    """Stands in for the client's limiter registry: the real limiter of the limits each request asks
    for, on a :class:`SleepingClock`, recording those limits and when each request was let go.

    Acquiring is serialized: a sleep on this clock costs no real time, and the clock then moves only
    as far as the limiter needs, so the recorded times are exactly the limiter's."""

    def __init__(self) -> None:
        self.clock = SleepingClock()
        self.limits: dict[str, set[RateLimit]] = defaultdict(set)
        self.sent: dict[str, list[float]] = defaultdict(list)
        self.lock = threading.Lock()
        self._limiters: dict[tuple[str, RateLimit], _Recording] = {}

    def limiter_for(self, account: str, path: str, limit: RateLimit) -> _Recording:
        with self.lock:
            self.limits[path].add(limit)
            key = (path, limit)
            if key not in self._limiters:
                limiter = SlidingWindowLimiter.for_rate_limit(limit, clock=self.clock, sleep=self.clock.sleep)
                self._limiters[key] = _Recording(self, path, limiter)
            return self._limiters[key]

    def most_in_one_second(self, path: str) -> int:
        times = sorted(self.sent[path])
        return max(sum(1 for t in times[i:] if t < start + 1.0) for i, start in enumerate(times))


class _Recording:
    """A limiter that records when it let each request go."""

    def __init__(self, pacing: Pacing, path: str, limiter: SlidingWindowLimiter) -> None:
        self.pacing, self.path, self.limiter = pacing, path, limiter

    def acquire(self) -> float:
        with self.pacing.lock:
            waited = self.limiter.acquire()
            self.pacing.sent[self.path].append(self.pacing.clock())
        return waited

    def observe(self, window: ServerWindow) -> None:
        self.limiter.observe(window)


@pytest.fixture
def pacing(monkeypatch: pytest.MonkeyPatch) -> Pacing:
    pacing = Pacing()
    monkeypatch.setattr(client_module, "limiter_for", pacing.limiter_for)
    return pacing


@pytest.fixture
def targets(simulator: KlaviyoSimulator) -> list[str]:
    """The target of every request the simulator answers."""
    seen: list[str] = []
    handle = simulator._api.handle

    def recording(method: str, target: str, headers: Any) -> Any:
        seen.append(target)
        return handle(method, target, headers)

    simulator._api.handle = recording  # type: ignore[method-assign]
    return seen


def load_profiles(defs: dg.Definitions, instance: dg.DagsterInstance, predictive: bool) -> dict[str, Any]:
    """Materialize every day of profiles in one run; the metadata of its materialization."""
    asset = defs.get_assets_def(asset_key(PROFILES))
    klaviyo = defs.resources["klaviyo"].model_copy(
        update={"predictive_analytics": predictive, "page_size": PAGE_SIZE}
    )
    tags = partition_range_tags(SIM_START.date(), (SIM_END - timedelta(days=1)).date())
    result = dg.materialize(
        [asset], instance=instance, resources={**defs.resources, "klaviyo": klaviyo}, tags=tags
    )
    assert result.success
    return {k: v.value for k, v in result.asset_materializations_for_node(asset.op.name)[0].metadata.items()}


def asked_for(targets: list[str]) -> list[list[str]]:
    """The additional fields of each request to /api/profiles."""
    profiles = [t for t in targets if urlsplit(t).path.rstrip("/") == PROFILES.path]
    assert profiles, "no request reached /api/profiles: the check proves nothing"
    return [dict(parse_qsl(urlsplit(t).query)).get(ADDITIONAL, "").split(",") for t in profiles]


def stored_predictive(db_path: Path) -> dict[str, Any]:
    with duckdb.connect(str(db_path), read_only=True) as conn:
        kind = conn.execute(
            "SELECT data_type FROM information_schema.columns WHERE table_schema = 'klaviyo' "
            "AND table_name = 'profiles' AND column_name = ?",
            [PREDICTIVE_ANALYTICS],
        ).fetchone()
        assert kind == ("JSON",)
        table = qualified_name(conn, "klaviyo", "profiles")
        rows = conn.execute(f"SELECT id, {PREDICTIVE_ANALYTICS} FROM {table}").fetchall()
    return {pid: None if text is None else orjson.loads(text) for pid, text in rows}


def profile_columns(db_path: Path) -> set[str]:
    with duckdb.connect(str(db_path), read_only=True) as conn:
        return {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'klaviyo' "
                "AND table_name = 'profiles'"
            ).fetchall()
        }


def test_with_the_option_every_profile_lands_with_its_predictive_analytics(
    defs, simulator, db_path, instance, pacing, targets
) -> None:
    meta = load_profiles(defs, instance, predictive=True)
    # Every request asked for them (first pages and the cursor pages that follow).
    assert all(sorted(fields) == ["predictive_analytics", "subscriptions"] for fields in asked_for(targets))
    # Each profile of the window holds exactly what the simulator serves.
    in_window = simulator.ids("profiles", SIM_START, SIM_END)
    served = {
        r["id"]: r["attributes"][PREDICTIVE_ANALYTICS]
        for r in simulator.records("profiles", additional_fields=[PREDICTIVE_ANALYTICS])
        if r["id"] in in_window
    }
    assert stored_predictive(db_path) == served
    values = list(served.values())
    assert any(v["predicted_clv"] is not None for v in values), "no profile with a prediction"
    assert any(v["historic_clv"] is None for v in values), "no profile without one (never ordered)"
    # Paced at the slower limit: every request through the 10/s, 150/m limiter, at most 9 a second
    # (the client's headroom), the run waiting for it.
    assert pacing.limits[PROFILES.path] == {PREDICTIVE_RATE_LIMIT}
    assert len(pacing.sent[PROFILES.path]) == meta["requests"] > 2 * PREDICTIVE_RATE_LIMIT.burst_per_s
    assert pacing.most_in_one_second(PROFILES.path) == int(PREDICTIVE_RATE_LIMIT.burst_per_s * BURST_HEADROOM)
    assert meta["pacing_wait_s"] > 0


def test_without_the_option_nothing_changes(defs, simulator, db_path, instance, pacing, targets) -> None:
    meta = load_profiles(defs, instance, predictive=False)
    assert all(fields == ["subscriptions"] for fields in asked_for(targets))
    assert PREDICTIVE_ANALYTICS not in profile_columns(db_path)
    assert {"id", "email", "subscriptions", "updated"} <= profile_columns(db_path)
    # The same number of requests at the catalogue's 75/s never waits.
    assert pacing.limits[PROFILES.path] == {PROFILES.rate_limit}
    assert len(pacing.sent[PROFILES.path]) == meta["requests"] > 2 * PREDICTIVE_RATE_LIMIT.burst_per_s
    assert meta["pacing_wait_s"] == 0


def test_switching_the_option_on_adds_the_column_to_a_loaded_table(
    defs, simulator, db_path, instance, pacing
) -> None:
    load_profiles(defs, instance, predictive=False)
    before = profile_columns(db_path)
    meta = load_profiles(defs, instance, predictive=True)
    assert profile_columns(db_path) == before | {PREDICTIVE_ANALYTICS}
    assert meta["columns_added"] == PREDICTIVE_ANALYTICS
    stored = stored_predictive(db_path)
    assert set(stored) == simulator.ids("profiles", SIM_START, SIM_END)
    assert all(value is not None for value in stored.values())
