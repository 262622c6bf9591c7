"""Every tunable of the code location in one place: environment variables and their defaults."""

from __future__ import annotations

import math
import os
import re
from datetime import UTC, date, datetime

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
    "OMNILOAD_AUTOMATION": ("off", "schedules/sensors running from the start: off, all, or names (a,b)"),
    "OMNILOAD_SCHEDULE_CRON": ("0 * * * *", "cron (UTC) of the incremental schedule: hourly"),
    "OMNILOAD_LOOKBACK_DAYS": ("3", "days before today the incremental schedule re-materializes"),
    "OMNILOAD_REPLACE_CRON": ("0 3 * * *", "cron (UTC) of the replace tables' refresh: daily"),
    "OMNILOAD_SENSOR_INTERVAL": ("300", "seconds between the change sensor's ticks"),
    "OMNILOAD_FRESHNESS_HOURS": ("48", "freshness check's max age, hours; per table: 48,metrics=720"),
    "OMNILOAD_EXECUTOR": (
        "in_process",
        "how a run's steps execute: in_process (one process, tables one after another) or multiprocess",
    ),
    "OMNILOAD_ASSET_OWNERS": (None, "owners of the 15 assets, comma-separated: team:data,me@example.com"),
}


#: The earliest ``OMNILOAD_START_DATE`` accepted (Klaviyo was founded in 2012).
EARLIEST_START = date(2012, 1, 1)
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_MEMORY_SIZE = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[kmgt]i?b|b|%)", re.IGNORECASE)
_MEMORY_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_MEMORY_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})
#: The smallest ``OMNILOAD_DUCKDB_MEMORY_LIMIT`` accepted: less fails merges instead of spilling.
MIN_MEMORY_LIMIT_BYTES = 64 * 10**6


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
    raw = env_str("OMNILOAD_START_DATE").strip()
    try:
        if not _ISO_DATE.fullmatch(raw):
            raise ValueError(raw)
        parsed = date.fromisoformat(raw)
    except ValueError:
        raise SettingsError(
            f"OMNILOAD_START_DATE={raw!r} is not a date; use YYYY-MM-DD, e.g. 2022-01-01"
        ) from None
    if parsed > datetime.now(UTC).date():
        raise SettingsError(f"OMNILOAD_START_DATE={raw!r} is in the future; use a past date")
    if parsed < EARLIEST_START:
        # Klaviyo has no data that old, and each day is a partition: keep the set small.
        raise SettingsError(
            f"OMNILOAD_START_DATE={raw!r} is before {EARLIEST_START.isoformat()}; use the day your "
            "Klaviyo account's data starts, e.g. 2022-01-01"
        )
    return parsed


def duckdb_path() -> str:
    return env_str("OMNILOAD_DUCKDB_PATH")


def duckdb_schema() -> str:
    return env_str("OMNILOAD_DUCKDB_SCHEMA")


def lock_timeout_s() -> float:
    """``OMNILOAD_DUCKDB_LOCK_TIMEOUT``: a finite, non-negative number of seconds."""
    raw = env_str("OMNILOAD_DUCKDB_LOCK_TIMEOUT")
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
    return f"{match['number']}{match['unit'].upper().replace('I', 'i')}"


def duckdb_memory_limit() -> str | None:
    """``OMNILOAD_DUCKDB_MEMORY_LIMIT``: DuckDB's ``memory_limit`` for writes; None (set empty or to
    ``none``) leaves DuckDB's default. Unset, it is 150MB."""
    name = "OMNILOAD_DUCKDB_MEMORY_LIMIT"
    raw = os.environ.get(name)
    return parse_memory_limit(ENV_VARS[name][0] if raw is None else raw, name)


def _number(name: str, minimum: float) -> float:
    raw = env_str(name)
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r} must be at least {minimum:g}")
    return value


def automation_names() -> frozenset[str]:
    """Names of the schedules/sensors that start RUNNING (``OMNILOAD_AUTOMATION``); ``*`` means all."""
    raw = env_str("OMNILOAD_AUTOMATION").strip().lower()
    if raw in {"", "off", "none", "false", "0", "no"}:
        return frozenset()
    if raw in {"all", "on", "true", "1", "yes"}:
        return frozenset({"*"})
    return frozenset(n.strip() for n in raw.split(",") if n.strip())


def schedule_cron() -> str:
    return env_str("OMNILOAD_SCHEDULE_CRON")


def replace_cron() -> str:
    return env_str("OMNILOAD_REPLACE_CRON")


def lookback_days() -> int:
    return int(_number("OMNILOAD_LOOKBACK_DAYS", 0))


def sensor_interval_s() -> int:
    return int(_number("OMNILOAD_SENSOR_INTERVAL", 30))


def freshness_max_age_hours(table: str) -> float:
    """``OMNILOAD_FRESHNESS_HOURS`` for ``table``: ``48`` for all, ``48,events=6,metrics=720`` per table."""
    raw = env_str("OMNILOAD_FRESHNESS_HOURS")
    default, per_table = str(ENV_VARS["OMNILOAD_FRESHNESS_HOURS"][0]), {}
    for part in (p.strip() for p in raw.split(",") if p.strip()):
        name, sep, hours = part.partition("=")
        if sep:
            per_table[name.strip().replace("_", "-")] = hours.strip()
        else:
            default = part
    value = per_table.get(table.replace("_", "-"), default)
    try:
        parsed = float(value)
    except ValueError:
        raise SettingsError(
            f"OMNILOAD_FRESHNESS_HOURS={raw!r}: {value!r} is not a number of hours; "
            "use e.g. 48 or 48,events=6,metrics=720"
        ) from None
    if parsed <= 0:
        raise SettingsError(f"OMNILOAD_FRESHNESS_HOURS={raw!r}: hours must be positive")
    return parsed


EXECUTORS = ("in_process", "multiprocess")


def executor_name() -> str:
    """``OMNILOAD_EXECUTOR``: ``in_process`` or ``multiprocess``."""
    value = env_str("OMNILOAD_EXECUTOR").strip().lower().replace("-", "_")
    if value not in EXECUTORS:
        raise SettingsError(f"OMNILOAD_EXECUTOR={value!r} is not one of {', '.join(EXECUTORS)}")
    return value


def asset_owners() -> list[str]:
    """``OMNILOAD_ASSET_OWNERS`` as a list: Dagster owners are emails or ``team:<name>``."""
    owners = [o.strip() for o in (env("OMNILOAD_ASSET_OWNERS") or "").split(",") if o.strip()]
    for owner in owners:
        if not (owner.startswith("team:") or "@" in owner):
            raise SettingsError(
                f"OMNILOAD_ASSET_OWNERS: {owner!r} is not an owner; use an email or team:<name>"
            )
    return owners
