"""Reading Klaviyo's OpenAPI document: operations of the catalogue's tables and their resource schemas."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from omniload_assets.klaviyo.catalog import TableSpec

#: The pinned document: the contract's copy of ``../shared/klaviyo/openapi-2026-07-15.json``, gzipped.
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SPEC = REPO_ROOT / "omniload_assets_tests" / "contract" / "klaviyo" / "openapi-2026-07-15.json.gz"
JSON_API = "application/vnd.api+json"

Schema = dict[str, Any]


def load(path: Path | str = DEFAULT_SPEC) -> dict[str, Any]:
    """The OpenAPI document at ``path`` (gzipped if its name ends in ``.gz``)."""
    data = Path(path).read_bytes()
    return json.loads(gzip.decompress(data) if str(path).endswith(".gz") else data)


def resolve(doc: dict[str, Any], schema: Schema) -> Schema:
    """``schema`` with ``$ref`` followed and ``allOf`` merged (properties of later parts win)."""
    while "$ref" in schema:
        extra = {k: v for k, v in schema.items() if k != "$ref"}
        target = doc
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        schema = {**target, **extra}
    if "allOf" not in schema:
        return schema
    merged: Schema = {k: v for k, v in schema.items() if k != "allOf"}
    for part in schema["allOf"]:
        part = resolve(doc, part)
        for key, value in part.items():
            if key == "properties":
                props = merged.setdefault("properties", {})
                for name, sub in value.items():
                    props[name] = _merge(doc, props[name], sub) if name in props else sub
            elif key == "required":
                merged["required"] = sorted(set(merged.get("required", [])) | set(value))
            else:
                merged.setdefault(key, value)
    return merged


def _merge(doc: dict[str, Any], first: Schema, second: Schema) -> Schema:
    return resolve(doc, {"allOf": [first, second]})


def operation(doc: dict[str, Any], path: str, method: str = "get") -> dict[str, Any] | None:
    """The operation object of ``method`` on ``path``, or None when the document has none."""
    return (doc.get("paths", {}).get(path) or {}).get(method)


def _record(doc: dict[str, Any], spec: TableSpec) -> Schema:
    """The schema of one record the table's list operation returns (empty without the operation)."""
    op = operation(doc, spec.path)
    if op is None:
        return {}
    body = resolve(doc, op["responses"]["200"]["content"][JSON_API]["schema"])
    return resolve(doc, resolve(doc, body["properties"]["data"])["items"])


def resource_id(doc: dict[str, Any], spec: TableSpec) -> Schema:
    """The schema of a record's ``id``."""
    return resolve(doc, _record(doc, spec).get("properties", {}).get("id", {}))


def resource(doc: dict[str, Any], spec: TableSpec) -> tuple[dict[str, Schema], dict[str, Schema]]:
    """Attribute and relationship schemas of the records the table's list operation returns."""
    props = _record(doc, spec).get("properties", {})
    attributes = resolve(doc, props.get("attributes", {})).get("properties", {})
    relationships = resolve(doc, props.get("relationships", {})).get("properties", {})
    return (
        {name: resolve(doc, sub) for name, sub in attributes.items()},
        {name: resolve(doc, sub) for name, sub in relationships.items()},
    )


def parameter(doc: dict[str, Any], op: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The query parameter ``name`` of an operation (``$ref`` followed), or None."""
    for param in op.get("parameters", []):
        param = resolve(doc, param)
        if param.get("name") == name and param.get("in", "query") == "query":
            return param
    return None
