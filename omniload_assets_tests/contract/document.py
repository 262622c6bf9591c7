"""Klaviyo's OpenAPI document, as the contract tests read it: $refs resolved, the pinned revision's
delta applied, each table's list operation reduced to the facts a request and a response are held to.

The document (revision 2026-07-15) and ``endpoints.json`` are kept here, in ``klaviyo/`` (the
document gzipped), as copies of ``../shared/klaviyo``: a clone checks out wherever it is, and a test
holds the copies to the shared originals where those are present. Revision
2026-10-15, which the product pins, differs for campaigns, coupons and templates; those differences
are read from ``endpoints.json`` (``rev_2026_10_15_delta``) and applied as an overlay on a copy of the
document, so one code path checks every table. :data:`REVISION_CHECKED` says which revision each
fact of each table comes from.

The child tables (:data:`CHILD_TABLE_NAMES`, read per parent id from a path such as
``/api/lists/{id}/profiles``) are checked against the document as published: ``endpoints.json``,
hence the pinned revision's delta, covers the 15 listing tables only. Functions taking a table
find its operation by the catalogue's path (:func:`path_of`).
"""

from __future__ import annotations

import copy
import gzip
import json
import re
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from omniload_assets.klaviyo.catalog import TABLES, TABLES_BY_NAME

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Where the originals are for developers and CI: ``../shared`` beside the repository.
SHARED = REPO_ROOT.parent / "shared" / "klaviyo"
#: The copies the contract reads.
VENDORED = Path(__file__).resolve().parent / "klaviyo"
DOCUMENT_PATH = VENDORED / "openapi-2026-07-15.json.gz"
ENDPOINTS_PATH = VENDORED / "endpoints.json"
DOCUMENT_REVISION = "2026-07-15"
PINNED_REVISION = "2026-10-15"
#: The base URI the document is registered under for ``$ref`` resolution.
URN = "urn:klaviyo:openapi"

TABLE_NAMES = (
    "events",
    "profiles",
    "campaigns",
    "metrics",
    "tags",
    "coupons",
    "catalog-variants",
    "catalog-categories",
    "catalog-items",
    "flows",
    "lists",
    "images",
    "segments",
    "forms",
    "templates",
)
#: Tables read per parent id: every fact of theirs is checked against the document as published.
CHILD_TABLE_NAMES = tuple(t.name for t in TABLES if t.parent is not None)
#: Tables whose pinned revision differs from the document (``rev_2026_10_15_delta``).
DELTA_TABLES = frozenset({"campaigns", "coupons", "templates"})
FACTS = ("path", "parameters", "filters", "sort", "page_size", "response", "attributes")

_DOC = f"{DOCUMENT_REVISION} (openapi-2026-07-15.json)"
_DELTA = f"{PINNED_REVISION} (openapi-2026-07-15.json + endpoints.json rev_2026_10_15_delta)"

#: Which revision each fact of each table was checked against.
REVISION_CHECKED: dict[str, dict[str, str]] = {
    table: {fact: _DOC for fact in FACTS} for table in TABLE_NAMES if table not in DELTA_TABLES
}
REVISION_CHECKED["campaigns"] = {
    "path": _DOC,
    "parameters": _DELTA,
    "filters": _DELTA,
    "sort": _DELTA + ", sorts of the 2026-07-15.pre beta",
    "page_size": _DOC,
    "response": _DELTA,
    "attributes": _DELTA,
}
REVISION_CHECKED["coupons"] = {**{f: _DOC for f in FACTS}, "response": _DELTA, "attributes": _DELTA}
REVISION_CHECKED["templates"] = {**{f: _DOC for f in FACTS}, "response": _DELTA, "attributes": _DELTA}


class DocumentMissing(RuntimeError):
    """The shared OpenAPI document is not where CI puts it."""


@cache
def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DocumentMissing(
            f"Klaviyo contract: {path} is missing; copy it from ../shared/klaviyo (gzip the document)"
        )
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return json.loads(data)


def raw_document() -> dict[str, Any]:
    """The OpenAPI document exactly as published (revision 2026-07-15)."""
    return _read(DOCUMENT_PATH)


def endpoint_facts() -> dict[str, Any]:
    """``endpoints.json``: the per-table facts, with ``rev_2026_10_15_delta``."""
    return _read(ENDPOINTS_PATH)


def pointer(doc: dict[str, Any], ref: str) -> Any:
    """The node a local ``#/a/b`` reference points at."""
    if not ref.startswith("#/"):
        raise ValueError(f"only local references are supported: {ref!r}")
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def deref(doc: dict[str, Any], node: Any) -> Any:
    """``node`` with its ``$ref`` chain followed (siblings of a ``$ref`` are dropped)."""
    seen = 0
    while isinstance(node, dict) and "$ref" in node:
        node = pointer(doc, node["$ref"])
        seen += 1
        if seen > 50:
            raise ValueError("reference loop")
    return node


# -- the pinned revision's overlay ------------------------------------------------------------------

_OPS = {"gte": "greater-or-equal", "gt": "greater-than", "lte": "less-or-equal", "lt": "less-than"}


def _delta_filters(text: str) -> dict[str, list[str]]:
    """``endpoints.json``'s shorthand (`` `id`: any; `created_at`: gte/gt ``) as field -> operators."""
    out: dict[str, list[str]] = {}
    for part in text.split(";"):
        match = re.fullmatch(r"\s*`([^`]+)`:\s*(.+?)\s*", part)
        if match is None:
            raise ValueError(f"unreadable filter shorthand {part!r}")
        out[match[1]] = [_OPS.get(op, op) for op in match[2].split("/")]
    return out


def _campaigns_overlay(doc: dict[str, Any], delta: dict[str, Any]) -> None:
    """Revision 2026-10-15's campaigns: omnichannel, no channel filter, a ``definition`` object."""
    op = doc["paths"]["/api/campaigns"]["get"]
    old = {p["name"]: p for p in (deref(doc, p) for p in op["parameters"])}
    attributes = delta["attributes"]
    definition_fields = re.search(r"\{(.*)\}", attributes["definition"])
    assert definition_fields is not None
    sub = [f.split(" ")[0].split("{")[0] for f in re.split(r",\s*(?![^{]*\})", definition_fields[1])]
    allowed = _delta_filters(delta["filter_description"])
    kinds = {"archived": {"type": "boolean"}, "created_at": {"type": "string", "format": "date-time"}}
    kinds["updated_at"] = kinds["created_at"]
    params: list[dict[str, Any]] = []
    for name in delta["query_params"]:
        param = copy.deepcopy(old.get(name) or {"name": name, "in": "query", "schema": {"type": "string"}})
        if name == "filter":
            lines = [f"`{field}`: " + ", ".join(f"`{o}`" for o in ops) for field, ops in allowed.items()]
            param["description"] = "Allowed field(s)/operator(s):<br>" + "<br>".join(lines)
            param["required"] = bool(delta.get("filter_required"))
        elif name == "sort":
            param["schema"] = {"type": "string", "enum": delta["sort_from_beta_2026-07-15.pre"]}
        elif name == "include":
            enum = sorted({*delta["include_from_beta_2026-07-15.pre"], *delta["relationships"]})
            param["schema"] = {"type": "array", "items": {"type": "string", "enum": enum}}
        elif name == "fields[campaign]":
            enum = ["id", *attributes, *(f"definition.{f}" for f in sub)]
            param["schema"] = {"type": "array", "items": {"type": "string", "enum": enum}}
        elif name.startswith("fields[") and name not in old:
            param["schema"] = {"type": "array", "items": {"type": "string"}}
        params.append(param)
    params += [p for p in op["parameters"] if deref(doc, p).get("in") != "query"]
    op["parameters"] = params
    op["x-klaviyo-filters"] = {
        field: {
            "operators": {"list" if ops == ["any"] else "single": ops},
            "value": kinds.get(field, {"type": "string"}),
        }
        for field, ops in allowed.items()
    }
    schemas = doc["components"]["schemas"]
    date_time = {"type": "string", "format": "date-time"}
    rels = {
        rel: {
            "type": "object",
            "properties": {
                "data": {"type": "array"},
                "links": {"$ref": "#/components/schemas/RelationshipLinks"},
            },
        }
        for rel in delta["relationships"]
    }
    schemas["Rev20261015CampaignResponseObjectResource"] = {
        "type": "object",
        "properties": {
            "type": {"$ref": "#/components/schemas/CampaignEnum"},
            "id": {"type": "string"},
            "attributes": {
                "type": "object",
                "properties": {
                    "created_at": date_time,
                    "updated_at": date_time,
                    "definition": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "builder": {"type": "string", "enum": ["canvas", "wizard"]},
                            "archived": {"type": "boolean"},
                            "color": {"type": "string", "nullable": True},
                            "description": {"type": "string", "nullable": True},
                            "send_settings": {"type": "object", "nullable": True},
                        },
                    },
                },
                "required": list(attributes),
            },
            "relationships": {"type": "object", "properties": rels},
            "links": {"$ref": "#/components/schemas/ObjectLinks"},
        },
        "required": ["type", "id", "attributes", "links"],
    }
    response = copy.deepcopy(schemas["GetCampaignResponseCollectionCompoundDocument"])
    response["properties"]["data"]["items"] = {
        "$ref": "#/components/schemas/Rev20261015CampaignResponseObjectResource"
    }
    response["properties"]["included"]["items"] = {"type": "object"}  # 2026-10-15's included types unknown
    schemas["Rev20261015GetCampaignResponseCollectionCompoundDocument"] = response
    content = op["responses"]["200"]["content"]["application/vnd.api+json"]
    content["schema"] = {
        "$ref": "#/components/schemas/Rev20261015GetCampaignResponseCollectionCompoundDocument"
    }


#: Types of attributes the delta adds, as far as endpoints.json tells them.
_ADDED_ATTRIBUTES: dict[tuple[str, str], dict[str, Any]] = {
    ("coupons", "assigner_configuration"): {"type": "object", "nullable": True},
    ("templates", "screenshot_url"): {"type": "string", "nullable": True},
}


def _added_attributes_overlay(doc: dict[str, Any], table: str, delta: dict[str, Any]) -> None:
    resource = resource_schema(doc, table)
    props = resource["properties"]["attributes"]["properties"]
    for name in delta["attributes_added"]:
        props[name] = _ADDED_ATTRIBUTES[(table, name)]
    for name in delta["attributes_removed"]:
        props.pop(name, None)


@cache
def document() -> dict[str, Any]:
    """The document as the pinned revision has it: a copy with the delta applied. Do not mutate."""
    doc = copy.deepcopy(raw_document())
    facts = endpoint_facts()
    for table in sorted(DELTA_TABLES):
        delta = facts[table]["rev_2026_10_15_delta"]
        if table == "campaigns":
            _campaigns_overlay(doc, delta)
        else:
            _added_attributes_overlay(doc, table, delta)
    return doc


def view(table: str, pinned: bool = True) -> dict[str, Any]:
    """The document a table is checked against: with its delta (``pinned``) or as published."""
    return document() if pinned and table in DELTA_TABLES else raw_document()


# -- one operation ----------------------------------------------------------------------------------


def path_of(table: str) -> str:
    """The path of a table's list operation: the catalogue's (a template with ``{id}`` for a child
    table), else ``/api/<table>``."""
    spec = TABLES_BY_NAME.get(table)
    return spec.path if spec is not None else f"/api/{table}"


def path_pattern(path: str) -> re.Pattern[str]:
    """A request path that ``path`` (``/api/lists/{id}/profiles``) matches: one segment per ``{id}``."""
    return re.compile(re.escape(path).replace(re.escape("{id}"), "[^/]+"))


def response_ref(doc: dict[str, Any], table: str) -> str:
    """The ``$ref`` of the table's list operation's 200 response schema."""
    op = doc["paths"][path_of(table)]["get"]
    return op["responses"]["200"]["content"]["application/vnd.api+json"]["schema"]["$ref"]


def resource_schema(doc: dict[str, Any], table: str) -> dict[str, Any]:
    """The (mutable) schema of one resource object of the table's listing: the last ``allOf`` part
    when the data items are an ``allOf`` (the first adds ``additional-fields`` attributes)."""
    items = deref(doc, pointer(doc, response_ref(doc, table))["properties"]["data"]["items"])
    if "allOf" in items:
        return deref(doc, items["allOf"][-1])
    return items


def attribute_schemas(doc: dict[str, Any], table: str) -> dict[str, dict[str, Any]]:
    """Every documented attribute of the table's resource -> its schema (``$ref`` siblings kept),
    including attributes only returned through ``additional-fields``."""
    items = deref(doc, pointer(doc, response_ref(doc, table))["properties"]["data"]["items"])
    parts = [deref(doc, p) for p in items["allOf"]] if "allOf" in items else [items]
    out: dict[str, dict[str, Any]] = {}
    for part in reversed(parts):
        attrs = deref(doc, (part.get("properties") or {}).get("attributes") or {})
        out.update(attrs.get("properties") or {})
    return out


def relationship_names(doc: dict[str, Any], table: str) -> set[str]:
    rels = deref(doc, resource_schema(doc, table)["properties"].get("relationships") or {})
    return set(rels.get("properties") or {})


@dataclass(frozen=True)
class Operation:
    """What the document says of a table's list operation (``GET /api/<table>``, or a child's
    ``GET /api/<parent>/{id}/<children>``)."""

    table: str
    path: str
    #: Query parameters by name ($refs resolved).
    parameters: dict[str, dict[str, Any]]
    #: Filterable field -> operators, parsed from the ``filter`` parameter's description.
    allowed_filters: dict[str, frozenset[str]]
    #: Filterable field -> value kind (``datetime``, ``string``, ``boolean``, ``number``, ``none``).
    filter_kinds: dict[str, str]
    response_ref: str

    @property
    def required(self) -> frozenset[str]:
        return frozenset(n for n, p in self.parameters.items() if p.get("required"))

    def enum(self, name: str) -> list[Any] | None:
        """The allowed values of a parameter (of its items, for an array parameter)."""
        schema = self.parameters[name].get("schema") or {}
        if schema.get("type") == "array":
            schema = schema.get("items") or {}
        return schema.get("enum")


def parse_allowed_filters(description: str) -> dict[str, frozenset[str]]:
    """``Allowed field(s)/operator(s):<br>`f`: `op`, `op`<br>...`` as field -> operators."""
    marker = "Allowed field(s)/operator(s):"
    if marker not in description:
        return {}
    out: dict[str, frozenset[str]] = {}
    for line in description.split(marker, 1)[1].split("<br>"):
        match = re.match(r"\s*`([^`]+)`:\s*(.*)", line)
        if match:
            out[match[1]] = frozenset(re.findall(r"`([^`]+)`", match[2]))
    return out


def _kind(spec: dict[str, Any] | None) -> str:
    if spec is None or "value" not in spec:
        return "none"
    value = spec["value"]
    if value.get("format") == "date-time":
        return "datetime"
    return {"boolean": "boolean", "number": "number", "integer": "number"}.get(value.get("type"), "string")


def operation(table: str, doc: dict[str, Any] | None = None) -> Operation:
    """The table's list operation from ``doc`` (default: the table's pinned view)."""
    doc = doc if doc is not None else view(table)
    path = path_of(table)
    op = doc["paths"][path]["get"]
    params = {p["name"]: p for p in (deref(doc, p) for p in op["parameters"]) if p.get("in") == "query"}
    allowed = parse_allowed_filters(params["filter"].get("description", "")) if "filter" in params else {}
    extension = op.get("x-klaviyo-filters") or {}
    kinds = {field: _kind(extension.get(field)) for field in allowed}
    return Operation(table, path, params, allowed, kinds, response_ref(doc, table))


# -- response schemas as JSON Schema ----------------------------------------------------------------


#: Where the document is wrong about what Klaviyo sends: JSON pointer -> what is changed and why.
#: Each is applied to the schemas responses are validated against, nothing else.
DOCUMENT_ERRATA: dict[str, str] = {
    "#/components/schemas/CollectionLinks/properties/next": (
        'nullable: Klaviyo sends "next": null on the last page (ENDPOINTS.md \'follow links.next until '
        "it is null'; klaviyo/klaviyo-api-python#6 shows 'next': None, 'prev': None); typed string only"
    ),
    "#/components/schemas/CollectionLinks/properties/prev": (
        'nullable: Klaviyo sends "prev": null on the first page (klaviyo/klaviyo-api-python#6)'
    ),
}
#: Unions the document makes ``oneOf`` although a value can match several of their members: pointer
#: -> why. Read as ``anyOf`` (still: the value must be one of them), applied where DOCUMENT_ERRATA is.
ONE_OF_READ_AS_ANY_OF: dict[str, str] = {
    "#/components/schemas/FlowMessageEncodedResponseObjectResource/properties/attributes/properties/"
    "definition": (
        "FlowEmail and FlowWhatsApp require no property, so every email (and SMS, push) message definition "
        "matches two or more of the six members and no real one passes a oneOf"
    ),
}
#: ``oneOf: [{type: number}, {type: integer}]`` (segment conditions' values) rejects every whole
#: number, which is both; the generator meant "a number", so such a oneOf of bare primitive types is
#: read as ``anyOf``.
PRIMITIVE_ONE_OF = "oneOf of bare primitive types read as anyOf (number/integer overlap)"


def _with_errata(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for ref in DOCUMENT_ERRATA:
        pointer(doc, ref)["nullable"] = True
    for ref in ONE_OF_READ_AS_ANY_OF:
        node = pointer(doc, ref)
        node["anyOf"] = node.pop("oneOf")
    return doc


def to_json_schema(node: Any, sparse: bool) -> Any:
    """An OpenAPI 3.0 schema tree as JSON Schema 2020-12: ``nullable`` becomes a ``null`` type, and
    with ``sparse`` (a sparse fieldset was asked for) no property is required."""
    if isinstance(node, list):
        return [to_json_schema(v, sparse) for v in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: to_json_schema(v, sparse)
        for k, v in node.items()
        if k not in ("nullable", "example", "discriminator")
    }
    if sparse and isinstance(out.get("required"), list):
        del out["required"]
    one_of = out.get("oneOf")
    if isinstance(one_of, list) and all(isinstance(o, dict) and set(o) == {"type"} for o in one_of):
        out["anyOf"] = out.pop("oneOf")  # PRIMITIVE_ONE_OF
    if node.get("nullable") is True:
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        elif "$ref" in out or "allOf" in out or "oneOf" in out or "anyOf" in out:
            return {"anyOf": [out, {"type": "null"}]}
    return out


def _date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return False
    return parsed.tzinfo is not None and "T" in value


FORMATS = FormatChecker(formats=())
FORMATS.checks("date-time")(_date_time)


@cache
def _registry(pinned: bool, sparse: bool) -> Registry:
    doc = document() if pinned else raw_document()
    converted = to_json_schema(_with_errata(doc), sparse)
    return Registry().with_resource(URN, Resource.from_contents(converted, default_specification=DRAFT202012))


@cache
def response_validator(table: str, sparse: bool = False, pinned: bool = True) -> Draft202012Validator:
    """A validator of the table's list operation's 200 body; ``sparse`` for a request with
    ``fields[...]``."""
    pinned = pinned and table in DELTA_TABLES
    ref = response_ref(view(table, pinned), table)
    return Draft202012Validator(
        {"$ref": URN + ref}, registry=_registry(pinned, sparse), format_checker=FORMATS
    )
