"""Unit tests of RowBuilder: JSON:API resource objects to typed rows and Arrow tables."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from omniload_assets.klaviyo.catalog import TABLES, get_table
from omniload_assets.klaviyo.pages import PageBatch, RawPage, read_page
from omniload_assets.klaviyo.rows import RowBuilder, column_name, key_value

EVENTS = get_table("events")

#: The event of Airbyte's unit_tests/integration/get_events.json (Klaviyo's OpenAPI example values),
#: copied from ../shared/klaviyo/samples/unit_tests_integration/get_events.json.
OPENAPI_EVENT = {
    "type": "event",
    "id": "string",
    "attributes": {
        "timestamp": 0,
        "event_properties": {},
        "datetime": "2022-11-08T01:23:45+00:00",
        "uuid": "string",
    },
    "links": {"self": "string"},
    "relationships": {
        "profile": {
            "data": {"type": "profile", "id": "string"},
            "links": {"self": "string", "related": "string"},
        },
        "metric": {
            "data": {"type": "metric", "id": "string"},
            "links": {"self": "string", "related": "string"},
        },
        "attributions": {
            "data": [{"type": "attribution", "id": "string"}],
            "links": {"self": "string", "related": "string"},
        },
    },
}

#: Airbyte's unit_tests/resource/http/response/events_detailed.json (note: ``timestamp`` is an ISO
#: string there, where Klaviyo documents epoch seconds).
DETAILED_EVENT = {
    "type": "event",
    "id": "event_detailed_001",
    "attributes": {
        "timestamp": "2024-01-15T10:30:00+00:00",
        "datetime": "2024-01-15T10:30:00+00:00",
        "uuid": "550e8400-e29b-41d4-a716-446655440001",
        "event_properties": {
            "value": 149.99,
            "currency": "USD",
            "order_id": "order_001",
            "items": [
                {"product_id": "prod_001", "product_name": "Premium Product", "quantity": 1, "price": 149.99}
            ],
        },
    },
    "relationships": {
        "metric": {"data": {"type": "metric", "id": "metric_001"}},
        "attributions": {"data": [{"type": "attribution", "id": "attr_001"}]},
        "profile": {"data": {"type": "profile", "id": "profile_001"}},
    },
    "links": {"self": "https://a.klaviyo.com/api/events/event_detailed_001"},
}

EXPECTED_ARROW = {
    "VARCHAR": pa.string(),
    "JSON": pa.string(),
    "TIMESTAMPTZ": pa.timestamp("us", tz="UTC"),
    "BIGINT": pa.int64(),
    "DOUBLE": pa.float64(),
    "BOOLEAN": pa.bool_(),
}


def event_with(**attributes) -> dict:
    event = copy.deepcopy(DETAILED_EVENT)
    event["attributes"].update(attributes)
    return event


# -- events --------------------------------------------------------------------------------------


def test_openapi_sample_event_becomes_a_typed_row():
    row = RowBuilder(EVENTS).row(OPENAPI_EVENT)

    assert row == {
        "id": "string",
        "timestamp": 0,
        "event_properties": "{}",
        "datetime": datetime(2022, 11, 8, 1, 23, 45, tzinfo=UTC),
        "uuid": "string",
        "profile_id": "string",
        "metric_id": "string",
        "attributions_ids": '["string"]',
    }


def test_detailed_event_keeps_relationships_and_properties():
    builder = RowBuilder(EVENTS)
    row = builder.row(DETAILED_EVENT)

    assert row["id"] == "event_detailed_001"
    assert row["metric_id"] == "metric_001"
    assert row["profile_id"] == "profile_001"
    assert json.loads(row["attributions_ids"]) == ["attr_001"]
    assert isinstance(row["event_properties"], str)
    assert json.loads(row["event_properties"]) == DETAILED_EVENT["attributes"]["event_properties"]
    assert row["datetime"] == datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
    assert row["uuid"] == "550e8400-e29b-41d4-a716-446655440001"


def test_event_without_profile_has_no_profile_id():
    event = copy.deepcopy(DETAILED_EVENT)
    del event["relationships"]["profile"]
    row = RowBuilder(EVENTS).row(event)
    assert row.get("profile_id") is None
    assert RowBuilder(EVENTS).to_arrow([row]).column("profile_id").to_pylist() == [None]


def test_relationship_links_without_data_are_ignored():
    event = copy.deepcopy(OPENAPI_EVENT)
    event["relationships"]["profile"] = {"links": {"self": "x", "related": "y"}}
    event["relationships"]["metric"] = {"data": None}
    row = RowBuilder(EVENTS).row(event)
    assert "profile_id" not in row
    assert row["metric_id"] is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-15T10:30:00+00:00", datetime(2024, 1, 15, 10, 30, tzinfo=UTC)),
        ("2024-01-15T10:30:00.123456+00:00", datetime(2024, 1, 15, 10, 30, 0, 123456, tzinfo=UTC)),
        ("2024-01-15T10:30:00.5+00:00", datetime(2024, 1, 15, 10, 30, 0, 500000, tzinfo=UTC)),
        ("2024-01-15 10:30:00+00:00", datetime(2024, 1, 15, 10, 30, tzinfo=UTC)),
        ("2024-01-15 10:30:00.000001Z", datetime(2024, 1, 15, 10, 30, 0, 1, tzinfo=UTC)),
        ("2024-01-15T10:30:00Z", datetime(2024, 1, 15, 10, 30, tzinfo=UTC)),
        ("2024-01-15T12:30:00+02:00", datetime(2024, 1, 15, 10, 30, tzinfo=UTC)),
        ("2024-01-15T05:30:00.250-05:00", datetime(2024, 1, 15, 10, 30, 0, 250000, tzinfo=UTC)),
        ("2024-01-15T10:30:00", datetime(2024, 1, 15, 10, 30, tzinfo=UTC)),  # naive: taken as UTC
    ],
)
def test_datetime_formats_become_aware_utc(text, expected):
    row = RowBuilder(EVENTS).row(event_with(datetime=text))
    value = row["datetime"]
    assert value == expected
    assert value.tzinfo is not None
    assert value.utcoffset() == timedelta(0)
    assert "datetime__raw" not in row


# -- unknown attributes and values that do not fit -----------------------------------------------


def test_unknown_attributes_are_kept_as_json_columns():
    builder = RowBuilder(EVENTS)
    row = builder.row(
        event_with(**{"$extra": {"a": 1}, "New Field": [1, "two"], "flag": True, "count": 3, "nothing": None})
    )

    assert json.loads(row["extra"]) == {"a": 1}
    assert json.loads(row["new_field"]) == [1, "two"]
    assert row["flag"] == "true"
    assert row["count"] == "3"
    assert row["nothing"] is None
    types = builder.column_types()
    for col in ("extra", "new_field", "flag", "count", "nothing"):
        assert types[col] == "JSON"
    # Documented columns come first, in catalogue order.
    assert list(types)[: len(EVENTS.column_types())] == list(EVENTS.column_types())


def test_unknown_relationships_become_id_columns():
    event = copy.deepcopy(DETAILED_EVENT)
    event["relationships"]["tags"] = {"data": [{"type": "tag", "id": "t1"}, {"type": "tag", "id": "t2"}]}
    event["relationships"]["flow-message"] = {"data": {"type": "flow-message", "id": "fm1"}}
    builder = RowBuilder(EVENTS)
    row = builder.row(event)
    assert json.loads(row["tags_ids"]) == ["t1", "t2"]
    assert row["flow_message_id"] == "fm1"
    assert builder.column_types()["tags_ids"] == "JSON"
    assert builder.column_types()["flow_message_id"] == "VARCHAR"


def test_sample_timestamp_that_is_not_epoch_seconds_is_kept_raw():
    builder = RowBuilder(EVENTS)
    row = builder.row(DETAILED_EVENT)
    assert row["timestamp"] is None
    assert json.loads(row["timestamp__raw"]) == "2024-01-15T10:30:00+00:00"
    assert builder.column_types()["timestamp__raw"] == "JSON"


@pytest.mark.parametrize(
    ("table", "attribute", "value"),
    [
        ("events", "datetime", "yesterday"),
        ("events", "datetime", {"not": "a date"}),
        ("events", "timestamp", 12.5),
        ("events", "timestamp", "12.5"),
        ("events", "timestamp", 2**63),  # does not fit BIGINT
        ("catalog-variants", "inventory_policy", 18446744073709551615),
        ("catalog-variants", "price", "free"),
        ("catalog-variants", "price", {"amount": 3}),
        ("catalog-variants", "published", "yes"),
        ("catalog-variants", "published", 2),
        ("metrics", "created", "string"),  # metrics' created/updated are plain strings in the spec
        ("flows", "archived", "maybe"),
    ],
)
def test_values_that_do_not_fit_their_type_are_kept_in_raw_column(table, attribute, value):
    spec = get_table(table)
    builder = RowBuilder(spec)
    row = builder.row({"type": spec.resource_type, "id": "r1", "attributes": {attribute: value}})

    assert row[attribute] is None
    assert json.loads(row[f"{attribute}__raw"]) == value
    assert builder.column_types()[f"{attribute}__raw"] == "JSON"
    # The table still builds with the documented type and the raw column next to it.
    arrow = builder.to_arrow([row])
    assert arrow.schema.field(attribute).type == EXPECTED_ARROW[spec.column_types()[attribute]]
    assert json.loads(arrow.column(f"{attribute}__raw")[0].as_py()) == value


@pytest.mark.parametrize(
    ("table", "attribute", "value", "expected"),
    [
        ("events", "timestamp", "1705314600", 1705314600),
        ("events", "timestamp", 1705314600.0, 1705314600),
        ("events", "timestamp", 2**63 - 1, 2**63 - 1),
        ("catalog-variants", "price", "12.5", 12.5),
        ("catalog-variants", "price", 3, 3.0),
        ("catalog-variants", "published", "false", False),
        ("catalog-variants", "published", 1, True),
        ("catalog-variants", "inventory_policy", 1, 1),
        ("profiles", "email", "a@example.com", "a@example.com"),
        ("profiles", "external_id", 42, "42"),
    ],
)
def test_values_that_convert_cleanly_get_no_raw_column(table, attribute, value, expected):
    spec = get_table(table)
    builder = RowBuilder(spec)
    row = builder.row({"type": spec.resource_type, "id": "r1", "attributes": {attribute: value}})
    assert row[attribute] == expected
    assert type(row[attribute]) is type(expected)
    assert f"{attribute}__raw" not in row
    assert f"{attribute}__raw" not in builder.column_types()
    builder.to_arrow([row])


# -- Arrow ---------------------------------------------------------------------------------------


def test_to_arrow_gives_the_documented_types_for_events():
    builder = RowBuilder(EVENTS)
    rows = [builder.row(OPENAPI_EVENT), builder.row(DETAILED_EVENT)]
    table = builder.to_arrow(rows)

    assert table.schema.field("id").type == pa.string()
    assert table.schema.field("timestamp").type == pa.int64()
    assert table.schema.field("datetime").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("uuid").type == pa.string()
    assert table.schema.field("event_properties").type == pa.string()
    assert table.schema.field("metric_id").type == pa.string()
    assert table.schema.field("profile_id").type == pa.string()
    assert table.schema.field("attributions_ids").type == pa.string()
    assert table.schema.field("timestamp__raw").type == pa.string()
    assert table.num_rows == 2
    assert table.column("datetime").to_pylist() == [
        datetime(2022, 11, 8, 1, 23, 45, tzinfo=UTC),
        datetime(2024, 1, 15, 10, 30, tzinfo=UTC),
    ]
    assert table.column("timestamp").to_pylist() == [0, None]
    # A column first seen on a later row is NULL on the earlier ones.
    assert table.column("timestamp__raw").to_pylist() == [None, '"2024-01-15T10:30:00+00:00"']


@pytest.mark.parametrize("spec", TABLES, ids=lambda s: s.name)
def test_every_table_maps_its_documented_columns_to_the_expected_arrow_types(spec):
    table = RowBuilder(spec).to_arrow([])
    assert table.num_rows == 0
    assert table.schema.names == list(spec.column_types())
    for col, duck_type in spec.column_types().items():
        assert table.schema.field(col).type == EXPECTED_ARROW[duck_type], col


def test_to_arrow_of_a_catalog_variant_has_booleans_doubles_and_timestamps():
    spec = get_table("catalog-variants")
    builder = RowBuilder(spec)
    row = builder.row(
        {
            "type": "catalog-variant",
            "id": "$custom:::$default:::SKU-1",
            "attributes": {
                "external_id": "SKU-1",
                "price": 19.5,
                "inventory_quantity": 7,
                "inventory_policy": 1,
                "published": True,
                "images": ["https://example.com/a.png"],
                "custom_metadata": {"k": "v"},
                "created": "2024-01-01T00:00:00.000000+00:00",
                "updated": "2024-01-02 03:04:05+00:00",
            },
            "relationships": {"item": {"data": {"type": "catalog-item", "id": "$custom:::$default:::P1"}}},
        }
    )
    table = builder.to_arrow([row])
    got = table.to_pylist()[0]
    assert got["price"] == 19.5
    assert got["inventory_quantity"] == 7.0
    assert got["inventory_policy"] == 1
    assert got["published"] is True
    assert json.loads(got["images"]) == ["https://example.com/a.png"]
    assert json.loads(got["custom_metadata"]) == {"k": "v"}
    assert got["updated"] == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert got["item_id"] == "$custom:::$default:::P1"
    assert table.schema.field("published").type == pa.bool_()
    assert table.schema.field("price").type == pa.float64()


# -- helpers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attribute", "column"),
    [("$source", "source"), ("New Field", "new_field"), ("a-b.c", "a_b_c"), ("$$$", "_"), ("ok_1", "ok_1")],
)
def test_column_name(attribute, column):
    assert column_name(attribute) == column


def test_an_incremental_key_parses_or_gives_none():
    assert key_value(DETAILED_EVENT["attributes"]["datetime"]) == datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
    assert key_value("garbage") is None
    assert key_value(None) is None
    assert key_value(1e20) is None  # out of range, no crash


# -- every shared sample (skipped where ../shared is not mounted) --------------------------------

SAMPLES = Path("/work/shared/klaviyo/samples")
#: The table of each JSON:API type (profiles for a profile, not a membership table).
TABLE_BY_TYPE = {spec.resource_type: spec for spec in TABLES if spec.member_id_column is None}


def _sample_resources() -> list[tuple[str, dict]]:
    found: list[tuple[str, dict]] = []
    if not SAMPLES.is_dir():
        return found
    for path in sorted((SAMPLES / "unit_tests_resource_http_response").glob("*.json")):
        data = json.loads(path.read_text())
        for item in data if isinstance(data, list) else [data]:
            found.append((path.name, item))
    envelope = json.loads((SAMPLES / "unit_tests_integration" / "get_events.json").read_text())
    found += [("get_events.json", item) for item in envelope["data"] + envelope["included"]]
    for n, line in enumerate((SAMPLES / "integration_tests" / "expected_records.jsonl").open()):
        found.append((f"expected_records:{n}", json.loads(line)["data"]))
    return [(name, item) for name, item in found if item.get("type") in TABLE_BY_TYPE]


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="shared Klaviyo samples not available")
def test_every_shared_sample_converts_without_losing_a_value():
    samples = _sample_resources()
    assert len(samples) > 50
    for name, item in samples:
        spec = TABLE_BY_TYPE[item["type"]]
        builder = RowBuilder(spec)
        row = builder.row(item)
        assert row["id"] == item["id"], name
        for attribute, value in (item.get("attributes") or {}).items():
            if value is None or value == "":
                continue
            col = column_name(attribute)
            assert row.get(col) is not None or f"{col}__raw" in row, f"{name}: {attribute} lost"
        for rel, body in (item.get("relationships") or {}).items():
            data = body.get("data") if isinstance(body, dict) else None
            if isinstance(data, list):
                assert json.loads(row[rel.replace("-", "_") + "_ids"]) == [d["id"] for d in data], name
            elif isinstance(data, dict):
                assert row[rel.replace("-", "_") + "_id"] == data["id"], name
        table = builder.to_arrow([row])
        for col, duck_type in spec.column_types().items():
            assert table.schema.field(col).type == EXPECTED_ARROW[duck_type], (name, col)


# -- child tables ----------------------------------------------------------------------------------


def _body(records: list[dict]) -> bytes:
    return json.dumps({"data": records, "links": {"self": "x", "next": None}}).encode()


def _member(pid: str, joined: str | None, **attributes: object) -> dict:
    return {
        "type": "profile",
        "id": pid,
        "attributes": {"joined_group_at": joined, **attributes},
        "relationships": {"lists": {"links": {"self": "x", "related": "y"}}},
        "links": {"self": f"https://a.klaviyo.com/api/profiles/{pid}/"},
    }


def test_a_membership_row_has_the_membership_key_the_parent_and_the_member():
    spec = get_table("list-profiles")
    page = read_page(spec, _body([_member("P1", "2024-01-02T03:04:05+00:00"), _member("P2", None)]))
    table = RowBuilder(spec).page_table(PageBatch(page, parent="L1"))
    assert table.schema.names == ["id", "list_id", "profile_id", "joined_group_at"]
    assert table.to_pylist() == [
        {
            "id": "L1:P1",
            "list_id": "L1",
            "profile_id": "P1",
            "joined_group_at": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        },
        {"id": "L1:P2", "list_id": "L1", "profile_id": "P2", "joined_group_at": None},
    ]
    kept = RowBuilder(spec).page_table(PageBatch(page, keep=[1], parent="L9"))
    assert kept.column("id").to_pylist() == ["L9:P2"]


def test_the_same_profile_in_two_segments_gives_two_keys():
    spec = get_table("segment-profiles")
    builder = RowBuilder(spec)
    body = _body([_member("P1", "2024-01-02T00:00:00+00:00")])
    keys = [builder.page_table(PageBatch(read_page(spec, body), parent=s)).column("id")[0] for s in "AB"]
    assert [k.as_py() for k in keys] == ["A:P1", "B:P1"]


def test_a_member_attribute_named_like_a_key_column_cannot_overwrite_it():
    spec = get_table("list-profiles")
    page = read_page(spec, _body([_member("P1", None, list_id="forged", email="a@example.com")]))
    builder = RowBuilder(spec)
    row = builder.page_table(PageBatch(page, parent="L1")).to_pylist()[0]
    assert (row["id"], row["list_id"], row["profile_id"]) == ("L1:P1", "L1", "P1")
    assert row["list_id__attribute"] == '"forged"' and row["email"] == '"a@example.com"'


def test_a_childs_parent_column_is_the_parent_it_was_read_for():
    spec = get_table("flow-actions")
    action = {
        "type": "flow-action",
        "id": "A1",
        "attributes": {"created": "2024-01-02T00:00:00+00:00", "updated": None, "definition": {"type": "x"}},
        "relationships": {"flow": {"data": {"type": "flow", "id": "F1"}}},
    }
    no_link = {**action, "id": "A2", "relationships": {}}
    table = RowBuilder(spec).page_table(PageBatch(read_page(spec, _body([action, no_link])), parent="F1"))
    assert table.schema.names == list(spec.column_types())
    assert table.column("flow_id").to_pylist() == ["F1", "F1"]
    assert table.column("id").to_pylist() == ["A1", "A2"]
    # Without a parent (a decode process's rows) the rows stay as the page has them.
    alone = RowBuilder(spec).page_table(PageBatch(read_page(spec, _body([no_link]))))
    assert alone.column("flow_id").to_pylist() == [None]


def test_rows_a_decode_process_built_get_their_parent_in_the_run():
    spec = get_table("list-profiles")
    worker = RowBuilder(spec)  # as in a decode process: no parent known
    body = _body([_member("P1", None), _member("P2", None)])
    built = worker.page_table(PageBatch(read_page(spec, body)))
    page = RawPage(body, [None, None], None, None, table=built, extra_columns={})
    rows = RowBuilder(spec).page_table(PageBatch(page, keep=[1], parent="L1"))
    assert rows.to_pylist() == [{"id": "L1:P2", "list_id": "L1", "profile_id": "P2", "joined_group_at": None}]


def test_tables_without_a_parent_ignore_a_parent_id():
    spec = get_table("tags")
    page = read_page(spec, _body([{"type": "tag", "id": "t1", "attributes": {"name": "n"}}]))
    assert RowBuilder(spec).page_table(PageBatch(page, parent="X")).to_pylist() == [
        {"id": "t1", "name": "n", "tag_group_id": None}
    ]
