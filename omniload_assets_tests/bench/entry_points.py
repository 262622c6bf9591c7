"""What users run, timed from start to exit: ``omniload ingest``, ingestr 0.14 and ``dagster asset
materialize``, each against the same simulator process.

The account: 40,000 events spread over 2024-01-01..2024-02-29 and a small account's other tables;
every request takes 80 ms plus 0.25 ms a record; Klaviyo's rate limits apply. Each command loads into
a fresh DuckDB file (and ``dagster asset materialize`` into a fresh ``DAGSTER_HOME``), and every load
is checked row for row: the ids in DuckDB must be exactly the simulator's ids of the range.

Columns: wall (from start to exit), extraction and write (as the run reports them), bookkeeping (the
rest: interpreter, imports, Dagster's run, its events), the bare floor (the same entry point running
a Dagster asset that does nothing over the same range: what Dagster alone costs), and the simulator's
CPU seconds while serving the command (it must stay far from the wall time, or it is the bottleneck).

``python -m omniload_assets_tests.bench.entry_points [--ingestr-python PATH]``; also part of ``make
bench``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO

import duckdb

from omniload_assets.klaviyo.catalog import TABLES, TableSpec, get_table
from omniload_assets.warehouse.reads import qualified_name
from omniload_assets_tests.bench.simclient import Simulator, start_simulator

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
EVENTS = 40_000
DATA_START = datetime(2024, 1, 1, tzinfo=UTC)
DATA_END = datetime(2024, 3, 1, tzinfo=UTC)
LATENCY_MODEL = "80,0.25"
PARALLELISM = "20"  # the seed's --extract-parallelism
SUMMARY = re.compile(r"extracted in (?P<extract>[\d.]+) s, written in (?P<write>[\d.]+) s")


@dataclass(frozen=True)
class Span:
    """Days ``first`` .. ``last`` (inclusive); ``open_end``: the command is given no end (up to now)."""

    label: str
    first: date
    last: date
    open_end: bool

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1

    @property
    def start(self) -> datetime:
        return datetime.combine(self.first, datetime.min.time(), UTC)

    @property
    def end(self) -> datetime:
        return datetime.combine(self.last + timedelta(days=1), datetime.min.time(), UTC)


def spans(today: date) -> list[Span]:
    return [
        Span("60 days", date(2024, 1, 1), date(2024, 2, 29), open_end=False),
        Span("since 2024", date(2024, 1, 1), today, open_end=True),
        Span("since 2022 (the seed's)", date(2022, 1, 1), today, open_end=True),
    ]


@dataclass
class Row:
    command: str
    span: str
    days: int
    rows: int
    wall_s: float
    extract_s: float | None
    write_s: float | None
    floor_s: float | None
    sim_cpu_s: float
    checked: str

    @property
    def bookkeeping_s(self) -> float | None:
        if self.extract_s is None or self.write_s is None:
            return None
        return self.wall_s - self.extract_s - self.write_s


HEADER = (
    f"{'command':<34} {'range':<24} {'days':>5} {'rows':>7} {'wall s':>7} {'extract':>7} {'write':>6} "
    f"{'bookkeep':>8} {'floor':>6} {'sim CPU':>7}  checked\n"
)


def fmt(value: float | None, width: int) -> str:
    return f"{value:>{width}.1f}" if value is not None else f"{'-':>{width}}"


def print_row(out: IO[str], row: Row) -> None:
    out.write(
        f"{row.command:<34} {row.span:<24} {row.days:>5} {row.rows:>7,} {row.wall_s:>7.1f} "
        f"{fmt(row.extract_s, 7)} {fmt(row.write_s, 6)} {fmt(row.bookkeeping_s, 8)} "
        f"{fmt(row.floor_s, 6)} {row.sim_cpu_s:>7.1f}  {row.checked}\n"
    )
    out.flush()


def timed(cmd: Sequence[str], env: dict[str, str], cwd: Path, timeout: float) -> tuple[float, str]:
    """Run ``cmd``; its wall seconds from start to exit and its stdout (raises with stderr on failure)."""
    started = time.perf_counter()
    done = subprocess.run(
        list(cmd), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall, done.stdout


def table_digest(database: Path, table: str) -> dict[str, object]:
    """Count and SHA-256 of the sorted ids of ``schema.table`` (the simulator's ``digest`` of its ids)."""
    schema, name = table.split(".")
    with duckdb.connect(str(database), read_only=True) as conn:
        query = f"SELECT id FROM {qualified_name(conn, schema, name)}"
        ids = sorted(str(r[0]) for r in conn.execute(query).fetchall())
    return {"count": len(ids), "sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()}


def expected_digest(sim: Simulator, spec: TableSpec, span: Span) -> dict[str, object]:
    if not spec.partitioned:
        return sim.command(f"digest {spec.name}")
    return sim.command(f"digest {spec.name} {span.start.isoformat()} {span.end.isoformat()}")


def check(
    sim: Simulator, database: Path, tables: Sequence[tuple[TableSpec, str]], span: Span
) -> tuple[int, str]:
    """Rows loaded, and ``ok`` if each table holds exactly the simulator's ids (else what differs)."""
    rows, problems = 0, []
    for spec, table in tables:
        got, want = table_digest(database, table), expected_digest(sim, spec, span)
        rows += int(got["count"])  # type: ignore[call-overload]
        if got != want:
            problems.append(f"{spec.name}: {got['count']} rows, expected {want['count']}")
    return rows, "ok" if not problems else "MISMATCH " + "; ".join(problems)


class Bench:
    """One simulator, a scratch directory, and the commands run against them."""

    def __init__(self, sim: Simulator, work: Path, ingestr_python: str | None, timeout: float) -> None:
        self.sim = sim
        self.work = work
        self.ingestr_python = ingestr_python
        self.timeout = timeout
        self.runs = 0

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OMNILOAD_", "DAGSTER_", "KLAVIYO_"))}
        return {**env, "KLAVIYO_BASE_URL": self.sim.url, "DISABLE_TELEMETRY": "1", **extra}

    def scratch(self) -> Path:
        self.runs += 1
        path = self.work / f"run{self.runs}"
        path.mkdir()
        return path

    def dagster_home(self, where: Path) -> Path:
        home = where / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        return home

    def measure(self, cmd: Sequence[str], env: dict[str, str], cwd: Path) -> tuple[float, str, float]:
        cpu0 = float(self.sim.command("stats")["cpu_s"])
        wall, stdout = timed(cmd, env, cwd, self.timeout)
        return wall, stdout, float(self.sim.command("stats")["cpu_s"]) - cpu0

    def span_flags(self, span: Span) -> list[str]:
        flags = ["--interval-start", span.first.isoformat()]
        return flags if span.open_end else [*flags, "--interval-end", span.end.date().isoformat()]

    # -- the commands ----------------------------------------------------------------------------

    def omniload(self, span: Span, tables: str = "events") -> Row:
        where = self.scratch()
        specs = list(TABLES) if tables == "all" else [get_table(tables)]
        dest = ["--dest-table", "dest.events"] if tables == "events" else []
        cmd = [
            str(BIN / "omniload"),
            "ingest",
            "--source-table",
            tables,
            "--source-uri",
            f"klaviyo://?api_key={self.sim.api_key}",
            "--dest-uri",
            "duckdb:///omniload.duckdb",
            *self.span_flags(span),
            *dest,
            "--extract-parallelism",
            PARALLELISM,
            "--progress",
            "off",
        ]
        wall, stdout, sim_cpu = self.measure(cmd, self.env(), where)
        found = [SUMMARY.search(line) for line in stdout.splitlines()]
        extract = sum(float(m["extract"]) for m in found if m)
        write = sum(float(m["write"]) for m in found if m)
        names = [(s, "dest.events" if tables == "events" else f"klaviyo.{s.asset_name}") for s in specs]
        rows, checked = check(self.sim, where / "omniload.duckdb", names, span)
        floor = self.bare_floor_ingest(span, tables)
        label = f"omniload ingest {tables}" if tables != "events" else "omniload ingest (seed command)"
        return Row(label, span.label, span.days, rows, wall, extract, write, floor, sim_cpu, checked)

    def ingestr(self, span: Span) -> Row | None:
        if not self.ingestr_python:
            return None
        where = self.scratch()
        database = where / "ingestr.duckdb"
        cmd = [
            self.ingestr_python,
            str(HERE / "ingestr_run.py"),
            self.sim.url,
            self.sim.api_key,
            span.first.isoformat(),
            str(database),
            PARALLELISM,
        ]
        if not span.open_end:
            cmd.append(span.end.date().isoformat())
        wall, _, sim_cpu = self.measure(cmd, self.env(), where)
        rows, checked = check(self.sim, database, [(get_table("events"), "dest.events")], span)
        return Row(
            "ingestr 0.14 (seed command)",
            span.label,
            span.days,
            rows,
            wall,
            None,
            None,
            None,
            sim_cpu,
            checked,
        )

    def materialize(self, span: Span, selection: str = "klaviyo/events") -> Row:
        where = self.scratch()
        home = self.dagster_home(where)
        env = self.env(
            DAGSTER_HOME=str(home),
            KLAVIYO_API_KEY=self.sim.api_key,
            OMNILOAD_DUCKDB_PATH=str(where / "klaviyo.duckdb"),
            OMNILOAD_START_DATE=span.first.isoformat(),
        )
        cmd = [
            str(BIN / "dagster"),
            "asset",
            "materialize",
            "-m",
            "omniload_assets.definitions",
            "--select",
            selection,
            "--partition-range",
            f"{span.first.isoformat()}...{span.last.isoformat()}",
        ]
        wall, _, sim_cpu = self.measure(cmd, env, where)
        specs = list(TABLES) if selection == "*" else [get_table(selection.split("/")[-1])]
        extract, write = run_timings(home, specs)
        names = [(s, f"klaviyo.{s.asset_name}") for s in specs]
        rows, checked = check(self.sim, where / "klaviyo.duckdb", names, span)
        floor = self.bare_floor_materialize(span, "*" if selection == "*" else "bare/events")
        what = f"all {len(TABLES)} tables" if selection == "*" else selection.split("/")[-1]
        return Row(
            f"dagster asset materialize {what}",
            span.label,
            span.days,
            rows,
            wall,
            extract,
            write,
            floor,
            sim_cpu,
            checked,
        )

    # -- Dagster's floor -------------------------------------------------------------------------

    def bare_floor_ingest(self, span: Span, tables: str) -> float:
        cmd = [
            sys.executable,
            "-m",
            "omniload_assets_tests.bench.bare_asset",
            span.start.isoformat(),
            span.end.isoformat(),
            tables,
        ]
        wall, _ = timed(cmd, self.env(), self.scratch(), self.timeout)
        return wall

    def bare_floor_materialize(self, span: Span, selection: str) -> float:
        where = self.scratch()
        env = self.env(DAGSTER_HOME=str(self.dagster_home(where)), OMNILOAD_START_DATE=span.first.isoformat())
        cmd = [
            str(BIN / "dagster"),
            "asset",
            "materialize",
            "-m",
            "omniload_assets_tests.bench.bare_asset",
            "--select",
            selection,
            "--partition-range",
            f"{span.first.isoformat()}...{span.last.isoformat()}",
        ]
        wall, _ = timed(cmd, env, where, self.timeout)
        return wall


def run_timings(home: Path, specs: Sequence[TableSpec]) -> tuple[float, float]:
    """Seconds of extraction and of writing, summed over the tables' latest materializations in ``home``."""
    import dagster as dg

    from omniload_assets.assets import asset_key

    extract = write = 0.0
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for spec in specs:
            event = instance.get_latest_materialization_event(asset_key(spec))
            assert event is not None and event.asset_materialization is not None, spec.name
            meta = event.asset_materialization.metadata
            extract += float(meta["extract_s"].value)  # type: ignore[arg-type]
            write += float(meta["duration_s"].value) - float(meta["extract_s"].value)  # type: ignore[arg-type]
    return extract, write


def per_day(rows: Sequence[Row], command: str) -> str:
    """Seconds per daily partition of ``command``'s bookkeeping, from its shortest and longest range."""
    mine = [r for r in rows if r.command == command and r.bookkeeping_s is not None]
    if len(mine) < 2:
        return "-"
    short, long = min(mine, key=lambda r: r.days), max(mine, key=lambda r: r.days)
    slope = (long.bookkeeping_s - short.bookkeeping_s) / max(1, long.days - short.days)  # type: ignore[operator]
    floor = (long.floor_s - short.floor_s) / max(1, long.days - short.days)  # type: ignore[operator]
    return f"{slope * 1000:.2f} ms a day (bare floor {floor * 1000:.2f} ms a day)"


def run(out: IO[str], ingestr_python: str | None, timeout: float) -> list[Row]:
    """Every entry-point row, printed as it is measured."""
    today = datetime.now(UTC).date()
    t0 = time.perf_counter()
    sim = start_simulator(EVENTS, None, DATA_START, DATA_END, latency_model=LATENCY_MODEL)
    work = Path(tempfile.mkdtemp(prefix="omniload-entry-"))
    rows: list[Row] = []
    try:
        out.write(
            f"\nentry points (simulator built in {time.perf_counter() - t0:.0f} s: {EVENTS:,} events over "
            f"{DATA_START:%Y-%m-%d}..{DATA_END - timedelta(days=1):%Y-%m-%d} and a small account's other "
            f"tables; {LATENCY_MODEL.replace(',', ' ms + ')} ms a record; Klaviyo's rate limits; "
            f"--extract-parallelism {PARALLELISM}; every load checked id for id):\n"
        )
        out.write(HEADER)
        bench = Bench(sim, work, ingestr_python, timeout)
        for span in spans(today):
            for measure in (bench.omniload, bench.ingestr, bench.materialize):
                sim.command("limits on")  # a fresh rate-limit budget for each command
                row = measure(span)
                if row is not None:
                    rows.append(row)
                    print_row(out, row)
        sixty = spans(today)[0]
        for measure, arg in ((bench.omniload, "all"), (bench.materialize, "*")):
            sim.command("limits on")
            row = measure(sixty, arg)
            rows.append(row)
            print_row(out, row)
        summarize(out, rows)
    finally:
        sim.close()
        shutil.rmtree(work, ignore_errors=True)
    return rows


def summarize(out: IO[str], rows: Sequence[Row]) -> None:
    out.write(
        "per daily partition (bookkeeping): omniload ingest "
        f"{per_day(rows, 'omniload ingest (seed command)')}; dagster asset materialize "
        f"{per_day(rows, 'dagster asset materialize events')}\n"
    )
    ours = {r.span: r for r in rows if r.command == "omniload ingest (seed command)"}
    theirs = {r.span: r for r in rows if r.command.startswith("ingestr")}
    ratios = [f"{span}: {theirs[span].wall_s / ours[span].wall_s:.1f}x" for span in ours if span in theirs]
    if ratios:
        out.write("omniload ingest vs ingestr 0.14, wall clock: " + ", ".join(ratios) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m omniload_assets_tests.bench.entry_points", description=__doc__
    )
    parser.add_argument("--ingestr-python", default=None, help="python of a venv with ingestr 0.14.x")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed per command")
    args = parser.parse_args()
    ingestr = str(Path(args.ingestr_python).absolute()) if args.ingestr_python else None
    run(sys.stdout, ingestr, args.timeout)


if __name__ == "__main__":
    main()
