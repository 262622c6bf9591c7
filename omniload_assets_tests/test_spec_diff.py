"""``make spec-diff``: what a newer OpenAPI document changes, tested on Klaviyo's real document."""

from __future__ import annotations

import copy
import json

import pytest

from omniload_assets_tests.contract_tools import openapi, spec_diff


@pytest.fixture(scope="module")
def base() -> dict:
    return openapi.load()


def test_the_document_against_itself_prints_no_changes(base, capsys) -> None:
    assert spec_diff.diff(base, base) == {}
    assert spec_diff.main([str(openapi.DEFAULT_SPEC)]) == 0
    assert capsys.readouterr().out == "no changes for the catalogue's tables (2026-07-15 -> 2026-07-15)\n"


def _param(doc: dict, path: str, name: str) -> dict:
    return next(p for p in doc["paths"][path]["get"]["parameters"] if p.get("name") == name)


def test_a_modified_copy_prints_exactly_its_changes(base, tmp_path, capsys) -> None:
    new = copy.deepcopy(base)
    new["info"]["version"] = "2026-10-15"
    # events: drop the uuid attribute from the record schema the list operation returns
    event = new["components"]["schemas"]["EventResponseObjectResource"]["properties"]["attributes"]
    assert "uuid" in event["properties"]
    del event["properties"]["uuid"]
    # profiles: a new operator on `updated`
    filter_param = _param(new, "/api/profiles", "filter")
    assert "`updated`: `greater-than`, `less-than`" in filter_param["description"]
    filter_param["description"] = filter_param["description"].replace(
        "`updated`: `greater-than`, `less-than`", "`updated`: `greater-or-equal`, `greater-than`, `less-than`"
    )
    # lists: a larger page
    _param(new, "/api/lists", "page[size]")["schema"]["maximum"] = 50
    # tags: the list operation deprecated
    new["paths"]["/api/tags"]["get"]["deprecated"] = True
    newer = tmp_path / "openapi-new.json"
    newer.write_text(json.dumps(new), encoding="utf-8")

    assert spec_diff.main([str(newer)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "changes for the catalogue's tables (2026-07-15 -> 2026-10-15):",
        "events:",
        "  attribute removed: uuid (string)",
        "profiles:",
        "  filter operator added: updated greater-or-equal",
        "tags:",
        "  operation deprecated: GET /api/tags",
        "lists:",
        "  page[size] maximum: 10 -> 50",
    ]


def test_retyped_attributes_sorts_and_filter_fields_are_reported(base) -> None:
    new = copy.deepcopy(base)
    attributes = new["components"]["schemas"]["EventResponseObjectResource"]["properties"]["attributes"]
    attributes["properties"]["timestamp"] = {"type": "string", "format": "date-time"}
    sort = _param(new, "/api/events", "sort")["schema"]
    sort["enum"] = [*sort["enum"], "uuid"]
    flt = _param(new, "/api/events", "filter")
    flt["description"] = flt["description"].replace("<br>`profile`: `has`", "")
    assert spec_diff.diff(base, new) == {
        "events": [
            "attribute retyped: timestamp integer -> string(date-time)",
            "filter field removed: profile",
            "sort added: uuid",
        ]
    }


def test_parse_filters_reads_the_allowed_fields_text() -> None:
    text = (
        "For more information please visit https://example.com<br>Allowed field(s)/operator(s):<br>"
        "`id`: `any`, `equals`<br>`updated`: `greater-than`"
    )
    assert spec_diff.parse_filters(text) == {
        "id": frozenset({"any", "equals"}),
        "updated": frozenset({"greater-than"}),
    }
    assert spec_diff.parse_filters("no filters here") == {}
