"""Materialized tables and keyset pagination shared by every table.

Pages are cut by key, not offset: a cursor holds the sort key of the last (or first) record of
the page it came from, so records added or changed between pages never shift other records.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import gc
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from .filters import leaves
from .timeutil import value_us

Record = dict[str, Any]
Meta = dict[str, Any]
Key = tuple[Any, ...]
Getter = Callable[[], tuple[Record, Meta]]
Scan = Callable[[Key | None, bool], Iterator[tuple[Key, Getter]]]
Predicate = Callable[[Record, Meta], bool]


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many small objects (halves the time)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def norm(value: Any, as_datetime: bool) -> tuple[Any, ...]:
    """A totally ordered sort key for any JSON value (datetimes compared as instants)."""
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, int | float):
        return (2, value)
    if isinstance(value, str):
        if as_datetime:
            us = value_us(value)
            if us is not None:
                return (3, us)
        return (4, value)
    return (5, orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode())


class TableStore:
    """One materialized table: records by id, hidden metadata, cached sorted views."""

    def __init__(self) -> None:
        self.records: dict[str, Record] = {}
        self.meta: dict[str, Meta] = {}
        self.version = 0
        self._views: dict[tuple[str, bool], tuple[list[Key], list[str]]] = {}
        self._views_version = -1

    def put(self, record: Record, meta: Meta | None = None) -> None:
        """Add or replace a record (by id)."""
        rid = str(record["id"])
        self.records[rid] = record
        if meta is not None or rid not in self.meta:
            self.meta[rid] = meta or {}
        self.version += 1

    def delete(self, rid: str) -> bool:
        """Remove a record; False if absent."""
        if rid not in self.records:
            return False
        del self.records[rid]
        self.meta.pop(rid, None)
        self.version += 1
        return True

    def view(self, sort_path: str, as_datetime: bool) -> tuple[list[Key], list[str]]:
        """Keys ``(norm(value), id)`` in ascending order, with their ids."""
        if self._views_version != self.version:
            self._views.clear()
            self._views_version = self.version
        cache_key = (sort_path, as_datetime)
        cached = self._views.get(cache_key)
        if cached is None:
            parts = sort_path.split(".")
            pairs = sorted(
                ((norm(leaves(rec, parts)[0], as_datetime), rid), rid) for rid, rec in self.records.items()
            )
            cached = ([p[0] for p in pairs], [p[1] for p in pairs])
            self._views[cache_key] = cached
        return cached

    def scanner(self, sort_path: str, as_datetime: bool) -> Scan:
        """A :data:`Scan` over this table in ``sort_path`` order."""
        keys, ids = self.view(sort_path, as_datetime)
        records, meta = self.records, self.meta

        def scan(after: Key | None, ascending: bool) -> Iterator[tuple[Key, Getter]]:
            if ascending:
                start = 0 if after is None else bisect.bisect_right(keys, after)
                positions: range = range(start, len(keys))
            else:
                stop = len(keys) if after is None else bisect.bisect_left(keys, after)
                positions = range(stop - 1, -1, -1)
            for n in positions:
                rid = ids[n]
                record = records.get(rid)
                if record is None:
                    continue
                pair = (record, meta.get(rid) or {})
                yield keys[n], (lambda pair=pair: pair)

        return scan


@dataclass(frozen=True)
class Cursor:
    """An opaque page cursor: direction (``n`` after / ``p`` before), key, query fingerprint."""

    direction: str
    key: Key
    query: str

    def encode(self) -> str:
        raw = orjson.dumps({"d": self.direction, "k": self.key, "q": self.query})
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @staticmethod
    def decode(text: str) -> Cursor | None:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            data = orjson.loads(raw)
            direction, key, query = data["d"], data["k"], data["q"]
        except (ValueError, KeyError, TypeError):
            return None
        if direction not in ("n", "p") or not isinstance(key, list) or not isinstance(query, str):
            return None
        return Cursor(direction, _tupled(key), query)


def _tupled(value: Any) -> Any:
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


def fingerprint(*parts: str | None) -> str:
    """A short hash binding a cursor to the filter and sort it was made for."""
    return hashlib.blake2b(repr(parts).encode(), digest_size=6).hexdigest()


@dataclass
class Page:
    """One page: records in order, and the keys to continue from (None = no such page)."""

    items: list[tuple[Key, Record, Meta]]
    next_key: Key | None
    prev_key: Key | None


def _matches(
    scan: Iterator[tuple[Key, Getter]], predicate: Predicate | None
) -> Iterator[tuple[Key, Record, Meta]]:
    for key, get in scan:
        record, meta = get()
        if predicate is None or predicate(record, meta):
            yield key, record, meta


def _take(it: Iterator[tuple[Key, Record, Meta]], n: int) -> list[tuple[Key, Record, Meta]]:
    out = []
    for item in it:
        out.append(item)
        if len(out) >= n:
            break
    return out


def paginate(
    scan: Scan,
    predicate: Predicate | None,
    forward_ascending: bool,
    size: int,
    cursor: Cursor | None,
) -> Page:
    """Cut one page of ``size`` matching records, honouring a next/prev cursor."""
    fwd, back = forward_ascending, not forward_ascending
    if cursor is None or cursor.direction == "n":
        after = None if cursor is None else cursor.key
        found = _take(_matches(scan(after, fwd), predicate), size + 1)
        items = found[:size]
        next_key = items[-1][0] if len(found) > size else None
        prev_key = None
        if cursor is not None:
            anchor = items[0][0] if items else cursor.key
            if _take(_matches(scan(anchor, back), predicate), 1):
                prev_key = anchor
        return Page(items, next_key, prev_key)
    found = _take(_matches(scan(cursor.key, back), predicate), size + 1)
    items = list(reversed(found[:size]))
    prev_key = items[0][0] if len(found) > size else None
    anchor = items[-1][0] if items else cursor.key
    next_key = anchor if _take(_matches(scan(anchor, fwd), predicate), 1) else None
    return Page(items, next_key, prev_key)
