"""The five nested list endpoints, ``GET /api/<parent>/{id}/<child>``, and request routing.

Written from Klaviyo's OpenAPI document (revision 2026-07-15, the same as 2026-10-15 for these):
each operation's ``x-klaviyo-filters``, ``sort`` values, ``page[size]`` bounds, scopes and rate limit.
Names follow the product's catalogue (``list-profiles``...), so one name means one endpoint.
"""

from __future__ import annotations

from urllib.parse import unquote

from .endpoints import (
    ANY,
    CONTAINS,
    ENDPOINTS,
    ENDS,
    EQ,
    GE,
    GT,
    LE,
    LT,
    STARTS,
    Endpoint,
    L,
    M,
    S,
    _attr,
    _f,
)

_PROFILES = ENDPOINTS["profiles"]
_MEMBER_FILTERS = {
    "email": _f("string", (), (ANY, EQ), "attributes.email"),
    "phone_number": _f("string", (), (ANY, EQ), "attributes.phone_number"),
    "push_token": _f("string", (), (ANY, EQ), "meta.push_tokens"),
    "_kx": _f("string", (EQ,), (), "meta._kx"),
    "joined_group_at": _f("datetime", (GE, GT, LE, LT), (), "attributes.joined_group_at"),
}
_STAMPS = (EQ, GE, GT, LE, LT)


def _members(table: str, parent: str, scope: str, filters: dict) -> Endpoint:
    """``/api/<parent>/{id}/profiles``: the members, as profiles with ``joined_group_at``."""
    return Endpoint(
        table=table,
        resource_type="profile",
        scope=scope,
        extra_scopes=("profiles:read",),
        tier=L,
        page_default=20,
        page_max=100,
        filters=filters,
        sorts=_attr("joined_group_at"),
        attributes=(*_PROFILES.attributes, "joined_group_at"),
        additional_fields=_PROFILES.additional_fields,
        datetime_attributes=_PROFILES.datetime_attributes | {"joined_group_at"},
        parent=parent,
        segment="profiles",
    )


#: Nested endpoints by name; a request names its parent's id in the path.
NESTED: dict[str, Endpoint] = {
    e.table: e
    for e in (
        _members("list-profiles", "lists", "lists:read", _MEMBER_FILTERS),
        _members(
            "segment-profiles",
            "segments",
            "segments:read",
            {"profile_id": _f("string", (), (ANY, EQ), "id"), **_MEMBER_FILTERS},
        ),
        Endpoint(
            table="campaign-messages",
            resource_type="campaign-message",
            scope="campaigns:read",
            tier=M,
            page_default=None,
            page_max=None,
            filters={},
            attributes=("definition", "send_times", "created_at", "updated_at"),
            includes=("campaign", "image", "template"),
            datetime_attributes=frozenset({"created_at", "updated_at"}),
            fixed_page=1000,
            parent="campaigns",
            segment="campaign-messages",
            paginated=False,
        ),
        Endpoint(
            table="flow-actions",
            resource_type="flow-action",
            scope="flows:read",
            tier=S,
            page_default=50,
            page_max=50,
            filters={
                "id": _f("string", (), (ANY,), "id"),
                "action_type": _f("string", (EQ,), (ANY, EQ), "attributes.definition.type"),
                "status": _f("string", (EQ,), (), "attributes.definition.data.status"),
                "created": _f("datetime", _STAMPS, (), "attributes.created"),
                "updated": _f("datetime", _STAMPS, (), "attributes.updated"),
            },
            sorts={
                "id": "id",
                "action_type": "attributes.definition.type",
                "status": "attributes.definition.data.status",
                **_attr("created", "updated"),
            },
            attributes=("created", "updated", "definition"),
            datetime_attributes=frozenset({"created", "updated"}),
            parent="flows",
            segment="flow-actions",
        ),
        Endpoint(
            table="flow-messages",
            resource_type="flow-message",
            scope="flows:read",
            tier=S,
            page_default=50,
            page_max=50,
            filters={
                "id": _f("string", (), (ANY,), "id"),
                "name": _f("string", (CONTAINS, ENDS, EQ, STARTS), (), "attributes.definition.name"),
                "created": _f("datetime", _STAMPS, (), "attributes.created"),
                "updated": _f("datetime", _STAMPS, (), "attributes.updated"),
            },
            sorts={"id": "id", "name": "attributes.definition.name", **_attr("created", "updated")},
            attributes=("channel", "created", "updated", "definition"),
            datetime_attributes=frozenset({"created", "updated"}),
            parent="flow-actions",
            segment="flow-messages",
        ),
    )
}

#: Every endpoint the simulator serves, top-level and nested, by name.
ALL_ENDPOINTS: dict[str, Endpoint] = {**ENDPOINTS, **NESTED}

#: Membership kinds (``members``, ``add_member``) and the endpoint serving each.
MEMBER_KINDS: dict[str, str] = {"lists": "list-profiles", "segments": "segment-profiles"}
#: The membership kind of each members endpoint.
MEMBER_TABLES: dict[str, str] = {table: kind for kind, table in MEMBER_KINDS.items()}

_BY_SEGMENTS = {(e.parent, e.segment): e for e in NESTED.values()}


def nested(table: str) -> Endpoint:
    """A nested endpoint by name (``flow-actions`` or ``flow_actions``)."""
    spec = NESTED.get(table) or NESTED.get(table.replace("_", "-"))
    if spec is None:
        raise KeyError(f"unknown nested Klaviyo table {table!r}; valid: {', '.join(NESTED)}")
    return spec


def any_endpoint(table: str) -> Endpoint:
    """Any endpoint, top-level or nested, by name."""
    spec = ALL_ENDPOINTS.get(table) or ALL_ENDPOINTS.get(table.replace("_", "-"))
    if spec is None:
        raise KeyError(f"unknown Klaviyo table {table!r}; valid: {', '.join(ALL_ENDPOINTS)}")
    return spec


def member_kind(kind: str) -> Endpoint:
    """The members endpoint of a kind, ``lists`` or ``segments``."""
    if kind not in MEMBER_KINDS:
        raise KeyError(f"unknown membership kind {kind!r}; valid: lists, segments")
    return NESTED[MEMBER_KINDS[kind]]


def route(path: str) -> tuple[Endpoint, str | None] | None:
    """The endpoint serving ``path`` and the parent id a nested path names (trailing slash
    tolerated), or None."""
    if not path.startswith("/api/"):
        return None
    parts = path[len("/api/") :].rstrip("/").split("/")
    if len(parts) == 1:
        ep = ENDPOINTS.get(parts[0])
        return None if ep is None else (ep, None)
    if len(parts) == 3 and parts[1]:
        ep = _BY_SEGMENTS.get((parts[0], parts[2]))
        return None if ep is None else (ep, unquote(parts[1]))
    return None
