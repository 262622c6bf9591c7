"""Nested records as served, as ground truth, and changed: memberships and children.

Memberships live in a list's or segment's metadata (``members``: profile id -> joined µs);
campaign messages in a campaign's (``messages``); flow actions and their messages in a flow's
(``actions``, ``flow_messages``: action id -> messages). :class:`Relations` reads and changes
them through the dataset's tables; the caller holds the dataset's lock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson

from .nested import MEMBER_KINDS, MEMBER_TABLES, member_kind, nested
from .store import Meta, Record, TableStore
from .timeutil import iso

#: Child table -> (parent table, the metadata key holding the children).
CHILDREN: dict[str, tuple[str, str]] = {
    "campaign-messages": ("campaigns", "messages"),
    "flow-actions": ("flows", "actions"),
    "flow-messages": ("flows", "flow_messages"),
}
#: Child table -> (the relationship naming the parent, the parent's relationship listing them).
_LINKS: dict[str, tuple[str, str | None]] = {
    "campaign-messages": ("campaign", "campaign-messages"),
    "flow-actions": ("flow", None),
    "flow-messages": ("flow-action", "flow-messages"),
}


def _copy(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value))


def _child_table(table: str) -> str:
    name = nested(table).table
    if name not in CHILDREN:
        raise KeyError(f"{name} holds memberships: use members(), add_member() and remove_member()")
    return name


class Relations:
    """Memberships and children over the tables ``table(name)`` returns."""

    def __init__(self, table: Callable[[str], TableStore], default_join_us: int) -> None:
        self.table = table
        #: The join time of a member added without one.
        self.default_join_us = default_join_us

    # -- memberships --------------------------------------------------------------------
    def _members_of(self, kind: str, parent_id: str) -> dict[str, int] | None:
        member_kind(kind)
        store = self.table(kind)
        if parent_id not in store.records:
            return None
        return store.meta.setdefault(parent_id, {}).setdefault("members", {})

    def members(self, kind: str) -> set[tuple[str, str]]:
        """Every ``(list or segment id, profile id)`` of ``kind``."""
        member_kind(kind)
        meta = self.table(kind).meta
        return {(parent, pid) for parent, m in meta.items() for pid in m.get("members", {})}

    def add_member(self, kind: str, parent_id: str, profile_id: str, joined_us: int | None) -> None:
        """Put a profile on a list or segment (``joined_us`` None keeps an existing join time)."""
        members = self._members_of(kind, parent_id)
        if members is None:
            raise KeyError(f"no {kind} record with id {parent_id!r}")
        if profile_id not in self.table("profiles").records:
            raise KeyError(f"no profiles record with id {profile_id!r}")
        if joined_us is not None or profile_id not in members:
            members[profile_id] = self.default_join_us if joined_us is None else joined_us

    def remove_member(self, kind: str, parent_id: str, profile_id: str) -> bool:
        """Take a profile off a list or segment; False if it was not on it."""
        members = self._members_of(kind, parent_id)
        return members is not None and members.pop(profile_id, None) is not None

    def drop_profile(self, profile_id: str) -> None:
        """A deleted profile leaves every list and segment."""
        for kind in MEMBER_KINDS:
            for meta in self.table(kind).meta.values():
                meta.get("members", {}).pop(profile_id, None)

    def _member_items(self, kind: str, parent_id: str) -> list[tuple[Record, Meta]] | None:
        members = self._members_of(kind, parent_id)
        if members is None:
            return None
        profiles = self.table("profiles")
        items = []
        for pid, joined in members.items():
            profile = profiles.records.get(pid)
            if profile is None:
                continue
            attributes = {**(profile.get("attributes") or {}), "joined_group_at": iso(joined)}
            items.append(({**profile, "attributes": attributes}, profiles.meta.get(pid) or {}))
        return items

    # -- children -----------------------------------------------------------------------
    def _groups(self, table: str) -> Iterator[tuple[str, list[Record]]]:
        """``(parent id, its children)`` for every parent that has any (the lists are live)."""
        parent, key = CHILDREN[table]
        for pid, meta in self.table(parent).meta.items():
            held = meta.get(key)
            if table == "flow-messages":
                yield from (held or {}).items()
            elif held is not None:
                yield pid, held

    def _children_of(self, table: str, parent_id: str, create: bool = False) -> list[Record] | None:
        """The live list of a parent's children; None if there is no such parent."""
        parent, key = CHILDREN[table]
        if table == "flow-messages":
            for meta in self.table("flows").meta.values():
                if any(a["id"] == parent_id for a in meta.get("actions", [])):
                    held = meta.setdefault(key, {})
                    return held.setdefault(parent_id, []) if create else held.get(parent_id, [])
            return None
        store = self.table(parent)
        if parent_id not in store.records:
            return None
        meta = store.meta.setdefault(parent_id, {})
        return meta.setdefault(key, []) if create else meta.get(key, [])

    def children(self, table: str) -> set[tuple[str, str]]:
        """Every ``(parent id, child id)`` of a child table."""
        table = _child_table(table)
        return {(pid, str(r["id"])) for pid, held in self._groups(table) for r in held}

    def records(self, table: str) -> list[Record]:
        """Every record of a nested table (not copies): a membership table's members as served,
        once for each list or segment they are on."""
        name = nested(table).table
        if name in CHILDREN:
            return [r for _, held in self._groups(name) for r in held]
        kind = MEMBER_TABLES[name]
        return [r for p in sorted(self.table(kind).records) for r, _ in self._member_items(kind, p) or []]

    def items(self, table: str, parent_id: str) -> list[tuple[Record, Meta]] | None:
        """What ``GET /api/<parent>/{parent_id}/<child>`` lists; None if there is no such parent."""
        ep = nested(table)
        if ep.table in CHILDREN:
            held = self._children_of(ep.table, parent_id)
            return None if held is None else [(r, {}) for r in held]
        return self._member_items(MEMBER_TABLES[ep.table], parent_id)

    def _find(self, table: str, rid: str) -> tuple[str, list[Record], int] | None:
        for pid, held in self._groups(table):
            for n, record in enumerate(held):
                if record.get("id") == rid:
                    return pid, held, n
        return None

    def delete(self, table: str, rid: str) -> bool:
        """Remove a child (a flow action takes its messages along); False if there was none."""
        table = _child_table(table)
        found = self._find(table, rid)
        if found is None:
            return False
        self._detach(table, found)
        if table == "flow-actions":
            self.table("flows").meta[found[0]].get("flow_messages", {}).pop(rid, None)
        return True

    def _detach(self, table: str, found: tuple[str, list[Record], int]) -> None:
        pid, held, n = found
        del held[n]
        self._relink(table, pid, held)

    def put(self, table: str, record: Record) -> None:
        """Add or replace (by id) a child under the parent its relationship names (a flow action
        moved to another flow takes its messages along)."""
        table = _child_table(table)
        name, _ = _LINKS[table]
        ref = ((record.get("relationships") or {}).get(name) or {}).get("data")
        parent_id = str(ref["id"]) if isinstance(ref, dict) and ref.get("id") is not None else None
        held = None if parent_id is None else self._children_of(table, parent_id, create=True)
        if parent_id is None or held is None:
            raise KeyError(f"a {table} record needs relationships.{name}.data naming an existing parent")
        rid = str(record["id"])
        found = self._find(table, rid)
        if found is not None and found[1] is not held:
            self._detach(table, found)
            if table == "flow-actions":
                moved = self.table("flows").meta[found[0]].get("flow_messages", {}).pop(rid, [])
                self.table("flows").meta[parent_id].setdefault("flow_messages", {})[rid] = moved
        index = next((n for n, r in enumerate(held) if r.get("id") == rid), None)
        if index is None:
            held.append(record)
        else:
            held[index] = record
        self._relink(table, parent_id, held)

    def set_attribute(self, table: str, rid: str, name: str, value: Any) -> None:
        """Set ``attributes[name]`` of a child record to any JSON value."""
        table = _child_table(table)
        found = self._find(table, rid)
        if found is None:
            raise KeyError(f"no {table} record with id {rid!r}")
        _, held, n = found
        record = _copy(held[n])
        record.setdefault("attributes", {})[name] = _copy(value)
        held[n] = record

    def _relink(self, table: str, parent_id: str, held: list[Record]) -> None:
        """Make the parent's relationship list its current children."""
        _, listing = _LINKS[table]
        if listing is None:
            return
        refs = [{"type": str(r.get("type")), "id": str(r["id"])} for r in held]
        if table == "campaign-messages":
            store = self.table("campaigns")
            record = _copy(store.records[parent_id])
            record.setdefault("relationships", {}).setdefault(listing, {})["data"] = refs
            store.put(record)
            return
        for meta in self.table("flows").meta.values():
            actions = meta.get("actions", [])
            for n, action in enumerate(actions):
                if action["id"] == parent_id:
                    action = _copy(action)
                    action.setdefault("relationships", {}).setdefault(listing, {})["data"] = refs
                    actions[n] = action
