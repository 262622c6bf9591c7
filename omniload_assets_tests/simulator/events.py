"""Events that scale to millions without being held in memory.

Event ``i`` (``0 <= i < count``) is a pure function of the seed and ``i``. Its instant lies in
slot ``i`` of ``count`` equal slots over ``[start, end)``, so instants never decrease with ``i``
and a time window maps to an index range by binary search. The slot holding a UTC midnight puts
its event exactly on that midnight. Changes (mutations, added records, drift, deletions) live in
an overlay: a base index that was changed is *shadowed* and its current version kept there.

Events are ordered by the key ``(instant_us, rank)``: rank ``i`` for base events (and their
changed versions), ``count + n`` for added ones.
"""

from __future__ import annotations

import bisect
import multiprocessing
from array import array
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import orjson

from .data import API, Factory, catalog_id, item_external_id
from .ids import (
    GOLDEN,
    MASK64,
    Draws,
    base62,
    hex_id,
    mix64,
    stable_hash,
    ulid,
    unbase62,
    unmix64,
    uuid1_like,
)
from .timeutil import US, iso, midnight_on_or_after, value_us
from .vocab import CAMPAIGN_THEMES, CURRENCIES, EMAIL_DOMAINS, EVENT_WEIGHTS, PRODUCTS, SUBJECTS

Record = dict[str, Any]
Key = tuple[int, int]


class _Instants:
    """A lazy sequence of base-event keys, for :mod:`bisect`."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    def __len__(self) -> int:
        return self.store.count

    def __getitem__(self, i: int) -> Key:
        return (self.store.instant(i), i)


class EventStore:
    """The events table: lazily generated base events plus an overlay of changes."""

    def __init__(
        self,
        factory: Factory,
        count: int,
        metrics: list[tuple[str, str]],
        profile_count: int,
    ) -> None:
        self.factory = factory
        self.count = count
        self.start_us = factory.start_us
        self.end_us = factory.end_us
        span = self.end_us - self.start_us
        if count > span:
            raise ValueError("more events than microseconds in the simulated range")
        seed = factory.seed
        self._id_key = stable_hash(seed, "event-id")
        self._time_key = stable_hash(seed, "event-time")
        self._body_key = stable_hash(seed, "event-body")
        self.profile_count = profile_count
        weighted = [(mid, name, EVENT_WEIGHTS.get(name, 0)) for mid, name in metrics]
        if not any(w for _, _, w in weighted):
            weighted = [(mid, name, 1) for mid, name in metrics]
        self._metric_table: list[tuple[str, str]] = []
        for mid, name, weight in weighted:
            self._metric_table.extend([(mid, name)] * weight)
        self.shadowed: set[int] = set()
        self.overlay: dict[int, Record] = {}
        self.overlay_keys: list[Key] = []
        self._overlay_key: dict[int, Key] = {}
        self._rank_of_id: dict[str, int] = {}
        self._next_rank = count
        #: Serialized base events by index, filled when ``cache`` is on (see :meth:`serialized`).
        self.cache = False
        self._serialized: dict[int, bytes] = {}
        #: Instants of the base events by index, filled by :meth:`warm`.
        self._instants: array[int] | None = None

    # -- base events ----------------------------------------------------------------------
    def instant(self, i: int) -> int:
        """Epoch µs of base event ``i`` (non-decreasing in ``i``)."""
        if self._instants is not None:
            return self._instants[i]
        span = self.end_us - self.start_us
        lo = self.start_us + (i * span) // self.count
        hi = self.start_us + ((i + 1) * span) // self.count
        midnight = midnight_on_or_after(lo)
        if midnight < hi:
            return midnight
        h = mix64((self._time_key + i) & MASK64)
        t = lo + h % (hi - lo)
        if (h >> 40) % 10 < 7:  # most events carry whole seconds, some microseconds
            up = -(-t // US) * US
            down = t - t % US
            if up < hi:
                t = up
            elif down >= lo:
                t = down
        return t

    def base_id(self, i: int) -> str:
        """The id of base (or added, ``i >= count``) event ``i``: 11 base-62 characters."""
        return base62(mix64((i + self._id_key) & MASK64), 11)

    def index_of(self, event_id: str) -> int | None:
        """The index an id was generated from, or None for ids not generated here."""
        n = unbase62(event_id)
        if n is None or len(event_id) != 11 or n > MASK64:
            return None
        return (unmix64(n) - self._id_key) & MASK64

    def first_at_or_after(self, us: int) -> int:
        """The first base index whose instant is ``>= us``."""
        return bisect.bisect_left(_Instants(self), (us, -1))

    def build(self, i: int, at_us: int | None = None) -> Record:
        """Base event ``i`` as a JSON:API resource object."""
        us = self.instant(i) if at_us is None else at_us
        d = Draws((self._body_key + i * GOLDEN) & MASK64)
        eid = self.base_id(i)
        table = self._metric_table
        metric_id, metric_name = table[d.below(len(table))] if table else ("", "Custom Event")
        profile_id = self.factory.profile_id(d.below(self.profile_count)) if self.profile_count else None
        properties = self._properties(metric_name, d, us, i)
        attributions: list[Record] = []
        if metric_name in ("Placed Order", "Ordered Product", "Started Checkout") and d.chance(0.4):
            attributions = [{"type": "attribution", "id": hex_id(d.next())} for _ in range(1 + d.below(2))]
        base = f"{API}/api/events/{eid}/"
        relationships: Record = {
            "profile": {
                "data": {"type": "profile", "id": profile_id} if profile_id else None,
                "links": {"self": base + "relationships/profile/", "related": base + "profile/"},
            },
            "metric": {
                "data": {"type": "metric", "id": metric_id} if metric_id else None,
                "links": {"self": base + "relationships/metric/", "related": base + "metric/"},
            },
            "attributions": {
                "data": attributions,
                "links": {"self": base + "relationships/attributions/", "related": base + "attributions/"},
            },
        }
        return {
            "type": "event",
            "id": eid,
            "attributes": {
                "timestamp": us // US,
                "event_properties": properties,
                "datetime": iso(us),
                "uuid": uuid1_like(us, d.next(), d.next()),
            },
            "relationships": relationships,
            "links": {"self": base},
        }

    def _properties(self, metric: str, d: Draws, us: int, i: int) -> Record:
        event_id = str(us // US)
        if metric in ("Received Email", "Opened Email", "Clicked Email"):
            message = ulid(us // 1000 - d.below(3_600_000), d.next())
            props: Record = {
                "Subject": d.pick(SUBJECTS),
                "Campaign Name": f"{d.pick(CAMPAIGN_THEMES)} Email",
                "$message": message,
                "Email Domain": d.pick(EMAIL_DOMAINS),
                "$ESP": d.below(4),
                "Inbox Provider": d.pick(("Gmail", "Gsuite", "Outlook", "Yahoo", "Apple")),
                "$event_id": f"{message}:{d.next()}",
            }
            if metric == "Clicked Email":
                props["URL"] = f"https://shop.example.com/?utm_source=klaviyo&p={d.below(100)}"
            return props
        if metric in ("Received SMS", "Clicked SMS", "Received Push", "Opened Push"):
            message = ulid(us // 1000 - d.below(3_600_000), d.next())
            return {
                "$message": message,
                "Campaign Name": str(d.pick(CAMPAIGN_THEMES)),
                "$event_id": f"{message}:{i}",
            }
        if metric in (
            "Viewed Product",
            "Added to Cart",
            "Started Checkout",
            "Placed Order",
            "Ordered Product",
        ):
            return self._commerce(metric, d, event_id, i)
        if metric == "Active on Site":
            return {"page": f"https://shop.example.com/collections/{d.below(20)}", "$event_id": event_id}
        if metric == "Subscribed to List":
            return {"List": "Newsletter", "$event_id": event_id}
        return {"$event_id": event_id}

    def _commerce(self, metric: str, d: Draws, event_id: str, i: int) -> Record:
        n_items = self.factory.counts.get("catalog-items", 0) or len(PRODUCTS)
        currency = str(d.pick(CURRENCIES))
        items = []
        for _ in range(1 if metric in ("Viewed Product", "Ordered Product") else 1 + d.below(3)):
            k = d.below(n_items)
            price = round(9.99 + d.below(150) + 0.5 * d.below(2), 2)
            quantity = 1 + d.below(3) if metric != "Viewed Product" else 1
            items.append(
                {
                    "product_id": catalog_id(item_external_id(k)),
                    "sku": item_external_id(k),
                    "product_name": f"{PRODUCTS[k % len(PRODUCTS)]} {k + 1}",
                    "quantity": quantity,
                    "price": price,
                    "row_total": round(price * quantity, 2),
                    "url": f"https://shop.example.com/products/{item_external_id(k).lower()}",
                }
            )
        value = round(sum(item["row_total"] for item in items), 2)
        props: Record = {
            "value": value,
            "$value": value,
            "currency": currency,
            "items": items,
            "ItemNames": [item["product_name"] for item in items],
            "$event_id": f"{event_id}:{i}",
        }
        if metric == "Placed Order":
            props["OrderId"] = f"#{100000 + i}"
            if d.chance(0.2):
                props["DiscountCode"] = "WELCOME10"
                props["DiscountValue"] = round(value * 0.1, 2)
        return props

    # -- serialized events (fast serving for benchmarks) ----------------------------------
    def serialized(self, rank: int) -> bytes:
        """The current version of event ``rank`` as JSON bytes (memoized for base events when
        ``cache`` is on: a base event never changes, a changed one lives in the overlay)."""
        record = self.overlay.get(rank)
        if record is not None:
            return orjson.dumps(record)
        blob = self._serialized.get(rank)
        if blob is None:
            blob = orjson.dumps(self.build(rank))
            if self.cache:
                self._serialized[rank] = blob
        return blob

    def warm(self, processes: int = 1, chunk: int = 20_000) -> None:
        """Turn ``cache`` on, compute every base event's instant and serialize every base event now,
        in ``processes`` forked workers.

        Call before the server starts (forking a process that serves threads is unsafe).
        """
        global _WARMING
        self.cache = True
        if self._instants is None:
            self._instants = array("q", map(self.instant, range(self.count)))
        todo = [i for i in range(0, self.count, chunk) if i not in self._serialized]
        spans = [(i, min(i + chunk, self.count)) for i in todo]
        if processes <= 1 or len(spans) <= 1:
            for lo, hi in spans:
                self._serialized.update(zip(range(lo, hi), _serialize(self, lo, hi), strict=True))
            return
        _WARMING = self
        try:
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
                for (lo, hi), blobs in zip(spans, pool.map(_warm_span, spans), strict=True):
                    self._serialized.update(zip(range(lo, hi), blobs, strict=True))
        finally:
            _WARMING = None

    # -- overlay --------------------------------------------------------------------------
    def _key_of(self, record: Record, rank: int, fallback: int) -> Key:
        attributes = record.get("attributes")
        us = value_us(attributes.get("datetime")) if isinstance(attributes, dict) else None
        return (fallback if us is None else us, rank)

    def _current_key(self, rank: int) -> Key | None:
        if rank in self.overlay:
            return self._overlay_key[rank]
        if rank < self.count and rank not in self.shadowed:
            return (self.instant(rank), rank)
        return None

    def rank_of(self, event_id: str) -> int | None:
        """The rank of a current event id, or None."""
        rank = self._rank_of_id.get(event_id)
        if rank is not None:
            return rank
        i = self.index_of(event_id)
        if i is not None and i < self.count and i not in self.shadowed:
            return i
        return None

    def get(self, rank: int) -> Record:
        """The current version of the event with this rank."""
        record = self.overlay.get(rank)
        return record if record is not None else self.build(rank)

    def put(self, record: Record) -> None:
        """Add or replace an event (matched by id); its key comes from ``attributes.datetime``."""
        event_id = str(record["id"])
        rank = self._rank_of_id.get(event_id)
        old_key: Key | None = None
        if rank is None:
            i = self.index_of(event_id)
            if i is not None and i < self.count:
                rank = i
                if i not in self.shadowed:
                    old_key = (self.instant(i), i)
                self.shadowed.add(i)
            else:
                rank = self._next_rank
                self._next_rank += 1
        else:
            old_key = self._current_key(rank)
            if old_key is not None:
                self.overlay_keys.remove(old_key)
        fallback = old_key[0] if old_key is not None else self.end_us
        key = self._key_of(record, rank, fallback)
        bisect.insort(self.overlay_keys, key)
        self._overlay_key[rank] = key
        self.overlay[rank] = record
        self._rank_of_id[event_id] = rank

    def delete(self, event_id: str) -> bool:
        """Remove an event; False if there is no such event."""
        rank = self.rank_of(event_id)
        if rank is None:
            return False
        if rank in self.overlay:
            key = self._current_key(rank)
            if key is not None:
                self.overlay_keys.remove(key)
            del self.overlay[rank]
            del self._overlay_key[rank]
        self._rank_of_id.pop(event_id, None)
        if rank < self.count:
            self.shadowed.add(rank)
        return True

    def new_rank_record(self, at_us: int) -> Record:
        """A brand-new event at ``at_us`` (not yet stored)."""
        return self.build(self._next_rank, at_us=at_us)

    # -- scanning -------------------------------------------------------------------------
    def scan(
        self,
        after: Key | None,
        ascending: bool,
        lo_us: int | None = None,
        hi_us: int | None = None,
    ) -> Iterator[tuple[Key, Callable[[], Record]]]:
        """Events strictly beyond ``after`` in key order, restricted to instants in ``[lo, hi)``."""
        lo_i = 0 if lo_us is None else self.first_at_or_after(lo_us)
        hi_i = self.count if hi_us is None else self.first_at_or_after(hi_us)
        keys = self.overlay_keys
        k_lo = 0 if lo_us is None else bisect.bisect_left(keys, (lo_us, -1))
        k_hi = len(keys) if hi_us is None else bisect.bisect_left(keys, (hi_us, -1))
        instants = _Instants(self)
        if ascending:
            if after is not None:
                lo_i = max(lo_i, bisect.bisect_right(instants, after, lo_i, max(lo_i, hi_i)))
                k_lo = max(k_lo, bisect.bisect_right(keys, after, k_lo, max(k_lo, k_hi)))
            base = self._base_iter(range(lo_i, hi_i))
            over = ((keys[n], self._overlay_getter(keys[n][1])) for n in range(k_lo, k_hi))
        else:
            if after is not None:
                hi_i = min(hi_i, bisect.bisect_left(instants, after, lo_i, max(lo_i, hi_i)))
                k_hi = min(k_hi, bisect.bisect_left(keys, after, k_lo, max(k_lo, k_hi)))
            base = self._base_iter(range(hi_i - 1, lo_i - 1, -1))
            over = ((keys[n], self._overlay_getter(keys[n][1])) for n in range(k_hi - 1, k_lo - 1, -1))
        yield from _merge(base, over, ascending)

    def _overlay_getter(self, rank: int) -> Callable[[], Record]:
        return lambda: self.overlay[rank]

    def _base_iter(self, indexes: range) -> Iterator[tuple[Key, Callable[[], Record]]]:
        shadowed = self.shadowed
        for i in indexes:
            if i in shadowed:
                continue
            yield (self.instant(i), i), (lambda i=i: self.build(i))

    def ids(self, lo_us: int | None, hi_us: int | None) -> set[str]:
        """Ids of current events with instants in ``[lo, hi)`` (all when unbounded)."""
        lo_i = 0 if lo_us is None else self.first_at_or_after(lo_us)
        hi_i = self.count if hi_us is None else self.first_at_or_after(hi_us)
        out = {self.base_id(i) for i in range(lo_i, hi_i) if i not in self.shadowed}
        for record in self.overlay.values():
            attributes = record.get("attributes")
            us = value_us(attributes.get("datetime")) if isinstance(attributes, dict) else None
            unbounded = lo_us is None and hi_us is None
            inside = us is not None and (lo_us is None or us >= lo_us) and (hi_us is None or us < hi_us)
            if unbounded or inside:
                out.add(str(record["id"]))
        return out

    def __len__(self) -> int:
        return self.count - len(self.shadowed) + len(self.overlay)


_WARMING: EventStore | None = None


def _serialize(store: EventStore, lo: int, hi: int) -> list[bytes]:
    build = store.build
    return [orjson.dumps(build(i)) for i in range(lo, hi)]


def _warm_span(span: tuple[int, int]) -> list[bytes]:
    """A forked worker's share of :meth:`EventStore.warm` (the store is inherited on fork)."""
    assert _WARMING is not None
    return _serialize(_WARMING, *span)


def _merge(
    a: Iterator[tuple[Key, Callable[[], Record]]],
    b: Iterator[tuple[Key, Callable[[], Record]]],
    ascending: bool,
) -> Iterator[tuple[Key, Callable[[], Record]]]:
    """Merge two key-ordered streams."""
    sentinel = None
    x = next(a, sentinel)
    y = next(b, sentinel)
    while x is not None or y is not None:
        if y is None or (x is not None and ((x[0] < y[0]) == ascending)):
            assert x is not None
            yield x
            x = next(a, sentinel)
        else:
            yield y
            y = next(b, sentinel)
