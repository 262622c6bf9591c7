"""The factory of a set of Klaviyo assets: ``klaviyo_definitions(KlaviyoOptions(...))``.

Everything the code location holds (assets, checks, jobs, schedules, the change sensor, resources)
is built from one :class:`KlaviyoOptions`. An option left unset falls back on its environment
variable (:mod:`omniload_assets.settings`), so ``klaviyo_definitions()`` is this repository's
default code location, and ``OMNILOAD_TABLES`` selects its tables. The same options are the YAML
schema of :class:`omniload_assets.component.KlaviyoComponent`.

Every option is checked before anything is built; a bad one fails with one line naming it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import dagster as dg
from pydantic import BaseModel, ConfigDict, Field

from omniload_assets import settings
from omniload_assets.assets import IO_MANAGER_KEY, KLAVIYO_KEY, build_assets
from omniload_assets.automation import build_jobs, build_schedules
from omniload_assets.checks import build_checks
from omniload_assets.deletions import SWEEP_RESOURCE, DeletionSweepResource
from omniload_assets.klaviyo.catalog import get_table
from omniload_assets.klaviyo.client import DEFAULT_BASE_URL
from omniload_assets.klaviyo.resource import KlaviyoResource
from omniload_assets.klaviyo.sweep import sweepable
from omniload_assets.layout import AUTOMATION_NAMES, STEM, Automation, Layout, TableAutomation, parse_prefix
from omniload_assets.sensors import build_sensors
from omniload_assets.settings import SettingsError
from omniload_assets.warehouse.io_manager import KlaviyoDuckDBIOManager

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
_GROUP_NAME = re.compile(r"[A-Za-z0-9_]+", re.ASCII)


class TableAutomationOptions(BaseModel):
    """One table's overrides of its set's automation; unset keeps the set's choice."""

    model_config = ConfigDict(extra="forbid")

    schedule: bool | None = Field(
        default=None, description="false: left out of the shared schedules; true: in them even when off."
    )
    sensor: bool | None = Field(
        default=None, description="false: the change sensor does not probe it; true: probed even when off."
    )
    cron: str | None = Field(
        default=None, description="UTC cron of the table's own schedule (it leaves the shared one)."
    )
    lookback_days: int | None = Field(
        default=None,
        description="Days before today its own schedule reloads (partitioned tables only; it leaves "
        "the shared schedule).",
    )


class AutomationOptions(BaseModel):
    """The jobs, schedules and change sensor of a set of Klaviyo assets."""

    model_config = ConfigDict(extra="forbid")

    tables: list[str] | None = Field(
        default=None,
        description="Tables the jobs, schedules and sensor cover (catalogue names); unset: every "
        "table loaded. The others are materialized by hand only.",
    )
    schedules: bool = Field(default=True, description="Build the incremental and replace schedules.")
    sensor: bool = Field(default=True, description="Build the change sensor.")
    deletion_sweep: bool = Field(default=True, description="Build the deletion sweep job and schedule.")
    running: bool | list[str] | None = Field(
        default=None,
        description="Start the schedules and sensor RUNNING: true, false, or names (incremental_schedule, "
        "replace_schedule, change_sensor, deletion_sweep_schedule); unset: OMNILOAD_AUTOMATION.",
    )
    incremental_cron: str | None = Field(default=None, description="UTC cron; unset: OMNILOAD_SCHEDULE_CRON.")
    replace_cron: str | None = Field(default=None, description="UTC cron; unset: OMNILOAD_REPLACE_CRON.")
    sweep_cron: str | None = Field(default=None, description="UTC cron; unset: OMNILOAD_SWEEP_CRON.")
    lookback_days: int | None = Field(
        default=None,
        description="Days before today each incremental run reloads; unset: OMNILOAD_LOOKBACK_DAYS.",
    )
    sensor_interval_s: int | None = Field(
        default=None, description="Seconds between the sensor's ticks; unset: OMNILOAD_SENSOR_INTERVAL."
    )
    sweep_tables: list[str] | None = Field(
        default=None, description="Tables the deletion sweep lists; unset: OMNILOAD_SWEEP_TABLES."
    )
    per_table: dict[str, TableAutomationOptions] = Field(
        default_factory=dict,
        description="Per table (catalogue name): schedule and sensor on or off, its own cron and "
        "lookback_days (a schedule of its own).",
    )


class KlaviyoOptions(BaseModel):
    """What a set of Klaviyo assets loads, where, and how it appears in Dagster."""

    model_config = ConfigDict(extra="forbid")

    tables: list[str] | None = Field(
        default=None,
        description="Catalogue names (events, profiles, list-profiles or list_profiles...); a child "
        "table needs its parent. Unset: OMNILOAD_TABLES, else all 20.",
    )
    key_prefix: str | list[str] = Field(
        default=STEM, description="Asset key prefix: klaviyo, raw/klaviyo or [raw, klaviyo]."
    )
    group_name: str = Field(default=STEM, description="Asset group of the tables.")
    database: str | None = Field(
        default=None, description="DuckDB file, duckdb:///path or md:database; unset: OMNILOAD_DUCKDB_PATH."
    )
    schema_name: str | None = Field(
        default=None, description="DuckDB schema of the tables; unset: OMNILOAD_DUCKDB_SCHEMA."
    )
    start_date: str | None = Field(
        default=None, description="First daily partition (YYYY-MM-DD); unset: OMNILOAD_START_DATE."
    )
    owners: list[str] | None = Field(
        default=None, description="Asset owners (emails, team:name); unset: OMNILOAD_ASSET_OWNERS."
    )
    tags: dict[str, str] = Field(default_factory=dict, description="Tags added to every asset.")
    api_key_env_var: str = Field(
        default="KLAVIYO_API_KEY", description="Environment variable holding the Klaviyo private API key."
    )
    base_url: str | None = Field(default=None, description="Klaviyo API base URL; unset: KLAVIYO_BASE_URL.")
    predictive_analytics: bool = Field(
        default=False, description="Also load profiles' predictive analytics (a slower rate limit)."
    )
    automation: AutomationOptions = Field(default_factory=AutomationOptions)

    def overridden_variables(self) -> set[str]:
        """The environment variables these options set instead (left out of ``validate_all``)."""
        chosen = self.automation
        pairs = {
            "OMNILOAD_TABLES": self.tables,
            "OMNILOAD_DUCKDB_PATH": self.database,
            "OMNILOAD_DUCKDB_SCHEMA": self.schema_name,
            "OMNILOAD_START_DATE": self.start_date,
            "OMNILOAD_ASSET_OWNERS": self.owners,
            "OMNILOAD_AUTOMATION": chosen.running,
            "OMNILOAD_SCHEDULE_CRON": chosen.incremental_cron,
            "OMNILOAD_REPLACE_CRON": chosen.replace_cron,
            "OMNILOAD_SWEEP_CRON": chosen.sweep_cron,
            "OMNILOAD_LOOKBACK_DAYS": chosen.lookback_days,
            "OMNILOAD_SENSOR_INTERVAL": chosen.sensor_interval_s,
            "OMNILOAD_SWEEP_TABLES": chosen.sweep_tables,
        }
        return {name for name, value in pairs.items() if value is not None}


def _tables(names: Sequence[str], label: str) -> tuple[str, ...]:
    return tuple(settings.parse_tables(names, f"{label}={list(names)!r}", label))


def _running(raw: bool | list[str] | None, stem: str) -> frozenset[str] | None:
    """``running`` as default names (``klaviyo_change_sensor``), ``*`` for all; None: unset."""
    if raw is None or isinstance(raw, bool):
        return None if raw is None else frozenset({"*"} if raw else ())
    kinds = [name.removeprefix(STEM + "_") for name in AUTOMATION_NAMES]
    found = set()
    for name in raw:
        kind = name.strip().lower().removeprefix(stem.lower() + "_").removeprefix(STEM + "_")
        if kind not in kinds:
            raise SettingsError(
                f"automation.running: {name!r} is not a schedule or sensor; use true, false or names "
                f"from: {', '.join(kinds)}"
            )
        found.add(f"{STEM}_{kind}")
    return frozenset(found)


def _sweep_tables(raw: list[str] | None, covered: Sequence[str]) -> tuple[str, ...] | None:
    if raw is None:
        return None
    names = _tables(raw, "automation.sweep_tables")
    for name in names:
        if name not in covered or not sweepable(get_table(name)):
            raise SettingsError(
                f"automation.sweep_tables: {name} is not a merge table the automation covers; use "
                f"names from: {', '.join(n for n in covered if sweepable(get_table(n)))}"
            )
    return names


def _table_automation(name: str, raw: TableAutomationOptions) -> TableAutomation:
    """The overrides of table ``name`` checked (one-line :class:`SettingsError` naming the option)."""
    label = f"automation.per_table.{name}"
    spec = get_table(name)
    if raw.lookback_days is not None and not spec.partitioned:
        raise SettingsError(
            f"{label}.lookback_days: {name} is replaced whole, so it has no lookback; use cron"
        )
    if raw.lookback_days is not None:
        settings.parse_whole_number(
            f"{label}.lookback_days", str(raw.lookback_days), 0, settings.MAX_LOOKBACK_DAYS, "days", "3"
        )
    cron = None if raw.cron is None else settings.parse_cron(f"{label}.cron", raw.cron, example="0 * * * *")
    if raw.schedule is False and (cron is not None or raw.lookback_days is not None):
        raise SettingsError(f"{label}: schedule is false, so it takes no cron or lookback_days")
    if raw.sensor and not spec.partitioned:
        raise SettingsError(
            f"{label}.sensor: {name} is replaced whole; the change sensor watches partitioned tables"
        )
    return TableAutomation(raw.schedule, raw.sensor, cron, raw.lookback_days)


def _per_table(raw: dict[str, TableAutomationOptions], covered: Sequence[str]) -> dict[str, TableAutomation]:
    """``automation.per_table`` by catalogue name (``list_profiles`` or ``list-profiles``), checked."""
    found: dict[str, TableAutomation] = {}
    for given, options in raw.items():
        name = given.strip().lower().replace("_", "-")
        if name not in covered:
            raise SettingsError(
                f"automation.per_table: {given!r} is not a table the automation covers; use names from: "
                f"{', '.join(covered)}"
            )
        if name in found:
            raise SettingsError(f"automation.per_table: {name} is given twice")
        found[name] = _table_automation(name, options)
    return found


def resolve_automation(options: AutomationOptions, tables: Sequence[str], stem: str) -> Automation:
    """The automation of ``options`` checked, for a layout of ``tables`` (names)."""
    covered = tables if options.tables is None else _tables(options.tables, "automation.tables")
    outside = [name for name in covered if name not in tables]
    if outside:
        raise SettingsError(
            f"automation.tables: {outside[0]} is not one of the tables loaded ({', '.join(tables)})"
        )
    crons = {
        field: settings.parse_cron(f"automation.{field}", value, example="0 * * * *")
        for field in ("incremental_cron", "replace_cron", "sweep_cron")
        if (value := getattr(options, field)) is not None
    }
    lookback, interval = options.lookback_days, options.sensor_interval_s
    if lookback is not None:
        settings.parse_whole_number(
            "automation.lookback_days", str(lookback), 0, settings.MAX_LOOKBACK_DAYS, "days", "3"
        )
    if interval is not None:
        limits = (settings.MIN_SENSOR_INTERVAL_S, settings.MAX_SENSOR_INTERVAL_S)
        settings.parse_whole_number("automation.sensor_interval_s", str(interval), *limits, "seconds", "300")
    return Automation(
        tables=None if options.tables is None else tuple(covered),
        schedules=options.schedules,
        sensor=options.sensor,
        deletion_sweep=options.deletion_sweep,
        running=_running(options.running, stem),
        lookback_days=lookback,
        sensor_interval_s=interval,
        sweep_tables=_sweep_tables(options.sweep_tables, covered),
        per_table=_per_table(options.per_table, covered),
        **crons,
    )


def _check_tags(tags: dict[str, str]) -> None:
    try:  # Dagster's public check: an asset must take them as tags
        dg.AssetSpec(key="omniload_tags_check", tags=tags)
    except dg.DagsterInvalidDefinitionError as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), str(exc))
        raise SettingsError(f"tags={tags!r} are not asset tags: {first.strip()}") from None


def resolve_layout(options: KlaviyoOptions) -> Layout:
    """The :class:`Layout` of ``options``, every option checked (one-line :class:`SettingsError`)."""
    prefix = parse_prefix(options.key_prefix)
    if not _GROUP_NAME.fullmatch(options.group_name):
        raise SettingsError(
            f"group_name={options.group_name!r} is not a group name; use letters, digits and _"
        )
    names = _tables(options.tables, "tables") if options.tables is not None else settings.selected_tables()
    specs = tuple(get_table(n) for n in names) if names is not None else Layout().tables
    _check_tags(options.tags)
    owners = (
        None if options.owners is None else tuple(settings.parse_owners(",".join(options.owners), "owners"))
    )
    return Layout(
        prefix=prefix,
        group_name=options.group_name,
        tables=specs,
        owners=owners,
        tags=dict(options.tags),
        schema_name=None
        if options.schema_name is None
        else settings.parse_schema(options.schema_name, "schema_name"),
        start_date=None
        if options.start_date is None
        else settings.parse_start_date(options.start_date, "start_date"),
        automation=resolve_automation(options.automation, [s.name for s in specs], "_".join(prefix)),
    )


def build_resources(
    options: KlaviyoOptions | None = None,
) -> dict[str, dg.ConfigurableResource | dg.ConfigurableIOManagerFactory]:
    """The Klaviyo account, the DuckDB IO manager and the sweep's options, under the keys of the
    options' key prefix; what the options leave unset comes from the environment (``settings``)."""
    options = options or KlaviyoOptions()
    names = Layout(prefix=parse_prefix(options.key_prefix))
    if not _ENV_NAME.fullmatch(options.api_key_env_var):
        raise SettingsError(
            f"api_key_env_var={options.api_key_env_var!r} is not an environment variable name"
        )
    klaviyo: dict[str, Any] = {"api_key": dg.EnvVar(options.api_key_env_var)}
    klaviyo["base_url"] = options.base_url or settings.env("KLAVIYO_BASE_URL") or DEFAULT_BASE_URL
    if options.predictive_analytics:
        klaviyo["predictive_analytics"] = True
    database = settings.duckdb_path() if options.database is None else options.database
    if options.database is not None:
        settings.parse_duckdb_path(options.database, "database")
    return {
        names.name(KLAVIYO_KEY): KlaviyoResource(**klaviyo),
        names.name(IO_MANAGER_KEY): KlaviyoDuckDBIOManager(
            database=database,
            schema=options.schema_name or settings.duckdb_schema(),
            lock_timeout_s=settings.lock_timeout_s(),
            memory_limit=settings.duckdb_memory_limit(),
        ),
        names.name(SWEEP_RESOURCE): DeletionSweepResource(
            hard_delete=settings.hard_delete(), allow_empty=settings.sweep_allow_empty()
        ),
    }


def klaviyo_definitions(options: KlaviyoOptions | None = None) -> dg.Definitions:
    """The assets, checks, jobs, schedules, change sensor and resources of ``options`` (default:
    this repository's code location, configured from the environment).

    Every option, and every ``OMNILOAD_*`` variable an option does not replace, is checked first:
    a bad one fails with one line naming it. Two sets with different key prefixes merge into one
    ``dg.Definitions`` (their job, schedule, sensor, check and resource names differ).
    """
    options = options or KlaviyoOptions()
    settings.validate_all(skip=options.overridden_variables())
    layout = resolve_layout(options)
    resources = build_resources(options)
    jobs = build_jobs(layout)
    return dg.Definitions(
        assets=build_assets(layout),
        asset_checks=build_checks(layout),
        jobs=jobs.all(),
        schedules=build_schedules(jobs, layout),
        sensors=build_sensors(jobs.incremental, layout),
        resources=resources,
    )
