"""Lists the ids a Klaviyo table holds now, as cheaply as the endpoint allows, for the deletion sweep.

One cursor chain per filter variant (archived campaigns and flows are listed only when asked for),
each request the table's own query (:meth:`TableSpec.request_params`) with the largest page and a
sparse fieldset of one small attribute (:func:`sweep_field`, the incremental key: every endpoint's
``fields[<type>]`` accepts it), without the ``additional-fields`` extraction asks for. Requests go
through the client's ``iter_pages``: paced to the endpoint's rate limit and retried like every
other request. A page is read for its ids only (:func:`read_ids`); one whose records lack an id is
refused (and retried), so a listing that returns is complete: an error ends it instead.

Cost of a listing: ``ceil(ids / largest page)`` requests per variant, at most the endpoint's steady
rate limit a minute (:func:`listing_cost`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from omniload_assets.klaviyo.catalog import TableSpec
from omniload_assets.klaviyo.client import ClientStats
from omniload_assets.klaviyo.pages import PageFormatError, RawPage

#: Query parameters extraction sends that a listing of ids does without (they only add attributes).
_ADDITIONAL_FIELDS = "additional-fields["
#: Records a page of an endpoint that takes no ``page[size]`` holds: metrics, "a maximum of 200
#: results per page" (Klaviyo's description of GET /api/metrics).
UNSIZED_PAGE = 200


class PagingClient(Protocol):
    """The call of :class:`~omniload_assets.klaviyo.client.KlaviyoClient` a listing makes."""

    def iter_pages(
        self,
        spec: TableSpec,
        params: dict[str, str],
        stats: ClientStats | None = None,
        read: Callable[[bytes], RawPage] | None = None,
    ) -> Iterable[RawPage]: ...


class _Identifier(msgspec.Struct, gc=False):
    id: str | None = None


class _Links(msgspec.Struct, gc=False):
    next: Any = None


class _IdDocument(msgspec.Struct, gc=False):
    data: list[_Identifier]
    links: _Links | None = None


_DECODER = msgspec.json.Decoder(_IdDocument)


def sweepable(spec: TableSpec) -> bool:
    """Whether the sweep can list ``spec``: a merge table read from one listing (a table replaced
    whole has no deleted rows to find; a child table is read per parent id)."""
    return spec.strategy == "merge" and spec.parent is None


def sweep_field(spec: TableSpec) -> str:
    """The one attribute a listing asks for: the incremental key (a timestamp), else the first column."""
    return spec.incremental_key or next(iter(spec.columns))


def sweep_params(spec: TableSpec, variant: str | None = None) -> dict[str, str]:
    """The query of a listing's first page: the table's own, largest page, one sparse field."""
    params = {k: v for k, v in spec.request_params().items() if not k.startswith(_ADDITIONAL_FIELDS)}
    params[f"fields[{spec.resource_type}]"] = sweep_field(spec)
    if variant:
        params["filter"] = variant
    return params


def read_ids(body: bytes) -> RawPage:
    """A page read for its ids (``resources``: the ids, in order) and ``links.next``.

    Raises :class:`PageFormatError` (the client retries the page) when the body is no JSON:API page
    or a record has no id: a listing that skipped one would mark that row deleted.
    """
    try:
        document = _DECODER.decode(body)
    except msgspec.DecodeError as exc:
        raise PageFormatError(f"response body is not a JSON:API page of resources ({exc})") from None
    ids = [resource.id for resource in document.data]
    if any(not rid for rid in ids):
        raise PageFormatError("a resource of the page has no id")
    next_url = None if document.links is None else document.links.next
    return RawPage(b"", [None] * len(ids), next_url, ids)


def list_ids(
    client: PagingClient,
    spec: TableSpec,
    stats: ClientStats | None = None,
    on_page: Callable[[ClientStats], None] | None = None,
) -> set[str]:
    """Every id ``spec``'s endpoint lists now, over all its filter variants; raises whatever the
    client raises (nothing partial is returned). ``on_page`` hears the counters after each page."""
    stats = stats if stats is not None else ClientStats()
    ids: set[str] = set()
    for variant in spec.filter_variants or (None,):
        for page in client.iter_pages(spec, sweep_params(spec, variant), stats, read_ids):
            found = page.resources or []
            ids.update(found)
            stats.add(records=len(found))
            if on_page is not None:
                on_page(stats)
    return ids


@dataclass(frozen=True)
class ListingCost:
    """Requests and the least time a listing of ``rows`` ids takes at the endpoint's steady limit."""

    table: str
    rows: int
    page_size: int
    requests: int
    minutes: float


def listing_cost(spec: TableSpec, rows: int) -> ListingCost:
    """Pages (one request each, at least one per variant) = rows / largest page; minutes = pages /
    the steady limit a minute. A cursor chain also waits for each response, so a table of an XL or L
    endpoint takes longer than the limit alone says (README, Deletions)."""
    size = spec.page_size() or UNSIZED_PAGE
    variants = len(spec.filter_variants) or 1
    requests = max(math.ceil(rows / size), variants)
    return ListingCost(spec.name, rows, size, requests, requests / spec.rate_limit.steady_per_min)
