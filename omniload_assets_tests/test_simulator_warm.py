"""The benchmark's simulator modes: pre-serialized events and range-narrowed sorted scans change nothing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from omniload_assets.klaviyo.catalog import get_table
from omniload_assets.klaviyo.client import KlaviyoClient
from omniload_assets.klaviyo.windows import TimeWindow
from omniload_assets_tests.records import iter_records
from omniload_assets_tests.simulator import KlaviyoSimulator

START, END = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 4, tzinfo=UTC)
WINDOW = TimeWindow(datetime(2024, 1, 2, 3, tzinfo=UTC), datetime(2024, 1, 3, 5, tzinfo=UTC))


def fetch(sim: KlaviyoSimulator, table: str, window: TimeWindow | None, page_size: int) -> list[dict]:
    with KlaviyoClient(sim.api_key, base_url=sim.base_url) as client:
        return [r for b in iter_records(client, get_table(table), window, page_size=page_size) for r in b]


def test_warmed_events_are_served_exactly_as_built() -> None:
    scale = {"events": 3000, "profiles": 200}
    cold = KlaviyoSimulator(seed=4, scale=scale, start=START, end=END, rate_limits=False)
    warm = KlaviyoSimulator(seed=4, scale=scale, start=START, end=END, rate_limits=False)
    warm.warm(processes=2)
    with cold, warm:
        changed = warm.mutate("events", updated=5, added=3, at=datetime(2024, 1, 2, 12, tzinfo=UTC))
        cold.mutate("events", updated=5, added=3, at=datetime(2024, 1, 2, 12, tzinfo=UTC))
        got, expected = fetch(warm, "events", WINDOW, 200), fetch(cold, "events", WINDOW, 200)
    assert got == expected
    assert len(changed["added"]) == 3 and got
    assert {r["id"] for r in got} >= set(changed["added"])


@pytest.mark.parametrize("page_size", [7, 100])
def test_sorted_windows_of_profiles_page_as_without_narrowing(page_size) -> None:
    """Profiles sorted and filtered on ``updated`` skip to the window: same records, same order."""
    with KlaviyoSimulator(seed=9, scale={"profiles": 400}, start=START, end=END, rate_limits=False) as sim:
        sim.add_record("profiles", {"id": "UNDATED", "attributes": {"email": "x@example.com"}})
        got = fetch(sim, "profiles", WINDOW, page_size)
        expected_ids = sim.ids("profiles", WINDOW.start, WINDOW.end)
    ids = [r["id"] for r in got]
    assert ids
    assert len(ids) == len(set(ids))
    assert set(ids) == expected_ids
    keys = [r["attributes"]["updated"] for r in got]
    assert keys == sorted(keys, key=lambda v: datetime.fromisoformat(v))


def test_warming_builds_the_same_children() -> None:
    """Warming builds every parent with its members, messages and actions, as serving would."""
    warm = KlaviyoSimulator(seed=4, start=START, end=END)
    warm.warm()
    cold = KlaviyoSimulator(seed=4, start=START, end=END)
    for kind in ("lists", "segments"):
        assert warm.members(kind) == cold.members(kind) and warm.members(kind)
    for table in ("campaign-messages", "flow-actions", "flow-messages"):
        assert warm.records(table) == cold.records(table) and warm.records(table), table
