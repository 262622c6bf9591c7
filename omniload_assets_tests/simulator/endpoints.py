"""The simulator's own facts about the 15 Klaviyo list endpoints (revision 2026-10-15).

Written from ``/work/shared/klaviyo/ENDPOINTS.md`` and ``endpoints.json`` (including the
``rev_2026_10_15_delta`` entries), independently of the product's catalogue, so that a wrong fact
in the product is caught by tests against the simulator instead of being mirrored by it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote

REVISION = "2026-10-15"

EQ, GT, GE, LT, LE = "equals", "greater-than", "greater-or-equal", "less-than", "less-or-equal"
ANY, HAS = "any", "has"
CONTAINS, STARTS, ENDS = "contains", "starts-with", "ends-with"
RANGE_OPS = frozenset({GE, GT, LE, LT})

ValueKind = Literal["string", "datetime", "boolean", "number", "none"]


@dataclass(frozen=True)
class Tier:
    """A rate-limit tier: fixed windows of one second (burst) and one minute (steady)."""

    name: str
    burst: int
    steady: int


XL = Tier("XL", 350, 3500)
L = Tier("L", 75, 750)
M = Tier("M", 10, 150)
S = Tier("S", 3, 60)


@dataclass(frozen=True)
class FilterField:
    """One filterable field: operators taking a single value / a list, and where the value lives.

    ``path`` is a dotted path into the resource object (``attributes.updated``,
    ``relationships.metric.data.id``) or into the simulator's hidden per-record metadata
    (``meta.category_ids``).
    """

    kind: ValueKind
    ops: frozenset[str] = frozenset()
    list_ops: frozenset[str] = frozenset()
    path: str = ""


def _f(
    kind: ValueKind, ops: tuple[str, ...] = (), list_ops: tuple[str, ...] = (), path: str = ""
) -> FilterField:
    return FilterField(kind, frozenset(ops), frozenset(list_ops), path)


@dataclass(frozen=True)
class Endpoint:
    """Everything the simulator enforces for one ``GET /api/<table>`` endpoint."""

    table: str
    resource_type: str
    scope: str
    tier: Tier
    #: ``None`` when the endpoint takes no ``page[size]`` (metrics).
    page_default: int | None
    page_max: int | None
    filters: dict[str, FilterField]
    #: Sortable field -> path of its value.
    sorts: dict[str, str] = field(default_factory=dict)
    attributes: tuple[str, ...] = ()
    #: Attributes only returned when asked for with ``additional-fields[<type>]``.
    additional_fields: tuple[str, ...] = ()
    includes: tuple[str, ...] = ()
    incremental_key: str | None = None
    #: Attributes holding datetimes (compared and sorted as instants).
    datetime_attributes: frozenset[str] = frozenset()
    #: Archived records only listed with ``equals(archived,true)``.
    hides_archived: bool = False
    #: Page length when the endpoint takes no ``page[size]``.
    fixed_page: int = 0
    #: Scopes needed besides ``scope`` (a list's members need ``profiles:read`` too).
    extra_scopes: tuple[str, ...] = ()
    #: A nested endpoint's parent table and path segment: ``GET /api/<parent>/{id}/<segment>``.
    parent: str | None = None
    segment: str | None = None
    #: False when the endpoint serves everything on one page and takes no ``page[cursor]``.
    paginated: bool = True

    @property
    def path(self) -> str:
        """``/api/<table>``, or a nested endpoint's template ``/api/lists/{id}/profiles``."""
        if self.parent is not None:
            return f"/api/{self.parent}/{{id}}/{self.segment}"
        return f"/api/{self.table}"

    def path_for(self, parent_id: str | None) -> str:
        """The path of one request: the template filled with the parent's id."""
        return self.path if parent_id is None else self.path.replace("{id}", quote(parent_id, safe=""))

    @property
    def scopes(self) -> tuple[str, ...]:
        """Every scope a request needs."""
        return (self.scope, *self.extra_scopes)

    @property
    def page_length_default(self) -> int:
        return self.page_default if self.page_default is not None else self.fixed_page


def _attr(*names: str) -> dict[str, str]:
    return {n: f"attributes.{n}" for n in names}


ENDPOINTS: dict[str, Endpoint] = {
    e.table: e
    for e in (
        Endpoint(
            table="events",
            resource_type="event",
            scope="events:read",
            tier=XL,
            page_default=200,
            page_max=1000,
            filters={
                "metric_id": _f("string", (EQ,), (EQ,), "relationships.metric.data.id"),
                "profile_id": _f("string", (EQ,), (), "relationships.profile.data.id"),
                "profile": _f("none", (HAS,), (), "relationships.profile.data"),
                "metric": _f("none", (HAS,), (), "relationships.metric.data"),
                "datetime": _f("datetime", (GE, GT, LE, LT), (), "attributes.datetime"),
                "timestamp": _f("number", (GE, GT, LE, LT), (), "attributes.timestamp"),
            },
            sorts=_attr("datetime", "timestamp"),
            attributes=("timestamp", "event_properties", "datetime", "uuid"),
            includes=("attributions", "metric", "profile"),
            incremental_key="datetime",
            datetime_attributes=frozenset({"datetime"}),
        ),
        Endpoint(
            table="profiles",
            resource_type="profile",
            scope="profiles:read",
            tier=L,
            page_default=20,
            page_max=100,
            filters={
                "id": _f("string", (EQ,), (ANY, EQ), "id"),
                "email": _f("string", (EQ,), (ANY, EQ), "attributes.email"),
                "phone_number": _f("string", (EQ,), (ANY, EQ), "attributes.phone_number"),
                "external_id": _f("string", (EQ,), (ANY, EQ), "attributes.external_id"),
                "_kx": _f("string", (EQ,), (), "meta._kx"),
                "created": _f("datetime", (GT, LT), (), "attributes.created"),
                "updated": _f("datetime", (GT, LT), (), "attributes.updated"),
                "subscriptions.email.marketing.list_suppressions.reason": _f(
                    "string",
                    (EQ,),
                    (),
                    "attributes.subscriptions.email.marketing.list_suppressions.reason",
                ),
                "subscriptions.email.marketing.list_suppressions.timestamp": _f(
                    "datetime",
                    (GE, GT, LE, LT),
                    (),
                    "attributes.subscriptions.email.marketing.list_suppressions.timestamp",
                ),
                "subscriptions.email.marketing.list_suppressions.list_id": _f(
                    "string",
                    (EQ,),
                    (),
                    "attributes.subscriptions.email.marketing.list_suppressions.list_id",
                ),
                "subscriptions.email.marketing.suppression.reason": _f(
                    "string", (EQ,), (), "attributes.subscriptions.email.marketing.suppression.reason"
                ),
                "subscriptions.email.marketing.suppression.timestamp": _f(
                    "datetime",
                    (GE, GT, LE, LT),
                    (),
                    "attributes.subscriptions.email.marketing.suppression.timestamp",
                ),
            },
            sorts={
                "id": "id",
                **_attr("created", "email", "updated"),
                "subscriptions.email.marketing.list_suppressions.timestamp": (
                    "attributes.subscriptions.email.marketing.list_suppressions.timestamp"
                ),
                "subscriptions.email.marketing.suppression.timestamp": (
                    "attributes.subscriptions.email.marketing.suppression.timestamp"
                ),
            },
            attributes=(
                "email",
                "phone_number",
                "external_id",
                "first_name",
                "last_name",
                "organization",
                "locale",
                "title",
                "image",
                "created",
                "updated",
                "last_event_date",
                "location",
                "properties",
                "subscriptions",
                "predictive_analytics",
            ),
            additional_fields=("subscriptions", "predictive_analytics"),
            includes=("conversations", "push-tokens"),
            incremental_key="updated",
            datetime_attributes=frozenset({"created", "updated", "last_event_date"}),
        ),
        # Revision 2026-10-15 (omnichannel campaigns): no channel filter; definition object.
        Endpoint(
            table="campaigns",
            resource_type="campaign",
            scope="campaigns:read",
            tier=M,
            page_default=100,
            page_max=100,
            filters={
                "id": _f("string", (), (ANY,), "id"),
                "name": _f("string", (CONTAINS,), (), "attributes.definition.name"),
                "archived": _f("boolean", (EQ,), (), "attributes.definition.archived"),
                "builder": _f("string", (EQ,), (), "attributes.definition.builder"),
                "created_at": _f("datetime", (GE, GT, LE, LT), (), "attributes.created_at"),
                "updated_at": _f("datetime", (GE, GT, LE, LT), (), "attributes.updated_at"),
            },
            sorts={
                "id": "id",
                "name": "attributes.definition.name",
                **_attr("created_at", "updated_at"),
            },
            attributes=("created_at", "updated_at", "definition"),
            includes=("campaign-audiences", "campaign-messages", "tags"),
            incremental_key="updated_at",
            datetime_attributes=frozenset({"created_at", "updated_at"}),
            hides_archived=True,
        ),
        Endpoint(
            table="metrics",
            resource_type="metric",
            scope="metrics:read",
            tier=M,
            page_default=None,
            page_max=None,
            filters={
                "integration.name": _f("string", (EQ,), (), "attributes.integration.name"),
                "integration.category": _f("string", (EQ,), (), "attributes.integration.category"),
            },
            attributes=("name", "created", "updated", "integration"),
            includes=("flow-triggers",),
            incremental_key="updated",
            datetime_attributes=frozenset({"created", "updated"}),
            fixed_page=200,
        ),
        Endpoint(
            table="tags",
            resource_type="tag",
            scope="tags:read",
            tier=S,
            page_default=50,
            page_max=50,
            filters={"name": _f("string", (CONTAINS, ENDS, EQ, STARTS), (EQ,), "attributes.name")},
            sorts={"id": "id", "name": "attributes.name"},
            attributes=("name",),
            includes=("tag-group",),
        ),
        Endpoint(
            table="coupons",
            resource_type="coupon",
            scope="coupons:read",
            tier=L,
            page_default=100,
            page_max=100,
            filters={},
            attributes=(
                "external_id",
                "description",
                "monitor_configuration",
                "assigner_configuration",
            ),
        ),
        Endpoint(
            table="catalog-variants",
            resource_type="catalog-variant",
            scope="catalogs:read",
            tier=XL,
            page_default=100,
            page_max=100,
            filters={
                "ids": _f("string", (), (ANY,), "id"),
                "item.id": _f("string", (EQ,), (), "relationships.item.data.id"),
                "sku": _f("string", (EQ,), (), "attributes.sku"),
                "title": _f("string", (CONTAINS,), (), "attributes.title"),
                "published": _f("boolean", (EQ,), (), "attributes.published"),
            },
            sorts=_attr("created"),
            attributes=(
                "external_id",
                "title",
                "description",
                "sku",
                "inventory_policy",
                "inventory_quantity",
                "price",
                "url",
                "image_full_url",
                "image_thumbnail_url",
                "images",
                "custom_metadata",
                "published",
                "created",
                "updated",
            ),
            incremental_key="updated",
            datetime_attributes=frozenset({"created", "updated"}),
        ),
        Endpoint(
            table="catalog-categories",
            resource_type="catalog-category",
            scope="catalogs:read",
            tier=XL,
            page_default=100,
            page_max=100,
            filters={
                "ids": _f("string", (), (ANY,), "id"),
                "item.id": _f("string", (EQ,), (), "meta.item_ids"),
                "name": _f("string", (CONTAINS,), (), "attributes.name"),
            },
            # Accepted although catalog categories have no ``created`` attribute.
            sorts=_attr("created"),
            attributes=("external_id", "name", "updated"),
            incremental_key="updated",
            datetime_attributes=frozenset({"updated"}),
        ),
        Endpoint(
            table="catalog-items",
            resource_type="catalog-item",
            scope="catalogs:read",
            tier=XL,
            page_default=100,
            page_max=100,
            filters={
                "ids": _f("string", (), (ANY,), "id"),
                "category.id": _f("string", (EQ,), (), "meta.category_ids"),
                "title": _f("string", (CONTAINS,), (), "attributes.title"),
                "published": _f("boolean", (EQ,), (), "attributes.published"),
            },
            sorts=_attr("created"),
            attributes=(
                "external_id",
                "title",
                "description",
                "price",
                "url",
                "image_full_url",
                "image_thumbnail_url",
                "images",
                "custom_metadata",
                "published",
                "created",
                "updated",
            ),
            includes=("variants",),
            incremental_key="updated",
            datetime_attributes=frozenset({"created", "updated"}),
        ),
        Endpoint(
            table="flows",
            resource_type="flow",
            scope="flows:read",
            tier=S,
            page_default=50,
            page_max=50,
            filters={
                "id": _f("string", (), (ANY,), "id"),
                "name": _f("string", (CONTAINS, ENDS, EQ, STARTS), (), "attributes.name"),
                "status": _f("string", (EQ,), (), "attributes.status"),
                "archived": _f("boolean", (EQ,), (), "attributes.archived"),
                "created": _f("datetime", (EQ, GE, GT, LE, LT), (), "attributes.created"),
                "updated": _f("datetime", (EQ, GE, GT, LE, LT), (), "attributes.updated"),
                "trigger_type": _f("string", (EQ,), (), "attributes.trigger_type"),
            },
            sorts={"id": "id", **_attr("created", "name", "status", "trigger_type", "updated")},
            attributes=("name", "status", "archived", "created", "updated", "trigger_type"),
            includes=("flow-actions", "tags"),
            incremental_key="updated",
            datetime_attributes=frozenset({"created", "updated"}),
            hides_archived=True,
        ),
        Endpoint(
            table="lists",
            resource_type="list",
            scope="lists:read",
            tier=L,
            page_default=10,
            page_max=10,
            filters={
                "name": _f("string", (), (ANY, EQ), "attributes.name"),
                "id": _f("string", (EQ,), (ANY, EQ), "id"),
                "created": _f("datetime", (GT,), (), "attributes.created"),
                "updated": _f("datetime", (GT,), (), "attributes.updated"),
            },
            sorts={"id": "id", **_attr("created", "name", "updated")},
            attributes=("name", "created", "updated", "opt_in_process"),
            includes=("flow-triggers", "tags"),
            incremental_key="updated",
            datetime_attributes=frozenset({"created", "updated"}),
        ),
        Endpoint(
            table="images",
            resource_type="image",
            scope="images:read",
            tier=M,
            page_default=20,
            page_max=100,
            filters={
                "id": _f("string", (EQ,), (ANY, EQ), "id"),
                "updated_at": _f("datetime", (GE, GT, LE, LT), (), "attributes.updated_at"),
                "format": _f("string", (EQ,), (ANY, EQ), "attributes.format"),
                "name": _f("string", (CONTAINS, ENDS, EQ, STARTS), (ANY, EQ), "attributes.name"),
                "size": _f("number", (GE, GT, LE, LT), (), "attributes.size"),
                "hidden": _f("boolean", (EQ,), (ANY, EQ), "attributes.hidden"),
            },
            sorts={"id": "id", **_attr("format", "name", "size", "updated_at")},
            attributes=("name", "image_url", "format", "size", "hidden", "updated_at"),
            incremental_key="updated_at",
            datetime_attributes=frozenset({"updated_at"}),
        ),
        Endpoint(
            table="segments",
            resource_type="segment",
            scope="segments:read",
            tier=L,
            page_default=10,
            page_max=10,
            filters={
                "name": _f("string", (), (ANY, EQ), "attributes.name"),
                "id": _f("string", (EQ,), (ANY, EQ), "id"),
                "created": _f("datetime", (GT,), (), "attributes.created"),
                "updated": _f("datetime", (GT,), (), "attributes.updated"),
                "is_active": _f("boolean", (EQ,), (ANY, EQ), "attributes.is_active"),
                "is_starred": _f("boolean", (EQ,), (), "attributes.is_starred"),
            },
            sorts={"id": "id", **_attr("created", "name", "updated")},
            attributes=(
                "name",
                "definition",
                "created",
                "updated",
                "is_active",
                "is_processing",
                "is_starred",
            ),
            includes=("flow-triggers", "tags"),
            incremental_key="updated",
            datetime_attributes=frozenset({"created", "updated"}),
        ),
        Endpoint(
            table="forms",
            resource_type="form",
            scope="forms:read",
            tier=S,
            page_default=20,
            page_max=100,
            filters={
                "id": _f("string", (EQ,), (ANY, EQ), "id"),
                "name": _f("string", (CONTAINS, EQ), (ANY, EQ), "attributes.name"),
                "ab_test": _f("boolean", (EQ,), (), "attributes.ab_test"),
                "updated_at": _f("datetime", (GE, GT, LE, LT), (), "attributes.updated_at"),
                "created_at": _f("datetime", (GE, GT, LE, LT), (), "attributes.created_at"),
                "status": _f("string", (EQ,), (), "attributes.status"),
            },
            sorts=_attr("created_at", "updated_at"),
            attributes=("name", "status", "ab_test", "created_at", "updated_at"),
            incremental_key="updated_at",
            datetime_attributes=frozenset({"created_at", "updated_at"}),
        ),
        Endpoint(
            table="templates",
            resource_type="template",
            scope="templates:read",
            tier=L,
            page_default=10,
            page_max=10,
            filters={
                "id": _f("string", (), (ANY, EQ), "id"),
                "name": _f("string", (CONTAINS, EQ), (ANY, EQ), "attributes.name"),
                "created": _f("datetime", (EQ, GE, GT, LE, LT), (), "attributes.created"),
                "updated": _f("datetime", (EQ, GE, GT, LE, LT), (), "attributes.updated"),
            },
            sorts={"id": "id", **_attr("created", "name", "updated")},
            attributes=(
                "name",
                "editor_type",
                "html",
                "text",
                "amp",
                "screenshot_url",
                "created",
                "updated",
                "definition",
            ),
            additional_fields=("definition",),
            incremental_key="updated",
            datetime_attributes=frozenset({"created", "updated"}),
        ),
    )
}

#: Every scope the 15 endpoints need; a simulator with these scopes can read everything.
ALL_SCOPES: frozenset[str] = frozenset(e.scope for e in ENDPOINTS.values())

#: ``/api/profiles`` with ``additional-fields[profile]=predictive_analytics`` is slower.
PREDICTIVE_TIER = Tier("M", 10, 150)


def endpoint(table: str) -> Endpoint:
    """Look an endpoint up by table name (``catalog-items``) or asset name (``catalog_items``)."""
    spec = ENDPOINTS.get(table) or ENDPOINTS.get(table.replace("_", "-"))
    if spec is None:
        raise KeyError(f"unknown Klaviyo table {table!r}; valid: {', '.join(ENDPOINTS)}")
    return spec


def endpoint_for_path(path: str) -> Endpoint | None:
    """The endpoint serving ``/api/<table>`` (trailing slash tolerated), or None."""
    if not path.startswith("/api/"):
        return None
    return ENDPOINTS.get(path[len("/api/") :].rstrip("/"))
