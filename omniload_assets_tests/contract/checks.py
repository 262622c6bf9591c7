"""Checks of one request against an :class:`~.document.Operation`, and the exceptions the contract
grants: attributes the catalogue leaves out on purpose, types it stores differently, and known
discrepancies too large to fix here."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from omniload_assets.klaviyo.catalog import TableSpec

from .document import Operation, attribute_schemas, deref, path_pattern, relationship_names

#: Documented attributes the catalogue does not store as columns: ``(table, attribute)`` -> reason.
IGNORED_ATTRIBUTES: dict[tuple[str, str], str] = {
    ("profiles", "predictive_analytics"): (
        "additional field; asking for it drops /api/profiles to 10/s, 150/m (catalog.py)"
    ),
    ("templates", "definition"): (
        "additional field for SYSTEM_DRAGGABLE templates only; html carries the content"
    ),
}

#: Columns whose DuckDB type deliberately differs from the documented type: -> reason.
TYPE_EXCEPTIONS: dict[tuple[str, str], str] = {
    ("metrics", "created"): "documented as a plain string, but holds ISO 8601 datetimes (ENDPOINTS.md)",
    ("metrics", "updated"): "documented as a plain string, but holds ISO 8601 datetimes (ENDPOINTS.md)",
}

#: Known discrepancies not fixed here: ``(table, check)`` -> reason. Empty when all are fixed.
EXPECTED_FAILURES: dict[tuple[str, str], str] = {}

DATETIME_VALUE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:\d\d|Z)")


def split_top(text: str) -> list[str]:
    """``text`` split on commas outside quotes, brackets and parentheses."""
    parts: list[str] = []
    depth, quote, start = 0, "", 0
    for i, char in enumerate(text):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def filter_terms(expression: str) -> list[tuple[str, str, str | None]]:
    """``and(op(f,v),op(f,v))`` (or comma-joined terms) as ``(operator, field, raw value)``."""
    terms: list[tuple[str, str, str | None]] = []
    for part in split_top(expression):
        match = re.fullmatch(r"([a-z-]+)\((.*)\)", part, re.S)
        if match is None:
            raise ValueError(f"not a filter term: {part!r}")
        op, inner = match[1], match[2]
        if op in ("and", "or", "not"):
            terms += filter_terms(inner)
            continue
        args = split_top(inner)
        terms.append((op, args[0], args[1] if len(args) > 1 else None))
    return terms


def value_kind(raw: str | None) -> str:
    """The kind of a filter value as written: datetime, string, boolean, number, list or none."""
    if raw is None:
        return "none"
    if raw.startswith("[") and raw.endswith("]"):
        return "list"
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return "string"
    if raw in ("true", "false"):
        return "boolean"
    if DATETIME_VALUE.fullmatch(raw):
        datetime.fromisoformat(raw)  # raises on an impossible date
        return "datetime"
    if re.fullmatch(r"-?\d+(\.\d+)?", raw):
        return "number"
    return "unknown"


def request_problems(op: Operation, url: str) -> list[str]:
    """Everything ``url`` (a GET) does that ``op`` does not document; empty when it conforms."""
    parts = urlsplit(url)
    problems: list[str] = []
    path = parts.path.rstrip("/")  # Klaviyo's own links.next end the path with a slash
    if not path_pattern(op.path).fullmatch(path):
        problems.append(f"path {parts.path!r} is not {op.path}")
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    names = [k for k, _ in pairs]
    for name in sorted(op.required - set(names)):
        problems.append(f"required parameter {name!r} missing")
    for name, value in pairs:
        if names.count(name) > 1:
            problems.append(f"{name!r} given more than once")
        if name not in op.parameters:
            problems.append(f"{name!r} is not a documented parameter of GET {op.path}")
            continue
        schema = op.parameters[name].get("schema") or {}
        if name == "filter":
            problems += filter_problems(op, value)
        elif schema.get("type") == "integer":
            low, high = schema.get("minimum", 1), schema.get("maximum")
            if not value.isdigit() or int(value) < low or (high is not None and int(value) > high):
                problems.append(f"{name}={value!r} is outside the documented {low}..{high}")
        elif schema.get("type") == "array":
            enum = op.enum(name)
            for item in value.split(","):
                if enum is not None and item not in enum:
                    problems.append(f"{name}: {item!r} is not one of the documented values")
        elif schema.get("enum") is not None and value not in schema["enum"]:
            problems.append(f"{name}={value!r} is not one of {schema['enum']}")
    return problems


def filter_problems(op: Operation, expression: str) -> list[str]:
    """Each term of ``expression`` must use a field and operator the operation lists, with a value
    of the field's documented kind."""
    try:
        terms = filter_terms(expression)
    except ValueError as exc:
        return [str(exc)]
    problems: list[str] = []
    for operator, field, raw in terms:
        allowed = op.allowed_filters.get(field)
        if allowed is None:
            problems.append(f"filter field {field!r} is not allowed on GET {op.path}")
            continue
        if operator not in allowed:
            problems.append(f"filter operator {operator}({field}) is not allowed (only {sorted(allowed)})")
        try:
            kind = value_kind(raw)
        except ValueError:
            kind = "unknown"
        want = op.filter_kinds.get(field, "string")
        if kind == "list":
            items = split_top(raw[1:-1]) if raw else []
            if operator != "any" and not (operator == "equals" and want == "string"):
                problems.append(f"{operator}({field}) takes one value, not a list")
            kinds = {value_kind(i) for i in items}
            if kinds - {want}:
                problems.append(f"{field}: list values {raw!r} are not all {want}s")
        elif kind != want:
            problems.append(f"{field}: value {raw!r} is a {kind}, the document says {want}")
    return problems


def duckdb_type(doc: dict[str, Any], schema: dict[str, Any]) -> str:
    """The DuckDB type catalog.py gives a documented attribute: date-times TIMESTAMPTZ, strings
    VARCHAR, integers BIGINT, numbers DOUBLE, booleans BOOLEAN, objects, arrays and unions JSON."""
    node = deref(doc, schema)
    if any(k in node for k in ("oneOf", "anyOf", "allOf")):
        return "JSON"
    kind = node.get("type")
    if kind == "string":
        return "TIMESTAMPTZ" if node.get("format") == "date-time" else "VARCHAR"
    return {"integer": "BIGINT", "number": "DOUBLE", "boolean": "BOOLEAN"}.get(kind or "", "JSON")


def sparse_fieldset(spec: TableSpec) -> frozenset[str] | None:
    """The attributes ``spec`` asks for with ``fields[<type>]`` (None: all of them)."""
    fields = spec.params.get(f"fields[{spec.resource_type}]")
    return None if fields is None else frozenset(fields.split(","))


def column_problems(spec: TableSpec, doc: dict[str, Any]) -> list[str]:
    """Where ``spec``'s columns and relationships disagree with the resource schema in ``doc``.
    Attributes left out of the table's sparse fieldset need no column (they are not sent)."""
    attributes = attribute_schemas(doc, spec.name)
    asked = sparse_fieldset(spec)
    problems: list[str] = []
    for name, schema in attributes.items():
        reason = IGNORED_ATTRIBUTES.get((spec.name, name))
        if name not in spec.columns:
            if reason is None and (asked is None or name in asked):
                problems.append(f"{spec.name}: documented attribute {name!r} has no column")
            continue
        want = duckdb_type(doc, schema)
        have = spec.columns[name]
        if have != want and (spec.name, name) not in TYPE_EXCEPTIONS:
            problems.append(f"{spec.name}.{name}: column is {have}, the document says {want}")
    for name in spec.columns:
        if name not in attributes:
            problems.append(f"{spec.name}: column {name!r} is not a documented attribute")
        elif asked is not None and name not in asked:
            problems.append(f"{spec.name}: column {name!r} is left out of the sparse fieldset")
    documented = relationship_names(doc, spec.name)
    for rel in spec.relationships:
        if rel not in documented:
            problems.append(f"{spec.name}: relationship {rel!r} is not documented ({sorted(documented)})")
    return problems
