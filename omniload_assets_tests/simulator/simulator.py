"""``KlaviyoSimulator``: the public face — lifecycle, ground truth, mutations, faults, limits."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from .api import Api, Stats
from .dataset import Dataset
from .endpoints import ALL_SCOPES, ENDPOINTS, REVISION, Tier
from .faults import Fault
from .nested import NESTED, any_endpoint
from .server import SimulatorServer

DEFAULT_START = datetime(2024, 1, 1, tzinfo=UTC)
DEFAULT_END = datetime(2024, 2, 1, tzinfo=UTC)


class KlaviyoSimulator:
    """A faithful local stand-in for Klaviyo's REST API (revision 2026-10-15), over real HTTP.

    ``scale`` maps table names to record counts (``{"events": 1_000_000, "profiles": 50_000}``)
    and child tables to the most children of one parent (``{"list-profiles": 5_000}``, default
    250 members a list or segment, 2 messages a campaign, 5 actions a flow, 2 messages an action);
    ``latency`` is False, True or a multiplier of realistic serving time (``latency_model``, seconds
    a request plus seconds a record, replaces the default 0.02 s + 0.38 ms a record); ``clock`` (seconds, like
    ``time.time``) drives the rate-limit windows. ``scopes`` and ``api_key`` may be reassigned
    while running.
    """

    def __init__(
        self,
        seed: int = 0,
        api_key: str = "pk_test_simulator",
        revision: str = REVISION,
        scale: Mapping[str, int] | None = None,
        rate_limits: bool = True,
        latency: bool | float = False,
        latency_model: tuple[float, float] | None = None,
        start: datetime = DEFAULT_START,
        end: datetime = DEFAULT_END,
        *,
        scopes: Iterable[str] | None = None,
        clock: Callable[[], float] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if revision != REVISION:
            raise ValueError(f"the simulator implements revision {REVISION} only, not {revision!r}")
        self.seed = seed
        self.api_key = api_key
        self.revision = revision
        self.rate_limits = rate_limits
        self.latency: float = float(latency)
        self.latency_model = latency_model
        self.scopes: set[str] = set(ALL_SCOPES if scopes is None else scopes)
        self.start_time = start
        self.end_time = end
        self.host = host
        self.port = port
        self._data = Dataset(seed, start, end, dict(scale) if scale else None)
        self._api = Api(self, self._data, clock or time.time)
        self._server: SimulatorServer | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None
        #: Base of the ``links`` URLs in pages (default: the simulator's own); another host tests
        #: that a client never follows a link off the API's host.
        self.link_base: str | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> str:
        """Start serving on a background thread; returns the base URL (``http://127.0.0.1:N``)."""
        if self._server is not None:
            return self.base_url
        server = SimulatorServer((self.host, self.port), self._api)
        self._server = server
        port = server.server_address[1]
        self._base_url = f"http://{self.host}:{port}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="klaviyo-sim", daemon=True
        )
        self._thread.start()
        return self._base_url

    def stop(self) -> None:
        """Stop serving and close every connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stopping.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> KlaviyoSimulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` once started."""
        if self._base_url is None:
            raise RuntimeError("the simulator is not started")
        return self._base_url

    def warm(self, processes: int = 1) -> None:
        """Build every record now and keep events serialized, so serving costs little CPU.

        For benchmarks: building an event costs far more than sending it, and a simulator that
        builds 58 pages of 1,000 events a second would measure itself, not the client. Holds about
        1.2 KB per event. Call before :meth:`start`; ``processes`` > 1 builds events in forked workers.
        """
        if self._server is not None:
            raise RuntimeError("warm() the simulator before start()")
        with self._data.lock:
            for table in ENDPOINTS:
                if table != "events":
                    self._data.table(table)
            self._data.events.warm(processes)

    @property
    def counts(self) -> dict[str, int]:
        """Generated record counts per table (before mutations)."""
        return dict(self._data.counts)

    # -- ground truth -------------------------------------------------------------------
    def records(self, table: str, additional_fields: Collection[str] = ()) -> list[dict[str, Any]]:
        """Every current resource object of ``table`` (archived included), deep-copied.

        Shaped as a request without sparse fieldsets would get them: attributes behind
        ``additional-fields`` (profiles' subscriptions / predictive_analytics, templates'
        definition) only when named in ``additional_fields``. ``"campaign-messages"``,
        ``"flow-actions"`` and ``"flow-messages"`` give every parent's children;
        ``"list-profiles"`` and ``"segment-profiles"`` the members as served (a profile with
        ``joined_group_at``), once for each list or segment. For events at scale this builds every
        event: mind the memory.
        """
        return self._data.records(table, additional_fields)

    def ids(self, table: str, start: datetime | None = None, end: datetime | None = None) -> set[str]:
        """Ids whose incremental key lies in ``[start, end)``; tables without one give all ids, as
        do nested tables (``list-profiles`` and ``segment-profiles``: ``<parent id>:<profile id>``,
        the key of a membership row)."""
        return self._data.ids(table, start, end)

    def members(self, kind: str) -> set[tuple[str, str]]:
        """Every membership now: ``(list id, profile id)`` for ``kind`` ``"lists"``, ``(segment id,
        profile id)`` for ``"segments"``."""
        return self._data.members(kind)

    def children(self, table: str) -> set[tuple[str, str]]:
        """Every ``(parent id, child id)`` now of ``"campaign-messages"`` (campaign, message),
        ``"flow-actions"`` (flow, action) or ``"flow-messages"`` (action, message)."""
        return self._data.children(table)

    def campaign_channels(self) -> dict[str, str]:
        """Campaign id -> channel (``email``, ``sms``, ``mobile_push``)."""
        return self._data.campaign_channels()

    # -- changes ------------------------------------------------------------------------
    def mutate(
        self, table: str, updated: int = 5, added: int = 5, at: datetime | None = None
    ) -> dict[str, list[str]]:
        """Update ``updated`` records (one attribute changed, incremental key set to ``at``) and
        add ``added`` new ones keyed at ``at`` (default: updates keep their key, additions get
        ``end``). Returns ``{"updated": [ids], "added": [ids]}``."""
        return self._data.mutate(table, updated, added, at)

    def add_record(self, table: str, record: dict[str, Any]) -> None:
        """Add or replace (by id) a resource object; attributes may hold anything (drift). A child
        (``flow-actions``...) goes under the parent its relationship (``flow``...) names."""
        self._data.add_record(table, record)

    def set_attribute(self, table: str, id: str, name: str, value: Any) -> None:  # noqa: A002
        """Set ``attributes[name]`` of record ``id`` to any JSON value, new names included."""
        self._data.set_attribute(table, id, name, value)

    def delete_record(self, table: str, id: str) -> bool:  # noqa: A002
        """Remove a record, as a hard delete upstream would: a list or segment with its
        memberships, a campaign with its messages, a flow with its actions, an action with its
        messages; a deleted profile leaves every list and segment."""
        return self._data.delete_record(table, id)

    def add_member(
        self, kind: str, parent_id: str, profile_id: str, joined_at: datetime | None = None
    ) -> None:
        """Put profile ``profile_id`` on list (``kind="lists"``) or segment (``"segments"``)
        ``parent_id``, joined at ``joined_at`` (default: the simulated ``end``; an existing member
        keeps its join time unless one is given). Unknown ids raise ``KeyError``."""
        self._data.add_member(kind, parent_id, profile_id, joined_at)

    def remove_member(self, kind: str, parent_id: str, profile_id: str) -> bool:
        """Take a profile off a list or segment; False if it was not on it."""
        return self._data.remove_member(kind, parent_id, profile_id)

    # -- faults, limits, stats ----------------------------------------------------------
    def set_fault(
        self,
        kind: str,
        rate: float = 1.0,
        count: int | None = None,
        path: str | None = None,
        *,
        retry_after: int = 1,
        seconds: float = 30.0,
        malformed: bool = False,
        after: int = 0,
    ) -> Fault:
        """Arm a fault and return it (its ``fired`` event says when it first struck):
        ``500``/``502``/``503``/``504``, ``429`` (``retry_after``), ``slow`` (stall ``seconds``),
        ``drop`` (close mid-body), ``truncate`` (short body, or complete but ``malformed`` JSON),
        ``repeat_cursor`` (``links.next`` = this page again).

        ``rate``: probability per matching request (seeded); ``count``: only the next N matching
        requests; ``path``: only that endpoint (``/api/events`` or ``events``; a nested one by name,
        template ``/api/lists/{id}/profiles`` or one parent's path ``/api/lists/Y6nRLr/profiles``);
        ``after``: let that many matching requests through first (a fault mid-run).
        """
        if path is not None and not path.startswith("/"):
            path = any_endpoint(path).path
        elif path is not None:
            path = path.rstrip("/")
        fault = Fault(kind, rate, count, path, retry_after, seconds, malformed, after)
        self._api.faults.add(fault)
        return fault

    def clear_faults(self) -> None:
        """Disarm every fault."""
        self._api.faults.clear()

    def set_rate_limit(self, table: str, burst: int, steady: int) -> None:
        """Override one endpoint's limits (per second / per minute), nested ones included."""
        self._api.tier_overrides[any_endpoint(table).table] = Tier("custom", burst, steady)

    def reset_rate_limits(self) -> None:
        """Drop overrides and forget the requests counted so far."""
        self._api.tier_overrides.clear()
        self._api.limiter.reset()

    @property
    def stats(self) -> Stats:
        """A snapshot of the counters: ``requests`` per path, ``statuses``, ``faults`` per kind,
        ``throttled`` (429s sent), ``pages`` (200 list pages served), ``records`` served."""
        with self._api.stats_lock:
            return self._api.stats.copy()

    def reset_stats(self) -> None:
        """Zero the counters."""
        with self._api.stats_lock:
            self._api.stats = Stats()

    @staticmethod
    def tables() -> list[str]:
        """The 15 table names."""
        return list(ENDPOINTS)

    @staticmethod
    def nested_tables() -> list[str]:
        """The 5 nested (child) tables: ``list-profiles``, ``segment-profiles``,
        ``campaign-messages``, ``flow-actions``, ``flow-messages``."""
        return list(NESTED)
