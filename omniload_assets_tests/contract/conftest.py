"""Fixtures of the contract tests: the document (a failing line when it is missing) and every request
the product sends to a simulator, recorded with the simulator's response."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from omniload_assets.klaviyo.catalog import TABLES
from omniload_assets.klaviyo.changes import ChangeProbe
from omniload_assets.klaviyo.client import ClientStats, KlaviyoClient
from omniload_assets.klaviyo.extraction import Extraction
from omniload_assets.klaviyo.sweep import list_ids, sweepable
from omniload_assets.klaviyo.windows import TimeWindow
from omniload_assets_tests.conftest import SIM_END, SIM_START
from omniload_assets_tests.records import RecordsDecoder, iter_records
from omniload_assets_tests.simulator import KlaviyoSimulator

from . import document

WINDOW = TimeWindow(datetime(2024, 1, 3, tzinfo=UTC), datetime(2024, 1, 8, tzinfo=UTC))
#: The change sensor's mark: records updated after it exist in the simulator.
MARK = datetime(2024, 1, 5, 12, tzinfo=UTC)


@dataclass(frozen=True)
class Exchange:
    """One request the product sent and what the simulator answered."""

    #: What produced the request: ``listing``, ``window``, ``hand-over``, ``concurrent``, ``probe``,
    #: ``sweep`` (the deletion sweep's listing of ids).
    source: str
    target: str
    status: int
    body: bytes
    #: The request's ``revision`` and ``Accept`` headers.
    revision: str | None = None
    accept: str | None = None

    @property
    def path(self) -> str:
        return urlsplit(self.target).path.rstrip("/")

    @property
    def params(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.target).query, keep_blank_values=True))

    @property
    def table(self) -> str:
        return self.path.removeprefix("/api/")


class HandOver(Extraction):
    """The product's extraction, told three workers sit idle after every page, so each task hands
    the rest of its window over (as it does under real concurrency) in a deterministic order."""

    def _wanted(self) -> int:
        return 3


@pytest.fixture(scope="session")
def doc() -> dict[str, Any]:
    """The OpenAPI document with the pinned revision's delta; a missing file fails with one line."""
    try:
        return document.document()
    except document.DocumentMissing as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)  # outside the handler: one line, no chained traceback


@pytest.fixture(autouse=True)
def _document_present(doc: dict[str, Any]) -> None:
    """Every contract test fails with the one line of :func:`doc` when the document is missing."""


@pytest.fixture(scope="session")
def exchanges(doc: dict[str, Any]) -> list[Exchange]:
    """Every request the product makes for the tables, with the simulator's response (the
    simulator is stopped before the tests read them: no thread of it outlives the fixture)."""
    recorded: list[Exchange] = []
    source = ["listing"]
    with KlaviyoSimulator(seed=11, start=SIM_START, end=SIM_END, rate_limits=False) as sim:
        handle = sim._api.handle

        def recording(method: str, target: str, headers: Any) -> Any:
            response = handle(method, target, headers)
            revision, accept = headers.get("revision"), headers.get("Accept")
            recorded.append(Exchange(source[0], target, response.status, response.body, revision, accept))
            return response

        sim._api.handle = recording  # type: ignore[method-assign]
        with KlaviyoClient(sim.api_key, base_url=sim.base_url, pace=False, max_retries=0) as client:
            for spec in (t for t in TABLES if t.parent is None):
                source[0] = "listing"
                list(iter_records(client, spec, None))
                if spec.partitioned:
                    source[0] = "window"
                    list(iter_records(client, spec, WINDOW))
                if spec.partitioned and spec.server_side_window:
                    source[0] = "hand-over"
                    size = 25 if spec.name == "events" else 2
                    stats = ClientStats()
                    list(
                        HandOver(
                            client,
                            spec,
                            WINDOW,
                            RecordsDecoder(spec),
                            page_size=size,
                            parallelism=1,
                            stats=stats,
                            now=SIM_END,
                        )
                    )
                    source[0] = "concurrent"
                    list(iter_records(client, spec, WINDOW, parallelism=4, page_size=size))
                if spec.partitioned:
                    source[0] = "probe"
                    ChangeProbe(client).changes(spec, MARK)
                if sweepable(spec):  # every table the deletion sweep can list, events included
                    source[0] = "sweep"
                    list_ids(client, spec)
    return recorded
