"""`--interval-start` / `--interval-end`: any text is a UTC datetime or a one-line usage error (status
2) naming the flag the user typed; never a traceback, never a variable the user did not set."""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omniload_assets import settings
from omniload_assets.cli import UsageError, build_parser, main, parse_when, plan_days, plan_ingest
from omniload_assets_tests import test_cli
from omniload_assets_tests.test_cli import KEY, assert_one_line_error

run = test_cli.run  # the fixture running the installed `omniload`
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)

offsets = st.builds(
    lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-24 * 60 + 1, 24 * 60 - 1)
)
#: ISO datetimes of any year with any offset: near the calendar's limits, an offset crosses them.
iso_datetimes = st.builds(
    lambda d, tz, sep: d.replace(tzinfo=tz).isoformat(sep=sep),
    st.datetimes(),
    st.one_of(st.none(), st.just(UTC), offsets),
    st.sampled_from(["T", " "]),
)
when_texts = st.one_of(
    st.text(),
    st.text(alphabet="0123456789-:T+Z. "),
    iso_datetimes,
    st.dates().map(date.isoformat),
    st.sampled_from(["9999-12-31T23:00-02:00", "0001-01-01T00:00+01:00", "9999-12-31T23:59:59.999999-00:01"]),
)


def assert_one_line(message: str) -> None:
    assert message and "\n" not in message and "\r" not in message


@given(when_texts)
def test_any_text_is_a_utc_datetime_or_a_one_line_argparse_error(text: str) -> None:
    try:
        value = parse_when(text)
    except argparse.ArgumentTypeError as exc:
        assert_one_line(str(exc))
        return
    assert value.tzinfo is UTC


@given(st.datetimes(timezones=st.one_of(st.just(UTC), offsets)))
def test_an_aware_datetime_in_range_is_the_same_instant_in_utc(moment: datetime) -> None:
    try:
        expected = moment.astimezone(UTC)
    except OverflowError:
        with pytest.raises(argparse.ArgumentTypeError, match="is outside the years 1 to 9999 in UTC"):
            parse_when(moment.isoformat())
        return
    assert parse_when(moment.isoformat()) == expected


@pytest.mark.parametrize(
    "text", ["9999-12-31T23:00-02:00", "0001-01-01T00:00+01:00", "0001-01-01T00:00:00.000001+00:00:01"]
)
def test_offsets_past_the_calendars_limits_are_one_line_usage_errors(text: str, capsys) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as caught:
        parse_when(text)
    assert (
        str(caught.value)
        == f"{text!r} is outside the years 1 to 9999 in UTC; use a UTC date such as 2024-01-01"
    )
    for flag in ("--interval-start", "--interval-end"):
        with pytest.raises(SystemExit) as exit_:
            main(["ingest", "--source-table", "events", flag, text])
        assert exit_.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and f"argument {flag}: {text!r} is outside the years 1 to 9999" in lines[0]


def test_a_long_bad_value_is_cut_short_in_the_message() -> None:
    with pytest.raises(argparse.ArgumentTypeError) as caught:
        parse_when("x" * 1000)
    assert len(str(caught.value)) < 200


# -- the interval the flags make -----------------------------------------------------------------

moments = st.one_of(
    st.datetimes(timezones=st.just(UTC)), st.just(NOW), st.just(NOW + timedelta(microseconds=1))
)


@given(st.one_of(st.none(), moments), st.one_of(st.none(), moments))
def test_any_interval_is_whole_days_from_2012_to_today_or_one_line_naming_a_flag(
    start: datetime | None, end: datetime | None
) -> None:
    try:
        first, last = plan_days(start, end, NOW)
    except UsageError as exc:
        assert_one_line(str(exc))
        named = [n for n, v in (("--interval-start", start), ("--interval-end", end)) if v is not None]
        assert any(flag in str(exc) for flag in named) or not named
        if start is not None:
            assert "OMNILOAD_START_DATE" not in str(exc)
        if end is None:
            assert "--interval-end" not in str(exc)
        return
    assert settings.EARLIEST_START <= first <= last <= NOW.date()


@pytest.fixture
def no_start_date(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMNILOAD_START_DATE", raising=False)


@pytest.mark.parametrize(
    "start", ["1900-01-01", "0001-01-01", "2011-12-31T23:59:59Z", "2012-01-01T00:30+01:00"]
)
def test_a_start_before_the_first_partition_names_the_flag(start: str, no_start_date) -> None:
    with pytest.raises(UsageError) as caught:
        plan_days(parse_when(start), None, NOW)
    message = str(caught.value)
    assert message.startswith("--interval-start ") and "is before 2012-01-01, the first day" in message
    assert "OMNILOAD_START_DATE" not in message


def test_the_first_partition_itself_is_fine(no_start_date) -> None:
    assert plan_days(parse_when("2012-01-01"), None, NOW) == (date(2012, 1, 1), NOW.date())


def test_a_future_start_without_an_end_names_the_start_only(no_start_date) -> None:
    with pytest.raises(UsageError) as caught:
        plan_days(parse_when("2999-01-01"), None, NOW)
    assert str(caught.value).startswith("--interval-start 2999-01-01T00:00:00+00:00 is in the future")
    assert "--interval-end" not in str(caught.value)


def test_an_end_before_the_configured_start_names_the_variable_not_the_flag(monkeypatch) -> None:
    monkeypatch.setenv("OMNILOAD_START_DATE", "2022-01-01")
    with pytest.raises(UsageError) as caught:
        plan_days(None, parse_when("2020-01-01"), NOW)
    assert str(caught.value) == (
        "--interval-end 2020-01-01T00:00:00+00:00 is not after OMNILOAD_START_DATE 2022-01-01T00:00:00+00:00"
    )
    monkeypatch.delenv("OMNILOAD_START_DATE")
    with pytest.raises(
        UsageError, match=r"is not after the default start \(no --interval-start\) 2022-01-01"
    ):
        plan_days(None, parse_when("2020-01-01"), NOW)


def test_a_blank_schema_variable_is_a_usage_error(monkeypatch) -> None:
    monkeypatch.setenv("KLAVIYO_API_KEY", "pk_x")
    monkeypatch.setenv("OMNILOAD_DUCKDB_SCHEMA", "  ")
    args = build_parser().parse_args(["ingest", "--source-table", "events", "--interval-start", "2024-01-01"])
    with pytest.raises(UsageError, match="OMNILOAD_DUCKDB_SCHEMA='  ' is not a schema name"):
        plan_ingest(args, now=NOW)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--interval-start", "1900-01-01"],
            "--interval-start 1900-01-01T00:00:00+00:00 is before 2012-01-01",
        ),
        (["--interval-start", "2999-01-01"], "--interval-start 2999-01-01T00:00:00+00:00 is in the future"),
        (
            ["--interval-end", "9999-12-31T23:00-02:00"],
            "argument --interval-end: '9999-12-31T23:00-02:00' is",
        ),
        (
            ["--interval-start", "0001-01-01T00:00+01:00"],
            "argument --interval-start: '0001-01-01T00:00+01:00'",
        ),
    ],
)
def test_the_command_exits_2_with_one_line_naming_the_flag_typed(run, args: list[str], expected: str) -> None:
    result = run("ingest", "--source-table", "events", *args, env=KEY)
    line = assert_one_line_error(result, 2)
    assert len(result.stderr.strip().splitlines()) == 1
    assert expected in line
    assert "OMNILOAD_START_DATE" not in line
    if "--interval-end" not in args:
        assert "--interval-end" not in line
