"""Every settings parser, on any text: a usable value or a one-line SettingsError naming the variable.

Property-based (Hypothesis): the text is arbitrary, or near the valid forms (numbers, sizes, dates,
names), where the edge cases are. "Usable" is checked the way the value is used: DuckDB takes the
memory limit, a lookback gives a date range, freshness hours make a timedelta, Dagster takes the
cron expression and the owners.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import dagster as dg
import duckdb
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from omniload_assets import settings
from omniload_assets.automation import lookback_range
from omniload_assets.klaviyo.catalog import TABLES
from omniload_assets.settings import (
    CHANGE_SENSOR,
    DELETION_SWEEP_SCHEDULE,
    INCREMENTAL_SCHEDULE,
    REPLACE_SCHEDULE,
)
from omniload_assets.warehouse.writer import check_name

TABLE_NAMES = [t.name for t in TABLES] + [t.asset_name for t in TABLES]
AUTOMATION = [INCREMENTAL_SCHEDULE, REPLACE_SCHEDULE, CHANGE_SENSOR, DELETION_SWEEP_SCHEDULE]
MERGE_TABLES = [t.name for t in TABLES if t.strategy == "merge" and t.parent is None]

numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["nan", "-inf", "1e400", "1_000", " 3 ", "3.0", "٣", "0x10", "", "  "]),
)
#: Arbitrary text, near-valid text, and the valid forms with noise around them.
anything = st.one_of(st.text(), st.text(alphabet="0123456789.-eE%kKmMgGtTiIbB ,=:_@"), numbers)


def one_line_naming(exc: settings.SettingsError, variable: str) -> None:
    message = str(exc)
    assert message and "\n" not in message and "\r" not in message
    assert variable in message


def check(parse: Callable[[], Any], variable: str) -> Any | None:
    """``parse()``'s value, or None after checking its SettingsError; any other exception fails."""
    try:
        return parse()
    except settings.SettingsError as exc:
        one_line_naming(exc, variable)
        return None


@given(st.one_of(anything, st.dates().map(date.isoformat), st.dates().map(lambda d: f" {d} ")))
def test_start_date(text: str) -> None:
    value = check(lambda: settings.parse_start_date(text), "OMNILOAD_START_DATE")
    if value is not None:
        assert settings.EARLIEST_START <= value <= datetime.now(UTC).date()


@given(
    st.one_of(
        anything,
        st.builds(
            lambda n, unit: f"{n}{unit}",
            st.one_of(st.integers(0, 10**20).map(str), st.floats(0, 1e20).map(str), st.from_regex(r"\d+")),
            st.sampled_from(["B", "KB", "MB", "gb", "TiB", "%", " MB", "kib", "PB", ""]),
        ),
    )
)
@hypothesis_settings(suppress_health_check=[HealthCheck.too_slow])
def test_memory_limit(text: str) -> None:
    value = check(lambda: settings.parse_memory_limit(text), "OMNILOAD_DUCKDB_MEMORY_LIMIT")
    if value is not None:  # DuckDB takes it
        with duckdb.connect() as conn:
            conn.execute(f"SET memory_limit = '{value}'")


@given(anything)
def test_lock_timeout(text: str) -> None:
    value = check(lambda: settings.parse_lock_timeout(text), "OMNILOAD_DUCKDB_LOCK_TIMEOUT")
    if value is not None:
        assert math.isfinite(value) and value >= 0


@given(
    st.one_of(
        anything,
        st.lists(st.sampled_from([*AUTOMATION, "all", "off", "x", " ", ""]), max_size=4).map(",".join),
        st.sampled_from(AUTOMATION).map(str.upper),
    )
)
def test_automation_names(text: str) -> None:
    value = check(lambda: settings.parse_automation(text), "OMNILOAD_AUTOMATION")
    if value is not None:
        assert value == {"*"} or value <= set(AUTOMATION)


def test_automation_names_take_the_schedules_and_the_sensor() -> None:
    assert settings.parse_automation(f" {CHANGE_SENSOR.upper()} , {REPLACE_SCHEDULE}") == {
        CHANGE_SENSOR,
        REPLACE_SCHEDULE,
    }
    assert settings.parse_automation("ALL") == {"*"} and settings.parse_automation("off") == set()
    assert settings.parse_automation(DELETION_SWEEP_SCHEDULE) == {DELETION_SWEEP_SCHEDULE}
    with pytest.raises(settings.SettingsError, match="'maybe' is not a schedule or sensor; use off, all"):
        settings.parse_automation("maybe")


cron_fields = st.sampled_from(["*", "0", "5", "*/15", "1-5", "61", "a", "", "0,30", "*/0", "L", "?"])


@given(
    st.one_of(
        anything,
        st.lists(cron_fields, min_size=1, max_size=7).map(" ".join),
        st.sampled_from(["@daily", "@hourly", "@yearly", "@reboot", "@ daily"]),
    )
)
@pytest.mark.parametrize(
    "variable", ["OMNILOAD_SCHEDULE_CRON", "OMNILOAD_REPLACE_CRON", "OMNILOAD_SWEEP_CRON"]
)
def test_cron(variable: str, text: str) -> None:
    value = check(lambda: settings.parse_cron(variable, text), variable)
    if value is not None:
        dg.ScheduleDefinition(name="s", cron_schedule=value, job_name="j")  # Dagster takes it


@given(anything)
def test_lookback_days(text: str) -> None:
    name = "OMNILOAD_LOOKBACK_DAYS"
    value = check(
        lambda: settings.parse_whole_number(name, text, 0, settings.MAX_LOOKBACK_DAYS, "days"), name
    )
    if value is not None:
        first, last = lookback_range(datetime.now(UTC), value, settings.EARLIEST_START)
        assert first <= last


@given(anything)
def test_sensor_interval(text: str) -> None:
    name = "OMNILOAD_SENSOR_INTERVAL"
    bounds = (settings.MIN_SENSOR_INTERVAL_S, settings.MAX_SENSOR_INTERVAL_S)
    value = check(lambda: settings.parse_whole_number(name, text, *bounds, "seconds"), name)
    if value is not None:
        assert isinstance(value, int) and bounds[0] <= value <= bounds[1]


freshness_parts = st.one_of(
    numbers,
    st.builds(lambda t, h: f"{t}={h}", st.sampled_from([*TABLE_NAMES, "evnts", "", " events "]), numbers),
)


@given(st.one_of(anything, st.lists(freshness_parts, max_size=4).map(",".join)))
def test_freshness_hours(text: str) -> None:
    value = check(lambda: settings.parse_freshness(text), "OMNILOAD_FRESHNESS_HOURS")
    if value is not None:
        default, per_table = value
        assert set(per_table) <= {t.name for t in TABLES}
        for hours in (default, *per_table.values()):
            assert 0 < hours <= settings.MAX_FRESHNESS_HOURS
            datetime.now(UTC) - timedelta(hours=hours)  # what the check computes


def test_freshness_hours_per_table() -> None:
    assert settings.parse_freshness("12, catalog_items=720 ,events=1.5") == (
        12.0,
        {"catalog-items": 720.0, "events": 1.5},
    )
    with pytest.raises(settings.SettingsError, match="'evnts' is not a table; tables: events, profiles"):
        settings.parse_freshness("evnts=6")


@given(
    st.one_of(
        anything,
        st.lists(st.sampled_from([*TABLE_NAMES, "all", "ALL", "evnts", " ", ""]), max_size=4).map(",".join),
    )
)
def test_sweep_tables(text: str) -> None:
    value = check(lambda: settings.parse_sweep_tables(text), "OMNILOAD_SWEEP_TABLES")
    if value is not None:  # merge tables of the catalogue, in its order, at least one
        assert value and set(value) <= set(MERGE_TABLES)
        assert value == [name for name in MERGE_TABLES if name in value]


def test_sweep_tables_default_to_every_merge_table_but_events() -> None:
    default = settings.parse_sweep_tables(None)
    assert default == [name for name in MERGE_TABLES if name != "events"] == settings.parse_sweep_tables(" ")
    assert settings.parse_sweep_tables("All") == MERGE_TABLES
    assert settings.parse_sweep_tables("catalog_items, Flows") == ["catalog-items", "flows"]
    with pytest.raises(settings.SettingsError, match="tags is replaced whole on every run"):
        settings.parse_sweep_tables("flows,tags")
    with pytest.raises(settings.SettingsError, match="'evnts' is not a table; use all or names"):
        settings.parse_sweep_tables("evnts")


@given(st.one_of(anything, st.sampled_from(["1", "0", "TRUE", " yes ", "off", "2", "y"])))
@pytest.mark.parametrize("variable", ["OMNILOAD_HARD_DELETE", "OMNILOAD_SWEEP_ALLOW_EMPTY"])
def test_flags(variable: str, text: str) -> None:
    value = check(lambda: settings.parse_flag(variable, text), variable)
    if value is not None:
        assert value is (text.strip().lower() in settings.FLAG_ON)
        assert value or text.strip().lower() in settings.FLAG_OFF


owner_parts = st.one_of(
    st.text(max_size=12),
    st.builds(lambda n: f"team:{n}", st.text(max_size=8)),
    st.emails(),
    st.sampled_from(["me@", "@x.io", "team:", "a@b.c", "me@example.com"]),
)


@given(st.one_of(anything, st.lists(owner_parts, max_size=4).map(",".join)))
def test_owners(text: str) -> None:
    value = check(lambda: settings.parse_owners(text), "OMNILOAD_ASSET_OWNERS")
    if value is not None:
        dg.AssetSpec(key="a", owners=value)  # Dagster takes them


@given(st.one_of(anything, st.sampled_from(["in_process", "MULTIPROCESS", " in-process ", "threads"])))
def test_executor(text: str) -> None:
    value = check(lambda: settings.parse_executor(text), "OMNILOAD_EXECUTOR")
    if value is not None:
        assert value in settings.EXECUTORS


@given(anything)
def test_schema(text: str) -> None:
    value = check(lambda: settings.parse_schema(text), "OMNILOAD_DUCKDB_SCHEMA")
    if value is not None:  # the writer takes it
        assert value.strip() and value.isprintable() and check_name(value, "schema") == value


@given(st.one_of(st.text(max_size=40), st.from_regex(r"~[a-z0-9]{0,4}(/[a-z]{0,3})?", fullmatch=True)))
def test_staging_dir(text: str) -> None:
    value = check(lambda: settings.parse_staging_dir(text), "OMNILOAD_STAGING_DIR")
    if value is not None:
        assert value.strip()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OMNILOAD_START_DATE", "2024-02-30"),
        ("OMNILOAD_DUCKDB_SCHEMA", "\t"),
        ("OMNILOAD_DUCKDB_LOCK_TIMEOUT", "nan"),
        ("OMNILOAD_DUCKDB_MEMORY_LIMIT", "1MB"),
        ("OMNILOAD_AUTOMATION", "maybe"),
        ("OMNILOAD_SCHEDULE_CRON", "hourly"),
        ("OMNILOAD_REPLACE_CRON", "hourly"),
        ("OMNILOAD_LOOKBACK_DAYS", "inf"),
        ("OMNILOAD_SENSOR_INTERVAL", "nan"),
        ("OMNILOAD_FRESHNESS_HOURS", "1e400"),
        ("OMNILOAD_EXECUTOR", "threads"),
        ("OMNILOAD_ASSET_OWNERS", "me@"),
        ("OMNILOAD_STAGING_DIR", "/dev/null"),
        ("OMNILOAD_DUCKDB_PATH", "/"),
        ("OMNILOAD_SWEEP_TABLES", "tags"),
        ("OMNILOAD_SWEEP_CRON", "daily"),
        ("OMNILOAD_HARD_DELETE", "maybe"),
        ("OMNILOAD_SWEEP_ALLOW_EMPTY", "2"),
    ],
)
def test_each_variable_is_read_through_its_parser(monkeypatch, name: str, value: str) -> None:
    """The functions the code location calls read the environment and refuse what the parsers refuse."""
    for other in settings.VALIDATORS:
        monkeypatch.delenv(other, raising=False)
    settings.validate_all()  # the defaults are valid
    monkeypatch.setenv(name, value)
    with pytest.raises(settings.SettingsError) as caught:
        settings.VALIDATORS[name]()
    one_line_naming(caught.value, name)
    with pytest.raises(settings.SettingsError) as caught:
        settings.validate_all()
    one_line_naming(caught.value, name)
