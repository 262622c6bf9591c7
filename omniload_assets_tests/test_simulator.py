"""Tests of the Klaviyo simulator itself, over real HTTP with httpx."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from omniload_assets_tests.simulator import ALL_SCOPES, ENDPOINTS, KlaviyoSimulator
from omniload_assets_tests.simulator.timeutil import from_us, parse_us, to_us

KEY = "pk_test_simulator"
HEADERS = {
    "Authorization": f"Klaviyo-API-Key {KEY}",
    "revision": "2026-10-15",
    "Accept": "application/vnd.api+json",
}
JAN_10 = datetime(2024, 1, 10, tzinfo=UTC)
JAN_1_US = to_us(datetime(2024, 1, 1, tzinfo=UTC))
DAY = 86_400_000_000
JAN_20 = datetime(2024, 1, 20, tzinfo=UTC)
US = timedelta(microseconds=1)


def iso(dt: datetime) -> str:
    return dt.isoformat()


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


def fetch_all(
    client: httpx.Client, path: str, params: dict[str, str] | None = None
) -> tuple[list[dict[str, Any]], int]:
    """Follow links.next to the end; fail on a repeated next link. Returns records and pages."""
    records: list[dict[str, Any]] = []
    response = client.get(path, params=params or {})
    seen: set[str] = set()
    pages = 0
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        records.extend(body["data"])
        pages += 1
        next_url = body["links"]["next"]
        if next_url is None:
            return records, pages
        assert next_url not in seen, "links.next repeated"
        assert next_url.startswith(str(client.base_url).rstrip("/"))
        seen.add(next_url)
        response = client.get(next_url)


def ids_of(records: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in records]


def key_of(record: dict[str, Any], key: str) -> int | None:
    value = record["attributes"].get(key)
    return parse_us(value) if isinstance(value, str) else None


def truth_window(
    source: KlaviyoSimulator | list[dict[str, Any]], table: str, key: str, test: Any
) -> set[str]:
    """Ground-truth ids whose incremental key (as an instant) satisfies ``test``."""
    records = source.records(table) if isinstance(source, KlaviyoSimulator) else source
    return {r["id"] for r in records if (us := key_of(r, key)) is not None and test(us)}


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["errors"][0]
    assert {"id", "status", "code", "title", "detail", "source"} <= set(error)
    assert error["status"] == status
    assert error["code"] == code
    return error


# -- checks: auth, scopes, revision, parameters ---------------------------------------------


def test_wrong_or_missing_api_key_is_401(sim: KlaviyoSimulator) -> None:
    with httpx.Client(base_url=sim.base_url) as c:
        wrong = c.get("/api/events", headers={**HEADERS, "Authorization": "Klaviyo-API-Key pk_nope"})
        missing = c.get("/api/events", headers={"revision": "2026-10-15"})
    assert_error(wrong, 401, "not_authenticated")
    assert_error(missing, 401, "not_authenticated")


def test_missing_scope_is_403_naming_the_scope(fresh: KlaviyoSimulator) -> None:
    fresh.scopes = set(ALL_SCOPES) - {"catalogs:read"}
    with httpx.Client(base_url=fresh.base_url, headers=HEADERS) as c:
        error = assert_error(c.get("/api/catalog-variants"), 403, "permission_denied")
        assert "catalogs:read" in error["detail"]
        assert c.get("/api/tags").status_code == 200


@pytest.mark.parametrize("revision", [None, "2024-10-15", "2026-07-15", "garbage"])
def test_missing_or_unknown_revision_is_400(sim: KlaviyoSimulator, revision: str | None) -> None:
    headers = {"Authorization": HEADERS["Authorization"]}
    if revision is not None:
        headers["revision"] = revision
    with httpx.Client(base_url=sim.base_url, headers=headers) as c:
        assert_error(c.get("/api/lists"), 400, "invalid")


@pytest.mark.parametrize(
    ("path", "size", "status"),
    [
        ("/api/events", "1000", 200),
        ("/api/events", "1001", 400),
        ("/api/events", "0", 400),
        ("/api/profiles", "100", 200),
        ("/api/profiles", "101", 400),
        ("/api/lists", "10", 200),
        ("/api/lists", "11", 400),
        ("/api/tags", "51", 400),
        ("/api/segments", "11", 400),
        ("/api/templates", "11", 400),
        ("/api/flows", "51", 400),
        ("/api/images", "100", 200),
        ("/api/metrics", "10", 400),
        ("/api/events", "abc", 400),
    ],
)
def test_page_size_limits(client: httpx.Client, path: str, size: str, status: int) -> None:
    response = client.get(path, params={"page[size]": size})
    assert response.status_code == status, response.text
    if status == 200:
        assert len(response.json()["data"]) <= int(size)
    else:
        assert_error(response, 400, "invalid")


def test_default_page_sizes(client: httpx.Client) -> None:
    assert len(client.get("/api/events").json()["data"]) == 200
    assert len(client.get("/api/profiles").json()["data"]) == 20
    assert len(client.get("/api/lists").json()["data"]) == 10


@pytest.mark.parametrize(
    ("path", "filter_", "needle"),
    [
        ("/api/profiles", "greater-or-equal(updated,2024-01-10T00:00:00+00:00)", "greater-or-equal"),
        ("/api/profiles", "less-or-equal(updated,2024-01-10T00:00:00+00:00)", "less-or-equal"),
        ("/api/lists", "less-than(updated,2024-01-10T00:00:00+00:00)", "less-than"),
        ("/api/segments", "greater-or-equal(updated,2024-01-10T00:00:00+00:00)", "greater-or-equal"),
        ("/api/metrics", "greater-than(updated,2024-01-10T00:00:00+00:00)", "updated"),
        ("/api/catalog-items", "greater-than(updated,2024-01-10T00:00:00+00:00)", "updated"),
        ("/api/campaigns", "equals(messages.channel,'email')", "messages.channel"),
        ("/api/events", "equals(nonsense,'x')", "nonsense"),
        ("/api/events", "greater-than(datetime,'2024-01-10T00:00:00+00:00')", "unquoted"),
        ("/api/events", "greater-than(datetime,2024-01-10T00:00:00 00:00)", "%2B"),
        ("/api/events", "greater-than(datetime,2024-01-10", "filter"),
        ("/api/flows", "equals(archived,'true')", "boolean"),
    ],
)
def test_disallowed_filter_is_400_with_detail(
    client: httpx.Client, path: str, filter_: str, needle: str
) -> None:
    error = assert_error(client.get(path, params={"filter": filter_}), 400, "invalid")
    assert needle in error["detail"]
    assert error["source"] == {"parameter": "filter"}


def test_unencoded_plus_in_raw_url_is_rejected(sim: KlaviyoSimulator) -> None:
    url = f"{sim.base_url}/api/events?filter=greater-than(datetime,2024-01-10T00:00:00+00:00)"
    with httpx.Client(headers=HEADERS) as c:
        assert_error(c.get(url), 400, "invalid")
        encoded = url.replace("+", "%2B")
        assert c.get(encoded).status_code == 200


def test_coupons_take_no_filter_and_no_sort(client: httpx.Client) -> None:
    assert_error(client.get("/api/coupons", params={"filter": "equals(id,'X')"}), 400, "invalid")
    assert_error(client.get("/api/coupons", params={"sort": "id"}), 400, "invalid")


@pytest.mark.parametrize(
    ("path", "sort", "status"),
    [
        ("/api/lists", "-updated", 200),
        ("/api/lists", "opt_in_process", 400),
        ("/api/events", "-datetime", 200),
        ("/api/events", "uuid", 400),
        ("/api/catalog-items", "updated", 400),
        ("/api/catalog-categories", "created", 200),
        ("/api/metrics", "updated", 400),
        ("/api/campaigns", "-updated_at", 200),
        ("/api/campaigns", "scheduled_at", 400),
    ],
)
def test_sort_allowed_or_400(client: httpx.Client, path: str, sort: str, status: int) -> None:
    response = client.get(path, params={"sort": sort})
    assert response.status_code == status, response.text


def test_unknown_path_and_parameter_and_method(client: httpx.Client) -> None:
    assert_error(client.get("/api/nothing"), 404, "not_found")
    assert_error(client.get("/api/events", params={"bogus": "1"}), 400, "invalid")
    assert client.post("/api/events", json={}).status_code == 405


def test_trailing_slash_is_tolerated(client: httpx.Client) -> None:
    assert client.get("/api/tags/").json()["data"] == client.get("/api/tags").json()["data"]


# -- pagination -----------------------------------------------------------------------------


@pytest.mark.parametrize("table", list(ENDPOINTS))
def test_pagination_reaches_every_id_exactly_once(
    sim: KlaviyoSimulator, client: httpx.Client, table: str
) -> None:
    ep = ENDPOINTS[table]
    params = {} if ep.page_max is None else {"page[size]": str(ep.page_max)}
    variants: list[dict[str, str]] = [params]
    if ep.hides_archived:
        variants = [
            {**params, "filter": "equals(archived,false)"},
            {**params, "filter": "equals(archived,true)"},
        ]
    seen: list[str] = []
    for variant in variants:
        records, _ = fetch_all(client, ep.path, variant)
        seen.extend(ids_of(records))
    assert len(seen) == len(set(seen))
    assert set(seen) == sim.ids(table)
    assert len(seen) == len(sim.records(table))


def test_links_self_next_prev(client: httpx.Client) -> None:
    params = {"page[size]": "7", "sort": "-updated", "filter": "greater-than(updated,2024-01-03T00:00:00Z)"}
    first = client.get("/api/profiles", params=params).json()
    assert first["links"]["prev"] is None
    assert dict(httpx.URL(first["links"]["self"]).params) == params
    second = client.get(first["links"]["next"]).json()
    next_url = httpx.URL(first["links"]["next"])
    for name, value in params.items():
        assert next_url.params[name] == value
    assert "page[cursor]" in next_url.params
    back = client.get(second["links"]["prev"]).json()
    assert ids_of(back["data"]) == ids_of(first["data"])
    assert back["links"]["prev"] is None
    updated = [parse_us(r["attributes"]["updated"]) for r in first["data"] + second["data"]]
    assert updated == sorted(updated, reverse=True)


def test_cursor_from_another_query_is_400(client: httpx.Client) -> None:
    page = client.get("/api/events", params={"page[size]": "5"}).json()
    cursor = httpx.URL(page["links"]["next"]).params["page[cursor]"]
    response = client.get("/api/events", params={"page[cursor]": cursor, "sort": "-datetime"})
    assert_error(response, 400, "invalid")
    assert_error(client.get("/api/events", params={"page[cursor]": "not-a-cursor"}), 400, "invalid")


def test_events_sorted_by_datetime_both_ways(client: httpx.Client) -> None:
    up = client.get("/api/events", params={"sort": "datetime", "page[size]": "300"}).json()["data"]
    down = client.get("/api/events", params={"sort": "-datetime", "page[size]": "300"}).json()["data"]
    up_us = [parse_us(r["attributes"]["datetime"]) for r in up]
    down_us = [parse_us(r["attributes"]["datetime"]) for r in down]
    assert up_us == sorted(up_us)
    assert down_us == sorted(down_us, reverse=True)


def test_metrics_pages_hold_200() -> None:
    big = KlaviyoSimulator(seed=1, rate_limits=False, scale={"metrics": 450})
    with big, httpx.Client(base_url=big.start(), headers=HEADERS) as c:
        records, pages = fetch_all(c, "/api/metrics")
    assert pages == 3
    assert len({r["id"] for r in records}) == 450


# -- windows and boundaries -----------------------------------------------------------------

INCREMENTAL = [t for t, ep in ENDPOINTS.items() if ep.incremental_key]


@pytest.mark.parametrize("table", INCREMENTAL)
def test_every_incremental_table_has_midnight_boundary_records(sim: KlaviyoSimulator, table: str) -> None:
    key = ENDPOINTS[table].incremental_key
    assert key is not None
    instants = [key_of(r, key) for r in sim.records(table)]
    assert any(us is not None and us % DAY == 0 and us > JAN_1_US for us in instants)
    if table not in ("events", "metrics"):  # metrics carry whole seconds only
        assert any(us is not None and us % DAY == DAY - 1 for us in instants)


def test_event_window_operators_and_boundaries(sim: KlaviyoSimulator, client: httpx.Client) -> None:
    t = to_us(JAN_10)
    events = sim.records("events")
    at_boundary = truth_window(events, "events", "datetime", lambda us: us == t)
    assert at_boundary, "an event sits exactly on 2024-01-10T00:00:00Z"
    cases = {
        "greater-or-equal": lambda us: us >= t,
        "greater-than": lambda us: us > t,
        "less-or-equal": lambda us: us <= t,
        "less-than": lambda us: us < t,
    }
    formats = ("2024-01-10T00:00:00+00:00", "2024-01-10T00:00:00Z", "2024-01-10T00:00:00.000000+00:00")
    for op, test in cases.items():
        for value in formats:
            params = {"filter": f"{op}(datetime,{value})", "page[size]": "1000"}
            got = set(ids_of(fetch_all(client, "/api/events", params)[0]))
            assert got == truth_window(events, "events", "datetime", test), (op, value)
            if op in ("greater-or-equal", "less-or-equal"):
                assert at_boundary <= got
            else:
                assert not at_boundary & got


def test_event_window_forms_and_timestamp(sim: KlaviyoSimulator, client: httpx.Client) -> None:
    lo, hi = to_us(JAN_10), to_us(JAN_20)
    expected = sim.ids("events", JAN_10, JAN_20)
    assert expected == truth_window(sim, "events", "datetime", lambda us: lo <= us < hi)
    forms = [
        "greater-or-equal(datetime,2024-01-10T00:00:00+00:00),less-than(datetime,2024-01-20T00:00:00+00:00)",
        "and(greater-or-equal(datetime,2024-01-10T00:00:00Z),less-than(datetime,2024-01-20T00:00:00Z))",
        "and(greater-than(datetime,2024-01-09T23:59:59.999999+00:00),less-than(datetime,2024-01-20))",
        f"greater-or-equal(timestamp,{lo // 1_000_000}),less-than(timestamp,{hi // 1_000_000})",
        "greater-or-equal(datetime,2024-01-10T01:00:00+01:00),less-than(datetime,2024-01-19T19:00:00-05:00)",
    ]
    for form in forms:
        got = ids_of(fetch_all(client, "/api/events", {"filter": form, "page[size]": "1000"})[0])
        assert len(got) == len(set(got))
        assert set(got) == expected, form


@pytest.mark.parametrize(
    "table",
    ["profiles", "campaigns", "flows", "lists", "images", "segments", "forms", "templates"],
)
def test_server_side_windows_match_ground_truth(
    sim: KlaviyoSimulator, client: httpx.Client, table: str
) -> None:
    """A window [start, end) whose start has a record exactly on it, read with the endpoint's
    own operators (greater-than needs start - 1 µs; no upper bound means a client-side check)."""
    ep = ENDPOINTS[table]
    key = ep.incremental_key
    assert key is not None
    midnights = sorted(
        us
        for r in sim.records(table)
        if (us := key_of(r, key)) is not None and us % DAY == 0 and us > JAN_1_US
    )
    assert midnights, "boundary records exist"
    lo = midnights[0]
    hi = midnights[-1] if midnights[-1] > lo else lo + 10 * DAY
    start, end = from_us(lo), from_us(hi)
    ops = ep.filters[key].ops
    parts = [
        f"greater-or-equal({key},{iso(start)})"
        if "greater-or-equal" in ops
        else f"greater-than({key},{iso(start - US)})"
    ]
    if "less-than" in ops:
        parts.append(f"less-than({key},{iso(end)})")
    base = {"page[size]": str(ep.page_max)}
    variants = ["equals(archived,false)", "equals(archived,true)"] if ep.hides_archived else [None]
    got: set[str] = set()
    for variant in variants:
        expr = ",".join(parts + ([variant] if variant else []))
        records, _ = fetch_all(client, ep.path, {**base, "filter": expr})
        got |= {r["id"] for r in records if lo <= (key_of(r, key) or 0) < hi}
    expected = truth_window(sim, table, key, lambda us: lo <= us < hi)
    assert got == expected == sim.ids(table, start, end)
    assert truth_window(sim, table, key, lambda us: us == lo) <= got
    assert not truth_window(sim, table, key, lambda us: us == hi) & got


@pytest.mark.parametrize("table", ["flows", "templates"])
def test_equals_on_datetime_compares_instants(
    sim: KlaviyoSimulator, client: httpx.Client, table: str
) -> None:
    record = next(r for r in sim.records(table) if (key_of(r, "updated") or 1) % 86_400_000_000 == 0)
    us = key_of(record, "updated")
    assert us is not None
    value = datetime.fromtimestamp(us / 1_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    extra = ",equals(archived,true)" if record["attributes"].get("archived") else ""
    data = client.get(f"/api/{table}", params={"filter": f"equals(updated,{value}){extra}"}).json()["data"]
    assert record["id"] in ids_of(data)
    assert all(key_of(r, "updated") == us for r in data)


# -- campaigns and flows ---------------------------------------------------------------------


@pytest.mark.parametrize("table", ["campaigns", "flows"])
def test_archived_only_with_archived_filter(sim: KlaviyoSimulator, client: httpx.Client, table: str) -> None:
    def archived(record: dict[str, Any]) -> bool:
        attributes = record["attributes"]
        return bool(attributes["definition"]["archived"] if table == "campaigns" else attributes["archived"])

    every = sim.records(table)
    archived_ids = {r["id"] for r in every if archived(r)}
    assert archived_ids and archived_ids != {r["id"] for r in every}
    default = fetch_all(client, f"/api/{table}")[0]
    only_archived = fetch_all(client, f"/api/{table}", {"filter": "equals(archived,true)"})[0]
    not_archived = fetch_all(client, f"/api/{table}", {"filter": "equals(archived,false)"})[0]
    assert not any(archived(r) for r in default)
    assert set(ids_of(only_archived)) == archived_ids
    assert set(ids_of(default)) == set(ids_of(not_archived))
    assert set(ids_of(default)) | archived_ids == {r["id"] for r in every}


def test_campaigns_have_all_three_channels_in_the_2026_10_15_shape(
    sim: KlaviyoSimulator, client: httpx.Client
) -> None:
    channels = sim.campaign_channels()
    assert set(channels.values()) == {"email", "sms", "mobile_push"}
    archived = {r["id"] for r in sim.records("campaigns") if r["attributes"]["definition"]["archived"]}
    assert {channels[c] for c in archived} == {"email", "sms", "mobile_push"}
    seen: dict[str, str] = {}
    for variant in ("equals(archived,false)", "equals(archived,true)"):
        params = {"include": "campaign-messages", "filter": variant}
        body = client.get("/api/campaigns", params=params).json()
        for record in body["data"]:
            assert set(record["attributes"]) == {"created_at", "updated_at", "definition"}
            assert {"name", "builder", "archived", "color", "description", "send_settings"} <= set(
                record["attributes"]["definition"]
            )
            messages = record["relationships"]["campaign-messages"]["data"]
            assert messages and messages[0]["type"] == "campaign-message"
        for message in body["included"]:
            campaign_id = message["relationships"]["campaign"]["data"]["id"]
            seen[campaign_id] = message["attributes"]["definition"]["channel"]
    assert seen == channels


# -- rate limits ----------------------------------------------------------------------------


class FrozenClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_burst_limit_gives_429_with_retry_after() -> None:
    clock = FrozenClock(1_700_000_000.25)
    with KlaviyoSimulator(seed=1, clock=clock) as s, httpx.Client(base_url=s.base_url, headers=HEADERS) as c:
        ok = [c.get("/api/tags") for _ in range(3)]  # tier S: 3/s
        assert [r.status_code for r in ok] == [200, 200, 200]
        assert ok[0].headers["RateLimit-Limit"] == "60"
        assert [r.headers["RateLimit-Remaining"] for r in ok] == ["59", "58", "57"]
        assert int(ok[0].headers["RateLimit-Reset"]) > 0
        throttled = c.get("/api/tags")
        error = assert_error(throttled, 429, "throttled")
        assert throttled.headers["Retry-After"] == "1"
        assert "RateLimit-Remaining" not in throttled.headers
        assert error["title"] == "Request was throttled."
        assert c.get("/api/lists").status_code == 200  # other endpoints have their own limit
        clock.now += 1
        assert c.get("/api/tags").status_code == 200
        assert s.stats.throttled == 1


def test_steady_limit_and_custom_limits_and_switch_off() -> None:
    clock = FrozenClock(1_699_999_990.0)  # 50 s before a minute ends
    with KlaviyoSimulator(seed=1, clock=clock) as s, httpx.Client(base_url=s.base_url, headers=HEADERS) as c:
        s.set_rate_limit("events", burst=100, steady=2)
        assert [c.get("/api/events").status_code for _ in range(2)] == [200, 200]
        throttled = c.get("/api/events")
        assert throttled.status_code == 429
        assert throttled.headers["Retry-After"] == "50"
        s.rate_limits = False
        assert c.get("/api/events").status_code == 200
        s.rate_limits = True
        s.reset_rate_limits()
        assert c.get("/api/events").headers["RateLimit-Limit"] == "3500"


def test_limits_are_shared_per_api_key_across_connections() -> None:
    clock = FrozenClock(1_700_000_000.5)
    with KlaviyoSimulator(seed=1, clock=clock) as s:
        s.set_rate_limit("forms", burst=4, steady=100)
        clients = [httpx.Client(base_url=s.base_url, headers=HEADERS) for _ in range(3)]
        try:
            statuses = [c.get("/api/forms").status_code for c in clients + clients]
        finally:
            for c in clients:
                c.close()
    assert statuses.count(200) == 4 and statuses.count(429) == 2


def test_predictive_analytics_lowers_profiles_limit() -> None:
    clock = FrozenClock(1_700_000_000.5)
    with KlaviyoSimulator(seed=1, clock=clock) as s, httpx.Client(base_url=s.base_url, headers=HEADERS) as c:
        params = {"additional-fields[profile]": "predictive_analytics"}
        statuses = [c.get("/api/profiles", params=params).status_code for _ in range(11)]
    assert statuses == [200] * 10 + [429]


# -- faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["500", "502", "503", "504"])
def test_server_error_faults(fresh: KlaviyoSimulator, status: str) -> None:
    fresh.set_fault(status, count=2, path="/api/lists")
    with httpx.Client(base_url=fresh.base_url, headers=HEADERS) as c:
        assert c.get("/api/tags").status_code == 200
        codes = [c.get("/api/lists").status_code for _ in range(3)]
        assert codes == [int(status), int(status), 200]
        fresh.set_fault(status, path="lists")
        assert_error(c.get("/api/lists"), int(status), "error")
    assert fresh.stats.faults[status] == 3


def test_429_fault_carries_retry_after(fresh: KlaviyoSimulator) -> None:
    fresh.set_fault("429", count=1, retry_after=7)
    with httpx.Client(base_url=fresh.base_url, headers=HEADERS) as c:
        throttled = c.get("/api/events")
        assert_error(throttled, 429, "throttled")
        assert throttled.headers["Retry-After"] == "7"
        assert c.get("/api/events").status_code == 200
    assert fresh.stats.throttled == 1


def test_slow_fault_exceeds_client_timeout(fresh: KlaviyoSimulator) -> None:
    fresh.set_fault("slow", count=1, seconds=5)
    with httpx.Client(base_url=fresh.base_url, headers=HEADERS, timeout=0.3) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.get("/api/tags")
        assert c.get("/api/tags").status_code == 200


def test_drop_fault_closes_mid_body(fresh: KlaviyoSimulator) -> None:
    fresh.set_fault("drop", count=1)
    with httpx.Client(base_url=fresh.base_url, headers=HEADERS) as c:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            c.get("/api/events")
        assert c.get("/api/events").status_code == 200


@pytest.mark.parametrize("malformed", [False, True])
def test_truncate_fault_gives_broken_json(fresh: KlaviyoSimulator, malformed: bool) -> None:
    fresh.set_fault("truncate", count=1, malformed=malformed)
    with httpx.Client(base_url=fresh.base_url, headers=HEADERS) as c:
        response = c.get("/api/events")
        assert response.status_code == 200
        assert int(response.headers["Content-Length"]) == len(response.content)
        with pytest.raises(ValueError):
            orjson.loads(response.content)
        assert c.get("/api/events").json()["data"]


def test_repeat_cursor_fault_points_next_at_the_same_page(fresh: KlaviyoSimulator) -> None:
    with httpx.Client(base_url=fresh.base_url, headers=HEADERS) as c:
        first = c.get("/api/profiles").json()
        fresh.set_fault("repeat_cursor", count=1)
        second = c.get(first["links"]["next"]).json()
        assert second["links"]["next"] == first["links"]["next"] == second["links"]["self"]
        third = c.get(second["links"]["next"]).json()
        assert ids_of(third["data"]) == ids_of(second["data"])
        assert third["links"]["next"] != second["links"]["next"]


def test_fault_rate_is_deterministic_from_the_seed() -> None:
    def run() -> list[int]:
        with (
            KlaviyoSimulator(seed=5, rate_limits=False) as s,
            httpx.Client(base_url=s.base_url, headers=HEADERS) as c,
        ):
            s.set_fault("503", rate=0.3)
            codes = [c.get("/api/tags").status_code for _ in range(40)]
            s.clear_faults()
            assert c.get("/api/tags").status_code == 200
            return codes

    first, second = run(), run()
    assert first == second
    assert 0 < first.count(503) < 40


def test_stats_count_requests_pages_and_faults(fresh: KlaviyoSimulator) -> None:
    fresh.reset_stats()
    fresh.set_fault("500", count=1, path="/api/forms")
    with httpx.Client(base_url=fresh.base_url, headers=HEADERS) as c:
        c.get("/api/forms")
        c.get("/api/forms/")
        c.get("/api/events")
    stats = fresh.stats
    assert stats.requests == {"/api/forms": 2, "/api/events": 1}
    assert stats.faults == {"500": 1}
    assert stats.pages == 2
    assert stats.statuses == {500: 1, 200: 2}


# -- determinism, mutation, drift -----------------------------------------------------------


def test_same_seed_same_data_different_seed_different_data() -> None:
    a, b, c = (KlaviyoSimulator(seed=s) for s in (3, 3, 4))
    for table in ENDPOINTS:
        assert a.records(table) == b.records(table), table
    assert a.ids("profiles") != c.ids("profiles")
    assert a.ids("events") != c.ids("events")
    with a, b, httpx.Client(headers=HEADERS) as http:
        pa = http.get(f"{a.base_url}/api/events", params={"page[size]": "50"}).json()["data"]
        pb = http.get(f"{b.base_url}/api/events", params={"page[size]": "50"}).json()["data"]
    assert pa == pb


def test_records_look_like_klaviyo(sim: KlaviyoSimulator) -> None:
    events = sim.records("events")
    assert any("." in e["attributes"]["datetime"] for e in events)
    assert any("." not in e["attributes"]["datetime"] for e in events)
    for event in events[:200]:
        attributes = event["attributes"]
        assert attributes["datetime"].endswith("+00:00")
        assert attributes["timestamp"] == parse_us(attributes["datetime"]) // 1_000_000
        assert isinstance(attributes["event_properties"], dict)
        assert event["relationships"]["metric"]["data"]["type"] == "metric"
        assert isinstance(event["relationships"]["attributions"]["data"], list)
    assert any("items" in e["attributes"]["event_properties"] for e in events)
    profile = sim.records("profiles", additional_fields=["subscriptions"])[0]
    assert len(profile["id"]) == 26
    assert {"email", "location", "properties", "subscriptions", "created", "updated"} <= set(
        profile["attributes"]
    )
    assert "predictive_analytics" not in profile["attributes"]
    metric = sim.records("metrics")[0]
    assert len(metric["id"]) == 6 and metric["attributes"]["updated"].endswith("+00:00")
    assert all(r["id"].startswith("$custom:::$default:::") for r in sim.records("catalog-variants"))
    assert all(r["id"] == r["attributes"]["external_id"] for r in sim.records("coupons"))
    assert all(len(r["id"]) == 6 for t in ("lists", "segments", "flows") for r in sim.records(t))


def test_additional_fields_and_sparse_fieldsets(sim: KlaviyoSimulator, client: httpx.Client) -> None:
    plain = client.get("/api/profiles").json()["data"]
    assert "subscriptions" not in plain[0]["attributes"]
    rich = client.get("/api/profiles", params={"additional-fields[profile]": "subscriptions"}).json()["data"]
    truth = {r["id"]: r for r in sim.records("profiles", additional_fields=["subscriptions"])}
    assert all(truth[r["id"]] == r for r in rich)
    sparse = client.get("/api/events", params={"fields[event]": "datetime,uuid"}).json()["data"]
    assert set(sparse[0]["attributes"]) == {"datetime", "uuid"}
    assert_error(client.get("/api/events", params={"fields[event]": "nope"}), 400, "invalid")


def test_mutate_changes_records_and_incremental_keys(fresh: KlaviyoSimulator) -> None:
    at = datetime(2024, 3, 5, 12, 0, tzinfo=UTC)
    with httpx.Client(base_url=fresh.base_url, headers=HEADERS) as c:
        for table in ("events", "profiles", "campaigns", "lists", "templates"):
            key = ENDPOINTS[table].incremental_key
            assert key is not None
            before = {r["id"]: r for r in fresh.records(table)}
            change = fresh.mutate(table, updated=4, added=3, at=at)
            assert len(change["updated"]) == 4 and len(change["added"]) == 3
            after = {r["id"]: r for r in fresh.records(table)}
            assert set(after) == set(before) | set(change["added"])
            for rid in change["updated"]:
                assert after[rid]["attributes"] != before[rid]["attributes"]
                assert key_of(after[rid], key) == to_us(at)
            for rid in change["added"]:
                assert key_of(after[rid], key) == to_us(at)
            assert fresh.ids(table, at, at + timedelta(days=1)) == set(change["updated"]) | set(
                change["added"]
            )
            op = "greater-than" if table in ("lists", "profiles") else "greater-or-equal"
            bound = at - US if op == "greater-than" else at
            params: dict[str, str] = {"filter": f"{op}({key},{iso(bound)})"}
            if table == "campaigns":
                params["filter"] += ",equals(archived,false)"
                archived = {r for r in change["updated"] if after[r]["attributes"]["definition"]["archived"]}
            else:
                archived = set()
            served = {r["id"] for r in fetch_all(c, f"/api/{table}", params)[0]}
            assert served == (set(change["updated"]) | set(change["added"])) - archived


def test_mutate_tables_without_key(fresh: KlaviyoSimulator) -> None:
    before = {r["id"]: r for r in fresh.records("tags")}
    change = fresh.mutate("tags", updated=2, added=1)
    after = {r["id"]: r for r in fresh.records("tags")}
    assert all(after[i]["attributes"]["name"] != before[i]["attributes"]["name"] for i in change["updated"])
    assert fresh.ids("tags", JAN_10, JAN_20) == set(after)


def test_schema_drift_and_deletes(fresh: KlaviyoSimulator) -> None:
    profile = fresh.records("profiles")[0]
    event = fresh.records("events")[5]
    fresh.set_attribute("profiles", profile["id"], "email", 12345)
    fresh.set_attribute("profiles", profile["id"], "loyalty_level", {"tier": [1, 2]})
    fresh.set_attribute("events", event["id"], "event_properties", "not an object")
    fresh.add_record(
        "metrics",
        {"type": "metric", "id": "Zz9Zz9", "attributes": {"name": None, "created": "garbage", "updated": 7}},
    )
    with httpx.Client(base_url=fresh.base_url, headers=HEADERS) as c:
        profiles = {r["id"]: r for r in fetch_all(c, "/api/profiles", {"page[size]": "100"})[0]}
        assert profiles[profile["id"]]["attributes"]["email"] == 12345
        assert profiles[profile["id"]]["attributes"]["loyalty_level"] == {"tier": [1, 2]}
        events = {r["id"]: r for r in fetch_all(c, "/api/events", {"page[size]": "1000"})[0]}
        assert events[event["id"]]["attributes"]["event_properties"] == "not an object"
        metrics = {r["id"]: r for r in fetch_all(c, "/api/metrics")[0]}
        assert metrics["Zz9Zz9"]["attributes"]["updated"] == 7
        assert fresh.delete_record("events", event["id"])
        assert event["id"] not in {r["id"] for r in fetch_all(c, "/api/events", {"page[size]": "1000"})[0]}
    assert event["id"] not in fresh.ids("events")


# -- scale, latency, concurrency, CLI -------------------------------------------------------


def test_a_million_events_serve_a_window_without_generating_all() -> None:
    started = time.perf_counter()
    big = KlaviyoSimulator(seed=2, rate_limits=False, scale={"events": 1_000_000})
    assert time.perf_counter() - started < 3
    built: list[int] = []
    original = big._data.events.build

    def counting_build(i: int, at_us: int | None = None) -> dict[str, Any]:
        built.append(i)
        return original(i, at_us)

    big._data.events.build = counting_build
    start, end = datetime(2024, 1, 15, tzinfo=UTC), datetime(2024, 1, 15, 1, tzinfo=UTC)
    with big, httpx.Client(base_url=big.base_url, headers=HEADERS, timeout=30) as c:
        params = {
            "page[size]": "1000",
            "filter": f"greater-or-equal(datetime,{iso(start)}),less-than(datetime,{iso(end)})",
        }
        first = c.get("/api/events", params=params)
        assert first.status_code == 200
        assert len(first.json()["data"]) == 1000
        records, pages = fetch_all(c, "/api/events", params)
    assert len(built) < 5000
    got = ids_of(records)
    assert len(got) == len(set(got)) > 1000
    assert set(got) == big.ids("events", start, end)
    assert all(to_us(start) <= (key_of(r, "datetime") or -1) < to_us(end) for r in records)


def test_latency_makes_a_full_events_page_take_realistic_time() -> None:
    s = KlaviyoSimulator(seed=1, rate_limits=False, latency=True)
    with s, httpx.Client(base_url=s.start(), headers=HEADERS) as c:
        started = time.perf_counter()
        assert len(c.get("/api/events", params={"page[size]": "1000"}).json()["data"]) == 1000
        elapsed = time.perf_counter() - started
        started = time.perf_counter()
        c.get("/api/lists", params={"page[size]": "1"})
        small = time.perf_counter() - started
    assert 0.2 <= elapsed < 2.0
    assert small < elapsed


def test_twenty_concurrent_clients(sim: KlaviyoSimulator) -> None:
    paths = [f"/api/{t}" for t in ENDPOINTS]

    def work(n: int) -> list[int]:
        with httpx.Client(base_url=sim.base_url, headers=HEADERS, timeout=20) as c:
            return [c.get(paths[(n + k) % len(paths)]).status_code for k in range(6)]

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(work, range(20)))
    assert all(code == 200 for codes in results for code in codes)


def test_command_line_serves_until_sigterm() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "omniload_assets_tests.simulator",
        "--port",
        "0",
        "--seed",
        "3",
        "--events",
        "500",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line: list[str] = []
        stdout = proc.stdout
        reader = threading.Thread(target=lambda: line.append(stdout.readline()))
        reader.start()
        reader.join(timeout=20)
        base_url = line[0].strip()
        assert base_url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=base_url, headers=HEADERS) as c:
            records, _ = fetch_all(c, "/api/events", {"page[size]": "1000"})
        assert len(records) == 500
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
