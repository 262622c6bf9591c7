"""The child tables' requests, the simulator's responses and the catalogue's facts against Klaviyo's
OpenAPI document: ``GET /api/lists/{id}/profiles`` and the other endpoints read per parent id.

The requests are recorded here (the suite's ``exchanges`` fixture records the listing tables):
every child table read, as the product reads it, for every parent the simulator holds, with pages
small enough that cursors are followed. Child endpoints are checked against the document as
published (revision 2026-07-15; ``document.CHILD_TABLE_NAMES``).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import orjson
import pytest

from omniload_assets.klaviyo.catalog import TABLES, TableSpec, get_table
from omniload_assets.klaviyo.client import KlaviyoClient
from omniload_assets.klaviyo.extraction import Extraction
from omniload_assets_tests.conftest import SIM_END, SIM_START
from omniload_assets_tests.records import RecordsDecoder
from omniload_assets_tests.simulator import KlaviyoSimulator
from omniload_assets_tests.simulator.nested import NESTED

from . import document
from .checks import column_problems, request_problems, sparse_fieldset
from .conftest import Exchange

pytestmark = pytest.mark.contract

CHILDREN = [t for t in TABLES if t.parent is not None]
CHILD_NAMES = [t.name for t in CHILDREN]
BASE = "http://127.0.0.1:1"


def parent_ids(sim: KlaviyoSimulator, spec: TableSpec) -> list[str]:
    """Every id of the child's parent table in the simulator (a child parent: from its children)."""
    parent = get_table(spec.parent or "")
    if parent.parent is None:
        return sorted(sim.ids(parent.name))
    return sorted(child for _, child in sim.children(parent.name))


@pytest.fixture(scope="module")
def child_exchanges(doc: dict[str, Any]) -> list[Exchange]:
    """Every request the product makes for the child tables, with the simulator's response."""
    recorded: list[Exchange] = []
    with KlaviyoSimulator(seed=11, start=SIM_START, end=SIM_END, rate_limits=False) as sim:
        handle = sim._api.handle

        def recording(method: str, target: str, headers: Any) -> Any:
            response = handle(method, target, headers)
            revision, accept = headers.get("revision"), headers.get("Accept")
            recorded.append(Exchange("child", target, response.status, response.body, revision, accept))
            return response

        sim._api.handle = recording  # type: ignore[method-assign]
        with KlaviyoClient(sim.api_key, base_url=sim.base_url, pace=False, max_retries=0) as client:
            for spec in CHILDREN:
                # Small pages: the members' cursors are followed (campaign messages take no size).
                extraction = Extraction(
                    client,
                    spec,
                    None,
                    RecordsDecoder(spec),
                    page_size=7,
                    parallelism=4,
                    parents=parent_ids(sim, spec),
                )
                assert [record for page in extraction for record in page], f"no {spec.name} served"
                assert not extraction.gone, f"{spec.name}: the simulator answered 404 for known parents"
    return recorded


def of_child(exchanges: list[Exchange], spec: TableSpec) -> list[Exchange]:
    pattern = document.path_pattern(spec.path)
    found = [e for e in exchanges if pattern.fullmatch(e.path)]
    assert found, f"the product sent no request for {spec.name}: the check proves nothing"
    return found


# -- the catalogue's facts -----------------------------------------------------------------------------


@pytest.mark.parametrize("table", CHILD_NAMES)
def test_the_catalogue_states_the_documented_child_endpoint(doc, table) -> None:
    """Path, JSON:API type, scopes, rate limit and largest page; no incremental filter is used."""
    spec, op = get_table(table), document.operation(table)
    raw = document.raw_document()["paths"][spec.path]["get"]
    assert [p["name"] for p in raw["parameters"] if p.get("in") == "path"] == ["id"]
    kind = document.deref(doc, document.resource_schema(doc, table)["properties"]["type"])
    assert kind["enum"] == [spec.resource_type]
    assert sorted(raw["x-klaviyo-scopes"]) == sorted(spec.scopes)
    limits = raw["x-klaviyo-ratelimit"]
    assert (limits["burst"], limits["steady"]) == (
        f"{spec.rate_limit.burst_per_s}/s",
        f"{spec.rate_limit.steady_per_min}/m",
    )
    size = (op.parameters.get("page[size]") or {}).get("schema") or {}
    assert spec.max_page_size == size.get("maximum")
    assert spec.strategy == "replace" and spec.incremental_key is None and not spec.filter_operators


@pytest.mark.parametrize("table", CHILD_NAMES)
def test_the_child_columns_cover_the_documented_attributes(table) -> None:
    spec = get_table(table)
    assert not column_problems(spec, document.raw_document())
    if spec.parent_id_column is None:  # the parent column is the documented relationship's
        parent = get_table(spec.parent or "")
        assert parent.resource_type in document.relationship_names(document.raw_document(), table)


def test_a_membership_table_asks_only_for_the_join_time() -> None:
    for table in ("list-profiles", "segment-profiles"):
        spec = get_table(table)
        assert sparse_fieldset(spec) == {"joined_group_at"}
        assert "joined_group_at" in document.operation(table).enum("fields[profile]")
    members = get_table("list-profiles")
    wider = dataclasses.replace(members, columns={**members.columns, "email": "VARCHAR"})
    assert column_problems(wider, document.raw_document()) == [
        "list-profiles: column 'email' is left out of the sparse fieldset"
    ]
    all_fields = dataclasses.replace(members, params={})
    assert "list-profiles: documented attribute 'email' has no column" in column_problems(
        all_fields, document.raw_document()
    )


def test_the_children_are_checked_against_the_published_document() -> None:
    assert set(document.CHILD_TABLE_NAMES) == set(CHILD_NAMES)
    assert not set(CHILD_NAMES) & document.DELTA_TABLES
    assert not set(CHILD_NAMES) & set(document.endpoint_facts())  # no 2026-10-15 delta known


# -- requests and responses ------------------------------------------------------------------------------


def test_the_product_read_every_parent_and_followed_cursors(child_exchanges) -> None:
    for spec in CHILDREN:
        sent = of_child(child_exchanges, spec)
        firsts = [e for e in sent if "page[cursor]" not in e.params]
        assert len(firsts) == len({e.path for e in firsts}), f"{spec.name}: a parent was read twice"
    members = of_child(child_exchanges, get_table("list-profiles"))
    assert any("page[cursor]" in e.params for e in members)


@pytest.mark.parametrize("table", CHILD_NAMES)
def test_child_requests_are_documented(child_exchanges, table) -> None:
    op = document.operation(table)
    problems = Counter(
        problem
        for e in of_child(child_exchanges, get_table(table))
        for problem in request_problems(op, e.target)
    )
    assert not problems, dict(problems)


@pytest.mark.parametrize("table", CHILD_NAMES)
def test_the_simulator_accepts_every_child_request(child_exchanges, table) -> None:
    refused = [(e.status, e.target, e.body[:200]) for e in of_child(child_exchanges, get_table(table))]
    assert not [r for r in refused if r[0] != 200]


def test_every_child_request_names_the_pinned_revision(child_exchanges) -> None:
    assert {(e.revision, e.accept) for e in child_exchanges} == {
        (document.PINNED_REVISION, "application/vnd.api+json")
    }


@pytest.mark.parametrize("table", CHILD_NAMES)
def test_child_responses_match_the_documented_schema(child_exchanges, table) -> None:
    problems: Counter[str] = Counter()
    records = 0
    for e in of_child(child_exchanges, get_table(table)):
        sparse = any(k.startswith("fields[") for k in e.params)
        body = orjson.loads(e.body)
        records += len(body["data"])
        for error in document.response_validator(table, sparse).iter_errors(body):
            where = "/".join(str(p) for p in error.absolute_path)
            problems[f"{where}: {error.message[:160]}"] += 1
    assert records, f"no {table} was served: the check proves nothing"
    assert not problems, dict(problems)


def test_a_member_response_carries_only_the_join_time(child_exchanges) -> None:
    for e in of_child(child_exchanges, get_table("list-profiles")):
        for record in orjson.loads(e.body)["data"]:
            assert set(record["attributes"]) == {"joined_group_at"}, record["attributes"]


# -- it can fail ------------------------------------------------------------------------------------------


def test_a_child_request_on_another_path_or_with_an_unknown_parameter_is_caught() -> None:
    op = document.operation("list-profiles")
    ok = f"{BASE}/api/lists/L1/profiles?fields[profile]=joined_group_at&page[size]=100"
    assert not request_problems(op, ok)
    assert request_problems(op, f"{BASE}/api/lists/L1/members?page[size]=100")
    assert request_problems(op, f"{BASE}/api/lists/L1/x/profiles")
    assert request_problems(op, f"{BASE}/api/lists//profiles")
    assert any(
        "page[size]" in p for p in request_problems(op, f"{BASE}/api/lists/L1/profiles?page[size]=101")
    )
    messages = document.operation("campaign-messages")
    assert any(
        "not a documented parameter" in p
        for p in request_problems(messages, f"{BASE}/api/campaigns/C1/campaign-messages?page[size]=10")
    )


# -- the simulator's own facts -------------------------------------------------------------------------


@pytest.mark.parametrize("table", CHILD_NAMES)
def test_the_simulator_serves_the_documented_child_endpoint(table) -> None:
    ep, op, doc = NESTED[table], document.operation(table), document.raw_document()
    assert ep.path == document.path_of(table)
    assert {f: x.ops | x.list_ops for f, x in ep.filters.items()} == op.allowed_filters
    sorts = {s.lstrip("-") for s in op.enum("sort") or []} if "sort" in op.parameters else set()
    assert set(ep.sorts) == sorts
    size = (op.parameters.get("page[size]") or {}).get("schema") or {}
    assert (ep.page_default, ep.page_max) == (size.get("default"), size.get("maximum"))
    assert set(ep.includes) == set(op.enum("include") or [] if "include" in op.parameters else [])
    assert set(ep.attributes) | set(ep.additional_fields) == set(document.attribute_schemas(doc, table))
    assert sorted(ep.scopes) == sorted(doc["paths"][ep.path]["get"]["x-klaviyo-scopes"])


def test_the_flow_message_union_read_as_any_of_still_checks_the_definition(doc) -> None:
    """The erratum (``document.ONE_OF_READ_AS_ANY_OF``) still holds and still rejects a non-object."""
    for member in ("FlowEmail", "FlowWhatsApp"):
        assert not doc["components"]["schemas"][member].get("required"), f"{member} requires a field now"
    validator = document.response_validator("flow-messages")
    message = {
        "type": "flow-message",
        "id": "M1",
        "attributes": {"channel": "email", "created": None, "updated": None, "definition": {"name": "x"}},
        "links": {"self": "https://a.klaviyo.com/api/flow-messages/M1/"},
    }
    page = {"data": [message], "links": {"self": "https://a.klaviyo.com/api/flow-actions/A1/flow-messages/"}}
    assert not list(validator.iter_errors(page))
    message["attributes"]["definition"] = "subject: hi"
    assert list(validator.iter_errors(page))
