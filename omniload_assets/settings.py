"""Every tunable of the code location in one place: environment variables and their defaults."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime

#: Environment variable -> (default, what it sets). The README's configuration table mirrors this.
ENV_VARS: dict[str, tuple[str | None, str]] = {
    "KLAVIYO_API_KEY": (None, "Klaviyo private API key (pk_...); required"),
    "KLAVIYO_BASE_URL": ("https://a.klaviyo.com", "Klaviyo API base URL (http only on loopback)"),
    "OMNILOAD_START_DATE": ("2022-01-01", "first daily partition (UTC day, YYYY-MM-DD)"),
    "OMNILOAD_DUCKDB_PATH": ("klaviyo.duckdb", "DuckDB file, duckdb:///path URI or md: path"),
    "OMNILOAD_DUCKDB_SCHEMA": ("klaviyo", "DuckDB schema of the tables"),
    "OMNILOAD_DUCKDB_LOCK_TIMEOUT": ("300", "seconds to wait for another writer's file lock"),
    "OMNILOAD_STAGING_DIR": (None, "where extracted batches are staged (default: a temp dir)"),
}


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the variable to fix."""


def env(name: str) -> str | None:
    """The variable's value, or its default."""
    value = os.environ.get(name)
    if value is None or value == "":
        return ENV_VARS[name][0]
    return value


def start_date() -> date:
    """``OMNILOAD_START_DATE`` as a date; a clear error when it is not ``YYYY-MM-DD``."""
    raw = env("OMNILOAD_START_DATE") or "2022-01-01"
    try:
        parsed = date.fromisoformat(raw)
    except ValueError:
        raise SettingsError(
            f"OMNILOAD_START_DATE={raw!r} is not a date; use YYYY-MM-DD, e.g. 2022-01-01"
        ) from None
    if parsed > datetime.now(UTC).date():
        raise SettingsError(f"OMNILOAD_START_DATE={raw!r} is in the future; use a past date")
    return parsed


def duckdb_path() -> str:
    return env("OMNILOAD_DUCKDB_PATH") or "klaviyo.duckdb"


def duckdb_schema() -> str:
    return env("OMNILOAD_DUCKDB_SCHEMA") or "klaviyo"


def lock_timeout_s() -> float:
    raw = env("OMNILOAD_DUCKDB_LOCK_TIMEOUT") or "300"
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"OMNILOAD_DUCKDB_LOCK_TIMEOUT={raw!r} is not a number of seconds") from None
