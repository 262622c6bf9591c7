"""The product's requests, the simulator's responses and the catalogue's columns against Klaviyo's
OpenAPI document (see the package docstring and ``document.REVISION_CHECKED``)."""

from __future__ import annotations

import dataclasses
import gzip
from collections import Counter
from typing import Any

import orjson
import pytest

from omniload_assets.klaviyo.catalog import TABLES, get_table
from omniload_assets_tests.simulator.endpoints import ENDPOINTS

from . import document
from .checks import (
    EXPECTED_FAILURES,
    IGNORED_ATTRIBUTES,
    TYPE_EXCEPTIONS,
    column_problems,
    filter_terms,
    request_problems,
)
from .conftest import Exchange

pytestmark = pytest.mark.contract

#: The tables listed on their own (child tables are recorded by test_children_contract.py).
LISTINGS = [t for t in TABLES if t.parent is None]
TABLE_NAMES = [t.name for t in LISTINGS]


def of_table(exchanges: list[Exchange], table: str) -> list[Exchange]:
    found = [e for e in exchanges if e.table == table]
    assert found, f"the product sent no request for {table}: the check proves nothing"
    return found


def xfail_known(table: str, check: str) -> None:
    reason = EXPECTED_FAILURES.get((table, check))
    if reason is not None:
        pytest.xfail(reason)


# -- the document and the revision table ------------------------------------------------------------


def test_the_document_is_the_one_the_facts_name(doc) -> None:
    assert document.raw_document()["info"]["version"] == document.DOCUMENT_REVISION
    assert document.endpoint_facts()["_meta"]["spec_revision"] == document.DOCUMENT_REVISION
    for table in TABLE_NAMES:
        assert f"/api/{table}" in doc["paths"] and "get" in doc["paths"][f"/api/{table}"], table


def test_every_fact_of_every_table_names_its_revision() -> None:
    assert set(document.REVISION_CHECKED) == set(TABLE_NAMES) == set(document.TABLE_NAMES)
    for table, facts in document.REVISION_CHECKED.items():
        assert set(facts) == set(document.FACTS), table
        pinned = any(document.PINNED_REVISION in where for where in facts.values())
        assert pinned == (table in document.DELTA_TABLES), table


def test_only_the_delta_tables_differ_between_revisions() -> None:
    facts = document.endpoint_facts()
    changed = {t for t in TABLE_NAMES if isinstance(facts[t].get("rev_2026_10_15_delta"), dict)}
    assert changed == document.DELTA_TABLES
    for table in set(TABLE_NAMES) - changed:
        assert facts[table]["rev_2026_10_15_delta"].startswith("no change detected"), table


def test_a_missing_document_fails_with_one_line(tmp_path) -> None:
    with pytest.raises(document.DocumentMissing) as caught:
        document._read(tmp_path / "openapi-2026-07-15.json")
    message = str(caught.value)
    assert "\n" not in message and "openapi-2026-07-15.json" in message and "missing" in message


# -- requests -------------------------------------------------------------------------------------


def test_the_product_sent_every_kind_of_request(exchanges) -> None:
    """Listings and windows of every table, hand-overs, filter variants, sensor probes, sparse
    fieldsets and additional fields: the checks below see each of them."""
    kinds = Counter((e.table, e.source) for e in exchanges)
    for spec in LISTINGS:
        assert kinds[(spec.name, "listing")], spec.name
        if spec.partitioned:
            assert kinds[(spec.name, "window")] and kinds[(spec.name, "probe")], spec.name
        if spec.partitioned and spec.server_side_window:
            assert kinds[(spec.name, "hand-over")] > 1, spec.name
    handed = [e for e in exchanges if e.source == "hand-over" and "page[cursor]" not in e.params]
    windows = {e.params.get("filter") for e in exchanges if e.source == "window"}
    assert [e for e in handed if e.params.get("filter") not in windows], "no sub-window was handed over"
    for table in ("campaigns", "flows"):
        filters = [e.params.get("filter", "") for e in exchanges if e.table == table]
        assert any("equals(archived,true)" in f for f in filters), table
        assert any("equals(archived,false)" in f for f in filters), table
    assert any(k.startswith("fields[") for e in exchanges for k in e.params)
    assert any(k.startswith("additional-fields[") for e in exchanges for k in e.params)
    assert any("page[cursor]" in e.params for e in exchanges)


@pytest.mark.parametrize("table", TABLE_NAMES)
def test_requests_are_documented(exchanges, table) -> None:
    xfail_known(table, "requests")
    op = document.operation(table)
    problems = Counter(
        f"{e.source}: {problem}"
        for e in of_table(exchanges, table)
        for problem in request_problems(op, e.target)
    )
    assert not problems, dict(problems)


def test_every_request_names_the_pinned_revision(exchanges, doc) -> None:
    header = next(p for p in doc["paths"]["/api/events"]["get"]["parameters"] if p.get("name") == "revision")
    assert header["in"] == "header" and header["required"]
    assert {(e.revision, e.accept) for e in exchanges} == {
        (document.PINNED_REVISION, "application/vnd.api+json")
    }


@pytest.mark.parametrize("table", TABLE_NAMES)
def test_the_simulator_accepts_what_the_product_sends(exchanges, table) -> None:
    refused = [(e.status, e.target, e.body[:200]) for e in of_table(exchanges, table) if e.status != 200]
    assert not refused


# -- responses ------------------------------------------------------------------------------------


@pytest.mark.parametrize("table", TABLE_NAMES)
def test_responses_match_the_documented_schema(exchanges, table) -> None:
    xfail_known(table, "responses")
    problems: Counter[str] = Counter()
    for e in of_table(exchanges, table):
        sparse = any(k.startswith("fields[") for k in e.params)
        validator = document.response_validator(table, sparse)
        for error in validator.iter_errors(orjson.loads(e.body)):
            where = "/".join(str(p) for p in error.absolute_path)
            problems[f"{where}: {error.message[:160]}"] += 1
    assert not problems, dict(problems)


def test_a_record_against_the_schema_is_checked(doc) -> None:
    """The validator is not vacuous: a wrong type, a missing required attribute and a datetime
    without an offset are each rejected."""
    validator = document.response_validator("flows")
    record: dict[str, Any] = {
        "type": "flow",
        "id": "X1",
        "attributes": {
            "name": "n",
            "status": "live",
            "archived": False,
            "created": "2024-01-01T00:00:00+00:00",
        },
        "links": {"self": "https://a.klaviyo.com/api/flows/X1/"},
    }
    page = {"data": [record], "links": {"self": "https://a.klaviyo.com/api/flows/"}}
    assert not list(validator.iter_errors(page))
    record["attributes"]["archived"] = "no"
    record["attributes"]["created"] = "2024-01-01 00:00:00"
    del record["links"]
    messages = " | ".join(e.message for e in validator.iter_errors(page))
    assert "'no' is not of type 'boolean'" in messages
    assert "'links' is a required property" in messages
    assert "is not a 'date-time'" in messages


# -- columns ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("table", TABLE_NAMES)
def test_columns_cover_the_documented_attributes(table) -> None:
    xfail_known(table, "columns")
    spec = get_table(table)
    assert not column_problems(spec, document.view(table))


def test_exceptions_name_documented_attributes_and_say_why() -> None:
    for (table, attribute), reason in {**IGNORED_ATTRIBUTES, **TYPE_EXCEPTIONS}.items():
        assert attribute in document.attribute_schemas(document.view(table), table), (table, attribute)
        assert reason.strip() and "\n" not in reason
    for table, attribute in IGNORED_ATTRIBUTES:
        assert attribute not in get_table(table).columns, (
            f"{table}.{attribute} is a column: drop the exception"
        )
    for (table, check), reason in EXPECTED_FAILURES.items():
        assert table in TABLE_NAMES and check in ("requests", "responses", "columns") and reason.strip()


@pytest.mark.parametrize("table", sorted(document.DELTA_TABLES))
def test_the_delta_tables_follow_the_pinned_revision_not_the_document(table) -> None:
    """Against 2026-07-15 as published, the delta tables' columns disagree: the overlay matters."""
    spec = get_table(table)
    assert column_problems(spec, document.raw_document())
    assert not column_problems(spec, document.view(table))


# -- it can fail --------------------------------------------------------------------------------------

BASE = "http://127.0.0.1:1"


def test_a_forbidden_operator_is_caught() -> None:
    op = document.operation("profiles")  # only greater-than and less-than on updated
    ok = f"{BASE}/api/profiles?filter=greater-than(updated,2024-01-01T00:00:00%2B00:00)"
    assert not request_problems(op, ok)
    bad = f"{BASE}/api/profiles?filter=greater-or-equal(updated,2024-01-01T00:00:00%2B00:00)"
    assert any("greater-or-equal(updated) is not allowed" in p for p in request_problems(op, bad))
    unknown_field = f"{BASE}/api/lists?filter=equals(opt_in_process,'double_opt_in')"
    assert any("opt_in_process" in p for p in request_problems(document.operation("lists"), unknown_field))


def test_a_value_of_the_wrong_kind_is_caught() -> None:
    op = document.operation("flows")
    assert request_problems(op, f"{BASE}/api/flows?filter=equals(archived,'true')")
    assert request_problems(op, f"{BASE}/api/flows?filter=greater-than(updated,'2024-01-01')")
    assert request_problems(op, f"{BASE}/api/flows?filter=greater-than(updated,2024-01-01T00:00:00 00:00)")
    assert not request_problems(op, f"{BASE}/api/flows?filter=and(equals(archived,true),equals(name,'x'))")


def test_an_oversize_page_is_caught() -> None:
    op = document.operation("lists")
    assert not request_problems(op, f"{BASE}/api/lists?page[size]=10")
    assert any(
        "outside the documented 1..10" in p for p in request_problems(op, f"{BASE}/api/lists?page[size]=11")
    )
    # and the catalogue's own page size: a wrong max_page_size reaches the request
    spec = dataclasses.replace(get_table("segments"), max_page_size=100)
    params = "&".join(f"{k}={v}" for k, v in {**spec.params, "page[size]": str(spec.page_size())}.items())
    assert request_problems(document.operation("segments"), f"{BASE}/api/segments?{params}")


def test_an_unknown_parameter_and_a_bad_enum_are_caught() -> None:
    op = document.operation("coupons")
    assert any("not a documented parameter" in p for p in request_problems(op, f"{BASE}/api/coupons?sort=id"))
    op = document.operation("profiles")
    bad = (
        f"{BASE}/api/profiles?additional-fields[profile]=subscriptions,lifetime_value&fields[profile]=updated"
    )
    assert any("lifetime_value" in p for p in request_problems(op, bad))
    assert request_problems(document.operation("events"), f"{BASE}/api/events?sort=-updated")
    assert request_problems(document.operation("events"), f"{BASE}/api/metrics")


def test_a_missing_required_filter_is_caught_against_the_published_revision() -> None:
    """2026-07-15 required a channel filter on campaigns; the pinned revision does not."""
    url = f"{BASE}/api/campaigns?filter=equals(archived,true)&page[size]=100"
    published = document.operation("campaigns", document.raw_document())
    assert not request_problems(published, url)  # a filter is there...
    assert not request_problems(document.operation("campaigns"), url)
    assert any("'filter' missing" in p for p in request_problems(published, f"{BASE}/api/campaigns"))
    # ...and the builder filter exists only in 2026-10-15
    assert request_problems(published, f"{BASE}/api/campaigns?filter=equals(builder,'canvas')")


def test_a_missing_attribute_and_a_wrong_type_are_caught() -> None:
    spec = get_table("forms")
    missing = dataclasses.replace(spec, columns={k: v for k, v in spec.columns.items() if k != "ab_test"})
    assert column_problems(missing, document.view("forms")) == [
        "forms: documented attribute 'ab_test' has no column"
    ]
    retyped = dataclasses.replace(spec, columns={**spec.columns, "updated_at": "VARCHAR"})
    assert column_problems(retyped, document.view("forms")) == [
        "forms.updated_at: column is VARCHAR, the document says TIMESTAMPTZ"
    ]
    extra = dataclasses.replace(spec, columns={**spec.columns, "color": "VARCHAR"})
    assert column_problems(extra, document.view("forms")) == [
        "forms: column 'color' is not a documented attribute"
    ]


def test_filter_terms_parse_nested_expressions() -> None:
    terms = filter_terms("and(equals(archived,false),greater-or-equal(updated_at,2024-01-03T00:00:00+00:00))")
    assert terms == [
        ("equals", "archived", "false"),
        ("greater-or-equal", "updated_at", "2024-01-03T00:00:00+00:00"),
    ]
    assert filter_terms("any(id,['a,b','c'])") == [("any", "id", "['a,b','c']")]


# -- the catalogue's other facts ---------------------------------------------------------------------


@pytest.mark.parametrize("table", TABLE_NAMES)
def test_the_catalogue_states_the_documented_endpoint(table) -> None:
    """Path, JSON:API type, scope, rate limit, largest page and the operators on the incremental key."""
    spec, doc, op = get_table(table), document.view(table), document.operation(table)
    raw = doc["paths"][spec.path]["get"]
    kind = document.deref(doc, document.resource_schema(doc, table)["properties"]["type"])
    assert kind["enum"] == [spec.resource_type]
    assert raw["x-klaviyo-scopes"] == [spec.scope]
    limits = raw["x-klaviyo-ratelimit"]
    assert (limits["burst"], limits["steady"]) == (
        f"{spec.rate_limit.burst_per_s}/s",
        f"{spec.rate_limit.steady_per_min}/m",
    )
    size = (op.parameters.get("page[size]") or {}).get("schema") or {}
    assert spec.max_page_size == size.get("maximum")
    assert spec.filter_operators == op.allowed_filters.get(spec.incremental_key or "", frozenset())
    sorts = op.enum("sort") if "sort" in op.parameters else []
    if spec.server_side_window:
        assert spec.incremental_key in (sorts or []) and f"-{spec.incremental_key}" in (sorts or [])


# -- the simulator's own facts ----------------------------------------------------------------------


@pytest.mark.parametrize("table", TABLE_NAMES)
def test_the_simulator_enforces_the_documented_operation(table) -> None:
    """What the simulator accepts (filters, sorts, page sizes, includes, additional fields) and the
    attributes it serves are the document's, so it refuses what Klaviyo refuses."""
    ep, op, doc = ENDPOINTS[table], document.operation(table), document.view(table)
    assert {f: x.ops | x.list_ops for f, x in ep.filters.items()} == op.allowed_filters
    sorts = {s.lstrip("-") for s in op.enum("sort") or []} if "sort" in op.parameters else set()
    assert set(ep.sorts) == sorts
    size = (op.parameters.get("page[size]") or {}).get("schema") or {}
    assert (ep.page_default, ep.page_max) == (size.get("default"), size.get("maximum"))
    assert set(ep.includes) == set(op.enum("include") or [] if "include" in op.parameters else [])
    additional = f"additional-fields[{ep.resource_type}]"
    assert set(ep.additional_fields) == set(op.enum(additional) or [] if additional in op.parameters else [])
    assert set(ep.attributes) == set(document.attribute_schemas(doc, table))
    kinds = {f: x.kind for f, x in ep.filters.items()}
    assert kinds == op.filter_kinds


@pytest.mark.skipif(not document.SHARED.is_dir(), reason="no ../shared beside this clone to compare with")
@pytest.mark.parametrize(
    ("copy", "original"),
    [("openapi-2026-07-15.json.gz", "openapi-2026-07-15.json"), ("endpoints.json", "endpoints.json")],
)
def test_the_contract_reads_exact_copies_of_the_shared_documents(copy: str, original: str) -> None:
    data = (document.VENDORED / copy).read_bytes()
    if copy.endswith(".gz"):
        data = gzip.decompress(data)
    assert data == (document.SHARED / original).read_bytes()
