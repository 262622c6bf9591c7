"""Profiles with predictive analytics (``KlaviyoResource.predictive_analytics``) against Klaviyo's
OpenAPI document: the requests the opt-in adds, the simulator's answers and the extra column.

The suite's ``exchanges`` fixture records the catalogue's own requests; this one records the
profiles entry the opt-in gives (:func:`~omniload_assets.klaviyo.catalog.effective_spec`), read as
the product reads it: whole, over a window, handing sub-windows over, and concurrently.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from omniload_assets.klaviyo.catalog import PREDICTIVE_ANALYTICS, effective_spec, get_table
from omniload_assets.klaviyo.client import ClientStats, KlaviyoClient
from omniload_assets_tests.conftest import SIM_END, SIM_START
from omniload_assets_tests.records import RecordsDecoder, iter_records
from omniload_assets_tests.simulator import KlaviyoSimulator

from . import document
from .checks import column_problems, request_problems
from .conftest import WINDOW, Exchange, HandOver

pytestmark = pytest.mark.contract

PROFILES = effective_spec(get_table("profiles"), predictive_analytics=True)


@pytest.fixture(scope="module")
def predictive_exchanges(doc: dict[str, Any]) -> list[Exchange]:
    """Every request the product makes for profiles with predictive analytics, with the answer."""
    recorded: list[Exchange] = []
    source = ["listing"]
    with KlaviyoSimulator(seed=11, start=SIM_START, end=SIM_END, rate_limits=False) as sim:
        handle = sim._api.handle

        def recording(method: str, target: str, headers: Any) -> Any:
            response = handle(method, target, headers)
            recorded.append(Exchange(source[0], target, response.status, response.body))
            return response

        sim._api.handle = recording  # type: ignore[method-assign]
        with KlaviyoClient(sim.api_key, base_url=sim.base_url, pace=False, max_retries=0) as client:
            list(iter_records(client, PROFILES, None))
            source[0] = "window"
            list(iter_records(client, PROFILES, WINDOW))
            source[0] = "hand-over"
            stats = ClientStats()
            decoder = RecordsDecoder(PROFILES)
            list(
                HandOver(
                    client, PROFILES, WINDOW, decoder, page_size=2, parallelism=1, stats=stats, now=SIM_END
                )
            )
            source[0] = "concurrent"
            list(iter_records(client, PROFILES, WINDOW, parallelism=4, page_size=2))
    return recorded


def test_every_request_asks_for_predictive_analytics(predictive_exchanges) -> None:
    assert {e.source for e in predictive_exchanges} == {"listing", "window", "hand-over", "concurrent"}
    assert any("page[cursor]" in e.params for e in predictive_exchanges), "no cursor was followed"
    for e in predictive_exchanges:
        asked = e.params["additional-fields[profile]"].split(",")
        assert sorted(asked) == ["predictive_analytics", "subscriptions"], e.target


def test_the_requests_are_documented_and_accepted(predictive_exchanges) -> None:
    op = document.operation("profiles")
    problems = [(e.source, p) for e in predictive_exchanges for p in request_problems(op, e.target)]
    assert not problems
    assert {e.status for e in predictive_exchanges} == {200}


def test_the_responses_match_the_documented_schema(predictive_exchanges) -> None:
    validator = document.response_validator("profiles")
    served = 0
    for e in predictive_exchanges:
        body = orjson.loads(e.body)
        assert not [error.message for error in validator.iter_errors(body)], e.target
        served += sum(PREDICTIVE_ANALYTICS in r["attributes"] for r in body["data"])
    assert served, "no profile carried predictive analytics: the check proves nothing"


def test_the_column_is_the_documented_attribute() -> None:
    assert not column_problems(PROFILES, document.view("profiles"))
    assert PROFILES.columns[PREDICTIVE_ANALYTICS] == "JSON"
    # The check sees the column: typed as anything but JSON, it is reported.
    wrong = dataclasses.replace(PROFILES, columns={**PROFILES.columns, PREDICTIVE_ANALYTICS: "VARCHAR"})
    assert column_problems(wrong, document.view("profiles"))


def test_the_slower_limit_is_the_documented_one(doc) -> None:
    """Get Profiles' description names the limits with predictive analytics: 10/s, 150/m."""
    description = doc["paths"]["/api/profiles"]["get"]["description"]
    tail = description.split("additional-fields[profile]=predictive_analytics", 1)[1]
    limit = PROFILES.rate_limit
    assert f"Burst: `{limit.burst_per_s}/s`" in tail and f"Steady: `{limit.steady_per_min}/m`" in tail
    assert doc["paths"]["/api/profiles"]["get"]["x-klaviyo-ratelimit"] == {
        "burst": f"{get_table('profiles').rate_limit.burst_per_s}/s",
        "steady": f"{get_table('profiles').rate_limit.steady_per_min}/m",
    }
