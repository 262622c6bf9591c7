"""Generate ``omniload_assets/klaviyo/column_docs.json``: one description per column of every table.

    python -m omniload_assets_tests.contract_tools.column_docs [SPEC] [--check]

Descriptions come from Klaviyo's OpenAPI document (the attribute's ``description`` in the schema of
the records the table's list operation returns). The id and relationship-id columns, and a child
table's parent and member columns, are described from the catalogue.
Columns the document leaves undescribed, or does not have because they are new in
the pinned revision 2026-10-15, take a hand-written text from :data:`FALLBACK`; a column with neither
fails the run, so a new column cannot ship without a description. ``--check`` compares instead of
writing (exit status 1 on a difference).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from omniload_assets.klaviyo.catalog import TABLES, TableSpec, get_table
from omniload_assets_tests.contract_tools import openapi

OUTPUT = openapi.REPO_ROOT / "omniload_assets" / "klaviyo" / "column_docs.json"

#: Columns the 2026-07-15 document has no description for, or no attribute (2026-10-15 additions).
FALLBACK: dict[tuple[str, str], str] = {
    ("profiles", "location"): (
        "The profile's location: street address, city, region, country, zip code, timezone, IP address, "
        "latitude and longitude."
    ),
    ("profiles", "subscriptions"): (
        "The profile's subscription (consent) state per channel: email, SMS and mobile push "
        "(requested with additional-fields[profile]=subscriptions)."
    ),
    ("campaigns", "definition"): (
        "The campaign's definition (revision 2026-10-15): name, builder (canvas or wizard), archived, color, "
        "description and send settings."
    ),
    ("coupons", "assigner_configuration"): (
        "How the coupon's codes are assigned to profiles, e.g. unique codes and their expiry "
        "(revision 2026-10-15)."
    ),
    ("templates", "screenshot_url"): "URL of a screenshot of the template (revision 2026-10-15).",
    ("flows", "name"): "The name of the flow.",
    ("flows", "status"): "The flow's status: draft, manual or live.",
    ("flows", "archived"): "Whether the flow is archived.",
    ("flows", "created"): "Date and time when the flow was created, in ISO 8601 format.",
    ("flows", "updated"): "Date and time when the flow was last updated, in ISO 8601 format.",
    ("images", "name"): "The name of the image.",
    ("images", "image_url"): "URL of the image file.",
    ("images", "format"): "The image's file format, e.g. jpeg, png or gif.",
    ("images", "size"): "The image's size in bytes.",
    ("images", "hidden"): "Whether the image is hidden from the image library.",
    ("images", "updated_at"): "Date and time when the image was last updated, in ISO 8601 format.",
    ("segments", "definition"): "The segment's conditions: groups of conditions a member profile meets.",
    ("segments", "is_processing"): "Whether Klaviyo is still computing the segment's members.",
    ("segments", "is_starred"): "Whether the segment is starred in Klaviyo.",
    ("campaign-messages", "definition"): (
        "The message's definition: its channel (email, SMS or mobile push), label and content "
        "(subject, body, sender and the like, per channel)."
    ),
    ("flow-actions", "created"): "Date and time when the flow action was created, in ISO 8601 format.",
    ("flow-actions", "updated"): "Date and time when the flow action was last updated, in ISO 8601 format.",
    ("flow-messages", "channel"): "The channel the flow message is sent on, e.g. email or sms.",
    ("flow-messages", "created"): "Date and time when the flow message was created, in ISO 8601 format.",
    ("flow-messages", "updated"): (
        "Date and time when the flow message was last updated, in ISO 8601 format."
    ),
}

_MARKUP = re.compile(r"<br\s*/?>|\s+")


def one_line(text: str) -> str:
    """``text`` on one line: line breaks (``\\n``, ``<br>``) and runs of spaces become one space."""
    return _MARKUP.sub(" ", text).strip()


def _type_label(doc: dict[str, Any], relationship: str, schema: dict[str, Any]) -> str:
    """The JSON:API type a relationship points at (its ``data.type`` enum), else its name."""
    data = openapi.resolve(doc, schema.get("properties", {}).get("data", {}))
    item = openapi.resolve(doc, data.get("items", data))
    enum = openapi.resolve(doc, item.get("properties", {}).get("type", {})).get("enum")
    return enum[0] if enum else relationship


def _key_docs(doc: dict[str, Any], spec: TableSpec) -> dict[str, str]:
    """The key column's description and, for a child table, its parent and member columns'."""
    id_text = one_line(openapi.resource_id(doc, spec).get("description") or "")
    docs: dict[str, str] = {}
    if spec.parent is not None:
        parent = get_table(spec.parent).resource_type
        if spec.member_id_column is not None:
            id_text = (
                f"Primary key: <{spec.parent_column}>:<{spec.member_id_column}>, one row per membership "
                f"(a {spec.resource_type} can be a member of several {spec.parent})."
            )
            docs[spec.member_id_column] = f"ID of the member {spec.resource_type}."
            docs[spec.parent_column or ""] = f"ID of the {parent} the {spec.resource_type} is a member of."
        else:
            docs[spec.parent_column or ""] = (
                f"ID of the {parent} this {spec.resource_type} belongs to (the {parent} it was read for)."
            )
    if not id_text:
        id_text = f"Primary key: the {spec.resource_type}'s Klaviyo ID."
    elif not id_text.lower().startswith("primary key"):
        id_text = f"Primary key. {id_text}"
    return {spec.primary_key: id_text, **docs}


def table_docs(doc: dict[str, Any], spec: TableSpec) -> dict[str, str]:
    """Column -> description of one table, every column of :meth:`TableSpec.column_types`."""
    attributes, relationships = openapi.resource(doc, spec)
    docs = _key_docs(doc, spec)
    missing = []
    for column in spec.columns:
        text = one_line(attributes.get(column, {}).get("description") or "")
        text = text or FALLBACK.get((spec.name, column), "")
        if not text:
            missing.append(column)
        docs[column] = text
    if missing:
        raise SystemExit(
            f"{spec.name}: no description for {', '.join(missing)} in the document; add one to FALLBACK"
        )
    for rel, cardinality in spec.relationships.items():
        target = _type_label(doc, rel, relationships.get(rel, {}))
        if spec.relationship_column(rel) == spec.parent_column:
            continue  # described above
        if cardinality == "one":
            docs[spec.relationship_column(rel)] = (
                f"ID of the {target} this {spec.resource_type} belongs to (relationships.{rel}.data.id)."
            )
        else:
            docs[spec.relationship_column(rel)] = (
                f"JSON array of the IDs of the {target}s related to this {spec.resource_type} "
                f"(relationships.{rel}.data[].id)."
            )
    return docs


def generate(doc: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Table name -> column -> description, for every table of the catalogue."""
    return {spec.name: table_docs(doc, spec) for spec in TABLES}


def render(docs: dict[str, dict[str, str]]) -> str:
    """The committed file's text: sorted keys, two-space indent, a final newline."""
    return json.dumps(docs, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", type=Path, default=openapi.DEFAULT_SPEC, help="OpenAPI document")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--check", action="store_true", help="fail if the output file differs")
    args = parser.parse_args(argv)
    text = render(generate(openapi.load(args.spec)))
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run python -m {__spec__.name}", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
