"""The client against the simulator over loopback HTTP: every table, complete, for a window."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest

from omniload_assets.klaviyo.catalog import TABLES, get_table
from omniload_assets.klaviyo.client import ClientStats, KlaviyoClient
from omniload_assets.klaviyo.windows import TimeWindow
from omniload_assets_tests.records import iter_records
from omniload_assets_tests.simulator import KlaviyoSimulator

WINDOW = TimeWindow(datetime(2024, 1, 3, tzinfo=UTC), datetime(2024, 1, 8, tzinfo=UTC))


def extract_ids(
    sim: KlaviyoSimulator,
    table: str,
    window: TimeWindow | None,
    *,
    parallelism: int = 1,
    page_size: int | None = None,
    stats: ClientStats | None = None,
) -> list[str]:
    with KlaviyoClient(sim.api_key, base_url=sim.base_url) as client:
        batches = iter_records(
            client, get_table(table), window, parallelism=parallelism, page_size=page_size, stats=stats
        )
        return [r["id"] for batch in batches for r in batch]


@pytest.mark.parametrize("table", [t.name for t in TABLES])
@pytest.mark.parametrize("parallelism", [1, 4])
def test_every_table_extracts_exactly_its_window(simulator, table, parallelism) -> None:
    spec = get_table(table)
    window = WINDOW if spec.partitioned else None
    got = extract_ids(simulator, table, window, parallelism=parallelism)
    expected = simulator.ids(table, WINDOW.start, WINDOW.end) if window else simulator.ids(table)
    assert expected, f"the simulator has no {table} in {WINDOW}: the test proves nothing"
    assert not [i for i, n in Counter(got).items() if n > 1]
    assert set(got) == expected


def test_dense_windows_are_split_among_workers_without_loss(simulator) -> None:
    """Small pages make a dense window: idle workers take over the rest of busy workers' windows."""
    stats = ClientStats()
    got = extract_ids(simulator, "events", WINDOW, parallelism=6, page_size=20, stats=stats)
    expected = simulator.ids("events", WINDOW.start, WINDOW.end)
    assert len(got) == len(expected) == len(set(got))
    assert set(got) == expected
    # A single cursor would need exactly ceil(n / 20) pages; each hand-over adds a partial page.
    assert stats.pages > -(-len(expected) // 20)
    # Far more pages than one cursor could have served in the same number of requests: split happened.
    assert stats.pages >= len(expected) // 20


def test_campaigns_of_every_channel_and_archived_ones_arrive(simulator) -> None:
    with KlaviyoClient(simulator.api_key, base_url=simulator.base_url) as client:
        records = [r for b in iter_records(client, get_table("campaigns"), WINDOW) for r in b]
    channels = simulator.campaign_channels()
    got = {r["id"] for r in records}
    assert {channels[i] for i in got} == {"email", "sms", "mobile_push"}
    archived = {r["id"] for r in records if r["attributes"]["definition"]["archived"]}
    assert archived, "archived campaigns are missing"
    assert got == simulator.ids("campaigns", WINDOW.start, WINDOW.end)


def test_profiles_carry_their_subscriptions(simulator) -> None:
    with KlaviyoClient(simulator.api_key, base_url=simulator.base_url) as client:
        records = [r for b in iter_records(client, get_table("profiles"), WINDOW) for r in b]
    assert records
    assert all("subscriptions" in r["attributes"] for r in records)


@pytest.mark.parametrize("table", ["metrics", "catalog-items", "lists"])
def test_adjacent_windows_partition_the_records(simulator, table) -> None:
    """Client-side (and lower-bound-only) windowing: consecutive days neither overlap nor leave gaps."""
    days = WINDOW.split(5)
    per_day = [extract_ids(simulator, table, day) for day in days]
    union = [i for ids in per_day for i in ids]
    assert union, f"no {table} in {WINDOW}: the test proves nothing"
    assert len(union) == len(set(union))
    assert set(union) == simulator.ids(table, WINDOW.start, WINDOW.end)
    for day, ids in zip(days, per_day, strict=True):
        assert set(ids) == simulator.ids(table, day.start, day.end)


def test_paced_extraction_sees_few_429s_under_real_limits() -> None:
    """With Klaviyo's real limits enforced, pacing keeps a parallel run (nearly) free of 429s."""
    start, end = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 3, tzinfo=UTC)
    with KlaviyoSimulator(seed=5, start=start, end=end, rate_limits=True) as sim:
        expected = sim.ids("flows", start, end)
        assert expected
        page_size = max(1, len(expected) // 5)  # about a dozen requests at flows' 3/s burst limit
        stats = ClientStats()
        got = extract_ids(
            sim, "flows", TimeWindow(start, end), parallelism=8, page_size=page_size, stats=stats
        )
        assert set(got) == expected
        assert stats.requests >= len(expected) / page_size  # no page holds more than page_size
        assert sim.stats.throttled == stats.throttled <= 1
