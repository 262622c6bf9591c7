"""Mock Klaviyo pages and requests for the client and extraction unit tests (pytest-httpx)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs

import httpx

from omniload_assets.klaviyo.catalog import get_table
from omniload_assets.klaviyo.windows import TimeWindow

KEY = "pk_unit_test_3f9c2a7be41d4c08a6b5e9d1"
BASE = "https://a.klaviyo.com"
D0 = datetime(2024, 1, 5, tzinfo=UTC)
D1 = D0 + timedelta(days=1)
D2 = D1 + timedelta(days=1)
DAY = TimeWindow(D0, D1)
NEXT_DAY = TimeWindow(D1, D2)
US = timedelta(microseconds=1)

EVENTS = get_table("events")

EVENTS_DAY_FILTER = (
    "and(greater-or-equal(datetime,2024-01-05T00:00:00+00:00),less-than(datetime,2024-01-06T00:00:00+00:00))"
)


# -- mock pages -------------------------------------------------------------------------------------


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def resource(table: str, rid: str, when: datetime | str | None) -> dict:
    spec = get_table(table)
    attributes = {}
    if spec.incremental_key is not None and when is not None:
        attributes[spec.incremental_key] = iso(when) if isinstance(when, datetime) else when
    return {"type": spec.resource_type, "id": rid, "attributes": attributes}


def page(records: list[dict], next_url: str | None = None) -> dict:
    return {"data": records, "links": {"self": f"{BASE}/api/x", "next": next_url, "prev": None}}


def query(request: httpx.Request) -> dict[str, list[str]]:
    """The decoded query of a request (values as a server would decode them)."""
    return parse_qs(request.url.query.decode(), keep_blank_values=True)


def single(request: httpx.Request, name: str) -> str | None:
    values = query(request).get(name)
    if values is None:
        return None
    assert len(values) == 1, f"{name} sent {len(values)} times"
    return values[0]


def ids(batches) -> list[str]:
    return [r["id"] for batch in batches for r in batch]


def error_body(detail: str, status: int, code: str = "error") -> dict:
    return {
        "errors": [
            {
                "id": "a1b2c3",
                "status": status,
                "code": code,
                "title": "Error",
                "detail": detail,
                "source": {"pointer": "/data/"},
            }
        ]
    }
