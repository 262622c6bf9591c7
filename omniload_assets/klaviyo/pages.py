"""Decoding pages: straight into typed structs where the page fits the catalogue, else into dicts.

Turning a page of 1,000 events into dicts (``orjson``) and those into columns cost more CPU than
fetching it. ``msgspec`` decodes a page into structs generated from the catalogue entry instead:
documented attributes only, each with its JSON type, free-form objects kept as raw JSON text
(``msgspec.Raw``, never parsed), everything else skipped in C. A page that does not fit (an
undocumented attribute or relationship, a value of another type) fails that decode and takes the
general path: parsed into dicts, its rows built by ``RowBuilder``'s rules. Most tables' pages carry
relationships or attributes the catalogue leaves out and always take that path, which builds some
20,000 rows per CPU second: plenty for every rate limit but the events endpoint's.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import msgspec
import orjson

from omniload_assets.klaviyo.catalog import TableSpec

Record = dict[str, Any]

#: The Python type ``msgspec`` checks for each DuckDB type (JSON: kept raw).
_FIELD_TYPES: dict[str, Any] = {
    "VARCHAR": str | None,
    "TIMESTAMPTZ": str | None,  # parsed to timestamps in bulk by Arrow
    "BIGINT": int | None,
    "DOUBLE": float | None,
    "BOOLEAN": bool | None,
    "JSON": msgspec.Raw,
}


class PageFormatError(ValueError):
    """The body is not a JSON:API document with a ``data`` list."""


@dataclass(frozen=True)
class PageSchema:
    """The structs of one table's pages: which field holds which attribute and relationship."""

    decoder: msgspec.json.Decoder[Any]
    #: (attribute, struct field, DuckDB type) of each documented attribute.
    attributes: tuple[tuple[str, str, str], ...]
    #: (relationship, struct field, cardinality) of each documented relationship.
    relationships: tuple[tuple[str, str, str], ...]
    empty_attributes: Any
    empty_relationships: Any
    key: attrgetter[Any] | None


_SCHEMAS: dict[int, tuple[TableSpec, PageSchema]] = {}
_schemas_lock = threading.Lock()


def page_schema(spec: TableSpec) -> PageSchema:
    """The page structs of ``spec``, made once per spec."""
    with _schemas_lock:
        cached = _SCHEMAS.get(id(spec))
        if cached is None or cached[0] is not spec:
            cached = _SCHEMAS[id(spec)] = (spec, _make_schema(spec))
        return cached[1]


def _make_schema(spec: TableSpec) -> PageSchema:
    """Structs generated from ``spec``: unknown attributes and relationships are rejected, so a page
    with any takes the general path (``RowBuilder`` gives them columns of their own)."""
    struct = {"gc": False}  # nothing here forms reference cycles
    attributes = tuple((attr, f"a{i}", duck_type) for i, (attr, duck_type) in enumerate(spec.columns.items()))
    attribute_fields = [(field, _FIELD_TYPES[duck_type], None) for _, field, duck_type in attributes]
    if spec.incremental_key and spec.incremental_key not in spec.columns:
        attributes_key = "key"
        attribute_fields.append((attributes_key, Any, None))
        renames = {"key": spec.incremental_key}
    else:
        attributes_key = next((f for a, f, _ in attributes if a == spec.incremental_key), "")
        renames = {}
    renames.update({field: attr for attr, field, _ in attributes})
    attributes_type = msgspec.defstruct(
        "Attributes", attribute_fields, rename=renames, forbid_unknown_fields=True, **struct
    )
    identifier = msgspec.defstruct("Identifier", [("id", str | None, None)], **struct)
    one = msgspec.defstruct("ToOne", [("data", identifier | None, None)], **struct)
    many = msgspec.defstruct("ToMany", [("data", list[identifier] | None, None)], **struct)
    relationships = tuple(
        (rel, f"r{i}", cardinality) for i, (rel, cardinality) in enumerate(spec.relationships.items())
    )
    relationships_type = msgspec.defstruct(
        "Relationships",
        [(field, (one if card == "one" else many) | None, None) for _, field, card in relationships],
        rename={field: rel for rel, field, _ in relationships},
        forbid_unknown_fields=True,
        **struct,
    )
    resource = msgspec.defstruct(
        "Resource",
        [
            ("id", str | None, None),
            ("attributes", attributes_type | None, None),
            ("relationships", relationships_type | None, None),
        ],
        **struct,
    )
    links = msgspec.defstruct("Links", [("next", Any, None)], **struct)
    document = msgspec.defstruct("Document", [("data", list[resource]), ("links", links | None, None)])
    return PageSchema(
        decoder=msgspec.json.Decoder(document),
        attributes=attributes,
        relationships=relationships,
        empty_attributes=attributes_type(),
        empty_relationships=relationships_type(),
        key=attrgetter(attributes_key) if spec.incremental_key else None,
    )


@dataclass(frozen=True)
class RawPage:
    """One page: its body, each record's raw incremental key (None if absent), ``links.next``, and
    its resources as structs (``None``: the page does not fit the catalogue's structs, or was
    decoded by another process)."""

    body: bytes
    keys: list[Any]
    next: Any
    resources: list[Any] | None
    #: The resource objects as dicts when the page was decoded that way (no struct fit).
    parsed: list[Record] | None = None
    #: The page's rows (an Arrow table) when a decode process built them (``decode_processes``),
    #: with the extra column types that worker's ``RowBuilder`` had seen.
    table: Any = None
    extra_columns: dict[str, str] | None = None

    @property
    def size(self) -> int:
        return len(self.keys)

    def records(self) -> list[Record]:
        """The page's resource objects as dicts (a page read into structs is parsed on each call)."""
        return self.parsed if self.parsed is not None else orjson.loads(self.body)["data"]


@dataclass(frozen=True)
class PageBatch:
    """What extraction hands on for one page: the page, which of its records belong to the run
    (``keep``: indexes into ``data``, ``None`` for all) and, for a child table, the parent's id
    the page was requested for (its rows carry it)."""

    page: RawPage
    keep: list[int] | None = None
    parent: str | None = None

    @property
    def size(self) -> int:
        return self.page.size if self.keep is None else len(self.keep)

    def records(self) -> list[Record]:
        records = self.page.records()
        return records if self.keep is None else [records[i] for i in self.keep]

    def resources(self) -> list[Any] | None:
        """The kept resources as structs, or ``None`` when the page takes the general path."""
        resources = self.page.resources
        if resources is None or self.keep is None:
            return resources
        return [resources[i] for i in self.keep]


def read_page(spec: TableSpec, body: bytes) -> RawPage:
    """Decode a page's body; :class:`PageFormatError` when it is not a JSON:API page."""
    schema = page_schema(spec)
    try:
        document = schema.decoder.decode(body)
    except msgspec.DecodeError:  # also a page that does not fit the structs: decoded generally below
        return _read_general(spec, body)
    resources = document.data
    if schema.key is None:
        keys: list[Any] = [None] * len(resources)
    else:
        empty, key = schema.empty_attributes, schema.key
        keys = [key(r.attributes or empty) for r in resources]
    return RawPage(body, keys, None if document.links is None else document.links.next, resources)


def parse_document(body: bytes) -> dict[str, Any]:
    """A body parsed into dicts; :class:`PageFormatError` unless it is a JSON:API document with a
    ``data`` list."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PageFormatError(f"response body is not valid JSON ({exc})") from exc
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise PageFormatError("response body is not a JSON:API document with a data list")
    return document


def _read_general(spec: TableSpec, body: bytes) -> RawPage:
    document = parse_document(body)
    data = document["data"]
    key = spec.incremental_key
    keys = [_attribute(r, key) if key else None for r in data]
    links = document.get("links")
    return RawPage(body, keys, links.get("next") if isinstance(links, dict) else None, None, data)


def _attribute(resource: Any, name: str) -> Any:
    attributes = resource.get("attributes") if isinstance(resource, dict) else None
    return attributes.get(name) if isinstance(attributes, dict) else None
