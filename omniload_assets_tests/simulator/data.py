"""Deterministic, realistic Klaviyo resource objects for every table except events.

Record ``j`` of a table is a pure function of (seed, table, j, the simulated range), so two
simulators with the same seed serve identical data. Every incremental table gets records placed
exactly on a UTC midnight and one microsecond before one, to exercise window boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import vocab
from .ids import Draws, short_id, stable_hash, ulid, uuid4_like
from .timeutil import DAY_US, US, iso, midnight_on_or_after

API = "https://a.klaviyo.com"

#: Default record counts; ``scale`` overrides any of them.
DEFAULT_COUNTS: dict[str, int] = {
    "events": 3000,
    "profiles": 300,
    "campaigns": 30,
    "metrics": 20,
    "tags": 25,
    "coupons": 15,
    "catalog-variants": 60,
    "catalog-categories": 12,
    "catalog-items": 30,
    "flows": 24,
    "lists": 25,
    "images": 30,
    "segments": 22,
    "forms": 24,
    "templates": 22,
}
CHANNELS = ("email", "sms", "mobile_push")
#: The channels of a profile's ``predictive_analytics.ranked_channel_affinity`` (its OpenAPI enum).
AFFINITY_CHANNELS = ("email", "sms", "push", "whatsapp")

Record = dict[str, Any]


@dataclass
class Built:
    """A resource object plus hidden facts the API does not show (channel, category ids...)."""

    record: Record
    meta: dict[str, Any] = field(default_factory=dict)


def self_links(table: str, rid: str) -> dict[str, str]:
    """The resource's ``links`` object."""
    return {"self": f"{API}/api/{table}/{rid}/"}


def rel(table: str, rid: str, name: str, data: Any = ..., *, with_links: bool = True) -> Record:
    """A relationship object, with ``data`` when given."""
    out: Record = {}
    if data is not ...:
        out["data"] = data
    if with_links:
        out["links"] = {
            "self": f"{API}/api/{table}/{rid}/relationships/{name}/",
            "related": f"{API}/api/{table}/{rid}/{name}/",
        }
    return out


def catalog_id(external_id: str) -> str:
    """Klaviyo's compound catalog id for the custom integration's default catalog."""
    return f"$custom:::$default:::{external_id}"


def item_external_id(k: int) -> str:
    """External id (and SKU stem) of catalog item ``k``."""
    return f"SKU-{1000 + k}"


def category_name(c: int) -> str:
    """Name of catalog category ``c``."""
    names = vocab.CATEGORIES
    return names[c % len(names)] + ("" if c < len(names) else f" {c // len(names) + 1}")


def category_external_id(c: int) -> str:
    """External id of catalog category ``c``."""
    return "CAT-" + category_name(c).upper().replace(" ", "-")


def _boundary_order(midnights: list[int]) -> list[int]:
    """Midnights in the order boundary records take them: the tenth day of the range first
    (2024-01-10 for a range from 2024-01-01), then the last, the first, the middle, the rest."""
    n = len(midnights)
    order = [min(9, n - 1), n - 1, 0, n // 2, *range(1, n)]
    return [midnights[i] for i in dict.fromkeys(order)]


class Factory:
    """Builds record ``j`` of any non-event table for one seed and time range."""

    def __init__(self, seed: int, start_us: int, end_us: int, counts: dict[str, int]) -> None:
        self.seed = seed
        self.start_us = start_us
        self.end_us = end_us
        self.counts = counts
        self._profile_ids: dict[int, str] = {}
        first = midnight_on_or_after(start_us)
        self.midnights = _boundary_order(list(range(first, end_us, DAY_US)) or [start_us])
        # Midnights m with start < m <= end: "one microsecond before midnight" stays in range.
        late = [m for m in range(first, end_us + 1, DAY_US) if m > start_us] or [end_us]
        self.late_midnights = _boundary_order(late)

    # -- shared helpers -------------------------------------------------------------------
    def draws(self, table: str, j: int) -> Draws:
        """The random stream of record ``j`` of ``table``."""
        return Draws(stable_hash(self.seed, table, j))

    def key_time(self, d: Draws, j: int) -> int:
        """An incremental-key instant in ``[start, end)``, with boundary records mixed in."""
        if j == 0:
            return self.start_us
        if j % 7 == 3:
            return self.midnights[(j // 7) % len(self.midnights)]
        if j % 11 == 5:
            return self.late_midnights[(j // 11) % len(self.late_midnights)] - 1
        us = self.start_us + d.below(max(1, self.end_us - self.start_us))
        if d.chance(0.5):
            us -= us % US
        return max(us, self.start_us)

    def before(self, d: Draws, us: int, max_days: int = 720) -> int:
        """An instant up to ``max_days`` before ``us`` (whole seconds)."""
        earlier = us - d.below(max_days * DAY_US)
        return earlier - earlier % US

    @staticmethod
    def stamp(us: int) -> str:
        """ISO 8601 with ``+00:00``; microseconds only when non-zero, as Klaviyo does."""
        return iso(us)

    def short(self, table: str, j: int) -> str:
        """A 6-character Klaviyo id for record ``j`` of ``table``."""
        return short_id(stable_hash(self.seed, table, "id", j))

    def profile_id(self, j: int) -> str:
        """The ULID of profile ``j`` (also used by events, without building the profile)."""
        cached = self._profile_ids.get(j)
        if cached is None:
            d = Draws(stable_hash(self.seed, "profile-id", j))
            ms = (self.start_us - d.below(3 * 365 * DAY_US)) // 1000
            cached = self._profile_ids[j] = ulid(ms, d.next() << 16 | d.below(1 << 16))
        return cached

    def build(self, table: str, j: int, at_us: int | None = None) -> Built:
        """Record ``j`` of ``table``; ``at_us`` forces its incremental key (added records)."""
        builder = getattr(self, "_" + table.replace("-", "_"))
        return builder(j, self.draws(table, j), at_us)

    def _key(self, d: Draws, j: int, at_us: int | None) -> int:
        key = self.key_time(d, j)
        return key if at_us is None else at_us

    # -- tables ---------------------------------------------------------------------------
    def _profiles(self, j: int, d: Draws, at_us: int | None) -> Built:
        pid = self.profile_id(j)
        updated = self._key(d, j, at_us)
        created = updated if d.chance(0.15) else self.before(d, updated)
        first = str(d.pick(vocab.FIRST_NAMES))
        last = str(d.pick(vocab.LAST_NAMES))
        handle = f"{first}.{last}".lower().replace("'", "").replace("ü", "u")
        city = d.pick(vocab.CITIES)
        assert isinstance(city, tuple)
        sparse = d.chance(0.3)
        location = {
            "address1": None if sparse else f"{10 + d.below(980)} {d.pick(vocab.STREETS)}",
            "address2": None if sparse or d.chance(0.7) else f"Apt {1 + d.below(40)}",
            "city": city[0],
            "country": None if sparse and d.chance(0.5) else city[2],
            "latitude": None if sparse else city[4],
            "longitude": None if sparse else city[5],
            "region": city[1],
            "zip": None if sparse else city[3],
            "timezone": None if sparse else city[6],
            "ip": None if d.chance(0.4) else f"{d.below(223) + 1}.{d.below(256)}.{d.below(256)}.1",
        }
        consent = str(d.pick(("SUBSCRIBED", "SUBSCRIBED", "NEVER_SUBSCRIBED", "UNSUBSCRIBED")))
        consent_ts = self.stamp(self.before(d, updated, 400)) if consent != "NEVER_SUBSCRIBED" else None
        suppressed = d.chance(0.08)
        suppression = (
            [{"reason": str(d.pick(("USER_SUPPRESSED", "HARD_BOUNCE", "SPAM_COMPLAINT"))),
              "timestamp": self.stamp(self.before(d, updated, 200) + d.below(US))}]
            if suppressed
            else []
        )  # fmt: skip
        subscriptions = {
            "email": {
                "marketing": {
                    "can_receive_email_marketing": consent == "SUBSCRIBED" and not suppressed,
                    "consent": consent,
                    "consent_timestamp": consent_ts,
                    "last_updated": consent_ts,
                    "method": "FORM" if consent_ts else None,
                    "method_detail": "Newsletter popup" if consent_ts else None,
                    "custom_method_detail": None,
                    "double_optin": None,
                    "suppression": suppression,
                    "list_suppressions": [],
                }
            },
            "sms": {
                "marketing": {
                    "can_receive_sms_marketing": False,
                    "consent": "NEVER_SUBSCRIBED",
                    "consent_timestamp": None,
                    "method": None,
                    "method_detail": None,
                    "last_updated": None,
                },
                "transactional": None,
            },
            "mobile_push": {
                "marketing": {
                    "can_receive_push_marketing": False,
                    "consent": "NEVER_SUBSCRIBED",
                    "consent_timestamp": None,
                }
            },
        }
        orders = d.below(8)
        predictive = {
            "historic_clv": round(orders * (20 + d.unit() * 80), 2),
            "predicted_clv": round(d.unit() * 300, 2),
            "total_clv": None,
            "historic_number_of_orders": orders,
            "predicted_number_of_orders": round(d.unit() * 4, 2),
            "average_days_between_orders": round(10 + d.unit() * 80, 1) if orders > 1 else None,
            "average_order_value": round(20 + d.unit() * 80, 2) if orders else 0.0,
            "churn_probability": round(d.unit(), 2),
            "expected_date_of_next_order": self.stamp(updated + d.below(60) * DAY_US) if orders > 1 else None,
        }
        hist, pred = predictive["historic_clv"], predictive["predicted_clv"]
        assert isinstance(hist, float) and isinstance(pred, float)
        predictive["total_clv"] = round(hist + pred, 2)
        properties: Record = {}
        if d.chance(0.6):
            properties["$source"] = str(d.pick(("Shopify", "Newsletter popup", "API", "Import")))
        if d.chance(0.4):
            properties["favorite_category"] = str(d.pick(vocab.CATEGORIES))
        if d.chance(0.2):
            tier = str(d.pick(("bronze", "silver", "gold")))
            properties["loyalty"] = {"tier": tier, "points": d.below(5000)}
        attributes = {
            "email": f"{handle}{j}@{d.pick(vocab.EMAIL_DOMAINS)}",
            "phone_number": None if d.chance(0.6) else f"+1555{d.below(10_000_000):07d}",
            "external_id": None if d.chance(0.6) else f"cust_{100000 + j}",
            "anonymous_id": None,
            "first_name": first,
            "last_name": last,
            "organization": None if d.chance(0.7) else d.pick(vocab.ORGANIZATIONS),
            "locale": None if d.chance(0.3) else d.pick(vocab.LOCALES),
            "title": None if d.chance(0.6) else d.pick(vocab.TITLES),
            "image": None if d.chance(0.85) else f"https://images.example.com/avatars/{j}.jpg",
            "created": self.stamp(created),
            "updated": self.stamp(updated),
            "last_event_date": None if d.chance(0.2) else self.stamp(self.before(d, updated, 30)),
            "location": location,
            "properties": properties,
            "subscriptions": subscriptions,
            "predictive_analytics": predictive,
        }
        # Drawn last, so every other value stays what earlier versions of the simulator served.
        channels = AFFINITY_CHANNELS
        predictive["ranked_channel_affinity"] = d.sample(channels, 1 + d.below(len(channels)))
        if not orders:  # Klaviyo predicts nothing for a profile that never ordered: all null
            attributes["predictive_analytics"] = dict.fromkeys(predictive)
        record = {
            "type": "profile",
            "id": pid,
            "attributes": attributes,
            "relationships": {
                "lists": rel("profiles", pid, "lists"),
                "segments": rel("profiles", pid, "segments"),
            },
            "links": self_links("profiles", pid),
        }
        return Built(record)

    def _campaigns(self, j: int, d: Draws, at_us: int | None) -> Built:
        cid = self.short("campaigns", j)
        channel = CHANNELS[j % 3]
        archived = j % 4 == 1
        updated = self._key(d, j, at_us)
        created = self.before(d, updated, 120)
        theme = d.pick(vocab.CAMPAIGN_THEMES)
        label = {"email": "Email", "sms": "SMS", "mobile_push": "Push"}[channel]
        name = f"{theme} {label} #{j + 1}"
        msg_id = ulid(created // 1000, stable_hash(self.seed, "campaign-message", j))
        tag_count = self.counts.get("tags", 0)
        tags = (
            [{"type": "tag", "id": self.tag_id(d.below(tag_count))} for _ in range(d.below(3))]
            if tag_count
            else []
        )
        tags = list({t["id"]: t for t in tags}.values())
        metric_id = self.short("metrics", 7) if self.counts.get("metrics", 0) > 7 else None
        definition = {
            "name": name,
            "builder": str(d.pick(("wizard", "wizard", "canvas"))),
            "archived": archived,
            "color": d.pick(vocab.COLORS),
            "description": None if d.chance(0.5) else f"{theme} campaign for {channel}",
            "send_settings": {
                "send_timezone": str(d.pick(("local", "account"))),
                "send_strategy": str(d.pick(("immediate", "static", "smart_send_time", "throttled"))),
                "send_passed_rltz_immediately": d.chance(0.5),
                "exit_condition_enabled": d.chance(0.2),
                "exit_condition_conversion_metric_id": metric_id if d.chance(0.2) else None,
            },
        }
        record = {
            "type": "campaign",
            "id": cid,
            "attributes": {
                "created_at": self.stamp(created),
                "updated_at": self.stamp(updated),
                "definition": definition,
            },
            "relationships": {
                "campaign-audiences": rel("campaigns", cid, "campaign-audiences"),
                "campaign-messages": rel(
                    "campaigns", cid, "campaign-messages", [{"type": "campaign-message", "id": msg_id}]
                ),
                "tags": rel("campaigns", cid, "tags", tags),
            },
            "links": self_links("campaigns", cid),
        }
        content: Record
        if channel == "email":
            content = {
                "subject": d.pick(vocab.SUBJECTS),
                "preview_text": "Don't miss out",
                "from_email": "hello@shop.example.com",
                "from_label": "Example Shop",
                "reply_to_email": None,
                "cc_email": None,
                "bcc_email": None,
            }
        elif channel == "sms":
            content = {"body": f"{theme}: shop now {{{{ organization.url }}}}", "media_url": None}
        else:
            content = {"title": str(theme), "body": "Tap to see what's new", "dynamic_image": None}
        message_definition: Record = {"channel": channel, "label": name, "content": content}
        if channel == "mobile_push":
            message_definition["notification_type"] = "standard"
        message = {
            "type": "campaign-message",
            "id": msg_id,
            "attributes": {
                "definition": message_definition,
                "send_times": [],
                "created_at": self.stamp(created),
                "updated_at": self.stamp(updated),
            },
            "relationships": {
                "campaign": rel("campaign-messages", msg_id, "campaign", {"type": "campaign", "id": cid}),
            },
            "links": self_links("campaign-messages", msg_id),
        }
        return Built(record, {"channel": channel, "messages": [message]})

    def _metrics(self, j: int, d: Draws, at_us: int | None) -> Built:
        mid = self.short("metrics", j)
        if j < len(vocab.METRICS):
            name, (key, iname, category) = vocab.METRICS[j]
        else:
            name, (key, iname, category) = f"Custom Metric {j}", ("api", "API", "API")
        updated = self._key(d, j, at_us)
        updated -= updated % US
        created = self.before(d, updated, 900)
        integration = {
            "object": "integration",
            "id": short_id(stable_hash("integration", key)),
            "key": key,
            "name": iname,
            "category": category,
        }
        record = {
            "type": "metric",
            "id": mid,
            "attributes": {
                "name": name,
                "created": iso(created, micro=False),
                "updated": iso(updated, micro=False),
                "integration": integration,
            },
            "relationships": {"flow-triggers": rel("metrics", mid, "flow-triggers")},
            "links": self_links("metrics", mid),
        }
        return Built(record)

    def tag_id(self, j: int) -> str:
        """The UUID of tag ``j``."""
        return uuid4_like(stable_hash(self.seed, "tags", "id", j))

    def _tags(self, j: int, d: Draws, at_us: int | None) -> Built:
        tid = self.tag_id(j)
        words = vocab.TAG_WORDS
        name = words[j % len(words)] + ("" if j < len(words) else f"-{j // len(words) + 1}")
        group = str(1_000_000 + j % 3)
        record = {
            "type": "tag",
            "id": tid,
            "attributes": {"name": name},
            "relationships": {
                "tag-group": rel("tags", tid, "tag-group", {"type": "tag-group", "id": group}),
                "lists": rel("tags", tid, "lists"),
                "segments": rel("tags", tid, "segments"),
                "campaigns": rel("tags", tid, "campaigns"),
                "flows": rel("tags", tid, "flows"),
            },
            "links": self_links("tags", tid),
        }
        return Built(record)

    def _coupons(self, j: int, d: Draws, at_us: int | None) -> Built:
        prefixes, amounts = vocab.COUPON_PREFIXES, vocab.COUPON_AMOUNTS
        code = f"{prefixes[j % len(prefixes)]}{amounts[(j // len(prefixes)) % len(amounts)]}"
        if j >= len(prefixes) * len(amounts):
            code += f"-{j}"
        amount = amounts[(j // len(prefixes)) % len(amounts)]
        record = {
            "type": "coupon",
            "id": code,
            "attributes": {
                "external_id": code,
                "description": None if d.chance(0.2) else f"{amount}% off your next order",
                "monitor_configuration": {"low_balance_threshold": 100 * (1 + d.below(10))}
                if d.chance(0.5)
                else None,
                "assigner_configuration": {"type": "unique_code", "expiration_days": 30}
                if d.chance(0.3)
                else None,
            },
            "links": self_links("coupons", code),
        }
        return Built(record)

    def _catalog_categories(self, j: int, d: Draws, at_us: int | None) -> Built:
        name = category_name(j)
        ext = category_external_id(j)
        cid = catalog_id(ext)
        updated = self._key(d, j, at_us)
        n_items = self.counts.get("catalog-items", 0)
        item_ids = [
            catalog_id(item_external_id(k)) for k in range(n_items) if j in self.item_category_indexes(k)
        ]
        record = {
            "type": "catalog-category",
            "id": cid,
            "attributes": {"external_id": ext, "name": name, "updated": self.stamp(updated)},
            "relationships": {"items": rel("catalog-categories", cid, "items")},
            "links": self_links("catalog-categories", cid),
        }
        return Built(record, {"item_ids": item_ids})

    def item_category_indexes(self, k: int) -> list[int]:
        """Which catalog categories item ``k`` belongs to."""
        n = self.counts.get("catalog-categories", 0)
        if not n:
            return []
        first = k % n
        return [first] if k % 3 else sorted({first, (k * 7 + 1) % n})

    def _catalog_items(self, j: int, d: Draws, at_us: int | None) -> Built:
        ext = item_external_id(j)
        iid = catalog_id(ext)
        updated = self._key(d, j, at_us)
        created = self.before(d, updated, 365)
        product = vocab.PRODUCTS[j % len(vocab.PRODUCTS)]
        slug = product.lower().replace(" ", "-")
        n_cat = self.counts.get("catalog-categories", 0)
        category_ids = [
            catalog_id(category_external_id(c)) for c in self.item_category_indexes(j) if c < n_cat
        ]
        record = {
            "type": "catalog-item",
            "id": iid,
            "attributes": {
                "external_id": ext,
                "title": f"{product} {j + 1}",
                "description": f"Our {product.lower()}, made to last.",
                "price": round(9.99 + d.below(200) + 0.5 * d.below(2), 2),
                "url": f"https://shop.example.com/products/{slug}-{j + 1}",
                "image_full_url": f"https://cdn.example.com/{slug}-{j + 1}.jpg",
                "image_thumbnail_url": f"https://cdn.example.com/{slug}-{j + 1}-thumb.jpg",
                "images": [f"https://cdn.example.com/{slug}-{j + 1}-{n}.jpg" for n in range(d.below(3))],
                "custom_metadata": {"brand": "Example"} if d.chance(0.5) else {},
                "published": not d.chance(0.15),
                "created": self.stamp(created),
                "updated": self.stamp(updated),
            },
            "relationships": {"variants": rel("catalog-items", iid, "variants")},
            "links": self_links("catalog-items", iid),
        }
        return Built(record, {"category_ids": category_ids})

    def _catalog_variants(self, j: int, d: Draws, at_us: int | None) -> Built:
        n_items = max(1, self.counts.get("catalog-items", 1))
        k, size_index = j % n_items, j // n_items
        size = vocab.SIZES[size_index % len(vocab.SIZES)]
        if size_index >= len(vocab.SIZES):
            size += str(size_index // len(vocab.SIZES) + 1)
        item_ext = item_external_id(k)
        ext = f"{item_ext}-{size}"
        vid = catalog_id(ext)
        updated = self._key(d, j, at_us)
        created = self.before(d, updated, 365)
        product = vocab.PRODUCTS[k % len(vocab.PRODUCTS)]
        record = {
            "type": "catalog-variant",
            "id": vid,
            "attributes": {
                "external_id": ext,
                "title": f"{product} {k + 1} / {size}",
                "description": f"{product} in size {size}",
                "sku": ext,
                "inventory_policy": d.below(3),
                "inventory_quantity": float(d.below(500)),
                "price": round(9.99 + d.below(200), 2),
                "url": f"https://shop.example.com/products/{ext.lower()}",
                "image_full_url": f"https://cdn.example.com/{ext.lower()}.jpg",
                "image_thumbnail_url": None,
                "images": [],
                "custom_metadata": {},
                "published": not d.chance(0.1),
                "created": self.stamp(created),
                "updated": self.stamp(updated),
            },
            "relationships": {
                "item": rel(
                    "catalog-variants", vid, "item", {"type": "catalog-item", "id": catalog_id(item_ext)}
                )
            },
            "links": self_links("catalog-variants", vid),
        }
        return Built(record)

    def _flows(self, j: int, d: Draws, at_us: int | None) -> Built:
        fid = self.short("flows", j)
        updated = self._key(d, j, at_us)
        created = self.before(d, updated, 400)
        names = vocab.FLOW_NAMES
        name = names[j % len(names)] + ("" if j < len(names) else f" {j // len(names) + 1}")
        tag_count = self.counts.get("tags", 0)
        tags = [{"type": "tag", "id": self.tag_id(j % tag_count)}] if tag_count and j % 2 else []
        record = {
            "type": "flow",
            "id": fid,
            "attributes": {
                "name": name,
                "status": str(d.pick(("live", "live", "draft", "manual"))),
                "archived": j % 5 == 2,
                "created": self.stamp(created),
                "updated": self.stamp(updated),
                "trigger_type": str(
                    d.pick(("Metric", "Added to List", "Date Based", "Price Drop", "Unconfigured"))
                ),
            },
            "relationships": {
                "flow-actions": rel("flows", fid, "flow-actions"),
                "tags": rel("flows", fid, "tags", tags),
            },
            "links": self_links("flows", fid),
        }
        return Built(record)

    def _lists(self, j: int, d: Draws, at_us: int | None) -> Built:
        lid = self.short("lists", j)
        updated = self._key(d, j, at_us)
        created = updated if d.chance(0.2) else self.before(d, updated, 700)
        names = vocab.LIST_NAMES
        record = {
            "type": "list",
            "id": lid,
            "attributes": {
                "name": names[j % len(names)] + ("" if j < len(names) else f" {j + 1}"),
                "created": self.stamp(created),
                "updated": self.stamp(updated),
                "opt_in_process": str(d.pick(("single_opt_in", "double_opt_in"))),
            },
            "relationships": {
                "profiles": rel("lists", lid, "profiles"),
                "tags": rel("lists", lid, "tags"),
                "flow-triggers": rel("lists", lid, "flow-triggers"),
            },
            "links": self_links("lists", lid),
        }
        return Built(record)

    def image_id(self, j: int) -> str:
        """The id of image ``j`` (without building the image)."""
        return str(40_000_000 + j * 97 + self.draws("images", j).below(97))

    def _images(self, j: int, d: Draws, at_us: int | None) -> Built:
        iid = str(40_000_000 + j * 97 + d.below(97))  # as image_id(j): the stream's first draw
        fmt = str(d.pick(("png", "jpeg", "jpeg", "gif")))
        name = f"{d.pick(vocab.IMAGE_WORDS)}-{j + 1}.{'jpg' if fmt == 'jpeg' else fmt}"
        updated = self._key(d, j, at_us)
        record = {
            "type": "image",
            "id": iid,
            "attributes": {
                "name": name,
                "image_url": f"https://d3k81ch9hvuctc.cloudfront.net/company/AbC123/images/{uuid4_like(d.next())}.{fmt}",
                "format": fmt,
                "size": 2_000 + d.below(2_000_000),
                "hidden": d.chance(0.1),
                "updated_at": self.stamp(updated),
            },
            "links": self_links("images", iid),
        }
        return Built(record)

    def _segments(self, j: int, d: Draws, at_us: int | None) -> Built:
        sid = self.short("segments", j)
        updated = self._key(d, j, at_us)
        created = self.before(d, updated, 500)
        names = vocab.SEGMENT_NAMES
        definition = {
            "condition_groups": [
                {
                    "conditions": [
                        {
                            "type": "profile-metric",
                            "metric_id": self.short(
                                "metrics", d.below(max(1, self.counts.get("metrics", 1)))
                            ),
                            "measurement": "count",
                            "measurement_filter": {
                                "type": "numeric",
                                "operator": "greater-than",
                                "value": d.below(3),
                            },
                            "timeframe_filter": {
                                "type": "date",
                                "operator": "in-the-last",
                                "quantity": 30,
                                "unit": "day",
                            },
                            "metric_filters": None,
                        }
                    ]
                }
            ]
        }
        record = {
            "type": "segment",
            "id": sid,
            "attributes": {
                "name": names[j % len(names)] + ("" if j < len(names) else f" {j + 1}"),
                "definition": definition,
                "created": self.stamp(created),
                "updated": self.stamp(updated),
                "is_active": not d.chance(0.1),
                "is_processing": d.chance(0.05),
                "is_starred": d.chance(0.2),
            },
            "relationships": {
                "profiles": rel("segments", sid, "profiles"),
                "tags": rel("segments", sid, "tags", []),
                "flow-triggers": rel("segments", sid, "flow-triggers", []),
            },
            "links": self_links("segments", sid),
        }
        return Built(record)

    def _forms(self, j: int, d: Draws, at_us: int | None) -> Built:
        fid = self.short("forms", j)
        updated = self._key(d, j, at_us)
        created = self.before(d, updated, 300)
        names = vocab.FORM_NAMES
        record = {
            "type": "form",
            "id": fid,
            "attributes": {
                "name": names[j % len(names)] + ("" if j < len(names) else f" {j + 1}"),
                "status": str(d.pick(("live", "draft"))),
                "ab_test": d.chance(0.2),
                "created_at": self.stamp(created),
                "updated_at": self.stamp(updated),
            },
            "relationships": {"form-versions": rel("forms", fid, "form-versions")},
            "links": self_links("forms", fid),
        }
        return Built(record)

    def _templates(self, j: int, d: Draws, at_us: int | None) -> Built:
        tid = self.short("templates", j)
        updated = self._key(d, j, at_us)
        created = self.before(d, updated, 400)
        names = vocab.TEMPLATE_NAMES
        name = names[j % len(names)] + ("" if j < len(names) else f" ({j + 1})")
        editor = str(d.pick(("CODE", "SYSTEM_DRAGGABLE", "SYSTEM_DRAGGABLE", "USER_DRAGGABLE")))
        html = (
            '<!DOCTYPE html>\n<html xmlns="http://www.w3.org/1999/xhtml">\n<head>\n<title>\n'
            f"</title>\n</head>\n<body>\n<h1>{name}</h1>\n<p>Hello {{{{ first_name|default:'there' }}}},"
            f" {d.pick(vocab.SUBJECTS)}.</p>\n</body>\n</html>\n"
        )
        definition = (
            {"body": {"sections": [{"blocks": [{"type": "text", "content": name}]}]}}
            if editor == "SYSTEM_DRAGGABLE"
            else None
        )
        record = {
            "type": "template",
            "id": tid,
            "attributes": {
                "name": name,
                "editor_type": editor,
                "html": html,
                "text": None if d.chance(0.5) else f"{name}\n\nHello there.",
                "amp": None,
                "screenshot_url": None
                if d.chance(0.3)
                else f"https://screenshots.example.com/templates/{tid}.png",
                "created": self.stamp(created),
                "updated": self.stamp(updated),
                "definition": definition,
            },
            "links": self_links("templates", tid),
        }
        return Built(record)
