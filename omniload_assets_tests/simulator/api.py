"""Request handling independent of the HTTP transport: checks, query, page, JSON:API body."""

from __future__ import annotations

import random
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlsplit

import orjson

from . import filters as flt
from .data import API
from .dataset import Dataset, shape
from .endpoints import ENDPOINTS, EQ, PREDICTIVE_TIER, Endpoint, Tier
from .faults import Fault, FaultInjector
from .nested import route
from .ratelimit import RateLimiter
from .store import Cursor, Getter, Key, Page, Record, Scan, TableStore, fingerprint, paginate

if TYPE_CHECKING:
    from .simulator import KlaviyoSimulator

JSON_API = "application/vnd.api+json"
ERROR_STATUSES = {"500", "502", "503", "504"}
ERROR_TITLES = {
    500: "A server error occurred.",
    502: "Bad gateway.",
    503: "Service unavailable.",
    504: "Gateway timeout.",
}
#: include name -> JSON:API type, for ``fields[<type>]`` validation.
INCLUDE_TYPES = {
    "attributions": "attribution",
    "metric": "metric",
    "profile": "profile",
    "conversations": "conversation",
    "push-tokens": "push-token",
    "campaign-audiences": "campaign-audience",
    "campaign-messages": "campaign-message",
    "tags": "tag",
    "flow-triggers": "flow",
    "tag-group": "tag-group",
    "variants": "catalog-variant",
    "flow-actions": "flow-action",
}


@dataclass
class Response:
    """What to send: status, headers, body; ``fault`` and ``delay`` are applied by the server."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    fault: Fault | None = None
    delay: float = 0.0


@dataclass
class Stats:
    """Counters since start (or the last reset)."""

    requests: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    throttled: int = 0
    pages: int = 0
    records: int = 0

    def copy(self) -> Stats:
        return Stats(
            dict(self.requests),
            dict(self.statuses),
            dict(self.faults),
            self.throttled,
            self.pages,
            self.records,
        )

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())


class ApiError(Exception):
    """A JSON:API error response."""

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str,
        parameter: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.parameter = parameter


def bad_request(detail: str, parameter: str | None = None) -> ApiError:
    return ApiError(400, "invalid", "Invalid input.", detail, parameter)


def error_body(status: int, code: str, title: str, detail: str, parameter: str | None = None) -> bytes:
    source: dict[str, str] = {"parameter": parameter} if parameter else {"pointer": "/data/"}
    error = {
        "id": str(uuid.uuid4()),
        "status": status,
        "code": code,
        "title": title,
        "detail": detail,
        "source": source,
    }
    return orjson.dumps({"errors": [error]})


def throttled_body(retry_after: int) -> bytes:
    """Klaviyo's observed 429 body."""
    unit = "second" if retry_after == 1 else "seconds"
    error = {
        "id": str(uuid.uuid4()),
        "status": 429,
        "code": "throttled",
        "title": "Request was throttled.",
        "detail": f"Request was throttled. Expected available in {retry_after} {unit}.",
        "source": {"pointer": "/data/"},
        "links": {
            "type": "https://developers.klaviyo.com/en/docs/rate_limits_and_error_handling#rate-limits"
        },
        "meta": {},
    }
    return orjson.dumps({"errors": [error]})


@dataclass
class Query:
    """A validated list request."""

    ep: Endpoint
    pairs: list[tuple[str, str]]
    exprs: list[flt.Expr]
    filter_text: str | None
    sort_field: str | None
    descending: bool
    size: int
    cursor: Cursor | None
    includes: list[str]
    fields: list[str] | None
    additional: list[str]
    #: Events served from :meth:`EventStore.serialized` (no per-record filter, shape or include).
    serialized: bool = False
    #: The parent's id of a request to a nested endpoint (``/api/lists/{id}/profiles``).
    parent_id: str | None = None

    @property
    def path(self) -> str:
        """The request's path (a nested endpoint's with its parent's id)."""
        return self.ep.path_for(self.parent_id)


#: Greater than any record id: a sort key ``((3, us), MAX_ID)`` follows every record at ``us``.
MAX_ID = chr(0x10FFFF)


def narrowed(scan: Scan, lo: int | None, hi: int | None) -> Scan:
    """``scan`` (keys ``(norm(value), id)`` of a datetime sort) cut to values in ``[lo, hi)`` µs.

    Only valid when the request's filter requires the sort field in that range (see
    :func:`filters.sort_bounds`): the records skipped are exactly ones the filter rejects, so
    pages and cursors are unchanged; a range inside a large table then costs what it holds.
    """
    first: Key = ((3, lo - 1 if lo is not None else -(2**63)), MAX_ID)
    last: Key = ((3, hi), "") if hi is not None else ((4,), "")

    def scan_range(after: Key | None, ascending: bool) -> Iterator[tuple[Key, Getter]]:
        if ascending:
            start = first if after is None or after < first else after
            for key, get in scan(start, True):
                if key >= last:
                    return
                yield key, get
        else:
            start = last if after is None or after > last else after
            for key, get in scan(start, False):
                if key <= first:
                    return
                yield key, get

    return scan_range


class Api:
    """Serves the 15 list endpoints of one simulator."""

    def __init__(self, sim: KlaviyoSimulator, dataset: Dataset, clock: Callable[[], float]) -> None:
        self.sim = sim
        self.data = dataset
        self.limiter = RateLimiter(clock)
        self.faults = FaultInjector(sim.seed)
        self.stats = Stats()
        self.stats_lock = threading.Lock()
        self.tier_overrides: dict[str, Tier] = {}
        self._latency_rng = random.Random(f"latency:{sim.seed}")

    # -- entry point --------------------------------------------------------------------
    def handle(self, method: str, target: str, headers: Mapping[str, str]) -> Response:
        """Answer one request."""
        split = urlsplit(target)
        path = split.path
        ep, parent_id = route(path) or (None, None)
        self._count("requests", ep.path if ep else path)
        try:
            if ep is None:
                raise ApiError(404, "not_found", "Not found.", f"No route matches {path!r}.")
            if method != "GET":
                raise ApiError(
                    405, "method_not_allowed", "Method not allowed.", f"Method {method!r} not allowed."
                )
            fault = self.faults.pick(ep.path, ep.path_for(parent_id))
            if fault is not None:
                self._count("faults", fault.kind)
                early = self._early_fault(fault)
                if early is not None:
                    return self._finish(early, ep, split.query, headers)
            response = self._serve(ep, parent_id, split.query, target, headers, fault)
        except ApiError as exc:
            response = Response(
                exc.status, error_body(exc.status, exc.code, exc.title, exc.detail, exc.parameter)
            )
        except Exception:  # a simulator bug: say so loudly, as a 500
            traceback.print_exc()
            response = Response(500, error_body(500, "error", ERROR_TITLES[500], "Simulator error."))
        return self._finish(response, ep, split.query, headers)

    def _finish(
        self,
        response: Response,
        ep: Endpoint | None = None,
        query: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        response.headers.setdefault("Content-Type", JSON_API)
        unreported = "RateLimit-Limit" not in response.headers
        if ep is not None and unreported and response.status != 429 and self.sim.rate_limits:
            # As Klaviyo does: every response but a 429 reports the steady window of the key's endpoint.
            auth = (headers or {}).get("Authorization") or (headers or {}).get("authorization") or ""
            key = auth.removeprefix("Klaviyo-API-Key ")
            tier = self._tier(ep, parse_qsl(query, keep_blank_values=True))
            response.headers.update(RateLimiter.headers(self.limiter.state(key, ep.table, tier)))
        with self.stats_lock:
            self.stats.statuses[response.status] = self.stats.statuses.get(response.status, 0) + 1
        return response

    def _count(self, what: str, key: str) -> None:
        with self.stats_lock:
            counter: dict[str, int] = getattr(self.stats, what)
            counter[key] = counter.get(key, 0) + 1

    def _early_fault(self, fault: Fault) -> Response | None:
        if fault.kind in ERROR_STATUSES:
            status = int(fault.kind)
            body = error_body(status, "error", ERROR_TITLES[status], "Injected fault.")
            return Response(status, body, fault=fault)
        if fault.kind == "429":
            with self.stats_lock:
                self.stats.throttled += 1
            retry = int(fault.retry_after)
            return Response(429, throttled_body(retry), {"Retry-After": str(retry)}, fault=fault)
        return None

    # -- checks -------------------------------------------------------------------------
    def _serve(
        self,
        ep: Endpoint,
        parent_id: str | None,
        query: str,
        target: str,
        headers: Mapping[str, str],
        fault: Fault | None,
    ) -> Response:
        sim = self.sim
        auth = headers.get("Authorization") or headers.get("authorization")
        if auth != f"Klaviyo-API-Key {sim.api_key}":
            raise ApiError(
                401,
                "not_authenticated",
                "Authentication credentials were not provided."
                if not auth
                else "Incorrect authentication credentials.",
                "Missing or invalid private key.",
            )
        revision = headers.get("revision")
        if not revision:
            raise ApiError(400, "invalid", "Invalid input.", "The `revision` header is required.", "revision")
        if revision != sim.revision:
            raise ApiError(
                400,
                "invalid",
                "Invalid input.",
                f"Invalid revision {revision!r}: this simulator serves revision {sim.revision}.",
                "revision",
            )
        missing = [scope for scope in ep.scopes if scope not in sim.scopes]
        if missing:
            raise ApiError(
                403,
                "permission_denied",
                "You do not have permission to perform this action.",
                f"This API key is missing required scopes: {', '.join(missing)}",
            )
        pairs = parse_qsl(query, keep_blank_values=True)
        rate_headers: dict[str, str] = {}
        if sim.rate_limits:
            decision = self.limiter.hit(sim.api_key, ep.table, self._tier(ep, pairs))
            if not decision.allowed:
                with self.stats_lock:
                    self.stats.throttled += 1
                retry = str(decision.retry_after)
                return Response(429, throttled_body(decision.retry_after), {"Retry-After": retry})
            rate_headers = RateLimiter.headers(decision)
        q = self._parse(ep, pairs)
        q.parent_id = parent_id
        with self.data.lock:
            page = self._page(q)
            body = self._document(q, page, target, fault)
        with self.stats_lock:
            self.stats.pages += 1
            self.stats.records += len(page.items)
        return Response(200, body, rate_headers, fault=fault, delay=self._latency(len(page.items)))

    def _tier(self, ep: Endpoint, pairs: list[tuple[str, str]]) -> Tier:
        """The limits a request counts against (profiles with predictive analytics have lower ones)."""
        predictive = ep.table in ("profiles", "list-profiles") and any(
            k == "additional-fields[profile]" and "predictive_analytics" in v.split(",") for k, v in pairs
        )
        return self.tier_overrides.get(ep.table) or (PREDICTIVE_TIER if predictive else ep.tier)

    def _latency(self, n: int) -> float:
        factor = float(self.sim.latency)
        if not factor:
            return 0.0
        with self.stats_lock:
            jitter = self._latency_rng.random()
        if self.sim.latency_model is not None:
            base, per_record = self.sim.latency_model  # per-record time jittered by +-50% around its mean
            return factor * (base + n * per_record * (0.5 + jitter))
        return factor * (0.02 + n * (0.00018 + 0.0004 * jitter))

    # -- parameters ---------------------------------------------------------------------
    def _parse(self, ep: Endpoint, pairs: list[tuple[str, str]]) -> Query:
        params: dict[str, str] = {}
        allowed = {"page[cursor]"} if ep.paginated else set()
        if ep.filters:
            allowed.add("filter")
        if ep.sorts:
            allowed.add("sort")
        if ep.page_max is not None:
            allowed.add("page[size]")
        if ep.includes:
            allowed.add("include")
        if ep.additional_fields:
            allowed.add(f"additional-fields[{ep.resource_type}]")
        types = {ep.resource_type} | {INCLUDE_TYPES.get(i, i) for i in ep.includes}
        allowed |= {f"fields[{t}]" for t in types}
        for key, value in pairs:
            if key not in allowed:
                if key == "page[size]":
                    raise bad_request(f"'page[size]' is not a valid parameter for {ep.path}.", key)
                raise bad_request(f"'{key}' is not a valid query parameter for {ep.path}.", key)
            if key in params:
                raise bad_request(f"Parameter '{key}' was given more than once.", key)
            params[key] = value

        size = ep.page_length_default
        if "page[size]" in params:
            raw = params["page[size]"]
            if not raw.isdigit() or not 1 <= int(raw) <= (ep.page_max or 0):
                raise bad_request(
                    f"page[size] must be an integer between 1 and {ep.page_max}, got {raw!r}.", "page[size]"
                )
            size = int(raw)

        exprs: list[flt.Expr] = []
        filter_text = params.get("filter")
        if filter_text is not None:
            try:
                exprs = flt.parse(filter_text)
                flt.validate(exprs, ep)
            except flt.FilterError as exc:
                raise bad_request(str(exc), "filter") from exc
        if ep.hides_archived and not flt.mentions(exprs, "archived"):
            exprs = [*exprs, flt.Compare(EQ, "archived", flt.Value("boolean", False, "false"))]

        sort_field, descending = None, False
        if "sort" in params:
            raw = params["sort"]
            descending = raw.startswith("-")
            sort_field = raw[1:] if descending else raw
            if sort_field not in ep.sorts:
                raise bad_request(f"'{raw}' is not a valid sort field for {ep.path}.", "sort")

        includes: list[str] = []
        if "include" in params:
            includes = [i for i in params["include"].split(",") if i]
            for name in includes:
                if name not in ep.includes:
                    raise bad_request(f"'{name}' is not a valid include for {ep.path}.", "include")

        fields = None
        fields_key = f"fields[{ep.resource_type}]"
        if fields_key in params:
            fields = [f for f in params[fields_key].split(",") if f]
            for name in fields:
                if name != "id" and name.split(".")[0] not in ep.attributes:
                    raise bad_request(
                        f"'{name}' is not a valid field for the resource '{ep.resource_type}'.", fields_key
                    )

        additional: list[str] = []
        additional_key = f"additional-fields[{ep.resource_type}]"
        if additional_key in params:
            additional = [a for a in params[additional_key].split(",") if a]
            for name in additional:
                if name not in ep.additional_fields:
                    raise bad_request(f"'{name}' is not a valid additional field.", additional_key)

        cursor = None
        query_print = fingerprint(filter_text, params.get("sort"))
        if "page[cursor]" in params:
            cursor = Cursor.decode(params["page[cursor]"])
            if cursor is None or cursor.query != query_print:
                raise bad_request("Invalid page cursor.", "page[cursor]")
        return Query(
            ep,
            pairs,
            exprs,
            filter_text,
            sort_field,
            descending,
            size,
            cursor,
            includes,
            fields,
            additional,
        )

    # -- data ---------------------------------------------------------------------------
    def _page(self, q: Query) -> Page:
        ep = q.ep
        if ep.table == "events":
            lo, hi, rest = flt.event_bounds(q.exprs)
            predicate = flt.compile_filter(rest, ep)
            q.serialized = predicate is None and not (q.includes or q.fields or q.additional)
            q.serialized = q.serialized and not ep.additional_fields
            scan = self.data.scanner(ep, "", True, (lo, hi), lazy=q.serialized)
        else:
            predicate = flt.compile_filter(q.exprs, ep)
            if q.sort_field is None:
                sort_path, as_dt = "id", False
            else:
                sort_path = ep.sorts[q.sort_field]
                spec = ep.filters.get(q.sort_field)
                as_dt = q.sort_field in ep.datetime_attributes or (
                    spec is not None and spec.kind == "datetime"
                )
            scan = self._scanner(q, sort_path, as_dt)
            if as_dt:
                lo, hi = flt.sort_bounds(q.exprs, ep, sort_path)
                if lo is not None or hi is not None:
                    scan = narrowed(scan, lo, hi)
        return paginate(scan, predicate, not q.descending, q.size, q.cursor)

    def _scanner(self, q: Query, sort_path: str, as_datetime: bool) -> Scan:
        """A scan over a table, or over one parent's children (404 when there is no such parent)."""
        if q.ep.parent is None:
            return self.data.scanner(q.ep, sort_path, as_datetime, (None, None))
        items = self.data.child_items(q.ep.table, str(q.parent_id))
        if items is None:
            kind = q.ep.parent.removesuffix("s").replace("-", " ")
            detail = f"A {kind} with id {q.parent_id!r} does not exist."
            raise ApiError(404, "not_found", "Not found.", detail)
        store = TableStore()
        for record, meta in items:
            store.put(record, meta)
        return store.scanner(sort_path, as_datetime)

    def _document(self, q: Query, page: Page, target: str, fault: Fault | None) -> bytes:
        base = self.sim.link_base or self.sim.base_url
        ep = q.ep
        if q.serialized:
            serialized = self.data.events.serialized
            data: list[Any] = [orjson.Fragment(serialized(key[1])) for key, _, _ in page.items]
        else:
            data = [shape(record, ep, q.additional, q.fields) for _, record, _ in page.items]
        query_print = fingerprint(q.filter_text, dict(q.pairs).get("sort"))

        def link(cursor: Cursor | None) -> str | None:
            if cursor is None:
                return None
            pairs = [(k, v) for k, v in q.pairs if k != "page[cursor]"]
            pairs.append(("page[cursor]", cursor.encode()))
            encoded = "&".join(f"{quote(k, safe='')}={quote(v, safe='(),:')}" for k, v in pairs)
            return f"{base}{q.path}/?{encoded}"

        self_link = base + target
        next_link = link(None if page.next_key is None else Cursor("n", page.next_key, query_print))
        prev_link = link(None if page.prev_key is None else Cursor("p", page.prev_key, query_print))
        if fault is not None and fault.kind == "repeat_cursor":
            next_link = self_link
        document: dict[str, Any] = {
            "data": data,
            "links": {"self": self_link, "next": next_link, "prev": prev_link},
        }
        if q.includes:
            document["included"] = self._included(q, [record for _, record, _ in page.items])
        body = orjson.dumps(document)
        return body

    def _included(self, q: Query, records: list[Record]) -> list[Record]:
        out: dict[tuple[str, str], Record] = {}
        data = self.data

        def related(record: Record, name: str) -> list[dict[str, Any]]:
            rel = (record.get("relationships") or {}).get(name) or {}
            value = rel.get("data")
            if isinstance(value, dict):
                return [value]
            return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []

        table_of = {
            "metric": "metrics",
            "profile": "profiles",
            "tag": "tags",
            "campaign": "campaigns",
            "template": "templates",
            "image": "images",
        }
        for record in records:
            for name in q.includes:
                if name == "campaign-messages":
                    for message in data.campaign_messages(str(record["id"])):
                        out[("campaign-message", str(message["id"]))] = message
                    continue
                if name == "variants":
                    variants = data.table("catalog-variants").records.values()
                    for variant in variants:
                        if related(variant, "item") and related(variant, "item")[0].get("id") == record["id"]:
                            out[("catalog-variant", str(variant["id"]))] = variant
                    continue
                for ref in related(record, name):
                    rtype, rid = str(ref.get("type")), str(ref.get("id"))
                    table = table_of.get(rtype)
                    found = data.get(table, rid) if table else None
                    if found is not None:
                        if table in ENDPOINTS:
                            found = shape(found, ENDPOINTS[table], (), None)
                        out[(rtype, rid)] = found
                    elif rtype == "tag-group":
                        attributes = {"name": f"Group {rid}", "exclusive": False, "default": False}
                        out[(rtype, rid)] = {
                            "type": rtype,
                            "id": rid,
                            "attributes": attributes,
                            "links": {"self": f"{API}/api/tag-groups/{rid}/"},
                        }
                    elif rtype == "attribution":
                        out[(rtype, rid)] = {
                            "type": rtype,
                            "id": rid,
                            "relationships": {"event": {"data": {"type": "event", "id": str(record["id"])}}},
                            "links": {"self": f"{API}/api/attributions/{rid}/"},
                        }
        return list(out.values())
