"""The fast ways to build rows against the per-row reference path (``RowBuilder.row``):
``RowBuilder.table`` (column by column, from dicts) and ``RowBuilder.page_table`` (from the page's
``msgspec`` structs, falling back to ``table`` for pages that do not fit them)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import orjson
import pyarrow as pa
import pytest

from omniload_assets.klaviyo.catalog import TABLES, get_table
from omniload_assets.klaviyo.pages import PageBatch, read_page
from omniload_assets.klaviyo.rows import RowBuilder
from omniload_assets_tests.simulator import KlaviyoSimulator

#: Tables whose rows are resources as the simulator keeps them (memberships are pairs, not records).
RESOURCE_TABLES = [t for t in TABLES if t.member_id_column is None]


@pytest.fixture(scope="module")
def sim_records() -> dict[str, list[dict]]:
    sim = KlaviyoSimulator(
        seed=23,
        scale={"events": 600, "profiles": 300},
        start=datetime(2024, 1, 1, tzinfo=UTC),
        end=datetime(2024, 1, 3, tzinfo=UTC),
    )
    extra = {"profiles": ["subscriptions"], "templates": ["definition"]}
    return {t.name: sim.records(t.name, extra.get(t.name, [])) for t in RESOURCE_TABLES}


def per_row(spec_name: str, records: list[dict]) -> tuple[pa.Table, dict[str, str]]:
    builder = RowBuilder(get_table(spec_name))
    table = builder.to_arrow([builder.row(r) for r in copy.deepcopy(records)])
    return table, builder.column_types()


def columnar(spec_name: str, records: list[dict]) -> tuple[pa.Table, dict[str, str]]:
    builder = RowBuilder(get_table(spec_name))
    table = builder.table(copy.deepcopy(records))
    return table, builder.column_types()


def page(spec_name: str, records: list[dict]) -> PageBatch:
    body = orjson.dumps({"data": records, "links": {"self": "x", "next": None}})
    return PageBatch(read_page(get_table(spec_name), body))


def from_page(spec_name: str, records: list[dict]) -> tuple[pa.Table, dict[str, str]]:
    builder = RowBuilder(get_table(spec_name))
    table = builder.page_table(page(spec_name, records))
    return table, builder.column_types()


FAST_PATHS = [columnar, from_page]


@pytest.mark.parametrize("build", FAST_PATHS)
@pytest.mark.parametrize("table", [t.name for t in RESOURCE_TABLES])
def test_every_table_builds_the_same_table(sim_records, table, build) -> None:
    records = sim_records[table]
    assert records
    expected, expected_types = per_row(table, records)
    got, got_types = build(table, records)
    assert got_types == expected_types
    assert got.schema == expected.schema
    assert got.equals(expected)


def test_simulated_event_pages_fit_the_structs(sim_records) -> None:
    """Event pages as Klaviyo documents them take the struct path (the only endpoint whose rate
    limit outruns the dict path); profiles carry an undocumented attribute and take the other."""
    assert page("events", sim_records["events"]).resources() is not None
    assert page("profiles", sim_records["profiles"]).resources() is None


def test_keep_selects_records_on_both_paths(sim_records) -> None:
    records = sim_records["events"][:10]
    fitting = page("events", records)
    records_drift = copy.deepcopy(records)
    records_drift[0]["attributes"]["timestamp"] = "12"
    drifting = page("events", records_drift)
    assert fitting.page.resources is not None and drifting.page.resources is None
    for batch, source in ((fitting, records), (drifting, records_drift)):
        kept = PageBatch(batch.page, [1, 4, 7])
        table = RowBuilder(get_table("events")).page_table(kept)
        assert table.column("id").to_pylist() == [source[i]["id"] for i in (1, 4, 7)]
        assert [r["id"] for r in kept.records()] == [source[i]["id"] for i in (1, 4, 7)]


DRIFT = [
    ("timestamp", "12"),  # a number as text: converts
    ("timestamp", "soon"),  # no number at all: raw column
    ("timestamp", True),
    ("timestamp", 2**63),  # beyond BIGINT: raw column
    ("datetime", "2024-01-01T00:00:00"),  # no offset: UTC
    ("datetime", "2024-01-01 05:30:00+05:30"),
    ("datetime", "yesterday"),
    ("datetime", 1_704_067_200),  # epoch seconds
    ("uuid", 5),
    ("uuid", {"nested": [1, 2]}),
    ("event_properties", "plain text"),
    ("event_properties", None),
    ("Brand New", {"x": 1}),  # an undocumented attribute: a JSON column
    ("id", "shadow"),  # an attribute named like the key: kept beside it
]


@pytest.mark.parametrize("build", FAST_PATHS)
@pytest.mark.parametrize(("attribute", "value"), DRIFT)
def test_drifting_values_land_exactly_as_on_the_per_row_path(sim_records, attribute, value, build) -> None:
    records = copy.deepcopy(sim_records["events"][:50])
    records[7]["attributes"][attribute] = value
    expected, expected_types = per_row("events", records)
    got, got_types = build("events", records)
    assert got_types == expected_types
    assert got.equals(expected)


@pytest.mark.parametrize("build", FAST_PATHS)
def test_pages_with_something_unusual_fall_back_to_the_per_row_path(sim_records, build) -> None:
    records = copy.deepcopy(sim_records["events"][:20])
    records[3]["relationships"]["campaign"] = {"data": {"type": "campaign", "id": "C1"}}
    records[4]["attributes"]["Event Properties"] = {"clash": True}  # same column as event_properties
    records[5]["relationships"]["metric"] = "not an object"
    expected, expected_types = per_row("events", records)
    got, got_types = build("events", records)
    assert got_types == expected_types
    assert got.equals(expected)
