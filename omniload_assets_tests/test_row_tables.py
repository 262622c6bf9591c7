"""``RowBuilder.table`` (column by column, used for every page) against the per-row reference path."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from omniload_assets.klaviyo.catalog import TABLES, get_table
from omniload_assets.klaviyo.rows import RowBuilder
from omniload_assets_tests.simulator import KlaviyoSimulator


@pytest.fixture(scope="module")
def sim_records() -> dict[str, list[dict]]:
    sim = KlaviyoSimulator(
        seed=23,
        scale={"events": 600, "profiles": 300},
        start=datetime(2024, 1, 1, tzinfo=UTC),
        end=datetime(2024, 1, 3, tzinfo=UTC),
    )
    extra = {"profiles": ["subscriptions"], "templates": ["definition"]}
    return {t.name: sim.records(t.name, extra.get(t.name, [])) for t in TABLES}


def per_row(spec_name: str, records: list[dict]) -> tuple[pa.Table, dict[str, str]]:
    builder = RowBuilder(get_table(spec_name))
    table = builder.to_arrow([builder.row(r) for r in copy.deepcopy(records)])
    return table, builder.column_types()


def columnar(spec_name: str, records: list[dict]) -> tuple[pa.Table, dict[str, str]]:
    builder = RowBuilder(get_table(spec_name))
    table = builder.table(copy.deepcopy(records))
    return table, builder.column_types()


@pytest.mark.parametrize("table", [t.name for t in TABLES])
def test_every_table_builds_the_same_table_column_by_column(sim_records, table) -> None:
    records = sim_records[table]
    assert records
    expected, expected_types = per_row(table, records)
    got, got_types = columnar(table, records)
    assert got_types == expected_types
    assert got.schema == expected.schema
    assert got.equals(expected)


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


@pytest.mark.parametrize(("attribute", "value"), DRIFT)
def test_drifting_values_land_exactly_as_on_the_per_row_path(sim_records, attribute, value) -> None:
    records = copy.deepcopy(sim_records["events"][:50])
    records[7]["attributes"][attribute] = value
    expected, expected_types = per_row("events", records)
    got, got_types = columnar("events", records)
    assert got_types == expected_types
    assert got.equals(expected)


def test_pages_with_something_unusual_fall_back_to_the_per_row_path(sim_records) -> None:
    records = copy.deepcopy(sim_records["events"][:20])
    records[3]["relationships"]["campaign"] = {"data": {"type": "campaign", "id": "C1"}}
    records[4]["attributes"]["Event Properties"] = {"clash": True}  # same column as event_properties
    records[5]["relationships"]["metric"] = "not an object"
    expected, expected_types = per_row("events", records)
    got, got_types = columnar("events", records)
    assert got_types == expected_types
    assert got.equals(expected)
