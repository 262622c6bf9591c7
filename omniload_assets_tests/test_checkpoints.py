"""The committed-stretch and deferral records, in real DuckDB files."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest

from omniload_assets.klaviyo.windows import TimeWindow
from omniload_assets.warehouse.checkpoints import (
    CHECKPOINTS_TABLE,
    DEFERRALS_TABLE,
    CommittedStretch,
    Deferral,
    active_deferrals,
    clear_deferral,
    clear_stretches,
    committed_stretches,
    defer,
    format_instant,
    record_stretches,
)
from omniload_assets.warehouse.reads import table_exists

SCHEMA = "klaviyo"
T0 = datetime(2024, 1, 1, tzinfo=UTC)
REQUESTED = TimeWindow(T0, T0 + timedelta(days=10))
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


def day(n: int) -> datetime:
    return T0 + timedelta(days=n)


def days(a: int, b: int) -> TimeWindow:
    return TimeWindow(day(a), day(b))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "warehouse.duckdb"


@pytest.fixture
def conn(path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    with duckdb.connect(str(path)) as c:
        yield c


def reopen(path: Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection: what another process (a schedule, a new pod) sees after commit."""
    return duckdb.connect(str(path), read_only=True)


def test_stretches_round_trip_through_the_file(conn, path: Path) -> None:
    at = datetime(2024, 2, 1, 12, 30, 15, 123456, tzinfo=UTC)
    # Recorded out of order, with a microsecond bound: returned sorted and exact.
    odd = TimeWindow(day(5), day(7) + timedelta(microseconds=1))
    record_stretches(conn, SCHEMA, "events", REQUESTED, [odd, days(0, 2)], "run-1", now=at)
    record_stretches(conn, SCHEMA, "events", REQUESTED, [days(2, 5)], "run-2", now=at + timedelta(hours=1))
    conn.close()
    with reopen(path) as ro:
        found = committed_stretches(ro, SCHEMA, "events", REQUESTED, newer_than=LONG_AGO)
    assert found == [
        CommittedStretch(days(0, 2), "run-1", at),
        CommittedStretch(days(2, 5), "run-2", at + timedelta(hours=1)),
        CommittedStretch(odd, "run-1", at),
    ]
    assert all(s.window.start.tzinfo == UTC and s.committed_at.tzinfo == UTC for s in found)


def test_only_exactly_the_requested_range_of_the_table_is_returned(conn) -> None:
    record_stretches(conn, SCHEMA, "events", REQUESTED, [days(0, 3)], "run-1")
    record_stretches(conn, SCHEMA, "events", days(0, 5), [days(0, 5)], "run-2")  # same start, other end
    record_stretches(conn, SCHEMA, "events", days(1, 10), [days(1, 4)], "run-3")  # same end, other start
    record_stretches(conn, SCHEMA, "profiles", REQUESTED, [days(0, 10)], "run-4")
    found = committed_stretches(conn, SCHEMA, "events", REQUESTED, newer_than=LONG_AGO)
    assert [(s.window, s.run_id) for s in found] == [(days(0, 3), "run-1")]
    # The same instants in another offset are the same range.
    plus_two = timezone(timedelta(hours=2))
    shifted = TimeWindow(REQUESTED.start.astimezone(plus_two), REQUESTED.end.astimezone(plus_two))
    assert committed_stretches(conn, SCHEMA, "events", shifted, newer_than=LONG_AGO) == found


def test_stretches_older_than_the_limit_are_left_out(conn) -> None:
    old, new = datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 8, tzinfo=UTC)
    record_stretches(conn, SCHEMA, "events", REQUESTED, [days(0, 1)], "old", now=old)
    record_stretches(conn, SCHEMA, "events", REQUESTED, [days(1, 2)], "new", now=new)

    def runs(limit: datetime) -> list[str]:
        found = committed_stretches(conn, SCHEMA, "events", REQUESTED, newer_than=limit)
        return [s.run_id for s in found]

    assert runs(old - timedelta(seconds=1)) == ["old", "new"]
    assert runs(old) == ["new"]  # strictly after
    assert runs(new) == []


def test_clear_forgets_one_range_of_one_table(conn) -> None:
    record_stretches(conn, SCHEMA, "events", REQUESTED, [days(0, 1), days(1, 2)], "run-1")
    record_stretches(conn, SCHEMA, "events", days(0, 5), [days(0, 5)], "run-2")
    record_stretches(conn, SCHEMA, "profiles", REQUESTED, [days(0, 1)], "run-3")
    assert clear_stretches(conn, SCHEMA, "events", REQUESTED) == 2
    assert committed_stretches(conn, SCHEMA, "events", REQUESTED, newer_than=LONG_AGO) == []
    assert len(committed_stretches(conn, SCHEMA, "events", days(0, 5), newer_than=LONG_AGO)) == 1
    assert len(committed_stretches(conn, SCHEMA, "profiles", REQUESTED, newer_than=LONG_AGO)) == 1
    assert clear_stretches(conn, SCHEMA, "events", REQUESTED) == 0


def test_absent_tables_read_empty_and_reads_create_nothing(conn, path: Path) -> None:
    assert committed_stretches(conn, SCHEMA, "events", REQUESTED, newer_than=LONG_AGO) == []
    assert clear_stretches(conn, SCHEMA, "events", REQUESTED) == 0
    assert active_deferrals(conn, SCHEMA, T0) == {}
    clear_deferral(conn, SCHEMA, "events")
    record_stretches(conn, SCHEMA, "events", REQUESTED, [], "run-1")  # nothing to record
    assert not table_exists(conn, SCHEMA, CHECKPOINTS_TABLE)
    assert not table_exists(conn, SCHEMA, DEFERRALS_TABLE)
    assert conn.execute(
        "SELECT count(*) FROM duckdb_schemas() WHERE schema_name = ?", [SCHEMA]
    ).fetchone() == (0,)
    conn.close()
    with reopen(path) as ro:  # read-only: a read that tried to create a table would fail
        assert committed_stretches(ro, SCHEMA, "events", REQUESTED, newer_than=LONG_AGO) == []
        assert active_deferrals(ro, SCHEMA, T0) == {}


def test_a_stretch_outside_the_requested_window_and_naive_times_are_refused(conn) -> None:
    with pytest.raises(ValueError, match="outside the requested window"):
        record_stretches(conn, SCHEMA, "events", days(0, 2), [days(1, 3)], "run-1")
    with pytest.raises(ValueError, match="timezone-aware"):
        committed_stretches(conn, SCHEMA, "events", REQUESTED, newer_than=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        defer(conn, SCHEMA, "events", datetime(2024, 1, 1), "quota", "run-1")
    assert not table_exists(conn, SCHEMA, CHECKPOINTS_TABLE)


def test_a_rolled_back_transaction_leaves_nothing(conn, path: Path) -> None:
    conn.execute("BEGIN")
    record_stretches(conn, SCHEMA, "events", REQUESTED, [days(0, 1)], "run-1")
    defer(conn, SCHEMA, "events", day(20), "quota", "run-1")
    assert len(committed_stretches(conn, SCHEMA, "events", REQUESTED, newer_than=LONG_AGO)) == 1
    conn.execute("ROLLBACK")
    assert committed_stretches(conn, SCHEMA, "events", REQUESTED, newer_than=LONG_AGO) == []
    assert active_deferrals(conn, SCHEMA, T0) == {}
    # A committed transaction is kept, and the functions did not commit on their own.
    conn.execute("BEGIN")
    record_stretches(conn, SCHEMA, "events", REQUESTED, [days(0, 1)], "run-2")
    conn.execute("COMMIT")
    conn.execute("BEGIN")
    assert clear_stretches(conn, SCHEMA, "events", REQUESTED) == 1
    conn.execute("ROLLBACK")
    conn.close()
    with reopen(path) as ro:
        assert [
            s.run_id for s in committed_stretches(ro, SCHEMA, "events", REQUESTED, newer_than=LONG_AGO)
        ] == ["run-2"]


def test_schema_names_that_need_quoting(conn, path: Path) -> None:
    schema = 'Odd "schema".with dots'
    record_stretches(conn, schema, "events", REQUESTED, [days(0, 1)], "run-1")
    defer(conn, schema, "events", day(20), "quota", "run-1")
    conn.close()
    with reopen(path) as ro:
        assert len(committed_stretches(ro, schema, "events", REQUESTED, newer_than=LONG_AGO)) == 1
        assert set(active_deferrals(ro, schema, T0)) == {"events"}
        # Nothing landed in another schema.
        assert committed_stretches(ro, "klaviyo", "events", REQUESTED, newer_than=LONG_AGO) == []


def test_a_deferral_is_overwritten_by_the_latest_and_cleared(conn, path: Path) -> None:
    defer(conn, SCHEMA, "events", day(20), "Klaviyo quota exhausted", "run-1")
    defer(conn, SCHEMA, "events", day(12), "5xx for 2 hours", "run-2")  # sooner, but newer knowledge
    defer(conn, SCHEMA, "profiles", day(15), "quota", "run-3")
    conn.close()
    with reopen(path) as ro:
        assert active_deferrals(ro, SCHEMA, T0) == {
            "events": Deferral("events", day(12), "5xx for 2 hours", "run-2"),
            "profiles": Deferral("profiles", day(15), "quota", "run-3"),
        }
    with duckdb.connect(str(path)) as rw:
        clear_deferral(rw, SCHEMA, "events")
        clear_deferral(rw, SCHEMA, "lists")  # none recorded: nothing happens
        assert set(active_deferrals(rw, SCHEMA, T0)) == {"profiles"}


def test_only_deferrals_still_in_force_are_active(conn) -> None:
    until = datetime(2024, 1, 5, 3, tzinfo=UTC)
    defer(conn, SCHEMA, "events", until, "quota", "run-1")
    defer(conn, SCHEMA, "profiles", until + timedelta(days=1), "quota", "run-1")
    assert set(active_deferrals(conn, SCHEMA, until - timedelta(microseconds=1))) == {"events", "profiles"}
    assert set(active_deferrals(conn, SCHEMA, until)) == {"profiles"}  # over at `until`
    assert active_deferrals(conn, SCHEMA, until + timedelta(days=2)) == {}
    (found,) = active_deferrals(conn, SCHEMA, until).values()
    assert found.until.tzinfo == UTC and found.until == until + timedelta(days=1)


def test_a_deferral_describes_itself_on_one_line() -> None:
    deferral = Deferral("events", datetime(2026, 11, 28, 3, tzinfo=UTC), "Klaviyo quota\nexhausted", "r")
    assert deferral.describe() == "until 2026-11-28 03:00 UTC (Klaviyo quota exhausted)"
    assert format_instant(datetime(2026, 11, 28, 4, 0, 30, tzinfo=timezone(timedelta(hours=1)))) == (
        "2026-11-28 03:00:30 UTC"
    )
