"""Decoding page bodies: the struct path, the general path, and bodies that are no JSON:API page."""

from __future__ import annotations

import orjson
import pytest

from omniload_assets.klaviyo.catalog import get_table
from omniload_assets.klaviyo.pages import PageFormatError, read_page

EVENTS = get_table("events")


def event(i: int, **attributes: object) -> dict:
    return {
        "type": "event",
        "id": f"e{i}",
        "attributes": {"datetime": f"2024-01-0{i}T00:00:00+00:00", **attributes},
        "relationships": {"metric": {"data": {"type": "metric", "id": "m"}}},
    }


def body(data: object, next_url: object = "https://a.klaviyo.com/api/events/?page[cursor]=x") -> bytes:
    return orjson.dumps({"data": data, "links": {"self": "s", "next": next_url}})


def test_a_fitting_page_is_read_into_structs_with_its_keys_and_next_link() -> None:
    page = read_page(EVENTS, body([event(1), event(2)]))
    assert page.resources is not None
    assert [r.id for r in page.resources] == ["e1", "e2"]
    assert page.keys == ["2024-01-01T00:00:00+00:00", "2024-01-02T00:00:00+00:00"]
    assert page.next == "https://a.klaviyo.com/api/events/?page[cursor]=x"
    assert [r["id"] for r in page.records()] == ["e1", "e2"]


@pytest.mark.parametrize(
    "odd",
    [
        event(1, brand_new=1),  # an undocumented attribute
        event(1, timestamp="12"),  # a documented number sent as text
        {**event(1), "relationships": {"campaign": {"data": None}}},  # an undocumented relationship
        {"id": "e1"},  # no attributes: fits (all NULL)
    ],
)
def test_other_pages_take_the_general_path_with_the_same_keys(odd: dict) -> None:
    page = read_page(EVENTS, body([event(2), odd], next_url=None))
    fits = "attributes" not in odd
    assert (page.resources is not None) == fits
    assert (page.parsed is None) == fits  # a general page is parsed once, not again for its rows
    assert page.keys == ["2024-01-02T00:00:00+00:00", odd.get("attributes", {}).get("datetime")]
    assert page.next is None


@pytest.mark.parametrize(
    "raw",
    [b'{"data": [', b"not json", b"[1, 2]", b'{"errors": []}', b'{"data": {"id": "x"}}'],
)
def test_a_body_that_is_no_json_api_page_is_refused(raw: bytes) -> None:
    with pytest.raises(PageFormatError, match="response body is not"):
        read_page(EVENTS, raw)
