"""Where and how one set of Klaviyo assets appears in Dagster: key prefix, group, tables, names.

``Layout()`` is this repository's code location as it always was: keys ``klaviyo/<table>``, group
``klaviyo``, every table, the names ``klaviyo_incremental_job``, ``klaviyo_duckdb``... A layout
with another key prefix derives every name from it (``raw/klaviyo``: job
``raw_klaviyo_incremental_job``, IO manager ``raw_klaviyo_duckdb``, checks
``raw_klaviyo_events_checks``), so two sets load side by side in one code location. Settings left
``None`` here are read from the environment (:mod:`omniload_assets.settings`) when used.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date

import dagster as dg

from omniload_assets import settings
from omniload_assets.klaviyo.catalog import TABLES, TableSpec

#: The stem of every default name, and the default key prefix and group.
STEM = "klaviyo"
DEFAULT_PREFIX = (STEM,)
#: The automation a layout can switch on, by their default names.
AUTOMATION_NAMES = settings.AUTOMATION
_NAME_PART = re.compile(r"[A-Za-z0-9_]+", re.ASCII)


def parse_prefix(raw: str | Sequence[str], name: str = "key_prefix") -> tuple[str, ...]:
    """``klaviyo``, ``raw/klaviyo`` or ``["raw", "klaviyo"]`` as key parts; else
    :class:`settings.SettingsError` naming ``name``."""
    parts = raw.split("/") if isinstance(raw, str) else list(raw)
    parts = [str(p).strip() for p in parts]
    if not parts or not all(_NAME_PART.fullmatch(p) for p in parts):
        raise settings.SettingsError(
            f"{name}={raw!r} is not an asset key prefix; use names of letters, digits and _, "
            "separated by / (e.g. klaviyo or raw/klaviyo)"
        )
    return tuple(parts)


@dataclass(frozen=True)
class TableAutomation:
    """One table's overrides of its set's automation; ``None`` keeps the set's choice."""

    #: False: left out of the shared schedules; True: in them even when the set's are off.
    schedule: bool | None = None
    #: False: the change sensor does not probe it; True: probed even when the set's sensor is off.
    sensor: bool | None = None
    #: A UTC cron of the table's own schedule (it leaves the shared one).
    cron: str | None = None
    #: Days before today the table's own schedule reloads (partitioned tables only).
    lookback_days: int | None = None

    def has_own_schedule(self, spec: TableSpec) -> bool:
        """Whether ``spec`` leaves the shared schedule for one of its own (a cron, or a lookback)."""
        return self.cron is not None or (spec.partitioned and self.lookback_days is not None)


@dataclass(frozen=True)
class Automation:
    """What keeps a layout's tables current; ``None`` reads the environment variable named."""

    #: Catalogue names of the tables the jobs, schedules and sensor cover (None: every table).
    tables: tuple[str, ...] | None = None
    schedules: bool = True
    sensor: bool = True
    deletion_sweep: bool = True
    #: Default names (``klaviyo_incremental_schedule``...) that start RUNNING, ``*`` for all
    #: (OMNILOAD_AUTOMATION).
    running: frozenset[str] | None = None
    incremental_cron: str | None = None  # OMNILOAD_SCHEDULE_CRON
    replace_cron: str | None = None  # OMNILOAD_REPLACE_CRON
    sweep_cron: str | None = None  # OMNILOAD_SWEEP_CRON
    lookback_days: int | None = None  # OMNILOAD_LOOKBACK_DAYS
    sensor_interval_s: int | None = None  # OMNILOAD_SENSOR_INTERVAL
    #: Tables the deletion sweep lists (None: OMNILOAD_SWEEP_TABLES, within the covered tables).
    sweep_tables: tuple[str, ...] | None = None
    #: Catalogue name -> that table's overrides (schedule, sensor, cron, lookback).
    per_table: Mapping[str, TableAutomation] = field(default_factory=dict)


@dataclass(frozen=True)
class Layout:
    """One set of Klaviyo assets: its keys, group, tables, owners, tags and the names it derives."""

    prefix: tuple[str, ...] = DEFAULT_PREFIX
    group_name: str = STEM
    tables: tuple[TableSpec, ...] = TABLES
    owners: tuple[str, ...] | None = None  # OMNILOAD_ASSET_OWNERS
    tags: Mapping[str, str] = field(default_factory=dict)
    schema_name: str | None = None  # OMNILOAD_DUCKDB_SCHEMA
    start_date: date | None = None  # OMNILOAD_START_DATE
    automation: Automation = Automation()

    @property
    def is_default(self) -> bool:
        return self.prefix == DEFAULT_PREFIX

    @property
    def stem(self) -> str:
        """The prefix as one name: ``raw/klaviyo`` -> ``raw_klaviyo``."""
        return "_".join(self.prefix)

    def name(self, default: str) -> str:
        """A default name (``klaviyo_incremental_job``) under this layout: itself with the default
        prefix, else with the prefix's stem for its leading ``klaviyo`` (``raw_klaviyo_incremental_job``)."""
        if self.is_default:
            return default
        if default.startswith(STEM):
            return self.stem + default.removeprefix(STEM)
        return f"{self.stem}_{default}"

    def key(self, spec: TableSpec) -> dg.AssetKey:
        return dg.AssetKey([*self.prefix, spec.asset_name])

    def schema(self) -> str:
        return self.schema_name or settings.duckdb_schema()

    def first_partition(self) -> date:
        return self.start_date or settings.start_date()

    def asset_owners(self) -> list[str]:
        return list(self.owners) if self.owners is not None else settings.asset_owners()

    def automated(self) -> list[TableSpec]:
        """The tables the jobs, schedules and sensor cover."""
        wanted = self.automation.tables
        return [t for t in self.tables if wanted is None or t.name in wanted]

    def incremental_tables(self) -> list[TableSpec]:
        """The covered tables that are partitioned (merged by primary key)."""
        return [t for t in self.automated() if t.partitioned]

    def replace_tables(self) -> list[TableSpec]:
        """The covered tables replaced whole on every run."""
        return [t for t in self.automated() if not t.partitioned]

    def table_automation(self, spec: TableSpec) -> TableAutomation:
        """The overrides of ``spec`` (none: the set's choices)."""
        return self.automation.per_table.get(spec.name, TableAutomation())

    def in_shared_schedule(self, spec: TableSpec) -> bool:
        """Whether the shared (incremental or replace) schedule requests ``spec``."""
        own = self.table_automation(spec)
        if own.has_own_schedule(spec):
            return False
        return self.automation.schedules if own.schedule is None else own.schedule

    def shared_incremental_tables(self) -> list[TableSpec]:
        """The partitioned tables the shared incremental schedule requests."""
        return [t for t in self.incremental_tables() if self.in_shared_schedule(t)]

    def shared_replace_tables(self) -> list[TableSpec]:
        """The replace tables the shared replace schedule requests."""
        return [t for t in self.replace_tables() if self.in_shared_schedule(t)]

    def own_schedule_tables(self) -> list[TableSpec]:
        """The covered tables with a schedule of their own (a per-table cron or lookback)."""
        return [t for t in self.automated() if self.table_automation(t).has_own_schedule(t)]

    def sensed_tables(self) -> list[TableSpec]:
        """The partitioned tables the change sensor probes."""
        chosen = self.automation.sensor
        return [
            t
            for t in self.incremental_tables()
            if (chosen if (own := self.table_automation(t).sensor) is None else own)
        ]

    def sweep_tables(self) -> list[str]:
        """The tables the deletion sweep lists: none without it, else the chosen ones among those covered."""
        if not self.automation.deletion_sweep:
            return []
        chosen = self.automation.sweep_tables
        names = settings.sweep_tables() if chosen is None else chosen
        covered = {t.name for t in self.automated()}
        return [name for name in names if name in covered]

    def is_running(self, default_name: str) -> bool:
        """Whether the schedule or sensor of ``default_name`` starts RUNNING."""
        names = self.automation.running
        names = settings.automation_names() if names is None else names
        return "*" in names or default_name.lower() in names
