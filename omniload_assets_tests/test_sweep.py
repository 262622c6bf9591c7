"""Listing a table's ids for the deletion sweep: real HTTP to the simulator, pages read for ids only."""

from __future__ import annotations

import dataclasses
import math

import orjson
import pytest

from omniload_assets.klaviyo.catalog import TABLES, RateLimit, get_table
from omniload_assets.klaviyo.client import ClientStats, KlaviyoClient
from omniload_assets.klaviyo.errors import KlaviyoUnavailableError
from omniload_assets.klaviyo.pages import PageFormatError
from omniload_assets.klaviyo.sweep import (
    list_ids,
    listing_cost,
    read_ids,
    sweep_field,
    sweep_params,
    sweepable,
)
from omniload_assets_tests.simulator import KlaviyoSimulator

MERGE_TABLES = [t for t in TABLES if sweepable(t)]


def archived(record: dict) -> bool:
    """Whether a campaign (``definition.archived`` in this revision) or flow is archived."""
    attributes = record["attributes"]
    return bool(attributes.get("archived", (attributes.get("definition") or {}).get("archived")))


@pytest.fixture
def sim_client(simulator: KlaviyoSimulator):
    with KlaviyoClient(simulator.api_key, base_url=simulator.base_url, pace=False, max_retries=0) as client:
        yield client


@pytest.mark.parametrize("spec", MERGE_TABLES, ids=lambda s: s.name)
def test_a_listing_holds_exactly_the_ids_klaviyo_has(simulator, sim_client, spec) -> None:
    stats = ClientStats()
    ids = list_ids(sim_client, spec, stats)
    expected = simulator.ids(spec.name)
    assert expected and ids == expected  # archived campaigns and flows included (filter variants)
    # The fewest requests: full pages of the largest size, one chain per filter variant.
    variants = len(spec.filter_variants) or 1
    assert stats.records == len(expected)
    size = listing_cost(spec, 1).page_size
    least = sum(max(1, math.ceil(len(part) / size)) for part in _variant_parts(simulator, spec))
    assert least <= stats.requests <= least + variants  # a last full page may still link to an empty one
    assert stats.pages == stats.requests


def _variant_parts(simulator: KlaviyoSimulator, spec) -> list[list[dict]]:
    records = simulator.records(spec.name)
    if not spec.filter_variants:
        return [records]
    return [[r for r in records if archived(r) is flag] for flag in (False, True)]


def test_a_deleted_record_is_no_longer_listed(simulator, sim_client) -> None:
    spec = get_table("campaigns")
    before = list_ids(sim_client, spec)
    old = next(r["id"] for r in simulator.records("campaigns") if archived(r))
    live = next(r["id"] for r in simulator.records("campaigns") if not archived(r))
    assert simulator.delete_record("campaigns", old) and simulator.delete_record("campaigns", live)
    assert list_ids(sim_client, spec) == before - {old, live}


@pytest.mark.parametrize("spec", TABLES, ids=lambda s: s.name)
def test_the_query_is_the_tables_own_with_the_largest_page_and_one_small_field(spec) -> None:
    params = sweep_params(spec, "equals(archived,true)")
    assert params[f"fields[{spec.resource_type}]"] == sweep_field(spec)
    assert sweep_field(spec) in spec.columns
    assert not [k for k in params if k.startswith("additional-fields")]  # attributes the sweep never reads
    if spec.max_page_size is not None:
        assert params["page[size]"] == str(spec.max_page_size)
    assert params["filter"] == "equals(archived,true)"
    assert "filter" not in sweep_params(spec)


def test_the_listing_is_paced_to_the_endpoints_rate_limit(simulator) -> None:
    # lists: 25 records, 10 a page, 3 requests; a burst limit of 1/s makes the pacer wait between them.
    spec = dataclasses.replace(get_table("lists"), rate_limit=RateLimit("T", 1, 600))
    stats = ClientStats()
    with KlaviyoClient(simulator.api_key, base_url=simulator.base_url, max_retries=0) as client:
        assert list_ids(client, spec, stats) == simulator.ids("lists")
    assert stats.requests == 3
    assert stats.pacing_wait_s >= 1.0


def test_a_listing_that_fails_part_way_returns_nothing(simulator, sim_client) -> None:
    simulator.set_fault("503", path="profiles", after=1)  # the first page comes, the second never does
    seen: list[int] = []
    with pytest.raises(KlaviyoUnavailableError, match="HTTP 503"):
        list_ids(sim_client, get_table("profiles"), on_page=lambda stats: seen.append(stats.pages))
    assert seen == [1]


def test_a_page_is_read_for_its_ids_and_a_record_without_one_is_refused() -> None:
    body = {"data": [{"type": "flow", "id": "F1", "attributes": {"updated": "x"}}, {"id": "F2"}]}
    page = read_ids(orjson.dumps({**body, "links": {"next": "https://a.klaviyo.com/api/flows?page=2"}}))
    assert page.resources == ["F1", "F2"] and page.next.endswith("page=2") and page.size == 2
    assert read_ids(orjson.dumps(body)).next is None
    for broken in (
        b"<html>",
        b'{"errors": []}',
        orjson.dumps({"data": [{"type": "flow"}]}),
        orjson.dumps({"data": [{"id": ""}]}),
        orjson.dumps({"data": [{"id": 7}]}),
    ):
        with pytest.raises(PageFormatError):
            read_ids(broken)


def test_a_broken_page_is_retried_and_the_listing_completes(simulator) -> None:
    simulator.set_fault("truncate", path="flows", count=1, malformed=True)
    stats = ClientStats()
    with KlaviyoClient(
        simulator.api_key, base_url=simulator.base_url, pace=False, max_retries=2, retry_backoff_s=0
    ) as client:
        assert list_ids(client, get_table("flows"), stats) == simulator.ids("flows")
    assert stats.retries == 1


def test_the_cost_of_a_listing_at_the_rate_limits() -> None:
    profiles = listing_cost(get_table("profiles"), 1_000_000)  # L: 750 requests a minute, 100 a page
    assert (profiles.requests, round(profiles.minutes, 1)) == (10_000, 13.3)
    events = listing_cost(get_table("events"), 10_000_000)  # XL: 3,500 a minute, 1,000 a page
    assert (events.requests, round(events.minutes, 2)) == (10_000, 2.86)
    flows = listing_cost(get_table("flows"), 10)  # two variants: at least a request each
    assert (flows.requests, flows.page_size) == (2, 50)
    metrics = listing_cost(get_table("metrics"), 250)  # no page size: Klaviyo's pages of at most 200
    assert (metrics.page_size, metrics.requests) == (200, 2)
