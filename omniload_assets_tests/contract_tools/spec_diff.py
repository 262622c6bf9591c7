"""What a newer Klaviyo OpenAPI document changes for the catalogue's tables.

    python -m omniload_assets_tests.contract_tools.spec_diff NEW_SPEC [--base BASE_SPEC]
    make spec-diff SPEC=path/to/openapi.json

Per table (its list operation found by the catalogue's ``path``), prints what the newer document adds,
removes or retypes: attributes (name, type/format), filter fields and operators (from the ``filter``
parameter's "Allowed field(s)/operator(s)" text), the ``page[size]`` maximum, ``sort`` values, and
whether the operation is deprecated (or gone). The base defaults to the pinned shared document.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omniload_assets.klaviyo.catalog import TABLES, TableSpec
from omniload_assets_tests.contract_tools import openapi

_ALLOWED = re.compile(r"Allowed field\(s\)/operator\(s\):(.*)", re.S)
_FIELD_LINE = re.compile(r"`([^`]+)`\s*:\s*(.*)")
_OPERATOR = re.compile(r"`([^`]+)`")


@dataclass
class Surface:
    """What the catalogue depends on in one table's list operation."""

    present: bool = False
    deprecated: bool = False
    attributes: dict[str, str] = field(default_factory=dict)
    filters: dict[str, frozenset[str]] = field(default_factory=dict)
    page_max: int | None = None
    sorts: frozenset[str] = frozenset()


def type_label(doc: dict[str, Any], schema: dict[str, Any]) -> str:
    """``string``, ``string(date-time)``, ``array[string]``, ``object``; ``oneOf(...)`` for unions."""
    schema = openapi.resolve(doc, schema)
    for union in ("oneOf", "anyOf"):
        if union in schema:
            return f"{union}({'|'.join(sorted(type_label(doc, s) for s in schema[union]))})"
    kind = schema.get("type") or ("object" if "properties" in schema else "any")
    if kind == "array":
        return f"array[{type_label(doc, schema.get('items', {}))}]"
    return f"{kind}({schema['format']})" if "format" in schema else kind


def parse_filters(description: str) -> dict[str, frozenset[str]]:
    """``{field: operators}`` from a filter parameter's "Allowed field(s)/operator(s)" text."""
    match = _ALLOWED.search(description or "")
    if match is None:
        return {}
    filters: dict[str, frozenset[str]] = {}
    for line in re.split(r"<br\s*/?>|\n", match.group(1)):
        entry = _FIELD_LINE.match(line.strip())
        if entry:
            filters[entry.group(1)] = frozenset(_OPERATOR.findall(entry.group(2)))
    return filters


def surface(doc: dict[str, Any], spec: TableSpec) -> Surface:
    """The parts of ``spec``'s list operation in ``doc`` that :func:`diff` compares."""
    op = openapi.operation(doc, spec.path)
    if op is None:
        return Surface()
    attributes, _ = openapi.resource(doc, spec)
    filter_param = openapi.parameter(doc, op, "filter") or {}
    size = openapi.resolve(doc, (openapi.parameter(doc, op, "page[size]") or {}).get("schema", {}))
    sort = openapi.resolve(doc, (openapi.parameter(doc, op, "sort") or {}).get("schema", {}))
    return Surface(
        present=True,
        deprecated=bool(op.get("deprecated")),
        attributes={name: type_label(doc, schema) for name, schema in attributes.items()},
        filters=parse_filters(filter_param.get("description", "")),
        page_max=size.get("maximum"),
        sorts=frozenset(sort.get("enum", [])),
    )


def _added_removed(what: str, old: frozenset[str] | set[str], new: frozenset[str] | set[str]) -> list[str]:
    return [f"{what} added: {v}" for v in sorted(new - old)] + [
        f"{what} removed: {v}" for v in sorted(old - new)
    ]


def compare(old: Surface, new: Surface, spec: TableSpec) -> list[str]:
    """One line per change from ``old`` to ``new``."""
    if old.present and not new.present:
        return [f"operation removed: GET {spec.path}"]
    changes: list[str] = []
    if not old.present and new.present:
        changes.append(f"operation added: GET {spec.path}")
    if new.deprecated != old.deprecated:
        changes.append(
            f"operation {'deprecated' if new.deprecated else 'no longer deprecated'}: GET {spec.path}"
        )
    for name in sorted(new.attributes.keys() - old.attributes.keys()):
        changes.append(f"attribute added: {name} ({new.attributes[name]})")
    for name in sorted(old.attributes.keys() - new.attributes.keys()):
        changes.append(f"attribute removed: {name} ({old.attributes[name]})")
    for name in sorted(old.attributes.keys() & new.attributes.keys()):
        if old.attributes[name] != new.attributes[name]:
            changes.append(f"attribute retyped: {name} {old.attributes[name]} -> {new.attributes[name]}")
    changes += _added_removed("filter field", set(old.filters), set(new.filters))
    for name in sorted(old.filters.keys() & new.filters.keys()):
        for op in sorted(new.filters[name] - old.filters[name]):
            changes.append(f"filter operator added: {name} {op}")
        for op in sorted(old.filters[name] - new.filters[name]):
            changes.append(f"filter operator removed: {name} {op}")
    if old.page_max != new.page_max:
        changes.append(f"page[size] maximum: {old.page_max} -> {new.page_max}")
    changes += _added_removed("sort", old.sorts, new.sorts)
    return changes


def diff(base: dict[str, Any], new: dict[str, Any]) -> dict[str, list[str]]:
    """Table name -> changes, for the tables of the catalogue that have any."""
    changes = {spec.name: compare(surface(base, spec), surface(new, spec), spec) for spec in TABLES}
    return {name: lines for name, lines in changes.items() if lines}


def report(base: dict[str, Any], new: dict[str, Any]) -> str:
    """The printed report: a block per changed table, or a line saying nothing changed."""
    changes = diff(base, new)
    versions = f"{base.get('info', {}).get('version')} -> {new.get('info', {}).get('version')}"
    if not changes:
        return f"no changes for the catalogue's tables ({versions})\n"
    lines = [f"changes for the catalogue's tables ({versions}):"]
    for table, table_changes in changes.items():
        lines.append(f"{table}:")
        lines += [f"  {change}" for change in table_changes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, help="the newer OpenAPI document")
    parser.add_argument("--base", type=Path, default=openapi.DEFAULT_SPEC, help="the pinned document")
    args = parser.parse_args(argv)
    print(report(openapi.load(args.base), openapi.load(args.spec)), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
