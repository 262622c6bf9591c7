"""The simulated account's data: every table's current records, ground truth and mutations."""

from __future__ import annotations

import random
import threading
from collections.abc import Collection, Iterator
from datetime import datetime
from typing import Any

import orjson

from .data import DEFAULT_COUNTS, Built, Factory
from .endpoints import Endpoint, endpoint
from .events import EventStore
from .family import CHILD_LIMITS, Family
from .nested import MEMBER_TABLES, NESTED, nested
from .relations import Relations
from .store import Getter, Key, Record, Scan, TableStore, gc_paused
from .timeutil import US, iso, to_us, value_us

#: The attribute ``mutate`` changes in each table (dotted below ``attributes``).
TOUCH: dict[str, str] = {
    "events": "event_properties",
    "profiles": "properties",
    "campaigns": "definition.name",
    "metrics": "name",
    "tags": "name",
    "coupons": "description",
    "catalog-variants": "price",
    "catalog-categories": "name",
    "catalog-items": "price",
    "flows": "name",
    "lists": "name",
    "images": "name",
    "segments": "name",
    "forms": "name",
    "templates": "html",
}


def is_nested(table: str) -> bool:
    """True for a nested (child) table name: ``flow-actions``, ``list_profiles``..."""
    return table.replace("_", "-") in NESTED


def copy_json(value: Any) -> Any:
    """A deep copy of a JSON value."""
    return orjson.loads(orjson.dumps(value))


def _touched(value: Any, n: int) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return round(value + 1.25, 2)
    if isinstance(value, dict):
        return {**value, "sim_revision": n}
    if isinstance(value, str):
        return f"{value} (rev {n})"
    return f"rev {n}"


def shape(
    record: Record, ep: Endpoint, additional: Collection[str], fields: Collection[str] | None
) -> Record:
    """The record as served: additional fields only when asked for, sparse fieldsets applied."""
    attributes = record.get("attributes")
    if not isinstance(attributes, dict):
        return record
    hidden = [name for name in ep.additional_fields if name not in additional and name in attributes]
    if not hidden and fields is None:
        return record
    keep = None if fields is None else {f.split(".")[0] for f in fields}
    shaped = {k: v for k, v in attributes.items() if k not in hidden and (keep is None or k in keep)}
    return {**record, "attributes": shaped}


class Dataset:
    """All tables of one simulated account. Every public method holds ``lock``."""

    def __init__(
        self,
        seed: int,
        start: datetime,
        end: datetime,
        scale: dict[str, int] | None = None,
    ) -> None:
        counts = dict(DEFAULT_COUNTS)
        limits = dict(CHILD_LIMITS)
        for table, count in (scale or {}).items():
            name = table.replace("_", "-")
            if name in limits:
                limits[name] = int(count)
            else:
                counts[endpoint(table).table] = int(count)
        self.seed = seed
        self.counts = counts
        #: Most children a parent gets (members of a list, actions of a flow...).
        self.limits = limits
        self.start_us = to_us(start)
        self.end_us = to_us(end)
        if self.end_us <= self.start_us:
            raise ValueError("end must be after start")
        self.lock = threading.RLock()
        self.factory = Factory(seed, self.start_us, self.end_us, counts)
        self.family = Family(self.factory, limits)
        self.relations = Relations(self.table, self.end_us)
        self._tables: dict[str, TableStore] = {}
        self._added: dict[str, int] = {}
        self._mutations: dict[str, int] = {}
        metrics = self.table("metrics")
        names = [(rid, str(rec["attributes"]["name"])) for rid, rec in metrics.records.items()]
        self.events = EventStore(self.factory, counts["events"], names, counts["profiles"])

    # -- access -------------------------------------------------------------------------
    def table(self, name: str) -> TableStore:
        """The materialized store of a non-event table, built on first use."""
        with self.lock:
            store = self._tables.get(name)
            if store is None:
                store = TableStore()
                with gc_paused():
                    for j in range(self.counts[name]):
                        built = self._build(name, j)
                        store.put(built.record, built.meta)
                self._tables[name] = store
            return store

    def _build(self, table: str, j: int, at_us: int | None = None) -> Built:
        """Record ``j`` of ``table`` with its children (members, messages, actions)."""
        return self.family.attach(table, j, self.factory.build(table, j, at_us))

    def scanner(
        self,
        ep: Endpoint,
        sort_path: str,
        as_datetime: bool,
        bounds: tuple[int | None, int | None],
        *,
        lazy: bool = False,
    ) -> Scan:
        """A key-ordered scan over a table (events: within ``bounds`` in epoch µs).

        ``lazy`` (events only): the getters return an empty placeholder instead of building the
        event, for a caller that serializes events by rank (``key[1]``) itself.
        """
        if ep.table != "events":
            return self.table(ep.table).scanner(sort_path, as_datetime)
        lo, hi = bounds
        events = self.events
        placeholder: tuple[Record, dict[str, Any]] = ({}, {})

        def scan(after: Key | None, ascending: bool) -> Iterator[tuple[Key, Getter]]:
            for key, get in events.scan(after, ascending, lo, hi):
                yield key, ((lambda: placeholder) if lazy else (lambda g=get: (g(), {})))

        return scan

    def get(self, table: str, rid: str) -> Record | None:
        """The current record with id ``rid`` (not a copy), or None."""
        with self.lock:
            if table == "events":
                rank = self.events.rank_of(rid)
                return None if rank is None else self.events.get(rank)
            return self.table(table).records.get(rid)

    def campaign_messages(self, campaign_id: str) -> list[Record]:
        """The campaign-message resources of a campaign."""
        with self.lock:
            return list(self.table("campaigns").meta.get(campaign_id, {}).get("messages", []))

    def campaign_channels(self) -> dict[str, str]:
        """Campaign id -> channel of its message (email, sms or mobile_push)."""
        with self.lock:
            meta = self.table("campaigns").meta
            return {rid: str(m.get("channel")) for rid, m in meta.items()}

    # -- ground truth -------------------------------------------------------------------
    def records(self, table: str, additional_fields: Collection[str] = ()) -> list[Record]:
        """Deep copies of every current record, as served without sparse fieldsets (child
        tables too: ``campaign-messages``, ``flow-actions``, ``flow-messages``)."""
        if is_nested(table):
            ep = nested(table)
            with self.lock:
                return [
                    copy_json(shape(r, ep, additional_fields, None)) for r in self.relations.records(table)
                ]
        ep = endpoint(table)
        with self.lock:
            if ep.table == "events":
                items = [get() for _, get in self.events.scan(None, True)]
            else:
                items = list(self.table(ep.table).records.values())
            return [copy_json(shape(r, ep, additional_fields, None)) for r in items]

    def ids(self, table: str, start: datetime | None = None, end: datetime | None = None) -> set[str]:
        """Ids whose incremental key lies in ``[start, end)``; all ids for keyless tables and
        nested ones (a membership's id is ``<list or segment id>:<profile id>``, as the warehouse
        keys it)."""
        if is_nested(table):
            name = nested(table).table
            if name in MEMBER_TABLES:
                return {f"{p}:{m}" for p, m in self.members(MEMBER_TABLES[name])}
            return {child for _, child in self.children(name)}
        ep = endpoint(table)
        lo = None if start is None else to_us(start)
        hi = None if end is None else to_us(end)
        with self.lock:
            if ep.table == "events":
                return self.events.ids(lo, hi)
            records = self.table(ep.table).records
            if ep.incremental_key is None or (lo is None and hi is None):
                return set(records)
            out = set()
            for rid, record in records.items():
                us = value_us(record.get("attributes", {}).get(ep.incremental_key))
                if us is not None and (lo is None or us >= lo) and (hi is None or us < hi):
                    out.add(rid)
            return out

    # -- changes ------------------------------------------------------------------------
    def _stamp(self, ep: Endpoint, at_us: int) -> str:
        return iso(at_us - at_us % US, micro=False) if ep.table == "metrics" else iso(at_us)

    def _touch(self, ep: Endpoint, record: Record, n: int, at_us: int | None) -> Record:
        record = copy_json(record)
        attributes = record.setdefault("attributes", {})
        *parents, leaf = TOUCH[ep.table].split(".")
        target = attributes
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = _touched(target.get(leaf), n)
        if at_us is not None and ep.incremental_key is not None:
            attributes[ep.incremental_key] = self._stamp(ep, at_us)
            if ep.table == "events":
                attributes["timestamp"] = at_us // US
        return record

    def mutate(
        self, table: str, updated: int = 5, added: int = 5, at: datetime | None = None
    ) -> dict[str, list[str]]:
        """Change ``updated`` existing records and add ``added`` new ones, keyed at ``at``."""
        ep = endpoint(table)
        at_us = None if at is None else to_us(at)
        with self.lock:
            n = self._mutations.get(ep.table, 0) + 1
            self._mutations[ep.table] = n
            rng = random.Random(f"{self.seed}:mutate:{ep.table}:{n}")
            changed: list[str] = []
            if ep.table == "events":
                changed = self._mutate_events(ep, rng, updated, n, at_us)
            else:
                store = self.table(ep.table)
                ids = list(store.records)
                for rid in rng.sample(ids, min(updated, len(ids))):
                    store.put(self._touch(ep, store.records[rid], n, at_us))
                    changed.append(rid)
            new: list[str] = []
            key_us = self.end_us if at_us is None else at_us
            for _ in range(added):
                if ep.table == "events":
                    record = self.events.new_rank_record(key_us)
                    self.events.put(record)
                    new.append(str(record["id"]))
                    continue
                j = self.counts[ep.table] + self._added.get(ep.table, 0)
                self._added[ep.table] = self._added.get(ep.table, 0) + 1
                built = self._build(ep.table, j, key_us)
                self.table(ep.table).put(built.record, built.meta)
                new.append(str(built.record["id"]))
            return {"updated": changed, "added": new}

    def _mutate_events(
        self, ep: Endpoint, rng: random.Random, updated: int, n: int, at_us: int | None
    ) -> list[str]:
        events = self.events
        changed: list[str] = []
        seen: set[int] = set()
        candidates = list(events.overlay) if events.count == 0 else None
        attempts = 0
        while len(changed) < min(updated, len(events)) and attempts < updated * 50:
            attempts += 1
            if candidates is not None:
                rank = rng.choice(candidates)
            else:
                rank = rng.randrange(events.count)
                if rank in events.shadowed and rank not in events.overlay:
                    continue
            if rank in seen:
                continue
            seen.add(rank)
            record = self._touch(ep, events.get(rank), n, at_us)
            events.put(record)
            changed.append(str(record["id"]))
        return changed

    def add_record(self, table: str, record: Record, meta: dict[str, Any] | None = None) -> None:
        """Add (or replace, by id) a whole resource object, whatever its attributes hold; a
        child record goes under the parent its relationship names."""
        if is_nested(table):
            ep = nested(table)
            record = copy_json(record)
            if "id" not in record:
                raise ValueError("a record needs an id")
            record.setdefault("type", ep.resource_type)
            record.setdefault("attributes", {})
            with self.lock:
                self.relations.put(ep.table, record)
            return
        ep = endpoint(table)
        record = copy_json(record)
        if "id" not in record:
            raise ValueError("a record needs an id")
        record.setdefault("type", ep.resource_type)
        record.setdefault("attributes", {})
        with self.lock:
            if ep.table == "events":
                self.events.put(record)
            else:
                self.table(ep.table).put(record, meta)

    def set_attribute(self, table: str, rid: str, name: str, value: Any) -> None:
        """Set ``attributes[name]`` of a record to any JSON value (schema drift)."""
        if is_nested(table):
            with self.lock:
                self.relations.set_attribute(table, rid, name, value)
            return
        ep = endpoint(table)
        with self.lock:
            current = self.get(ep.table, rid)
            if current is None:
                raise KeyError(f"no {ep.table} record with id {rid!r}")
            record = copy_json(current)
            record.setdefault("attributes", {})[name] = copy_json(value)
            if ep.table == "events":
                self.events.put(record)
            else:
                self.table(ep.table).put(record)

    def delete_record(self, table: str, rid: str) -> bool:
        """Remove a record (a hard delete upstream); False if there was none. Its children go
        with it, and a deleted profile leaves every list and segment."""
        if is_nested(table):
            with self.lock:
                return self.relations.delete(table, rid)
        ep = endpoint(table)
        with self.lock:
            if ep.table == "events":
                return self.events.delete(rid)
            deleted = self.table(ep.table).delete(rid)
            if deleted and ep.table == "profiles":
                self.relations.drop_profile(rid)
            return deleted

    # -- memberships and children ---------------------------------------------------------
    def members(self, kind: str) -> set[tuple[str, str]]:
        """Every ``(list or segment id, profile id)`` of ``kind`` (``lists`` or ``segments``)."""
        with self.lock:
            return self.relations.members(kind)

    def add_member(self, kind: str, parent_id: str, profile_id: str, joined_at: datetime | None) -> None:
        """Put a profile on a list or segment, joined at ``joined_at`` (default: ``end``; an
        existing member keeps its join time unless one is given)."""
        with self.lock:
            self.relations.add_member(
                kind, parent_id, profile_id, None if joined_at is None else to_us(joined_at)
            )

    def remove_member(self, kind: str, parent_id: str, profile_id: str) -> bool:
        """Take a profile off a list or segment; False if it was not on it."""
        with self.lock:
            return self.relations.remove_member(kind, parent_id, profile_id)

    def children(self, table: str) -> set[tuple[str, str]]:
        """Every ``(parent id, child id)`` of ``campaign-messages``, ``flow-actions`` or ``flow-messages``."""
        with self.lock:
            return self.relations.children(table)

    def child_items(self, table: str, parent_id: str) -> list[tuple[Record, dict[str, Any]]] | None:
        """What a nested endpoint lists for one parent (not copies); None if there is no such parent."""
        with self.lock:
            return self.relations.items(table, parent_id)
