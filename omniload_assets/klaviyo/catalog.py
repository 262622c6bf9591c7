"""The table catalogue: one declarative entry per Klaviyo table.

Everything else (assets, partitions, checks, automation, the simulator's tests) is derived from
these entries. Facts are from Klaviyo's API reference for revision 2026-10-15 (see
``../shared/klaviyo/ENDPOINTS.md``); each entry names its endpoint, JSON:API type, keys, strategy,
how the incremental key can be filtered server-side, page size, rate-limit tier and the DuckDB
types of the documented attributes.

A *child* table (``parent`` set) is read per record of its parent table: its ``path`` is a template
such as ``/api/lists/{id}/profiles``, filled with each parent id the warehouse holds, and each row
carries its parent's id in :attr:`TableSpec.parent_column`. Children are replaced whole on each run:
only a full pass sees a member removed or a parent deleted. The facts of the five child endpoints
are from the OpenAPI document of revision 2026-07-15 (``openapi-2026-07-15.json``), which
ENDPOINTS.md does not cover.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal
from urllib.parse import quote

Strategy = Literal["merge", "replace"]
Cardinality = Literal["one", "many"]

#: Comparison operators Klaviyo's filter syntax offers on a datetime field.
GE, GT, LE, LT = "greater-or-equal", "greater-than", "less-or-equal", "less-than"


@dataclass(frozen=True)
class RateLimit:
    """Klaviyo's per-account fixed-window limits: ``burst`` per second, ``steady`` per minute."""

    tier: str
    burst_per_s: int
    steady_per_min: int


XL = RateLimit("XL", 350, 3500)
L = RateLimit("L", 75, 750)
M = RateLimit("M", 10, 150)
S = RateLimit("S", 3, 60)


@dataclass(frozen=True)
class TableSpec:
    """Everything the project knows about one Klaviyo table."""

    name: str
    path: str
    resource_type: str
    description: str
    scope: str
    rate_limit: RateLimit
    #: DuckDB types of the documented attributes (free-form objects are JSON).
    columns: dict[str, str]
    strategy: Strategy = "merge"
    incremental_key: str | None = None
    #: Operators the endpoint accepts on the incremental key; empty means client-side windowing.
    filter_operators: frozenset[str] = frozenset()
    #: Largest ``page[size]``; ``None`` when the endpoint takes no page size.
    max_page_size: int | None = None
    #: Relationships whose ids become columns: ``metric`` -> ``metric_id``, many -> ``<rel>_ids``.
    relationships: dict[str, Cardinality] = field(default_factory=dict)
    #: Extra query parameters sent on every request.
    params: dict[str, str] = field(default_factory=dict)
    #: Filter expressions queried one after another and unioned (e.g. archived and not).
    filter_variants: tuple[str, ...] = ()
    primary_key: str = "id"
    #: Scopes the endpoint needs besides ``scope`` (a list's members need ``profiles:read`` too).
    extra_scopes: tuple[str, ...] = ()
    #: The parent table (a child is read per parent id; ``path`` then holds ``{id}``).
    parent: str | None = None
    #: The column of the parent's id when no relationship of the record names the parent (members).
    parent_id_column: str | None = None
    #: Membership tables: the column of the record's own id (the member); the key is then
    #: ``<parent id>:<member id>``, as a profile is a member of many lists.
    member_id_column: str | None = None

    @property
    def asset_name(self) -> str:
        """``catalog-variants`` -> ``catalog_variants`` (asset key and DuckDB table name)."""
        return self.name.replace("-", "_")

    @property
    def partitioned(self) -> bool:
        return self.strategy == "merge" and self.incremental_key is not None

    @property
    def scopes(self) -> tuple[str, ...]:
        """Every scope the endpoint needs."""
        return (self.scope, *self.extra_scopes)

    @property
    def parent_column(self) -> str | None:
        """The column holding the parent's id: ``parent_id_column``, else the column of the
        relationship named after the parent's type (campaign-message -> ``campaign_id``)."""
        if self.parent is None:
            return None
        return self.parent_id_column or self.relationship_column(get_table(self.parent).resource_type)

    def request_path(self, parent_id: str | None = None) -> str:
        """The path of a request: ``path``, or for a child its template filled with ``parent_id``
        (percent-encoded, so an id can never reach another path or the query)."""
        if self.parent is None:
            return self.path
        if parent_id is None:
            raise ValueError(f"{self.name} is read per {self.parent} id: give the parent's id")
        return self.path.replace("{id}", quote(parent_id, safe=""))

    @property
    def server_side_window(self) -> bool:
        """True when the API can apply at least the lower bound of a window itself."""
        return bool(self.filter_operators & {GE, GT})

    def page_size(self, requested: int | None = None) -> int | None:
        """Records a full page holds: ``requested`` capped by the endpoint's largest page (None:
        the endpoint takes no page size)."""
        if self.max_page_size is None:
            return None
        return min(requested or self.max_page_size, self.max_page_size)

    def request_params(self, page_size: int | None = None) -> dict[str, str]:
        """The query every listing request of this table sends: its extra parameters and, where
        the endpoint takes one, the page size (``page_size`` capped by the largest page)."""
        params = dict(self.params)
        size = self.page_size(page_size)
        if size is not None:
            params["page[size]"] = str(size)
        return params

    @property
    def ceiling(self) -> float:
        """Records/s the endpoint serves at its steady rate limit with its largest page."""
        return self.rate_limit.steady_per_min / 60 * (self.max_page_size or 1)

    def relationship_column(self, relationship: str) -> str:
        suffix = "_id" if self.relationships.get(relationship, "one") == "one" else "_ids"
        return relationship.replace("-", "_") + suffix

    def column_types(self) -> dict[str, str]:
        """All fixed columns of the table in order: id, parent and member ids, attributes,
        relationship ids."""
        cols = {self.primary_key: "VARCHAR"}
        for col in (self.parent_column, self.member_id_column):
            if col is not None:  # a relationship's column keeps this place below
                cols[col] = "VARCHAR"
        cols.update(self.columns)
        for rel, card in self.relationships.items():
            cols[self.relationship_column(rel)] = "VARCHAR" if card == "one" else "JSON"
        return cols


TS = "TIMESTAMPTZ"
ALL_OPS = frozenset({GE, GT, LE, LT})


def _members(parent: str, description: str) -> TableSpec:
    """The membership table of lists or segments: one row per (parent, profile), with the join
    time only (a membership table, not a copy of profiles)."""
    return TableSpec(
        name=f"{parent[:-1]}-profiles",
        path=f"/api/{parent}/{{id}}/profiles",
        resource_type="profile",
        description=description,
        scope=f"{parent}:read",
        extra_scopes=("profiles:read",),
        rate_limit=L,
        strategy="replace",
        max_page_size=100,
        columns={"joined_group_at": TS},
        params={"fields[profile]": "joined_group_at"},
        parent=parent,
        parent_id_column=f"{parent[:-1]}_id",
        member_id_column="profile_id",
    )


TABLES: tuple[TableSpec, ...] = (
    TableSpec(
        name="events",
        path="/api/events",
        resource_type="event",
        description="Every event in the account: an action a profile took, such as an order.",
        scope="events:read",
        rate_limit=XL,
        incremental_key="datetime",
        filter_operators=ALL_OPS,
        max_page_size=1000,
        columns={
            "timestamp": "BIGINT",
            "datetime": TS,
            "uuid": "VARCHAR",
            "event_properties": "JSON",
        },
        relationships={"metric": "one", "profile": "one", "attributions": "many"},
    ),
    TableSpec(
        name="profiles",
        path="/api/profiles",
        resource_type="profile",
        description="Every profile: identity, contact details, location and custom properties.",
        scope="profiles:read",
        rate_limit=L,
        incremental_key="updated",
        filter_operators=frozenset({GT, LT}),
        max_page_size=100,
        columns={
            "email": "VARCHAR",
            "phone_number": "VARCHAR",
            "external_id": "VARCHAR",
            "first_name": "VARCHAR",
            "last_name": "VARCHAR",
            "organization": "VARCHAR",
            "locale": "VARCHAR",
            "title": "VARCHAR",
            "image": "VARCHAR",
            "created": TS,
            "updated": TS,
            "last_event_date": TS,
            "location": "JSON",
            "properties": "JSON",
            "subscriptions": "JSON",
        },
        # predictive_analytics is an opt-in (effective_spec): asking for it drops the endpoint to
        # 10/s, 150/m.
        params={"additional-fields[profile]": "subscriptions"},
    ),
    TableSpec(
        name="campaigns",
        path="/api/campaigns",
        resource_type="campaign",
        description="Campaigns of every channel (email, SMS, mobile push), archived ones included.",
        scope="campaigns:read",
        rate_limit=M,
        incremental_key="updated_at",
        filter_operators=ALL_OPS,
        max_page_size=100,
        columns={"created_at": TS, "updated_at": TS, "definition": "JSON"},
        relationships={"campaign-messages": "many", "tags": "many"},
        # Archived campaigns are only listed when asked for explicitly.
        filter_variants=("equals(archived,false)", "equals(archived,true)"),
    ),
    TableSpec(
        name="metrics",
        path="/api/metrics",
        resource_type="metric",
        description="Every metric: a kind of event a profile can perform, with its integration.",
        scope="metrics:read",
        rate_limit=M,
        incremental_key="updated",
        columns={"name": "VARCHAR", "created": TS, "updated": TS, "integration": "JSON"},
    ),
    TableSpec(
        name="tags",
        path="/api/tags",
        resource_type="tag",
        description="Every tag in the account (replaced whole on each run).",
        scope="tags:read",
        rate_limit=S,
        strategy="replace",
        max_page_size=50,
        columns={"name": "VARCHAR"},
        relationships={"tag-group": "one"},
    ),
    TableSpec(
        name="coupons",
        path="/api/coupons",
        resource_type="coupon",
        description="Every coupon in the account (replaced whole on each run).",
        scope="coupons:read",
        rate_limit=L,
        strategy="replace",
        max_page_size=100,
        columns={
            "external_id": "VARCHAR",
            "description": "VARCHAR",
            "monitor_configuration": "JSON",
            "assigner_configuration": "JSON",
        },
    ),
    TableSpec(
        name="catalog-variants",
        path="/api/catalog-variants",
        resource_type="catalog-variant",
        description="Every catalog variant (a purchasable version of a catalog item).",
        scope="catalogs:read",
        rate_limit=XL,
        incremental_key="updated",
        max_page_size=100,
        columns={
            "external_id": "VARCHAR",
            "title": "VARCHAR",
            "description": "VARCHAR",
            "sku": "VARCHAR",
            "inventory_policy": "BIGINT",
            "inventory_quantity": "DOUBLE",
            "price": "DOUBLE",
            "url": "VARCHAR",
            "image_full_url": "VARCHAR",
            "image_thumbnail_url": "VARCHAR",
            "images": "JSON",
            "custom_metadata": "JSON",
            "published": "BOOLEAN",
            "created": TS,
            "updated": TS,
        },
        relationships={"item": "one"},
    ),
    TableSpec(
        name="catalog-categories",
        path="/api/catalog-categories",
        resource_type="catalog-category",
        description="Every catalog category.",
        scope="catalogs:read",
        rate_limit=XL,
        incremental_key="updated",
        max_page_size=100,
        columns={"external_id": "VARCHAR", "name": "VARCHAR", "updated": TS},
    ),
    TableSpec(
        name="catalog-items",
        path="/api/catalog-items",
        resource_type="catalog-item",
        description="Every catalog item (a product).",
        scope="catalogs:read",
        rate_limit=XL,
        incremental_key="updated",
        max_page_size=100,
        columns={
            "external_id": "VARCHAR",
            "title": "VARCHAR",
            "description": "VARCHAR",
            "price": "DOUBLE",
            "url": "VARCHAR",
            "image_full_url": "VARCHAR",
            "image_thumbnail_url": "VARCHAR",
            "images": "JSON",
            "custom_metadata": "JSON",
            "published": "BOOLEAN",
            "created": TS,
            "updated": TS,
        },
    ),
    TableSpec(
        name="flows",
        path="/api/flows",
        resource_type="flow",
        description="Every flow: an automated sequence triggered by what a profile does.",
        scope="flows:read",
        rate_limit=S,
        incremental_key="updated",
        filter_operators=frozenset({"equals"}) | ALL_OPS,
        max_page_size=50,
        columns={
            "name": "VARCHAR",
            "status": "VARCHAR",
            "archived": "BOOLEAN",
            "created": TS,
            "updated": TS,
            "trigger_type": "VARCHAR",
        },
        relationships={"tags": "many"},
        filter_variants=("equals(archived,false)", "equals(archived,true)"),
    ),
    TableSpec(
        name="lists",
        path="/api/lists",
        resource_type="list",
        description="Every list of profiles.",
        scope="lists:read",
        rate_limit=L,
        incremental_key="updated",
        filter_operators=frozenset({GT}),
        max_page_size=10,
        columns={"name": "VARCHAR", "created": TS, "updated": TS, "opt_in_process": "VARCHAR"},
    ),
    TableSpec(
        name="images",
        path="/api/images",
        resource_type="image",
        description="Every image uploaded to the account.",
        scope="images:read",
        rate_limit=M,
        incremental_key="updated_at",
        filter_operators=ALL_OPS,
        max_page_size=100,
        columns={
            "name": "VARCHAR",
            "image_url": "VARCHAR",
            "format": "VARCHAR",
            "size": "BIGINT",
            "hidden": "BOOLEAN",
            "updated_at": TS,
        },
    ),
    TableSpec(
        name="segments",
        path="/api/segments",
        resource_type="segment",
        description="Every segment: a dynamic set of profiles meeting conditions.",
        scope="segments:read",
        rate_limit=L,
        incremental_key="updated",
        filter_operators=frozenset({GT}),
        max_page_size=10,
        columns={
            "name": "VARCHAR",
            "definition": "JSON",
            "created": TS,
            "updated": TS,
            "is_active": "BOOLEAN",
            "is_processing": "BOOLEAN",
            "is_starred": "BOOLEAN",
        },
    ),
    TableSpec(
        name="forms",
        path="/api/forms",
        resource_type="form",
        description="Every sign-up form.",
        scope="forms:read",
        rate_limit=S,
        incremental_key="updated_at",
        filter_operators=ALL_OPS,
        max_page_size=100,
        columns={
            "name": "VARCHAR",
            "status": "VARCHAR",
            "ab_test": "BOOLEAN",
            "created_at": TS,
            "updated_at": TS,
        },
    ),
    TableSpec(
        name="templates",
        path="/api/templates",
        resource_type="template",
        description="Every email template, with its HTML.",
        scope="templates:read",
        rate_limit=L,
        incremental_key="updated",
        filter_operators=frozenset({"equals"}) | ALL_OPS,
        max_page_size=10,
        columns={
            "name": "VARCHAR",
            "editor_type": "VARCHAR",
            "html": "VARCHAR",
            "text": "VARCHAR",
            "amp": "VARCHAR",
            "screenshot_url": "VARCHAR",
            "created": TS,
            "updated": TS,
        },
    ),
    # -- child tables: read per parent id, replaced whole ------------------------------------------
    _members(
        "lists",
        "Who is on which list: one row per member of each list, with when it joined "
        "(replaced whole on each run, so removed members and deleted lists disappear).",
    ),
    _members(
        "segments",
        "Who is in which segment: one row per member of each segment, with when it "
        "joined (replaced whole on each run, so members who left and deleted segments disappear).",
    ),
    TableSpec(
        name="campaign-messages",
        path="/api/campaigns/{id}/campaign-messages",
        resource_type="campaign-message",
        description="The messages of every campaign: channel, content and send times "
        "(replaced whole on each run).",
        scope="campaigns:read",
        rate_limit=M,
        strategy="replace",
        columns={"definition": "JSON", "send_times": "JSON", "created_at": TS, "updated_at": TS},
        relationships={"campaign": "one", "template": "one", "image": "one"},
        parent="campaigns",
    ),
    TableSpec(
        name="flow-actions",
        path="/api/flows/{id}/flow-actions",
        resource_type="flow-action",
        description="The actions (steps) of every flow: sends, time delays, splits and updates "
        "(replaced whole on each run).",
        scope="flows:read",
        rate_limit=S,
        strategy="replace",
        max_page_size=50,
        columns={"created": TS, "updated": TS, "definition": "JSON"},
        relationships={"flow": "one", "flow-messages": "many"},
        parent="flows",
    ),
    TableSpec(
        name="flow-messages",
        path="/api/flow-actions/{id}/flow-messages",
        resource_type="flow-message",
        description="The messages the flows' send actions send: channel and content "
        "(replaced whole on each run).",
        scope="flows:read",
        rate_limit=S,
        strategy="replace",
        max_page_size=50,
        columns={"channel": "VARCHAR", "created": TS, "updated": TS, "definition": "JSON"},
        relationships={"flow-action": "one", "template": "one"},
        parent="flow-actions",
    ),
)

TABLES_BY_NAME: dict[str, TableSpec] = {t.name: t for t in TABLES}


def get_table(name: str) -> TableSpec:
    """Look a table up by its seed name (``catalog-items``) or asset name (``catalog_items``)."""
    spec = TABLES_BY_NAME.get(name) or TABLES_BY_NAME.get(name.replace("_", "-"))
    if spec is None:
        valid = ", ".join(TABLES_BY_NAME)
        raise KeyError(f"unknown Klaviyo table {name!r}; valid tables: {valid}")
    return spec


#: Profiles' predictive analytics (CLV, order counts, churn, next order date), an opt-in: asking
#: for them lowers Get Profiles' limits from 75/s, 750/m to 10/s, 150/m (Klaviyo's OpenAPI document
#: of revision 2026-07-15, ``get_profiles``; ENDPOINTS.md).
PREDICTIVE_ANALYTICS = "predictive_analytics"
PREDICTIVE_RATE_LIMIT = RateLimit("M", 10, 150)


def with_additional_field(spec: TableSpec, name: str, duck_type: str, rate_limit: RateLimit) -> TableSpec:
    """``spec`` asking for the additional field ``name`` too: ``additional-fields[<type>]`` gains
    it, the table a column of ``duck_type``, and requests pace at ``rate_limit``."""
    key = f"additional-fields[{spec.resource_type}]"
    asked = [f for f in spec.params.get(key, "").split(",") if f]
    if name in asked and name in spec.columns and spec.rate_limit == rate_limit:
        return spec
    return replace(
        spec,
        params={**spec.params, key: ",".join([*(f for f in asked if f != name), name])},
        columns={**spec.columns, name: duck_type},
        rate_limit=rate_limit,
    )


_PROFILES = TABLES_BY_NAME["profiles"]
_PREDICTIVE_PROFILES = with_additional_field(_PROFILES, PREDICTIVE_ANALYTICS, "JSON", PREDICTIVE_RATE_LIMIT)


def effective_spec(spec: TableSpec, predictive_analytics: bool = False) -> TableSpec:
    """The entry a run reads ``spec`` with: with ``predictive_analytics``, profiles also ask for
    their predictive analytics (a JSON column ``predictive_analytics``) at the endpoint's slower
    limits; every other table, or the option off, is ``spec`` unchanged.

    The catalogue's own profiles entry always gives the same object (the page decoder's structs
    are made once per entry)."""
    if not predictive_analytics or spec.name != _PROFILES.name:
        return spec
    if spec == _PROFILES:
        return _PREDICTIVE_PROFILES
    return with_additional_field(spec, PREDICTIVE_ANALYTICS, "JSON", PREDICTIVE_RATE_LIMIT)


def check_catalogue(tables: tuple[TableSpec, ...] = TABLES) -> None:
    """Refuse a catalogue whose child entries cannot work: an unknown or later parent, a path
    without ``{id}`` (or a parent's path with one), a parent named by no column."""
    seen: dict[str, TableSpec] = {}
    for spec in tables:
        if spec.parent is None:
            if "{id}" in spec.path or spec.parent_id_column or spec.member_id_column:
                raise ValueError(f"catalogue: {spec.name} has a child's path or columns but no parent")
        else:
            parent = seen.get(spec.parent)
            if parent is None:
                raise ValueError(f"catalogue: {spec.name}'s parent {spec.parent!r} must come before it")
            if spec.path.count("{id}") != 1 or spec.strategy != "replace" or spec.incremental_key:
                raise ValueError(
                    f"catalogue: {spec.name} needs one {{id}} in its path and the replace strategy"
                )
            if spec.parent_id_column is None and spec.relationships.get(parent.resource_type) != "one":
                raise ValueError(
                    f"catalogue: {spec.name} names its parent by no column: set parent_id_column or "
                    f"a to-one relationship {parent.resource_type!r}"
                )
        seen[spec.name] = spec


check_catalogue()
