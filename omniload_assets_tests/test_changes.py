"""The change probe: which days changed after a mark, asked as cheaply as each endpoint allows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from omniload_assets.automation import incremental_tables
from omniload_assets.klaviyo.catalog import get_table
from omniload_assets.klaviyo.changes import ChangeProbe, midnight, record_key
from omniload_assets.klaviyo.resource import KlaviyoResource
from omniload_assets_tests.conftest import SIM_END, SIM_START
from omniload_assets_tests.simulator import KlaviyoSimulator

MARK = datetime(2024, 1, 10, tzinfo=UTC)


@dataclass
class ScriptedClient:
    """Answers each ``get_json`` with the next scripted key (None: an empty page) and records params."""

    answers: list[datetime | None] = field(default_factory=list)
    pages: list[list[Any]] = field(default_factory=list)
    calls: list[dict[str, str]] = field(default_factory=list)

    def get_json(self, spec, url, params=None, stats=None) -> dict[str, Any]:
        assert url == spec.path
        self.calls.append(dict(params or {}))
        key = self.answers.pop(0)
        return {"data": [] if key is None else [{"attributes": {spec.incremental_key: key.isoformat()}}]}

    def iter_pages(self, spec, params, stats=None):
        self.calls.append(dict(params))
        return iter([SimpleNamespace(keys=keys) for keys in self.pages])


def test_nothing_changed_costs_one_request():
    client = ScriptedClient(answers=[None])
    assert ChangeProbe(client).changes(get_table("events"), MARK) is None
    assert client.calls == [
        {
            "sort": "-datetime",
            "filter": "greater-than(datetime,2024-01-10T00:00:00+00:00)",
            "fields[event]": "datetime",
            "page[size]": "1",
        }
    ]


def test_skip_scan_asks_once_per_changed_day_with_the_operators_the_endpoint_has():
    # profiles filter with greater-than only: "at or after midnight" is "after 1 µs before it".
    newest, earlier = datetime(2024, 1, 15, 9, tzinfo=UTC), datetime(2024, 1, 12, 10, tzinfo=UTC)
    client = ScriptedClient(answers=[newest, earlier, newest])
    probe = ChangeProbe(client)
    change = probe.changes(get_table("profiles"), MARK)
    assert change is not None
    assert change.newest == newest and change.days == {date(2024, 1, 12), date(2024, 1, 15)}
    assert [(c["sort"], c["filter"]) for c in client.calls] == [
        ("-updated", "greater-than(updated,2024-01-10T00:00:00+00:00)"),
        ("updated", "greater-than(updated,2024-01-10T00:00:00+00:00)"),
        ("updated", "greater-than(updated,2024-01-12T23:59:59.999999+00:00)"),
    ]
    assert probe.stats.pages == 3


def test_filter_variants_are_asked_apart_and_only_the_changed_one_is_scanned():
    changed = datetime(2024, 1, 10, 5, tzinfo=UTC)  # the mark's own day: no earlier day to scan
    client = ScriptedClient(answers=[None, changed])
    change = ChangeProbe(client).changes(get_table("campaigns"), MARK)
    assert change is not None and change.days == {date(2024, 1, 10)}
    assert [c["filter"] for c in client.calls] == [
        "and(equals(archived,false),greater-than(updated_at,2024-01-10T00:00:00+00:00))",
        "and(equals(archived,true),greater-than(updated_at,2024-01-10T00:00:00+00:00))",
    ]


def test_endpoints_without_key_filters_are_read_once_with_only_the_key():
    client = ScriptedClient(
        pages=[["2024-01-09T00:00:00+00:00", None, "2024-01-11T01:00:00+00:00"], ["2024-01-13T00:00:00Z"]]
    )
    change = ChangeProbe(client).changes(get_table("catalog-items"), MARK)
    assert change is not None
    assert change.days == {date(2024, 1, 11), date(2024, 1, 13)}
    assert change.newest == datetime(2024, 1, 13, tzinfo=UTC)
    assert client.calls == [{"fields[catalog-item]": "updated", "page[size]": "100"}]
    assert (
        ChangeProbe(ScriptedClient(pages=[["2024-01-09T00:00:00+00:00"]])).changes(get_table("metrics"), MARK)
        is None
    )


def test_a_table_without_an_incremental_key_cannot_be_probed():
    with pytest.raises(ValueError, match="no incremental key"):
        ChangeProbe(ScriptedClient()).changes(get_table("tags"), MARK)


def test_record_key_and_midnight():
    spec = get_table("events")
    assert record_key(spec, {"attributes": {"datetime": "2024-01-02T03:04:05Z"}}) == datetime(
        2024, 1, 2, 3, 4, 5, tzinfo=UTC
    )
    assert record_key(spec, {"attributes": {}}) is None and record_key(spec, {}) is None
    assert midnight(date(2024, 1, 2)) == datetime(2024, 1, 2, tzinfo=UTC)


# -- against the simulator -----------------------------------------------------------------------


def test_probe_scan_budget_falls_back_to_every_later_day(simulator: KlaviyoSimulator) -> None:
    spec = get_table("profiles")
    mark = SIM_END - timedelta(microseconds=1)
    for day in (12, 14, 17):
        simulator.mutate("profiles", updated=1, added=0, at=datetime(2024, 1, day, 12, tzinfo=UTC))
    klaviyo = KlaviyoResource(api_key=simulator.api_key, base_url=simulator.base_url)
    with klaviyo.get_client() as client:
        exact = ChangeProbe(client).changes(spec, mark)
        budget = ChangeProbe(client, max_scan=1).changes(spec, mark)
    assert exact is not None and budget is not None
    assert exact.days == {date(2024, 1, d) for d in (12, 14, 17)}
    # One scan request found the 12th; the rest of the span counts as changed (a safe superset).
    assert budget.days == {date(2024, 1, d) for d in range(12, 18)}
    assert exact.newest == budget.newest == datetime(2024, 1, 17, 12, tzinfo=UTC)


def test_every_probed_table_is_accepted_by_the_api(simulator: KlaviyoSimulator) -> None:
    """Sorts and filters the probe sends exist on each endpoint (the simulator answers 400 otherwise)."""
    klaviyo = KlaviyoResource(api_key=simulator.api_key, base_url=simulator.base_url)
    mark = SIM_START + timedelta(days=5)
    with klaviyo.get_client() as client:
        for spec in incremental_tables():
            change = ChangeProbe(client).changes(spec, mark)
            assert change is not None, spec.name
            expected = {
                d.date()
                for d in (
                    datetime.fromisoformat(r["attributes"][spec.incremental_key]).astimezone(UTC)
                    for r in simulator.records(spec.name)
                    if r["attributes"].get(spec.incremental_key)
                )
                if d > mark
            }
            assert change.days == expected, spec.name
