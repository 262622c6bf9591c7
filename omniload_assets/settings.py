"""Every tunable of the code location in one place: environment variables and their defaults."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, date, datetime
from pathlib import Path

#: Environment variable -> (default, what it sets). The README's configuration table mirrors this.
ENV_VARS: dict[str, tuple[str | None, str]] = {
    "KLAVIYO_API_KEY": (None, "Klaviyo private API key (pk_...); required"),
    "KLAVIYO_BASE_URL": ("https://a.klaviyo.com", "Klaviyo API base URL (http only on loopback)"),
    "OMNILOAD_START_DATE": ("2022-01-01", "first daily partition (UTC day, YYYY-MM-DD)"),
    "OMNILOAD_DUCKDB_PATH": ("klaviyo.duckdb", "DuckDB file, duckdb:///path URI or md: path"),
    "OMNILOAD_DUCKDB_SCHEMA": ("klaviyo", "DuckDB schema of the tables"),
    "OMNILOAD_DUCKDB_LOCK_TIMEOUT": ("300", "seconds to wait for another writer's file lock"),
    "OMNILOAD_DUCKDB_MEMORY_LIMIT": (
        "150MB",
        "DuckDB memory_limit of a write, spilling to disk beyond it (e.g. 1GB; none: 80% of RAM)",
    ),
    "OMNILOAD_STAGING_DIR": (None, "where extracted batches are staged (default: a temp dir)"),
    "OMNILOAD_TABLES": (
        None,
        "tables of the code location, comma-separated catalogue names (events,profiles); unset: all 20",
    ),
    "OMNILOAD_AUTOMATION": ("off", "schedules/sensors running from the start: off, all, or names (a,b)"),
    "OMNILOAD_SCHEDULE_CRON": ("0 * * * *", "cron (UTC) of the incremental schedule: hourly"),
    "OMNILOAD_LOOKBACK_DAYS": ("3", "days before today the incremental schedule re-materializes"),
    "OMNILOAD_REPLACE_CRON": ("0 3 * * *", "cron (UTC) of the replace tables' refresh: daily"),
    "OMNILOAD_SENSOR_INTERVAL": ("300", "seconds between the change sensor's ticks"),
    "OMNILOAD_FRESHNESS_HOURS": (
        "48",
        "freshness policy: hours since the last load; per table: 48,metrics=720",
    ),
    "OMNILOAD_EXECUTOR": (
        "in_process",
        "how a run's steps execute: in_process (one process, tables one after another) or multiprocess",
    ),
    "OMNILOAD_ASSET_OWNERS": (None, "owners of the assets, comma-separated: team:data,me@example.com"),
    "OMNILOAD_SWEEP_TABLES": (
        None,
        "tables the deletion sweep lists: names (a,b) or all; unset: every merge table but events",
    ),
    "OMNILOAD_SWEEP_CRON": ("0 4 * * *", "cron (UTC) of the deletion sweep's schedule: daily"),
    "OMNILOAD_HARD_DELETE": (
        "0",
        "1: the deletion sweep deletes rows gone from Klaviyo (0: sets _deleted_at)",
    ),
    "OMNILOAD_SWEEP_ALLOW_EMPTY": (
        "0",
        "1: a sweep may mark every row of a table Klaviyo lists empty (0: refused as suspicious)",
    ),
    "OMNILOAD_CHECKPOINT_EVERY_S": (
        "300",
        "seconds between a long run's checkpoints (its complete days merged; 0: as soon as a day completes)",
    ),
    "OMNILOAD_CHECKPOINT_MAX_AGE_H": (
        "24",
        "hours a failed run's checkpoints are resumed from; older: ignored",
    ),
}


#: The earliest ``OMNILOAD_START_DATE`` accepted (Klaviyo was founded in 2012).
EARLIEST_START = date(2012, 1, 1)
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_MEMORY_SIZE = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[kmgt]i?b|b|%)", re.IGNORECASE | re.ASCII)
_MEMORY_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_MEMORY_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})
#: The smallest ``OMNILOAD_DUCKDB_MEMORY_LIMIT`` accepted: less fails merges instead of spilling.
MIN_MEMORY_LIMIT_BYTES = 64 * 10**6
#: The largest: DuckDB refuses sizes far beyond any machine's memory.
MAX_MEMORY_LIMIT_BYTES = 10**15
#: ``OMNILOAD_AUTOMATION`` values that switch nothing on, and those that switch everything on.
AUTOMATION_OFF = frozenset({"", "off", "none", "false", "0", "no"})
AUTOMATION_ALL = frozenset({"all", "on", "true", "1", "yes"})
#: Spellings of a yes/no setting (``OMNILOAD_HARD_DELETE``, ``OMNILOAD_SWEEP_ALLOW_EMPTY``).
FLAG_ON = frozenset({"1", "true", "yes", "on"})
FLAG_OFF = frozenset({"", "0", "false", "no", "off"})
#: Bounds of the whole-number settings: beyond them dates and timedeltas overflow.
MAX_LOOKBACK_DAYS = 36_500
MIN_SENSOR_INTERVAL_S, MAX_SENSOR_INTERVAL_S = 30, 7 * 86_400
MAX_FRESHNESS_HOURS = 87_600.0
MAX_CHECKPOINT_EVERY_S = 86_400
MAX_CHECKPOINT_AGE_H = 24 * 365


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the variable to fix."""


def env(name: str) -> str | None:
    """The variable's value, or its default."""
    value = os.environ.get(name)
    if value is None or value == "":
        return ENV_VARS[name][0]
    return value


def env_str(name: str) -> str:
    """``env`` for a variable that has a default (in ``ENV_VARS``), so never ``None``."""
    value = env(name)
    assert value is not None, f"{name} has no default in ENV_VARS"
    return value


def start_date() -> date:
    """``OMNILOAD_START_DATE`` as a date; a clear error when it is not ``YYYY-MM-DD``."""
    return parse_start_date(env_str("OMNILOAD_START_DATE"))


def parse_start_date(text: str, name: str = "OMNILOAD_START_DATE") -> date:
    """A past ``YYYY-MM-DD`` from 2012-01-01 on; else :class:`SettingsError` naming ``name``."""
    raw = text.strip()
    try:
        if not _ISO_DATE.fullmatch(raw):
            raise ValueError(raw)
        parsed = date.fromisoformat(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a date; use YYYY-MM-DD, e.g. 2022-01-01") from None
    if parsed > datetime.now(UTC).date():
        raise SettingsError(f"{name}={raw!r} is in the future; use a past date")
    if parsed < EARLIEST_START:
        # Klaviyo has no data that old, and each day is a partition: keep the set small.
        raise SettingsError(
            f"{name}={raw!r} is before {EARLIEST_START.isoformat()}; use the day your "
            "Klaviyo account's data starts, e.g. 2022-01-01"
        )
    return parsed


def duckdb_path() -> str:
    return env_str("OMNILOAD_DUCKDB_PATH")


def check_duckdb_path() -> str:
    """``OMNILOAD_DUCKDB_PATH`` checked as a write would use it (``connection.check_writable``)."""
    return parse_duckdb_path(duckdb_path())


def parse_duckdb_path(raw: str, name: str = "OMNILOAD_DUCKDB_PATH") -> str:
    """A DuckDB database a write can use; else :class:`SettingsError` naming ``name``."""
    from omniload_assets.warehouse.connection import WarehouseError, check_writable, show_database

    if "://" in raw and not raw.strip().startswith("duckdb://"):
        raise SettingsError(
            f"{name}={show_database(raw)!r} is not a DuckDB database; use a file path, "
            "duckdb:///path/to/file.duckdb or md:database"
        )
    try:
        return check_writable(raw, setting=name)
    except WarehouseError as exc:
        raise SettingsError(_one_line(str(exc))) from None


def duckdb_schema() -> str:
    """``OMNILOAD_DUCKDB_SCHEMA``: a schema name (printable, not blank, no ``.``, at most 63 characters)."""
    return parse_schema(env_str("OMNILOAD_DUCKDB_SCHEMA"))


def parse_schema(raw: str, name: str = "OMNILOAD_DUCKDB_SCHEMA") -> str:
    """A name the writer can use (``writer.check_name``), else :class:`SettingsError` naming ``name``."""
    from omniload_assets.warehouse.writer import TableNameError, check_name

    try:
        return check_name(raw, "schema")
    except TableNameError as exc:
        raise SettingsError(f"{name}={_shown(raw)} is not a schema name: {_one_line(str(exc))}") from None


def staging_dir() -> str | None:
    """``OMNILOAD_STAGING_DIR`` (None: unset, the system temp dir), checked without creating it."""
    raw = env("OMNILOAD_STAGING_DIR")
    return None if raw is None else parse_staging_dir(raw)


def parse_staging_dir(raw: str) -> str:
    """A directory that exists or can be created, and is writable; else :class:`SettingsError`."""
    fix = "set OMNILOAD_STAGING_DIR to a writable directory, or unset it to stage in the system temp dir"
    if not raw.strip() or "\x00" in raw:
        raise SettingsError(f"OMNILOAD_STAGING_DIR={raw!r} is blank or holds a NUL; {fix}")
    try:
        path = Path(os.path.expanduser(raw))  # ~user left as it is when there is no such user
        probe = path  # the nearest existing ancestor: what `mkdir -p` would create the rest in
        while not os.path.lexists(probe) and probe.parent != probe:
            probe = probe.parent
        if not probe.is_dir():
            what = "is not a directory" if probe == path else f"cannot be created: {probe} is not a directory"
            raise SettingsError(f"OMNILOAD_STAGING_DIR={raw!r} {what}; {fix}")
        if not os.access(probe, os.W_OK | os.X_OK):
            where = "" if probe == path else f" (nor is {probe}, where it would be created)"
            raise SettingsError(f"OMNILOAD_STAGING_DIR={raw!r} is not writable{where}; {fix}")
    except OSError as exc:
        raise SettingsError(
            f"OMNILOAD_STAGING_DIR={raw!r} cannot be used ({exc.strerror or exc}); {fix}"
        ) from None
    return str(path)


def lock_timeout_s() -> float:
    """``OMNILOAD_DUCKDB_LOCK_TIMEOUT``: a finite, non-negative number of seconds."""
    return parse_lock_timeout(env_str("OMNILOAD_DUCKDB_LOCK_TIMEOUT"))


def parse_lock_timeout(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise SettingsError(f"OMNILOAD_DUCKDB_LOCK_TIMEOUT={raw!r} is not a number of seconds; use e.g. 300")
    return value


def parse_memory_limit(raw: str | None, name: str = "OMNILOAD_DUCKDB_MEMORY_LIMIT") -> str | None:
    """A DuckDB ``memory_limit`` such as ``512MB``, ``2GiB`` or ``25%`` (of RAM), or None (empty or
    ``none``: DuckDB's default). Raises :class:`SettingsError` naming ``name`` when ``raw`` is no size,
    is below 64MB or is not a percentage from 1 to 100.
    """
    text = (raw or "").strip()
    if text.lower() in {"", "none", "default"}:
        return None
    match = _MEMORY_SIZE.fullmatch(text)
    if match is None:
        raise SettingsError(
            f"{name}={raw!r} is not a memory size; use e.g. 512MB or 2GB, or none for DuckDB's default"
        )
    if match["unit"] == "%":
        if not 1 <= float(match["number"]) <= 100:
            raise SettingsError(f"{name}={raw!r} is not a percentage of RAM from 1 to 100; use e.g. 25%")
        return f"{match['number']}%"
    size = float(match["number"]) * _MEMORY_UNITS[match["unit"].lower()]
    if size < MIN_MEMORY_LIMIT_BYTES:
        raise SettingsError(f"{name}={raw!r} is below 64MB, too little for a merge; use e.g. 512MB")
    if size > MAX_MEMORY_LIMIT_BYTES:
        raise SettingsError(f"{name}={raw!r} is more than 1PB, beyond any machine; use e.g. 512MB")
    return f"{match['number']}{match['unit'].upper().replace('I', 'i')}"


def duckdb_memory_limit() -> str | None:
    """``OMNILOAD_DUCKDB_MEMORY_LIMIT``: DuckDB's ``memory_limit`` for writes; None (set empty or to
    ``none``) leaves DuckDB's default. Unset, it is 150MB."""
    name = "OMNILOAD_DUCKDB_MEMORY_LIMIT"
    raw = os.environ.get(name)
    return parse_memory_limit(ENV_VARS[name][0] if raw is None else raw, name)


def parse_whole_number(
    name: str, raw: str, minimum: int, maximum: int, unit: str, example: str | None = None
) -> int:
    """A whole number (``3`` or ``3.0``) from ``minimum`` to ``maximum``, else :class:`SettingsError`
    naming ``name`` (an example value: ``example``, else the variable's default)."""
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value.is_integer() and minimum <= value <= maximum):
        raise SettingsError(
            f"{name}={raw!r} is not a whole number of {unit} from {minimum} to {maximum}; "
            f"use e.g. {example or ENV_VARS[name][0]}"
        )
    return int(value)


#: The schedules and sensors ``OMNILOAD_AUTOMATION`` can switch on (``automation.py`` builds them).
INCREMENTAL_SCHEDULE = "klaviyo_incremental_schedule"
REPLACE_SCHEDULE = "klaviyo_replace_schedule"
CHANGE_SENSOR = "klaviyo_change_sensor"
DELETION_SWEEP_SCHEDULE = "klaviyo_deletion_sweep_schedule"
AUTOMATION = (INCREMENTAL_SCHEDULE, REPLACE_SCHEDULE, CHANGE_SENSOR, DELETION_SWEEP_SCHEDULE)


def automation_names() -> frozenset[str]:
    """Names of the schedules/sensors that start RUNNING (``OMNILOAD_AUTOMATION``); ``*`` means all."""
    return parse_automation(env_str("OMNILOAD_AUTOMATION"))


def parse_automation(raw: str) -> frozenset[str]:
    """``off``, ``all`` or names of this code location's schedules and sensors (``a,b``); else
    :class:`SettingsError` listing the names."""
    text = raw.strip().lower()
    if text in AUTOMATION_OFF:
        return frozenset()
    if text in AUTOMATION_ALL:
        return frozenset({"*"})
    valid = AUTOMATION
    names = frozenset(n.strip() for n in text.split(",") if n.strip())
    unknown = sorted(names - set(valid)) or ([] if names else [text])
    if unknown:
        raise SettingsError(
            f"OMNILOAD_AUTOMATION={raw!r}: {unknown[0]!r} is not a schedule or sensor; use off, all, "
            f"or names separated by commas from: {', '.join(valid)}"
        )
    return names


def schedule_cron() -> str:
    return parse_cron("OMNILOAD_SCHEDULE_CRON", env_str("OMNILOAD_SCHEDULE_CRON"))


def replace_cron() -> str:
    return parse_cron("OMNILOAD_REPLACE_CRON", env_str("OMNILOAD_REPLACE_CRON"))


def sweep_cron() -> str:
    return parse_cron("OMNILOAD_SWEEP_CRON", env_str("OMNILOAD_SWEEP_CRON"))


def parse_cron(name: str, raw: str, example: str | None = None) -> str:
    """A cron expression Dagster schedules accept (``0 * * * *``, ``@daily``), else :class:`SettingsError`
    naming ``name`` (an example: ``example``, else the variable's default)."""
    import dagster as dg

    cron = raw.strip()
    try:  # Dagster's public check: a schedule on it must be definable
        dg.ScheduleDefinition(name="omniload_cron_check", cron_schedule=cron, job_name="omniload_cron_check")
        valid = True
    except Exception:  # an invalid definition, or the cron parser's own errors on odd text
        valid = False
    if not valid:
        raise SettingsError(f"{name}={raw!r} is not a cron expression, e.g. {example or ENV_VARS[name][0]!r}")
    return cron


def lookback_days() -> int:
    raw = env_str("OMNILOAD_LOOKBACK_DAYS")
    return parse_whole_number("OMNILOAD_LOOKBACK_DAYS", raw, 0, MAX_LOOKBACK_DAYS, "days")


def sensor_interval_s() -> int:
    raw = env_str("OMNILOAD_SENSOR_INTERVAL")
    return parse_whole_number(
        "OMNILOAD_SENSOR_INTERVAL", raw, MIN_SENSOR_INTERVAL_S, MAX_SENSOR_INTERVAL_S, "seconds"
    )


def checkpoint_every_s() -> int:
    """``OMNILOAD_CHECKPOINT_EVERY_S``: seconds between a long run's checkpoints."""
    raw = env_str("OMNILOAD_CHECKPOINT_EVERY_S")
    return parse_whole_number("OMNILOAD_CHECKPOINT_EVERY_S", raw, 0, MAX_CHECKPOINT_EVERY_S, "seconds")


def checkpoint_max_age_h() -> int:
    """``OMNILOAD_CHECKPOINT_MAX_AGE_H``: hours a failed run's checkpoints stay worth resuming from."""
    raw = env_str("OMNILOAD_CHECKPOINT_MAX_AGE_H")
    return parse_whole_number("OMNILOAD_CHECKPOINT_MAX_AGE_H", raw, 0, MAX_CHECKPOINT_AGE_H, "hours")


def freshness_max_age_hours(table: str) -> float:
    """``OMNILOAD_FRESHNESS_HOURS`` for ``table``: ``48`` for all, ``48,events=6,metrics=720`` per table."""
    default, per_table = parse_freshness(env_str("OMNILOAD_FRESHNESS_HOURS"))
    return per_table.get(table.replace("_", "-"), default)


def parse_freshness(raw: str) -> tuple[float, dict[str, float]]:
    """``48`` or ``48,events=6,metrics=720`` -> (hours of every table, hours by table name); else
    :class:`SettingsError` (hours from >0 to 87600, tables of the catalogue)."""
    from omniload_assets.klaviyo.catalog import TABLES

    names = [t.name for t in TABLES]
    default, per_table = float(str(ENV_VARS["OMNILOAD_FRESHNESS_HOURS"][0])), {}
    for part in (p.strip() for p in raw.split(",") if p.strip()):
        name, sep, hours = part.partition("=")
        table = name.strip().replace("_", "-")
        if sep and table not in names:
            raise SettingsError(
                f"OMNILOAD_FRESHNESS_HOURS={raw!r}: {name.strip()!r} is not a table; "
                f"tables: {', '.join(names)}"
            )
        value = _hours(raw, hours if sep else part)
        if sep:
            per_table[table] = value
        else:
            default = value
    return default, per_table


def _hours(raw: str, text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= MAX_FRESHNESS_HOURS):
        raise SettingsError(
            f"OMNILOAD_FRESHNESS_HOURS={raw!r}: {text.strip()!r} is not a number of hours above 0 and up "
            f"to {MAX_FRESHNESS_HOURS:g}; use e.g. 48 or 48,events=6,metrics=720"
        )
    return value


EXECUTORS = ("in_process", "multiprocess")


def executor_name() -> str:
    """``OMNILOAD_EXECUTOR``: ``in_process`` or ``multiprocess``."""
    return parse_executor(env_str("OMNILOAD_EXECUTOR"))


def parse_executor(raw: str) -> str:
    value = raw.strip().lower().replace("-", "_")
    if value not in EXECUTORS:
        raise SettingsError(f"OMNILOAD_EXECUTOR={raw!r} is not one of {', '.join(EXECUTORS)}")
    return value


def asset_owners() -> list[str]:
    """``OMNILOAD_ASSET_OWNERS`` as a list: Dagster owners are emails or ``team:<name>``."""
    return parse_owners(env("OMNILOAD_ASSET_OWNERS") or "")


def parse_owners(raw: str, name: str = "OMNILOAD_ASSET_OWNERS") -> list[str]:
    """Comma-separated owners, each one Dagster takes (an email or ``team:<name>``); else
    :class:`SettingsError` naming ``name``."""
    import dagster as dg

    owners = [o.strip() for o in raw.split(",") if o.strip()]
    for owner in owners:
        try:  # Dagster's public check: an asset must take it as an owner
            dg.AssetSpec(key="omniload_owner_check", owners=[owner])
            valid = True
        except dg.DagsterInvalidDefinitionError:
            valid = False
        if not valid:
            raise SettingsError(f"{name}: {owner!r} is not an owner; use an email or team:<name>")
    return owners


def sweep_tables() -> list[str]:
    """``OMNILOAD_SWEEP_TABLES``: the catalogue names of the tables the deletion sweep lists."""
    return parse_sweep_tables(env("OMNILOAD_SWEEP_TABLES"))


def parse_sweep_tables(raw: str | None) -> list[str]:
    """``all``, or merge tables by name (``flows,catalog_items``), in catalogue order; unset or empty:
    every merge table but events (a sweep of events lists the whole account's events). Else
    :class:`SettingsError` naming the tables it takes."""
    from omniload_assets.klaviyo.catalog import TABLES
    from omniload_assets.klaviyo.sweep import sweepable

    merge = [t.name for t in TABLES if sweepable(t)]
    text = (raw or "").strip().lower()
    if not text:
        return [name for name in merge if name != "events"]
    if text == "all":
        return merge
    wanted = {part.strip().replace("_", "-") for part in text.split(",") if part.strip()}
    replaced = sorted(t.name for t in TABLES if t.name in wanted and not sweepable(t))
    if replaced:
        raise SettingsError(
            f"OMNILOAD_SWEEP_TABLES={_shown(raw or '')}: {replaced[0]} is replaced whole on every run, so "
            f"it has no deleted rows to find; use all or names from: {', '.join(merge)}"
        )
    unknown = sorted(wanted - set(merge)) or ([] if wanted else [text])
    if unknown:
        raise SettingsError(
            f"OMNILOAD_SWEEP_TABLES={_shown(raw or '')}: {unknown[0]!r} is not a table; use all or names "
            f"separated by commas from: {', '.join(merge)}"
        )
    return [name for name in merge if name in wanted]


def selected_tables() -> list[str] | None:
    """``OMNILOAD_TABLES``: the catalogue names of the tables the code location loads, in catalogue
    order; None when unset, empty or ``all`` (every table)."""
    raw = env("OMNILOAD_TABLES")
    text = (raw or "").strip()
    if not text or text.lower() == "all":
        return None
    return parse_tables(text.split(","), f"OMNILOAD_TABLES={_shown(text)}", "OMNILOAD_TABLES")


def parse_tables(names: Sequence[str], label: str, where: str) -> list[str]:
    """Catalogue names (``list-profiles`` or ``list_profiles``) in catalogue order, each child table
    with its parent; else :class:`SettingsError` starting with ``label`` and saying what to add to
    ``where``."""
    from omniload_assets.klaviyo.catalog import TABLES

    catalogue = [t.name for t in TABLES]
    wanted = {n.strip().lower().replace("_", "-") for n in names if n.strip()}
    if not wanted:
        raise SettingsError(f"{label} names no table; use names from: {', '.join(catalogue)}")
    unknown = sorted(wanted - set(catalogue))
    if unknown:
        raise SettingsError(f"{label}: {unknown[0]!r} is not a table; use names from: {', '.join(catalogue)}")
    for spec in TABLES:
        if spec.name in wanted and spec.parent is not None and spec.parent not in wanted:
            raise SettingsError(
                f"{label}: {spec.name} is read per {spec.parent} id, so it needs its parent table: "
                f"add {spec.parent} to {where}"
            )
    return [name for name in catalogue if name in wanted]


def flag(name: str) -> bool:
    """A yes/no variable (``OMNILOAD_HARD_DELETE``, ``OMNILOAD_SWEEP_ALLOW_EMPTY``)."""
    return parse_flag(name, env_str(name))


def parse_flag(name: str, raw: str) -> bool:
    """``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off`` (any case); else
    :class:`SettingsError` naming ``name``."""
    text = raw.strip().lower()
    if text in FLAG_ON:
        return True
    if text in FLAG_OFF:
        return False
    raise SettingsError(f"{name}={_shown(raw)} is not 1 or 0 (also true/false, yes/no, on/off)")


def hard_delete() -> bool:
    """``OMNILOAD_HARD_DELETE``: the deletion sweep deletes gone rows instead of marking them."""
    return flag("OMNILOAD_HARD_DELETE")


def sweep_allow_empty() -> bool:
    """``OMNILOAD_SWEEP_ALLOW_EMPTY``: an empty listing of a table holding rows may mark them all."""
    return flag("OMNILOAD_SWEEP_ALLOW_EMPTY")


def _shown(raw: str, limit: int = 80) -> str:
    """``raw`` quoted for a one-line message, cut short when long."""
    return repr(raw if len(raw) <= limit else raw[: limit - 3] + "...")


def _one_line(text: str) -> str:
    """``text`` with its line breaks (if any) as spaces."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


#: How each ``OMNILOAD_*`` variable is checked when the definitions load (``KLAVIYO_*``: the resource).
VALIDATORS: dict[str, Callable[[], object]] = {
    "OMNILOAD_START_DATE": start_date,
    "OMNILOAD_DUCKDB_PATH": check_duckdb_path,
    "OMNILOAD_DUCKDB_SCHEMA": duckdb_schema,
    "OMNILOAD_DUCKDB_LOCK_TIMEOUT": lock_timeout_s,
    "OMNILOAD_DUCKDB_MEMORY_LIMIT": duckdb_memory_limit,
    "OMNILOAD_STAGING_DIR": staging_dir,
    "OMNILOAD_TABLES": selected_tables,
    "OMNILOAD_AUTOMATION": automation_names,
    "OMNILOAD_SCHEDULE_CRON": schedule_cron,
    "OMNILOAD_LOOKBACK_DAYS": lookback_days,
    "OMNILOAD_REPLACE_CRON": replace_cron,
    "OMNILOAD_SENSOR_INTERVAL": sensor_interval_s,
    "OMNILOAD_FRESHNESS_HOURS": lambda: parse_freshness(env_str("OMNILOAD_FRESHNESS_HOURS")),
    "OMNILOAD_EXECUTOR": executor_name,
    "OMNILOAD_ASSET_OWNERS": asset_owners,
    "OMNILOAD_SWEEP_TABLES": sweep_tables,
    "OMNILOAD_SWEEP_CRON": sweep_cron,
    "OMNILOAD_HARD_DELETE": hard_delete,
    "OMNILOAD_SWEEP_ALLOW_EMPTY": sweep_allow_empty,
    "OMNILOAD_CHECKPOINT_EVERY_S": checkpoint_every_s,
    "OMNILOAD_CHECKPOINT_MAX_AGE_H": checkpoint_max_age_h,
}


def validate_all(skip: Collection[str] = ()) -> None:
    """Check every ``OMNILOAD_*`` variable but those in ``skip`` (set by other means); one
    :class:`SettingsError` whose line names each bad one."""
    problems = []
    for name, check in VALIDATORS.items():
        if name in skip:
            continue
        try:
            check()
        except SettingsError as exc:
            problems.append(_one_line(str(exc)))
    if problems:
        raise SettingsError("; ".join(problems))
