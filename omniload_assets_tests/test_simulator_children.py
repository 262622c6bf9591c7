"""The simulator's nested endpoints (list and segment members, campaign messages, flow actions and
their messages) over real HTTP, held to Klaviyo's OpenAPI document, and the ground truth and
changes behind them (``members``, ``children``, ``add_member``, ``remove_member``, deletes)."""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from omniload_assets_tests.contract import document
from omniload_assets_tests.simulator import ALL_SCOPES, NESTED, KlaviyoSimulator
from omniload_assets_tests.simulator.timeutil import parse_us
from omniload_assets_tests.test_simulator import HEADERS, FrozenClock, assert_error, fetch_all

PARENT_OF = {
    "list-profiles": "lists",
    "segment-profiles": "segments",
    "campaign-messages": "campaigns",
    "flow-actions": "flows",
}
#: The document's ``oneOf`` of flow message definitions names FlowEmail and FlowWhatsApp, which
#: require nothing: every definition matches both, so none can match exactly one (the contract's
#: ``ONE_OF_READ_AS_ANY_OF`` reads it as anyOf).
FLOW_MESSAGE_DEFINITION = "FlowMessageEncodedResponseObjectResource"


@pytest.fixture(scope="module")
def sim() -> Iterator[KlaviyoSimulator]:
    """A shared, read-only simulator without rate limits."""
    with KlaviyoSimulator(seed=7, rate_limits=False) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def client(sim: KlaviyoSimulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.base_url, headers=HEADERS, timeout=10) as c:
        yield c


@pytest.fixture
def fresh() -> Iterator[KlaviyoSimulator]:
    """A private simulator a test may change."""
    with KlaviyoSimulator(seed=11, rate_limits=False) as simulator:
        yield simulator


def path_of(table: str, parent_id: str) -> str:
    return NESTED[table].path_for(parent_id)


def parent_ids(sim: KlaviyoSimulator, table: str) -> list[str]:
    """Every parent of a nested table (flow actions for flow messages), in a stable order."""
    if table == "flow-messages":
        return sorted({action for _, action in sim.children("flow-actions")})
    return sorted(sim.ids(PARENT_OF[table]))


def served(client: httpx.Client, table: str, parent_id: str, params: dict[str, str] | None = None) -> list:
    """Every record a nested endpoint lists for one parent, following ``links.next``."""
    size = NESTED[table].page_max
    query = {} if size is None else {"page[size]": str(size)}
    return fetch_all(client, path_of(table, parent_id), {**query, **(params or {})})[0]


def served_pairs(sim: KlaviyoSimulator, client: httpx.Client, table: str) -> set[tuple[str, str]]:
    return {(p, r["id"]) for p in parent_ids(sim, table) for r in served(client, table, p)}


# -- the document ---------------------------------------------------------------------------------


def operation(table: str) -> dict[str, Any]:
    return document.raw_document()["paths"][NESTED[table].path]["get"]


def query_parameters(table: str) -> dict[str, dict[str, Any]]:
    doc = document.raw_document()
    params = (document.deref(doc, p) for p in operation(table)["parameters"])
    return {p["name"]: p for p in params if p.get("in") == "query"}


def documented_attributes(table: str) -> set[str]:
    doc = document.raw_document()
    ref = operation(table)["responses"]["200"]["content"]["application/vnd.api+json"]["schema"]["$ref"]
    items = document.deref(doc, document.pointer(doc, ref)["properties"]["data"]["items"])
    parts = [document.deref(doc, p) for p in items["allOf"]] if "allOf" in items else [items]
    found: set[str] = set()
    for part in parts:
        attributes = document.deref(doc, (part.get("properties") or {}).get("attributes") or {})
        found |= set(attributes.get("properties") or {})
    return found


@pytest.mark.parametrize("table", list(NESTED))
def test_each_nested_endpoint_enforces_the_documented_operation(table: str) -> None:
    """Filters and operators, sorts, page sizes, includes, additional fields, attributes, scopes
    and rate limit are the document's (revision 2026-07-15; 2026-10-15 is the same for these)."""
    ep, op, params = NESTED[table], operation(table), query_parameters(table)
    allowed = document.parse_allowed_filters(params["filter"]["description"]) if "filter" in params else {}
    assert {f: x.ops | x.list_ops for f, x in ep.filters.items()} == allowed
    extension = op.get("x-klaviyo-filters") or {}
    for name, spec in extension.items():
        assert ep.filters[name].ops == set(spec["operators"].get("single", [])), name
        assert ep.filters[name].list_ops == set(spec["operators"].get("list", [])), name
        assert ep.filters[name].kind == document._kind(spec), name
    sorts = {s.lstrip("-") for s in params["sort"]["schema"]["enum"]} if "sort" in params else set()
    assert set(ep.sorts) == sorts
    size = (params.get("page[size]") or {}).get("schema") or {}
    assert (ep.page_default, ep.page_max) == (size.get("default"), size.get("maximum"))
    assert ep.paginated == ("page[cursor]" in params)
    include = params.get("include", {}).get("schema", {}).get("items", {}).get("enum", [])
    assert set(ep.includes) == set(include)
    additional = params.get(f"additional-fields[{ep.resource_type}]")
    assert set(ep.additional_fields) == set(additional["schema"]["items"]["enum"] if additional else [])
    assert set(ep.attributes) == documented_attributes(table)
    fields = params[f"fields[{ep.resource_type}]"]["schema"]["items"]["enum"]
    assert {f.split(".")[0] for f in fields} - {"id"} == set(ep.attributes)
    assert sorted(ep.scopes) == sorted(op["x-klaviyo-scopes"])
    limits = op["x-klaviyo-ratelimit"]
    assert (limits["burst"], limits["steady"]) == (f"{ep.tier.burst}/s", f"{ep.tier.steady}/m")


@functools.cache
def _strict_registry() -> Registry:
    """The document with the contract's nullable errata only: flow message definitions as ``oneOf``."""
    doc = copy.deepcopy(document.raw_document())
    for ref in document.DOCUMENT_ERRATA:
        document.pointer(doc, ref)["nullable"] = True
    resource = Resource.from_contents(document.to_json_schema(doc, False), default_specification=DRAFT202012)
    return Registry().with_resource(document.URN, resource)


def validator(table: str, sparse: bool, strict: bool = False) -> Draft202012Validator:
    """A validator of the nested endpoint's 200 body, with the contract's errata (``strict``: without
    the flow message definitions read as ``anyOf``)."""
    ref = operation(table)["responses"]["200"]["content"]["application/vnd.api+json"]["schema"]["$ref"]
    registry = _strict_registry() if strict else document._registry(False, sparse)
    return Draft202012Validator(
        {"$ref": document.URN + ref}, registry=registry, format_checker=document.FORMATS
    )


REQUESTS: dict[str, list[dict[str, str]]] = {
    "list-profiles": [
        {},
        {"page[size]": "100", "additional-fields[profile]": "subscriptions,predictive_analytics"},
        {"fields[profile]": "joined_group_at", "sort": "-joined_group_at", "page[size]": "5"},
    ],
    "segment-profiles": [{}, {"fields[profile]": "email,joined_group_at,location.city"}],
    "campaign-messages": [{}, {"include": "template,image"}, {"fields[campaign-message]": "definition"}],
    "flow-actions": [{}, {"sort": "-updated", "page[size]": "2"}, {"fields[flow-action]": "definition"}],
    "flow-messages": [{}, {"sort": "name"}, {"fields[flow-message]": "channel,definition"}],
}


@pytest.mark.parametrize("table", list(NESTED))
def test_responses_match_the_documented_schema(
    sim: KlaviyoSimulator, client: httpx.Client, table: str
) -> None:
    checked = 0
    for parent in parent_ids(sim, table)[:12]:
        for params in REQUESTS[table]:
            response = client.get(path_of(table, parent), params=params)
            assert response.status_code == 200, response.text
            body = response.json()
            sparse = any(k.startswith("fields[") for k in params)
            errors = [
                f"{list(e.absolute_path)}: {e.message[:200]}"
                for e in validator(table, sparse).iter_errors(body)
            ]
            assert not errors, (parent, params, errors[:5])
            checked += len(body["data"])
    assert checked > 10


def test_the_flow_message_erratum_is_needed(sim: KlaviyoSimulator, client: httpx.Client) -> None:
    """Read strictly, no realistic flow message validates: the contract keeps the erratum until the
    document gives the definitions a discriminator."""
    assert any(FLOW_MESSAGE_DEFINITION in ref for ref in document.ONE_OF_READ_AS_ANY_OF)
    action = next(a for a, _ in sorted(sim.children("flow-messages")))
    body = client.get(path_of("flow-messages", action)).json()
    assert body["data"]
    errors = list(validator("flow-messages", False, strict=True).iter_errors(body))
    assert len(errors) == len(body["data"])  # the nullable definition's anyOf fails: why, is below
    for error in errors:
        assert list(error.absolute_path)[-1] == "definition"
        assert any("is valid under each of" in e.message for e in error.context or [])


def test_the_validator_rejects_a_broken_member(sim: KlaviyoSimulator, client: httpx.Client) -> None:
    parent = next(p for p in parent_ids(sim, "list-profiles") if served(client, "list-profiles", p))
    body = client.get(path_of("list-profiles", parent)).json()
    del body["data"][0]["attributes"]["joined_group_at"]
    body["data"][0]["type"] = "list"
    messages = " | ".join(e.message for e in validator("list-profiles", False).iter_errors(body))
    assert "'joined_group_at' is a required property" in messages
    assert "'list' is not one of ['profile']" in messages


# -- the data ---------------------------------------------------------------------------------


def test_every_parent_has_a_realistic_number_of_children(sim: KlaviyoSimulator) -> None:
    profiles = sim.ids("profiles")
    for kind in ("lists", "segments"):
        pairs = sim.members(kind)
        per_parent = {p: sum(1 for q, _ in pairs if q == p) for p in sim.ids(kind)}
        assert max(per_parent.values()) > 100 and min(per_parent.values()) == 0, kind
        assert max(per_parent.values()) <= 250
        assert {pid for _, pid in pairs} <= profiles
        assert {p for p, _ in pairs} <= sim.ids(kind)
    for table, parent, high in (("campaign-messages", "campaigns", 2), ("flow-actions", "flows", 5)):
        counts = {p: sum(1 for q, _ in sim.children(table) if q == p) for p in sim.ids(parent)}
        assert min(counts.values()) >= 1 and max(counts.values()) <= high, table
        assert len(set(counts.values())) >= min(high, 3), table
    actions = sim.ids("flow-actions")
    counts = {a: sum(1 for q, _ in sim.children("flow-messages") if q == a) for a in actions}
    assert set(counts.values()) == {0, 1, 2}


def test_relationships_name_parents_and_children(sim: KlaviyoSimulator) -> None:
    campaigns = {r["id"]: r for r in sim.records("campaigns")}
    for message in sim.records("campaign-messages"):
        campaign = campaigns[message["relationships"]["campaign"]["data"]["id"]]
        listed = [m["id"] for m in campaign["relationships"]["campaign-messages"]["data"]]
        assert message["id"] in listed
        if message["attributes"]["definition"]["channel"] == "email":
            assert message["relationships"]["template"]["data"]["id"] in sim.ids("templates")
    assert {
        (c, m["id"]) for c, r in campaigns.items() for m in r["relationships"]["campaign-messages"]["data"]
    } == (sim.children("campaign-messages"))
    actions = {r["id"]: r for r in sim.records("flow-actions")}
    assert {(a["relationships"]["flow"]["data"]["id"], i) for i, a in actions.items()} == sim.children(
        "flow-actions"
    )
    pairs = {(a, m["id"]) for a, r in actions.items() for m in r["relationships"]["flow-messages"]["data"]}
    assert pairs == sim.children("flow-messages")
    for message in sim.records("flow-messages"):
        assert message["relationships"]["flow-action"]["data"]["type"] == "flow-action"
        assert message["attributes"]["definition"]["id"] == message["id"]


def test_children_are_deterministic_from_the_seed() -> None:
    a, b, c = (KlaviyoSimulator(seed=s) for s in (3, 3, 4))
    for kind in ("lists", "segments"):
        assert a.members(kind) == b.members(kind) != c.members(kind)
    for table in ("campaign-messages", "flow-actions", "flow-messages"):
        assert a.records(table) == b.records(table), table
        assert a.children(table) != c.children(table), table


def test_ground_truth_is_what_the_endpoints_serve(sim: KlaviyoSimulator, client: httpx.Client) -> None:
    assert served_pairs(sim, client, "list-profiles") == sim.members("lists")
    assert served_pairs(sim, client, "segment-profiles") == sim.members("segments")
    for table in ("campaign-messages", "flow-actions", "flow-messages"):
        assert served_pairs(sim, client, table) == sim.children(table), table
        assert sim.ids(table) == {child for _, child in sim.children(table)}


@pytest.mark.parametrize(("table", "kind"), [("list-profiles", "lists"), ("segment-profiles", "segments")])
def test_membership_tables_give_records_and_row_keys(sim: KlaviyoSimulator, table: str, kind: str) -> None:
    """``ids`` of a membership table are the warehouse's row keys, ``records`` the members as served."""
    pairs = sim.members(kind)
    assert sim.ids(table) == {f"{p}:{m}" for p, m in pairs}
    records = sim.records(table)
    assert len(records) == len(pairs) and {r["id"] for r in records} == {m for _, m in pairs}
    assert all(
        "joined_group_at" in r["attributes"] and "subscriptions" not in r["attributes"] for r in records
    )
    assert all(
        "subscriptions" in r["attributes"] for r in sim.records(table, additional_fields=["subscriptions"])
    )


def test_members_are_the_profiles_with_their_join_time(sim: KlaviyoSimulator, client: httpx.Client) -> None:
    parent = biggest(sim, "lists")
    members = served(client, "list-profiles", parent, {"additional-fields[profile]": "subscriptions"})
    profiles = {r["id"]: r for r in sim.records("profiles", additional_fields=["subscriptions"])}
    assert members
    for member in members:
        attributes = dict(member["attributes"])
        assert parse_us(attributes.pop("joined_group_at")) is not None
        assert {**member, "attributes": attributes} == profiles[member["id"]]
    sparse = served(client, "list-profiles", parent, {"fields[profile]": "joined_group_at"})
    assert {m["id"] for m in sparse} == {m["id"] for m in members}
    assert all(set(m["attributes"]) == {"joined_group_at"} for m in sparse)


# -- pages, cursors, sorts, filters -----------------------------------------------------------


def biggest(sim: KlaviyoSimulator, kind: str) -> str:
    pairs = sim.members(kind)
    return max(sorted(sim.ids(kind)), key=lambda p: sum(1 for q, _ in pairs if q == p))


@pytest.mark.parametrize("size", ["1", "7", "100"])
def test_member_pages_reach_every_member_once(sim: KlaviyoSimulator, client: httpx.Client, size: str) -> None:
    parent = biggest(sim, "lists")
    truth = {pid for p, pid in sim.members("lists") if p == parent}
    records, pages = fetch_all(client, path_of("list-profiles", parent), {"page[size]": size})
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) and set(ids) == truth
    assert pages == -(-len(truth) // int(size))


def test_page_sizes_default_and_limits(sim: KlaviyoSimulator, client: httpx.Client) -> None:
    parent = biggest(sim, "segments")
    assert len(client.get(path_of("segment-profiles", parent)).json()["data"]) == 20
    for size, status in (("100", 200), ("101", 400), ("0", 400), ("x", 400)):
        response = client.get(path_of("segment-profiles", parent), params={"page[size]": size})
        assert response.status_code == status, (size, response.text)
    flow = sorted(sim.ids("flows"))[0]
    assert client.get(path_of("flow-actions", flow), params={"page[size]": "50"}).status_code == 200
    assert_error(client.get(path_of("flow-actions", flow), params={"page[size]": "51"}), 400, "invalid")
    action = sorted(a for a, _ in sim.children("flow-messages"))[0]
    assert_error(client.get(path_of("flow-messages", action), params={"page[size]": "51"}), 400, "invalid")


def test_links_carry_the_parent_and_a_cursor(sim: KlaviyoSimulator, client: httpx.Client) -> None:
    parent = biggest(sim, "lists")
    first = client.get(path_of("list-profiles", parent), params={"page[size]": "10"}).json()
    assert first["links"]["prev"] is None
    assert f"/api/lists/{parent}/profiles/?" in first["links"]["next"]
    assert "page%5Bcursor%5D=" in first["links"]["next"] or "page[cursor]=" in first["links"]["next"]
    second = client.get(first["links"]["next"]).json()
    assert f"/api/lists/{parent}/profiles/?" in second["links"]["prev"]
    back = client.get(second["links"]["prev"]).json()
    assert [r["id"] for r in back["data"]] == [r["id"] for r in first["data"]]
    sorted_next = client.get(
        first["links"]["next"].replace("page%5Bsize%5D=10", "page%5Bsize%5D=10&sort=joined_group_at")
    )
    assert_error(sorted_next, 400, "invalid")  # a cursor holds to the sort it was made for


def test_members_sorted_by_join_time_both_ways(sim: KlaviyoSimulator, client: httpx.Client) -> None:
    parent = biggest(sim, "lists")
    up = served(client, "list-profiles", parent, {"sort": "joined_group_at", "page[size]": "30"})
    down = served(client, "list-profiles", parent, {"sort": "-joined_group_at", "page[size]": "30"})
    times = [parse_us(r["attributes"]["joined_group_at"]) for r in up]
    assert times == sorted(times) and len(set(times)) > 10
    assert [r["id"] for r in down] == [r["id"] for r in reversed(up)]
    assert_error(client.get(path_of("list-profiles", parent), params={"sort": "email"}), 400, "invalid")


OPERATORS = {
    "greater-or-equal": lambda v, b: v >= b,
    "greater-than": lambda v, b: v > b,
    "less-or-equal": lambda v, b: v <= b,
    "less-than": lambda v, b: v < b,
}


@pytest.mark.parametrize("op", list(OPERATORS))
def test_join_time_filters_keep_boundary_members(
    sim: KlaviyoSimulator, client: httpx.Client, op: str
) -> None:
    parent = biggest(sim, "segments")
    every = served(client, "segment-profiles", parent)
    joined = {r["id"]: parse_us(r["attributes"]["joined_group_at"]) for r in every}
    midnights = sorted(t for t in joined.values() if t % 86_400_000_000 == 0)
    assert midnights, "no member joined exactly at midnight"
    bound = midnights[len(midnights) // 2]
    text = datetime.fromtimestamp(bound / 1e6, UTC).isoformat()
    params = {"filter": f"{op}(joined_group_at,{text})", "sort": "joined_group_at", "page[size]": "9"}
    got = {r["id"] for r in served(client, "segment-profiles", parent, params)}
    assert got == {pid for pid, t in joined.items() if OPERATORS[op](t, bound)}


def test_member_filters_on_email_and_profile_id(sim: KlaviyoSimulator, client: httpx.Client) -> None:
    parent = biggest(sim, "segments")
    every = served(client, "segment-profiles", parent)
    pick = every[:3]
    emails = ",".join(f"'{r['attributes']['email']}'" for r in pick)
    for expression in (f"any(email,[{emails}])", f"equals(email,[{emails}])"):
        got = served(client, "segment-profiles", parent, {"filter": expression})
        assert {r["id"] for r in got} == {r["id"] for r in pick}
    one = served(client, "segment-profiles", parent, {"filter": f"any(profile_id,['{pick[0]['id']}'])"})
    assert [r["id"] for r in one] == [pick[0]["id"]]
    lists = biggest(sim, "lists")
    bad = {
        "equals(email,'x@example.com')": "equals",  # the document allows email only with a list
        f"any(profile_id,['{pick[0]['id']}'])": "profile_id",  # lists have no profile_id filter
        "greater-than(joined_group_at,'2024-01-01')": "unquoted",
    }
    for expression, needle in bad.items():
        error = assert_error(
            client.get(path_of("list-profiles", lists), params={"filter": expression}), 400, "invalid"
        )
        assert needle in error["detail"] and error["source"] == {"parameter": "filter"}


def test_flow_action_filters_and_sorts(sim: KlaviyoSimulator, client: httpx.Client) -> None:
    counts: dict[str, int] = {}
    for flow, _ in sim.children("flow-actions"):
        counts[flow] = counts.get(flow, 0) + 1
    flow = max(sorted(counts), key=lambda f: counts[f])
    every = served(client, "flow-actions", flow)
    assert len(every) == counts[flow] >= 3
    for field in ("created", "updated", "id", "action_type", "status"):
        for sign in ("", "-"):
            got = served(client, "flow-actions", flow, {"sort": f"{sign}{field}", "page[size]": "1"})
            assert sorted(r["id"] for r in got) == sorted(r["id"] for r in every), field
    updated = [r["attributes"]["updated"] for r in served(client, "flow-actions", flow, {"sort": "-updated"})]
    assert updated == sorted(updated, key=parse_us, reverse=True)
    kind = every[0]["attributes"]["definition"]["type"]
    for expression in (f"equals(action_type,'{kind}')", f"any(action_type,['{kind}'])"):
        got = served(client, "flow-actions", flow, {"filter": expression})
        assert {r["id"] for r in got} == {
            r["id"] for r in every if r["attributes"]["definition"]["type"] == kind
        }
    live = served(client, "flow-actions", flow, {"filter": "equals(status,'live')"})
    assert {r["id"] for r in live} == {
        r["id"] for r in every if (r["attributes"]["definition"].get("data") or {}).get("status") == "live"
    }
    stamp = every[0]["attributes"]["created"]
    got = served(client, "flow-actions", flow, {"filter": f"equals(created,{stamp})"})
    assert every[0]["id"] in {r["id"] for r in got}
    assert_error(
        client.get(path_of("flow-actions", flow), params={"filter": "equals(name,'x')"}), 400, "invalid"
    )
    assert_error(client.get(path_of("flow-actions", flow), params={"sort": "name"}), 400, "invalid")


def test_flow_message_filters_and_sorts(sim: KlaviyoSimulator, client: httpx.Client) -> None:
    counts: dict[str, int] = {}
    for action, _ in sim.children("flow-messages"):
        counts[action] = counts.get(action, 0) + 1
    action = max(sorted(counts), key=lambda a: counts[a])
    every = served(client, "flow-messages", action)
    assert len(every) == 2
    names = [
        r["attributes"]["definition"]["name"]
        for r in served(client, "flow-messages", action, {"sort": "name"})
    ]
    assert names == sorted(names)
    variant = served(client, "flow-messages", action, {"filter": "ends-with(name,'(variant B)')"})
    assert len(variant) == 1 and variant[0]["attributes"]["definition"]["name"].endswith("(variant B)")
    ids = [r["id"] for r in every]
    assert {
        r["id"] for r in served(client, "flow-messages", action, {"filter": f"any(id,['{ids[0]}'])"})
    } == {ids[0]}
    assert_error(
        client.get(path_of("flow-messages", action), params={"filter": "equals(channel,'email')"}),
        400,
        "invalid",
    )


def test_campaign_messages_take_no_paging_filter_or_sort_and_include_relations(
    sim: KlaviyoSimulator, client: httpx.Client
) -> None:
    counts: dict[str, int] = {}
    for campaign, _ in sim.children("campaign-messages"):
        counts[campaign] = counts.get(campaign, 0) + 1
    campaign = next(c for c in sorted(counts) if counts[c] == 2)
    path = path_of("campaign-messages", campaign)
    body = client.get(path).json()
    assert len(body["data"]) == 2 and body["links"]["next"] is None and body["links"]["prev"] is None
    for bad in (
        {"page[size]": "1"},
        {"page[cursor]": "x"},
        {"sort": "created_at"},
        {"filter": "equals(id,'x')"},
    ):
        assert_error(client.get(path, params=bad), 400, "invalid")
    assert_error(client.get(path, params={"include": "tags"}), 400, "invalid")
    included = client.get(path, params={"include": "campaign,template"}).json()["included"]
    by_type = {r["type"]: r for r in included}
    assert by_type["campaign"] == next(r for r in sim.records("campaigns") if r["id"] == campaign)
    channel = body["data"][0]["attributes"]["definition"]["channel"]
    assert ("template" in by_type) == (channel == "email")
    with_messages = client.get(
        "/api/campaigns", params={"include": "campaign-messages", "filter": f"any(id,['{campaign}'])"}
    ).json()
    if with_messages["data"]:  # archived campaigns are listed only when asked for
        assert {m["id"] for m in with_messages["included"]} == {m["id"] for m in body["data"]}


@pytest.mark.parametrize("table", list(NESTED))
def test_an_unknown_parent_is_404(client: httpx.Client, table: str) -> None:
    error = assert_error(client.get(path_of(table, "NoSuch1")), 404, "not_found")
    assert "NoSuch1" in error["detail"]


def test_unknown_nested_paths_are_404(client: httpx.Client) -> None:
    for path in (
        "/api/lists/X/members",
        "/api/lists//profiles",
        "/api/tags/X/profiles",
        "/api/lists/X/profiles/Y",
    ):
        assert_error(client.get(path), 404, "not_found")


# -- scopes, limits, faults -------------------------------------------------------------------


def test_members_need_both_scopes(fresh: KlaviyoSimulator) -> None:
    parent = sorted(fresh.ids("lists"))[0]
    segment = sorted(fresh.ids("segments"))[0]
    fresh.scopes = set(ALL_SCOPES) - {"profiles:read"}
    with httpx.Client(base_url=fresh.base_url, headers=HEADERS) as c:
        error = assert_error(c.get(path_of("list-profiles", parent)), 403, "permission_denied")
        assert error["detail"].endswith("profiles:read")
        assert c.get("/api/lists").status_code == 200
        fresh.scopes = set(ALL_SCOPES) - {"segments:read"}
        assert (
            "segments:read"
            in assert_error(c.get(path_of("segment-profiles", segment)), 403, "permission_denied")["detail"]
        )
        assert c.get(path_of("list-profiles", parent)).status_code == 200
        fresh.scopes = set(ALL_SCOPES) - {"flows:read", "campaigns:read"}
        flow, campaign = sorted(fresh.ids("flows"))[0], sorted(fresh.ids("campaigns"))[0]
        assert_error(c.get(path_of("flow-actions", flow)), 403, "permission_denied")
        assert_error(c.get(path_of("campaign-messages", campaign)), 403, "permission_denied")


@pytest.mark.parametrize(
    ("table", "burst", "steady", "params"),
    [
        ("list-profiles", 75, 750, {}),
        ("list-profiles", 10, 150, {"additional-fields[profile]": "predictive_analytics"}),
        ("segment-profiles", 75, 750, {}),
        ("campaign-messages", 10, 150, {}),
        ("flow-actions", 3, 60, {}),
        ("flow-messages", 3, 60, {}),
    ],
)
def test_nested_rate_limits_are_per_endpoint(
    table: str, burst: int, steady: int, params: dict[str, str]
) -> None:
    clock = FrozenClock(1_700_000_000.5)
    with KlaviyoSimulator(seed=1, clock=clock) as s, httpx.Client(base_url=s.base_url, headers=HEADERS) as c:
        parents = parent_ids(s, table)
        responses = [
            c.get(path_of(table, parents[n % len(parents)]), params=params) for n in range(burst + 1)
        ]
        assert [r.status_code for r in responses] == [200] * burst + [429]
        assert responses[0].headers["RateLimit-Limit"] == str(steady)
        assert responses[-1].headers["Retry-After"] == "1"
        assert c.get(f"/api/{PARENT_OF.get(table, 'flows')}").status_code == 200  # the parent's own limit
        clock.now += 1
        assert c.get(path_of(table, parents[0]), params=params).status_code == 200
        s.set_rate_limit(table, burst=1, steady=100)
        clock.now += 1
        assert [c.get(path_of(table, parents[0])).status_code for _ in range(2)] == [200, 429]


def test_faults_on_a_nested_endpoint_or_one_parent(fresh: KlaviyoSimulator) -> None:
    first, second = sorted(fresh.ids("flows"))[:2]
    with httpx.Client(base_url=fresh.base_url, headers=HEADERS) as c:
        fresh.set_fault("503", count=1, path="flow-actions")
        assert c.get(path_of("flow-actions", second)).status_code == 503
        fresh.set_fault("500", count=1, path=path_of("flow-actions", first))
        assert c.get(path_of("flow-actions", second)).status_code == 200
        assert c.get(path_of("flow-actions", first)).status_code == 500
        assert c.get(path_of("flow-actions", first)).status_code == 200
    assert fresh.stats.requests["/api/flows/{id}/flow-actions"] == 4


# -- changes ------------------------------------------------------------------------------------


def test_add_and_remove_members(fresh: KlaviyoSimulator) -> None:
    parent = next(p for p in sorted(fresh.ids("lists")) if p not in {q for q, _ in fresh.members("lists")})
    profiles = sorted(fresh.ids("profiles"))[:3]
    joined = datetime(2024, 1, 5, 12, tzinfo=UTC)
    with httpx.Client(base_url=fresh.base_url, headers=HEADERS) as c:
        fresh.add_member("lists", parent, profiles[0], joined)
        fresh.add_member("lists", parent, profiles[1])
        members = {r["id"]: r for r in served(c, "list-profiles", parent)}
        assert members[profiles[0]]["attributes"]["joined_group_at"] == joined.isoformat()
        assert parse_us(members[profiles[1]]["attributes"]["joined_group_at"]) == parse_us(
            fresh.end_time.isoformat()
        )
        fresh.add_member("lists", parent, profiles[0])  # already on it: keeps its join time
        again = {r["id"]: r for r in served(c, "list-profiles", parent)}
        assert again[profiles[0]]["attributes"]["joined_group_at"] == joined.isoformat()
        assert {(parent, p) for p in profiles[:2]} <= fresh.members("lists")
        assert fresh.remove_member("lists", parent, profiles[0])
        assert not fresh.remove_member("lists", parent, profiles[0])
        assert not fresh.remove_member("lists", parent, profiles[2])
        assert [r["id"] for r in served(c, "list-profiles", parent)] == [profiles[1]]
    assert {pid for p, pid in fresh.members("lists") if p == parent} == {profiles[1]}
    with pytest.raises(KeyError, match="lists"):
        fresh.add_member("lists", "NoSuch", profiles[0])
    with pytest.raises(KeyError, match="profiles"):
        fresh.add_member("segments", sorted(fresh.ids("segments"))[0], "01NOSUCHPROFILE")
    with pytest.raises(KeyError, match="kind"):
        fresh.members("tags")


def test_deleting_a_list_or_segment_drops_its_members(fresh: KlaviyoSimulator) -> None:
    with httpx.Client(base_url=fresh.base_url, headers=HEADERS) as c:
        for kind, table in (("lists", "list-profiles"), ("segments", "segment-profiles")):
            parent = biggest(fresh, kind)
            before = fresh.members(kind)
            assert fresh.delete_record(kind, parent)
            assert fresh.members(kind) == {(p, m) for p, m in before if p != parent}
            assert_error(c.get(path_of(table, parent)), 404, "not_found")
            assert parent not in fresh.ids(kind)
            assert parent not in {r["id"] for r in fetch_all(c, f"/api/{kind}")[0]}


def test_deleting_a_profile_takes_it_off_every_list_and_segment() -> None:
    with (
        KlaviyoSimulator(seed=11, rate_limits=False) as fresh,
        httpx.Client(base_url=fresh.base_url, headers=HEADERS) as c,
    ):
        pairs = fresh.members("lists") | fresh.members("segments")
        profile = max(sorted(fresh.ids("profiles")), key=lambda pid: sum(1 for _, m in pairs if m == pid))
        lists = {p for p, m in fresh.members("lists") if m == profile}
        assert len(lists) > 1
        assert fresh.delete_record("profiles", profile)
        assert profile not in {m for _, m in fresh.members("lists") | fresh.members("segments")}
        for parent in lists:
            assert profile not in {r["id"] for r in served(c, "list-profiles", parent)}


def test_a_profile_deleted_before_lists_are_built_is_on_none() -> None:
    lazy = KlaviyoSimulator(seed=11)
    eager = KlaviyoSimulator(seed=11)
    profile = max(
        sorted(eager.ids("profiles")), key=lambda pid: sum(1 for _, m in eager.members("lists") if m == pid)
    )
    assert lazy.delete_record("profiles", profile)
    assert lazy.members("lists") == {(p, m) for p, m in eager.members("lists") if m != profile}


def test_deleting_parents_and_children_keeps_the_truth_consistent(fresh: KlaviyoSimulator) -> None:
    with httpx.Client(base_url=fresh.base_url, headers=HEADERS) as c:
        campaign = sorted(fresh.ids("campaigns"))[0]
        assert fresh.delete_record("campaigns", campaign)
        assert campaign not in {p for p, _ in fresh.children("campaign-messages")}
        assert_error(c.get(path_of("campaign-messages", campaign)), 404, "not_found")

        flow, action = sorted(fresh.children("flow-actions"))[0]
        actions = {a for f, a in fresh.children("flow-actions") if f == flow}
        assert fresh.delete_record("flows", flow)
        assert not actions & {a for _, a in fresh.children("flow-actions")}
        assert not actions & {a for a, _ in fresh.children("flow-messages")}
        assert_error(c.get(path_of("flow-actions", flow)), 404, "not_found")
        assert_error(c.get(path_of("flow-messages", action)), 404, "not_found")

        action, message = sorted(fresh.children("flow-messages"))[0]
        assert fresh.delete_record("flow-messages", message)
        assert not fresh.delete_record("flow-messages", message)
        assert message not in {r["id"] for r in served(c, "flow-messages", action)}
        refs = next(r for r in fresh.records("flow-actions") if r["id"] == action)["relationships"]
        assert message not in {m["id"] for m in refs["flow-messages"]["data"]}

        action = next(a for a, _ in sorted(fresh.children("flow-messages")))
        assert fresh.delete_record("flow-actions", action)
        assert action not in fresh.ids("flow-actions")
        assert action not in {a for a, _ in fresh.children("flow-messages")}
        assert_error(c.get(path_of("flow-messages", action)), 404, "not_found")

        campaign, message = sorted(fresh.children("campaign-messages"))[0]
        assert fresh.delete_record("campaign-messages", message)
        assert message not in {r["id"] for r in served(c, "campaign-messages", campaign)}
        record = next(r for r in fresh.records("campaigns") if r["id"] == campaign)
        assert message not in {m["id"] for m in record["relationships"]["campaign-messages"]["data"]}
        for table in ("campaign-messages", "flow-actions", "flow-messages"):
            assert served_pairs(fresh, c, table) == fresh.children(table), table
            assert fresh.ids(table) == {child for _, child in fresh.children(table)}, table
    with pytest.raises(KeyError, match="members"):
        fresh.delete_record("list-profiles", "x")


def test_added_parents_come_with_children(fresh: KlaviyoSimulator) -> None:
    at = datetime(2024, 2, 1, tzinfo=UTC)
    new_flows = fresh.mutate("flows", updated=2, added=2, at=at)
    assert all({a for f, a in fresh.children("flow-actions") if f == flow} for flow in new_flows["added"])
    touched = new_flows["updated"][0]
    assert {a for f, a in fresh.children("flow-actions") if f == touched}
    new_lists = fresh.mutate("lists", updated=0, added=5, at=at)["added"]
    assert {p for p, _ in fresh.members("lists")} & set(new_lists)


def test_added_and_changed_children(fresh: KlaviyoSimulator) -> None:
    flow = sorted(fresh.ids("flows"))[0]
    action = {
        "type": "flow-action",
        "id": "99999999",
        "attributes": {
            "created": "2024-01-02T00:00:00+00:00",
            "updated": "2024-01-03T00:00:00+00:00",
            "definition": {"id": "99999999", "type": "time-delay", "data": {"unit": "days", "value": 2}},
        },
        "relationships": {"flow": {"data": {"type": "flow", "id": flow}}},
        "links": {"self": "https://a.klaviyo.com/api/flow-actions/99999999/"},
    }
    fresh.add_record("flow-actions", action)
    assert (flow, "99999999") in fresh.children("flow-actions")
    message = {
        "type": "flow-message",
        "id": "NewMsg",
        "attributes": {"channel": "sms", "definition": {"body": "hi"}},
        "relationships": {"flow-action": {"data": {"type": "flow-action", "id": "99999999"}}},
    }
    fresh.add_record("flow_messages", message)
    fresh.set_attribute("flow-messages", "NewMsg", "channel", "whatsapp")
    with httpx.Client(base_url=fresh.base_url, headers=HEADERS) as c:
        got = served(c, "flow-messages", "99999999")
        assert [(r["id"], r["attributes"]["channel"]) for r in got] == [("NewMsg", "whatsapp")]
        served_action = next(r for r in served(c, "flow-actions", flow) if r["id"] == "99999999")
        assert served_action["relationships"]["flow-messages"]["data"] == [
            {"type": "flow-message", "id": "NewMsg"}
        ]
    with pytest.raises(KeyError, match="relationships.flow.data"):
        fresh.add_record(
            "flow-actions", {**action, "relationships": {"flow": {"data": {"type": "flow", "id": "Nope"}}}}
        )


def test_scale_sets_the_most_children_of_a_parent() -> None:
    scale = {"profiles": 1500, "list-profiles": 1200, "flow_actions": 1, "campaign-messages": 1}
    with (
        KlaviyoSimulator(seed=5, scale=scale, rate_limits=False) as s,
        httpx.Client(base_url=s.base_url, headers=HEADERS) as c,
    ):
        parent = biggest(s, "lists")
        records, pages = fetch_all(c, path_of("list-profiles", parent), {"page[size]": "100"})
        assert len(records) == 1200 and pages == 12
        assert len(s.children("flow-actions")) == len(s.ids("flows"))
        assert len(s.children("campaign-messages")) == len(s.ids("campaigns"))
        assert max(sum(1 for p, _ in s.members("segments") if p == q) for q in s.ids("segments")) <= 250


def test_changes_while_serving_are_safe(fresh: KlaviyoSimulator) -> None:
    parent = biggest(fresh, "lists")
    profiles = sorted(fresh.ids("profiles"))

    def read(_: int) -> list[int]:
        with httpx.Client(base_url=fresh.base_url, headers=HEADERS, timeout=20) as c:
            return [
                c.get(path_of("list-profiles", parent), params={"page[size]": "100"}).status_code
                for _ in range(5)
            ]

    def change(n: int) -> list[int]:
        for pid in profiles[n::4]:
            fresh.add_member("lists", parent, pid, datetime(2024, 1, 2, tzinfo=UTC) + timedelta(seconds=n))
            fresh.remove_member("lists", parent, pid)
        return []

    with ThreadPoolExecutor(max_workers=8) as pool:
        reads, changes = pool.map(read, range(4)), pool.map(change, range(4))
        results = list(reads) + list(changes)
    assert all(code == 200 for codes in results for code in codes)
    assert not {pid for p, pid in fresh.members("lists") if p == parent}  # each was added, then removed
