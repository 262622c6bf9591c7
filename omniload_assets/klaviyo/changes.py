"""Asks Klaviyo, as cheaply as each endpoint allows, what changed in a table after a mark.

A mark is the newest incremental key already loaded. :class:`ChangeProbe` asks, per table:

* endpoints that filter and sort on the key: one request, ``page[size]=1``, ``sort=-<key>``,
  ``filter=greater-than(<key>, mark)``, only the key as sparse fieldset. An empty page means
  nothing changed. Otherwise the newest key names the last changed day, and a skip scan
  (ascending, page size 1, from the mark, then from the next midnight) finds each earlier day that
  holds a change: one request per changed day, at most ``max_scan`` of them.
* endpoints that cannot (metrics, catalog-*): one read of the listing with only the key as sparse
  fieldset, the smallest equivalent; the changed days are those of the keys above the mark.

Tables with a ``filter_variants`` entry (archived campaigns/flows) are asked once per variant. The
filters come from :mod:`omniload_assets.klaviyo.windows`; requests go through the client's
``get_json`` and ``iter_pages`` (paced, retried, and raising :class:`KlaviyoError` as it decides).

The incremental key only moves forward for updated records: a late event whose ``datetime`` lies
before the mark is not seen here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Protocol

from omniload_assets.klaviyo.catalog import TableSpec
from omniload_assets.klaviyo.client import ClientStats
from omniload_assets.klaviyo.pages import RawPage
from omniload_assets.klaviyo.windows import after, at_or_after, combine_filters, parse_datetime

#: Most skip-scan requests per table and variant in one probe; beyond it, every later day counts.
MAX_SCAN_REQUESTS = 31


class PagingClient(Protocol):
    """The two calls of :class:`~omniload_assets.klaviyo.client.KlaviyoClient` the probe makes."""

    def get_json(
        self,
        spec: TableSpec,
        url: str,
        params: dict[str, str] | None = None,
        stats: ClientStats | None = None,
    ) -> dict[str, Any]: ...

    def iter_pages(
        self, spec: TableSpec, params: dict[str, str], stats: ClientStats | None = None
    ) -> Iterable[RawPage]: ...


@dataclass(frozen=True)
class TableChange:
    """What changed in one table since its mark."""

    spec: TableSpec
    newest: datetime
    days: frozenset[date]


@dataclass
class ChangeProbe:
    """Asks one Klaviyo account, as cheaply as each endpoint allows, what changed after a mark."""

    client: PagingClient
    stats: ClientStats = field(default_factory=ClientStats)
    max_scan: int = MAX_SCAN_REQUESTS

    def changes(self, spec: TableSpec, mark: datetime) -> TableChange | None:
        """The change of ``spec`` after ``mark``, or None when nothing changed."""
        if spec.incremental_key is None:
            raise ValueError(f"{spec.name} has no incremental key to detect changes on")
        if spec.server_side_window:
            return self._sorted(spec, mark)
        return self._listing(spec, mark)

    # -- endpoints that filter and sort on the key ----------------------------------------------

    def _first(self, spec: TableSpec, variant: str | None, lower: str, descending: bool) -> datetime | None:
        """The key of the first record matching ``lower`` in key order (one request, page size 1)."""
        key = spec.incremental_key
        assert key is not None
        params = {
            "sort": f"-{key}" if descending else key,
            "filter": combine_filters([variant, lower] if variant else [lower]) or lower,
            f"fields[{spec.resource_type}]": key,
        }
        if spec.max_page_size is not None:
            params["page[size]"] = "1"
        page = self.client.get_json(spec, spec.path, params, self.stats)
        self.stats.add(pages=1)
        data = page.get("data") or []
        return record_key(spec, data[0]) if data else None

    def _sorted(self, spec: TableSpec, mark: datetime) -> TableChange | None:
        variants: Sequence[str | None] = spec.filter_variants or (None,)
        newest: dict[str | None, datetime] = {}
        for variant in variants:
            found = self._first(spec, variant, after(spec, mark), descending=True)
            if found is not None and found > mark:
                newest[variant] = found
        if not newest:
            return None
        days: set[date] = set()
        for variant, last in newest.items():  # only the variants that changed are scanned
            days.add(last.date())
            days |= self._scan(spec, variant, mark, midnight(last.date()))
        return TableChange(spec, max(newest.values()), frozenset(days))

    def _scan(
        self, spec: TableSpec, variant: str | None, mark: datetime, last_midnight: datetime
    ) -> set[date]:
        """Days before ``last_midnight`` holding a key above ``mark``: one request per such day."""
        days: set[date] = set()
        lower, bound = after(spec, mark), mark
        for _ in range(self.max_scan):
            if bound >= last_midnight:
                return days
            found = self._first(spec, variant, lower, descending=False)
            if found is None or found >= last_midnight:
                return days
            days.add(found.date())
            bound = midnight(found.date() + timedelta(days=1))
            lower = at_or_after(spec, bound)
        # Out of budget: count every remaining day as changed (a superset is safe, merges are idempotent).
        day = bound.date()
        while day < last_midnight.date():
            days.add(day)
            day += timedelta(days=1)
        return days

    # -- endpoints that cannot ----------------------------------------------------------------

    def _listing(self, spec: TableSpec, mark: datetime) -> TableChange | None:
        key = spec.incremental_key
        assert key is not None
        newest: datetime | None = None
        days: set[date] = set()
        for variant in spec.filter_variants or (None,):
            params = {f"fields[{spec.resource_type}]": key}
            if spec.max_page_size is not None:
                params["page[size]"] = str(spec.max_page_size)
            if variant:
                params["filter"] = variant
            for page in self.client.iter_pages(spec, params, self.stats):
                for raw in page.keys:
                    found = parse_datetime(raw)
                    if found is None or found <= mark:
                        continue
                    days.add(found.date())
                    newest = found if newest is None or found > newest else newest
        return None if newest is None else TableChange(spec, newest, frozenset(days))


def record_key(spec: TableSpec, record: dict[str, Any]) -> datetime | None:
    """A resource's incremental key as an aware UTC datetime."""
    return parse_datetime((record.get("attributes") or {}).get(spec.incremental_key or ""))


def midnight(day: date) -> datetime:
    """The UTC midnight that starts ``day``."""
    return datetime.combine(day, time(), tzinfo=UTC)
