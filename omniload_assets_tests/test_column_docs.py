"""Column descriptions: generated from Klaviyo's OpenAPI document, shipped in the package."""

from __future__ import annotations

import dagster as dg

from omniload_assets.assets import asset_key
from omniload_assets.klaviyo.catalog import TABLES
from omniload_assets_tests.contract_tools import column_docs, openapi


def test_every_column_of_every_built_asset_has_a_description(defs: dg.Definitions) -> None:
    for spec in TABLES:
        asset = defs.get_assets_def(asset_key(spec))
        schema = asset.specs_by_key[asset_key(spec)].metadata["dagster/column_schema"]
        columns = {c.name: c for c in schema.columns}
        deleted = ["_deleted_at"] if spec.strategy == "merge" else []  # the sweep's mark
        assert list(columns) == [*spec.column_types(), *deleted], spec.name
        undocumented = [name for name, c in columns.items() if not (c.description or "").strip()]
        assert not undocumented, f"{spec.name}: {undocumented}"
        assert all("\n" not in c.description for c in columns.values())


def test_the_committed_file_equals_the_generators_output() -> None:
    expected = column_docs.render(column_docs.generate(openapi.load()))
    assert column_docs.OUTPUT.read_text(encoding="utf-8") == expected, (
        "omniload_assets/klaviyo/column_docs.json is stale: "
        "run python -m omniload_assets_tests.contract_tools.column_docs"
    )


def test_descriptions_come_from_the_document_where_it_has_them() -> None:
    docs = column_docs.generate(openapi.load())
    assert docs["events"]["datetime"] == "Event timestamp in ISO8601 format (YYYY-MM-DDTHH:MM:SS+hh:mm)"
    assert docs["events"]["metric_id"].startswith("ID of the metric this event belongs to")
    assert docs["campaigns"]["tags_ids"].startswith("JSON array of the IDs of the tags")
    assert docs["images"]["size"] == column_docs.FALLBACK[("images", "size")]  # undescribed in the document


def test_check_mode_reports_a_stale_file(tmp_path) -> None:
    stale = tmp_path / "column_docs.json"
    stale.write_text("{}\n", encoding="utf-8")
    assert column_docs.main(["--check", "--output", str(stale)]) == 1
    assert column_docs.main(["--check"]) == 0
