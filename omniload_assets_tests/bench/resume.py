"""Resumable backfills (issue 19), measured: what a re-run of ``omniload ingest`` fetches again after
a kill -9, an outage and a daily quota, against a simulator with real latency and rate limits.

The account: ``--events`` events spread over ``--days`` days from 2024-01-01 (and a small account's
other tables); every request takes 80 ms plus 0.25 ms a record (entry_points.py's model); Klaviyo's
rate limits apply, with a fresh budget (and zeroed counters) before each command. Each scenario
loads into a fresh DuckDB file with the seed's command (events into ``dest.events``,
``--extract-parallelism 20``); a re-run is the identical command on the same file.

- baseline: one full run (the production checkpoint interval, so no checkpoint falls inside it);
  the requests it takes are the 100% the re-runs are measured against. A second full run with the
  short interval shows what checkpointing costs.
- kill -9: the run is killed (SIGKILL to its process group) once the simulator has served 80% of
  the baseline's requests; the ledger is shown, then the re-run resumes (target: <= 30%).
- outage: every request after 60% of the baseline's answers 503 until ``heal``; the run gives up.
- quota: every request after 50% answers 429 with ``Retry-After: 7200`` (a daily quota); the run
  fails at once naming when Klaviyo accepts requests again, and records a deferral.

Every load is checked id for id against the simulator's ground truth (``digest``). The figures
include the simulator's CPU seconds while serving each command (it must stay far from the wall
time, or it is the bottleneck).

``python -m omniload_assets_tests.bench.resume [--events 1000000] [--days 60] [--checkpoint-every 2]``;
``--events 100000`` for a quick try.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import duckdb

from omniload_assets.warehouse.reads import qualified_name, quote_ident, table_exists
from omniload_assets_tests.bench.entry_points import LATENCY_MODEL, PARALLELISM, table_digest
from omniload_assets_tests.bench.simclient import Simulator, start_simulator

BIN = Path(sys.executable).parent
DATA_START = datetime(2024, 1, 1, tzinfo=UTC)
DEST_TABLE = "dest.events"
INCREMENTAL_KEY = "datetime"
DATABASE = "omniload.duckdb"
PRODUCTION_CHECKPOINT_S = 300
KILL_AT, OUTAGE_AT, QUOTA_AT = 0.8, 0.6, 0.5
RESUME_TARGET = 0.30
QUOTA_RETRY_AFTER_S = 7200
POLL_S = 0.02
#: How the failing runs' retries are set: ``omniload ingest`` has no flag for them and
#: ``KlaviyoResource`` reads none from the environment, so they are the product's defaults.
RETRIES_NOTE = "the defaults, 5 retries from 0.5 s doubling: no flag or variable sets them"
#: A time of day in an error line (``2026-11-28T14:05``, ``14:05 UTC``): when to re-run.
NAMES_A_TIME = re.compile(r"\d{1,2}:\d{2}")


@dataclass
class Run:
    """One command's outcome, as the summary shows it."""

    scenario: str
    step: str
    exit_code: int
    wall_s: float
    requests: int
    throttled: int
    sim_cpu_s: float
    stdout: str
    stderr: str
    baseline: int = 0
    rows: int | None = None
    checked: str = "-"

    @property
    def share(self) -> float | None:
        return self.requests / self.baseline if self.baseline else None

    def lines(self, needle: str) -> list[str]:
        """Output lines (stdout, then stderr) that mention ``needle``, case-insensitively."""
        text = self.stdout.splitlines() + self.stderr.splitlines()
        return [line.strip() for line in text if needle.lower() in line.lower()]

    def error_line(self) -> str:
        """The run's one-line error (the last ``omniload: error`` line, else stderr's last line)."""
        errors = [line for line in self.stderr.splitlines() if line.startswith("omniload: error")]
        rest = [line for line in self.stderr.splitlines() if line.strip()]
        return (errors or rest or ["(no output on stderr)"])[-1].strip()


class Ingest:
    """The seed's ``omniload ingest`` of events over the data's range, run against the simulator."""

    def __init__(self, sim: Simulator, work: Path, start: datetime, end: datetime, timeout: float) -> None:
        self.sim = sim
        self.work = work
        self.start = start
        self.end = end
        self.timeout = timeout
        self.dirs = 0

    def fresh(self) -> Path:
        """A new directory: the scenario's DuckDB file goes there, its runs start there."""
        self.dirs += 1
        path = self.work / f"scenario{self.dirs}"
        path.mkdir()
        return path

    def command(self) -> list[str]:
        return [
            str(BIN / "omniload"),
            "ingest",
            "--source-table",
            "events",
            "--source-uri",
            f"klaviyo://?api_key={self.sim.api_key}",
            "--dest-uri",
            f"duckdb:///{DATABASE}",
            "--interval-start",
            self.start.date().isoformat(),
            "--interval-end",
            self.end.date().isoformat(),
            "--dest-table",
            DEST_TABLE,
            "--extract-parallelism",
            PARALLELISM,
            "--progress",
            "log",
        ]

    def env(self, checkpoint_every_s: float | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OMNILOAD_", "DAGSTER_", "KLAVIYO_"))}
        env.update(
            KLAVIYO_BASE_URL=self.sim.url,
            DISABLE_TELEMETRY="1",
            OMNILOAD_STAGING_DIR=str(self.work / "staging"),  # what a kill -9 leaves stays in here
        )
        if checkpoint_every_s is not None:
            env["OMNILOAD_CHECKPOINT_EVERY_S"] = f"{checkpoint_every_s:g}"
        return env

    def run(
        self,
        where: Path,
        scenario: str,
        step: str,
        checkpoint_every_s: float | None,
        kill_at_requests: int | None = None,
        arm: str | None = None,
    ) -> Run:
        """Run the command in ``where`` to its end, or SIGKILL its process group once the simulator
        has served ``kill_at_requests``. Counters and rate-limit budget are reset first, then the
        simulator command ``arm`` (a ``fault``) is sent."""
        self.sim.command("limits on")
        if arm is not None and "error" in (reply := self.sim.command(arm)):
            raise RuntimeError(f"the simulator refused {arm!r}: {reply['error']}")
        cpu0 = float(self.sim.command("stats")["cpu_s"])
        out_path, err_path = where / f"{step}.stdout", where / f"{step}.stderr"
        with out_path.open("w") as out, err_path.open("w") as err:
            started = time.perf_counter()
            process = subprocess.Popen(
                self.command(),
                env=self.env(checkpoint_every_s),
                cwd=where,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
            code = self.wait(process, started, kill_at_requests)
            wall = time.perf_counter() - started
        stats = self.sim.command("stats")
        return Run(
            scenario,
            step,
            code,
            wall,
            int(stats["requests"]),
            int(stats["throttled"]),
            float(stats["cpu_s"]) - cpu0,
            out_path.read_text(),
            err_path.read_text(),
        )

    def wait(self, process: subprocess.Popen[bytes], started: float, kill_at_requests: int | None) -> int:
        """The exit code; a kill -9 of the whole process group once ``kill_at_requests`` are served."""
        deadline = started + self.timeout
        while kill_at_requests is not None and process.poll() is None and time.perf_counter() < deadline:
            if int(self.sim.command("stats")["requests"]) >= kill_at_requests:
                os.killpg(process.pid, signal.SIGKILL)
                break
            time.sleep(POLL_S)
        try:
            return process.wait(timeout=max(1.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise RuntimeError(f"omniload ingest did not finish within {self.timeout:.0f} s") from None


# -- what the DuckDB file holds -------------------------------------------------------------------


def find_table(conn: duckdb.DuckDBPyConnection, name: str) -> str | None:
    """The qualified name of the (first) table called ``name`` in any schema, or None."""
    found = conn.execute(
        "SELECT table_schema FROM information_schema.tables WHERE table_name = ? ORDER BY table_schema",
        [name],
    ).fetchall()
    return qualified_name(conn, found[0][0], name) if found else None


def union(stretches: Sequence[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """The ``[start, end)`` stretches sorted, overlapping and touching ones joined."""
    joined: list[tuple[datetime, datetime]] = []
    for start, end in sorted(stretches):
        if joined and start <= joined[-1][1]:
            joined[-1] = (joined[-1][0], max(joined[-1][1], end))
        elif end > start:
            joined.append((start, end))
    return joined


def days_in(stretches: Sequence[tuple[datetime, datetime]]) -> float:
    return sum(((end - start) for start, end in union(stretches)), timedelta(0)) / timedelta(days=1)


def as_utc(value: Any) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass
class Ledger:
    """What ``_omniload_checkpoints`` holds for the range, and the rows of the loaded table."""

    table: str | None
    stretches: list[tuple[datetime, datetime]]
    rows: int | None
    runs: int

    @property
    def days(self) -> float:
        return days_in(self.stretches)


def ledger(database: Path, start: datetime, end: datetime) -> Ledger:
    """The checkpoints committed for ``[start, end)`` (cut to it) and the loaded table's rows."""
    if not database.exists():  # killed before its first write
        return Ledger(None, [], None, 0)
    schema, name = DEST_TABLE.split(".")
    with duckdb.connect(str(database), read_only=True) as conn:
        checkpoints = find_table(conn, "_omniload_checkpoints")
        rows = None
        if table_exists(conn, schema, name):
            (rows,) = conn.execute(f"SELECT count(*) FROM {qualified_name(conn, schema, name)}").fetchone()  # type: ignore[misc]
        found = []
        if checkpoints is not None:
            columns = ", ".join(quote_ident(c) for c in ("stretch_start", "stretch_end", "run_id"))
            found = conn.execute(f"SELECT {columns} FROM {checkpoints}").fetchall()
    stretches = [(max(as_utc(a), start), min(as_utc(b), end)) for a, b, _ in found]
    inside = [(a, b) for a, b in stretches if a < b]
    return Ledger(checkpoints, union(inside), rows, len({run for *_, run in found}))


def committed_check(sim: Simulator, database: Path, held: Ledger) -> str:
    """``ok`` if the table holds exactly the simulator's rows of the committed stretches, all inside
    them (no partial batch of an uncommitted stretch), else what differs."""
    if held.rows is None:
        return "ok: no table yet" if not held.stretches else "MISMATCH: stretches committed, no table"
    want = sum(
        int(sim.command(f"count events {a.isoformat()} {b.isoformat()}")["count"]) for a, b in held.stretches
    )
    schema, name = DEST_TABLE.split(".")
    key = quote_ident(INCREMENTAL_KEY)
    inside = " OR ".join(f"({key} >= ? AND {key} < ?)" for _ in held.stretches) or "FALSE"
    with duckdb.connect(str(database), read_only=True) as conn:
        query = f"SELECT count(*) FILTER (WHERE {inside}) FROM {qualified_name(conn, schema, name)}"
        (got_inside,) = conn.execute(query, [t for s in held.stretches for t in s]).fetchone()  # type: ignore[misc]
    if got_inside == want == held.rows:
        return f"ok: the committed days' {want:,} rows, none beyond"
    return f"MISMATCH: {held.rows:,} rows, {got_inside:,} in committed days, which hold {want:,}"


def deferrals(database: Path) -> tuple[str | None, list[dict[str, Any]]]:
    """The ``_omniload_deferrals`` table's name and its rows (None, [] when there is none)."""
    if not database.exists():
        return None, []
    with duckdb.connect(str(database), read_only=True) as conn:
        table = find_table(conn, "_omniload_deferrals")
        if table is None:
            return None, []
        cursor = conn.execute(f"SELECT * FROM {table}")
        columns = [d[0] for d in cursor.description]  # type: ignore[union-attr]
        return table, [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def check(sim: Simulator, database: Path, start: datetime, end: datetime) -> tuple[int | None, str]:
    """Rows loaded, and ``ok`` if the table holds exactly the simulator's ids of the range."""
    want = sim.command(f"digest events {start.isoformat()} {end.isoformat()}")
    try:
        got = table_digest(database, DEST_TABLE)
    except (duckdb.Error, FileNotFoundError) as exc:
        return None, f"NO TABLE ({type(exc).__name__})"
    if got == want:
        return int(got["count"]), "ok"  # type: ignore[call-overload]
    return int(got["count"]), f"MISMATCH: {got['count']:,} rows, expected {want['count']:,}"  # type: ignore[call-overload]


# -- the scenarios --------------------------------------------------------------------------------


def pct(share: float | None) -> str:
    return f"{share:.0%}" if share is not None else "-"


class Bench:
    """The four scenarios against one simulator, printing each figure as it is measured."""

    def __init__(self, ingest: Ingest, out: IO[str], checkpoint_every_s: float) -> None:
        self.ingest = ingest
        self.sim = ingest.sim
        self.out = out
        self.every = checkpoint_every_s
        self.baseline = 0
        self.runs: list[Run] = []

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def measured(self, where: Path, scenario: str, step: str, **how: Any) -> Run:
        """One run of the command in ``where``, printed. A finished run's table is checked against the
        ground truth of the range; an unfinished one's against the days it committed."""
        run = self.ingest.run(where, scenario, step, **how)
        run.baseline = self.baseline or run.requests
        database = where / DATABASE
        if run.exit_code == 0:
            run.rows, run.checked = check(self.sim, database, self.ingest.start, self.ingest.end)
        else:
            held = ledger(database, self.ingest.start, self.ingest.end)
            run.rows, run.checked = held.rows, committed_check(self.sim, database, held)
        self.runs.append(run)
        rows = f"{run.rows:,}" if run.rows is not None else "-"
        self.say(
            f"  {step:<20} exit {run.exit_code:>3}  wall {run.wall_s:6.1f} s  requests {run.requests:>6,} "
            f"({pct(run.share)} of baseline, {run.throttled} throttled)  sim CPU {run.sim_cpu_s:5.1f} s  "
            f"rows {rows:>9}  {run.checked}"
        )
        return run

    def full(self) -> None:
        """The baseline: a full run into a fresh file with the production checkpoint interval (none
        falls inside it), then one with the short interval, for what checkpointing costs."""
        self.say(
            "\nbaseline: full runs into fresh DuckDB files, checkpoints every "
            f"{PRODUCTION_CHECKPOINT_S} s (the production default), then every {self.every:g} s"
        )
        run = self.measured(self.ingest.fresh(), "baseline", "full run", checkpoint_every_s=None)
        if run.exit_code != 0 or run.checked != "ok":
            raise RuntimeError(f"the baseline run failed: {run.error_line()}")
        self.baseline = run.requests
        often = self.measured(
            self.ingest.fresh(),
            "baseline",
            f"checkpoints every {self.every:g}s",
            checkpoint_every_s=self.every,
        )
        said = often.lines("checkpoint ")
        self.say(f"  {len(said)} checkpoint(s) logged; the last: {said[-1] if said else '-'}")

    def kill9(self) -> None:
        """Kill -9 at 80% of the baseline's requests, show the ledger, re-run the identical command."""
        at = int(self.baseline * KILL_AT)
        self.say(
            f"\nkill -9: OMNILOAD_CHECKPOINT_EVERY_S={self.every:g} (the production default, "
            f"{PRODUCTION_CHECKPOINT_S} s, scaled down to a run of seconds); SIGKILL to the run's process "
            f"group once the simulator has served {at:,} requests ({KILL_AT:.0%} of the baseline's)"
        )
        where = self.ingest.fresh()
        killed = self.measured(where, "kill -9", "killed", checkpoint_every_s=self.every, kill_at_requests=at)
        if killed.exit_code != -signal.SIGKILL:
            self.say(f"  NOTE: not killed (exit {killed.exit_code}): the run ended before {at:,} requests")
        self.show_ledger(where, killed)
        self.resume(where, "kill -9", RESUME_TARGET)

    def show_ledger(self, where: Path, run: Run) -> None:
        """The run's last checkpoint line and what the ledger holds for the range."""
        said = run.lines("checkpoint ")
        self.say(f"  {len(said)} checkpoint(s) logged; the last: {said[-1] if said else '-'}")
        held = ledger(where / DATABASE, self.ingest.start, self.ingest.end)
        days = (self.ingest.end - self.ingest.start).days
        rows = f"{held.rows:,}" if held.rows is not None else "no"
        self.say(
            f"  ledger {held.table or '(no _omniload_checkpoints table)'}: {len(held.stretches)} "
            f"stretch(es) committed for the range, {held.days:.2f} of {days} days, by {held.runs} run(s); "
            f"{DEST_TABLE} holds {rows} rows"
        )

    def resume(self, where: Path, scenario: str, target: float | None) -> Run:
        """The identical command again on the same file; its share of the baseline's requests."""
        run = self.measured(where, scenario, "re-run", checkpoint_every_s=self.every)
        verdict = ""
        if target is not None:
            met = run.share is not None and run.share <= target
            verdict = f" (target <= {target:.0%}: {'met' if met else 'NOT met'})"
        self.say(f"  the re-run fetched {pct(run.share)} of the baseline's requests{verdict}")
        for line in run.lines("resum") or ["(no output line mentions 'resum')"]:
            self.say(f"    | {line}")
        if run.exit_code != 0:
            self.say(f"    error: {run.error_line()}")
        return run

    def failing(self, scenario: str, fault: str, share: float, step: str) -> tuple[Path, Run]:
        """A fresh file, ``fault`` armed after ``share`` of the baseline's requests, one run; its
        error, ledger and deferrals shown."""
        after = int(self.baseline * share)
        where = self.ingest.fresh()
        run = self.measured(
            where, scenario, step, checkpoint_every_s=self.every, arm=f"{fault} after={after}"
        )
        errors = run.lines("omniload: error")
        expected = "non-zero, as expected" if run.exit_code else "EXPECTED NON-ZERO"
        self.say(f"  exit {run.exit_code} ({expected}); {len(errors)} error line(s), the last:")
        self.say(f"    | {run.error_line()}")
        self.show_ledger(where, run)
        table, rows = deferrals(where / DATABASE)
        self.say(f"  deferrals {table or '(no _omniload_deferrals table)'}: {len(rows)} row(s)")
        for row in rows:
            self.say("    | " + ", ".join(f"{k}={v}" for k, v in row.items()))
        return where, run

    def outage(self) -> None:
        """Permanent 503s from 60% of the baseline's requests; heal; re-run."""
        self.say(
            f"\noutage: every request after {OUTAGE_AT:.0%} of the baseline's answers 503 until healed "
            f"(retries: {RETRIES_NOTE})"
        )
        where, _ = self.failing("outage", "fault 503", OUTAGE_AT, "503s from 60%")
        self.sim.command("heal")
        self.resume(where, "outage", None)

    def quota(self) -> None:
        """429 with Retry-After 7200 from 50% of the baseline's requests; deferral; heal; re-run."""
        self.say(
            f"\nquota: every request after {QUOTA_AT:.0%} of the baseline's answers 429 with "
            f"Retry-After: {QUOTA_RETRY_AFTER_S} (a daily quota) until healed"
        )
        fault = f"fault 429 retry_after={QUOTA_RETRY_AFTER_S}"
        where, run = self.failing("quota", fault, QUOTA_AT, "429 quota from 50%")
        named = bool(NAMES_A_TIME.search(run.error_line()))
        self.say(f"  the error line names a time to resume: {'yes' if named else 'NO'}")
        self.sim.command("heal")
        self.resume(where, "quota", None)


SUMMARY_HEADER = (
    f"{'scenario':<10} {'step':<22} {'exit':>4} {'wall s':>7} {'requests':>9} {'of base':>7} "
    f"{'429s':>5} {'sim CPU':>7} {'rows':>9}  checked"
)


def summarize(out: IO[str], runs: Sequence[Run]) -> None:
    out.write("\nsummary (requests: served by the simulator during the command, 429s included):\n")
    out.write(SUMMARY_HEADER + "\n")
    for r in runs:
        rows = f"{r.rows:,}" if r.rows is not None else "-"
        out.write(
            f"{r.scenario:<10} {r.step:<22} {r.exit_code:>4} {r.wall_s:>7.1f} {r.requests:>9,} "
            f"{pct(r.share):>7} {r.throttled:>5} {r.sim_cpu_s:>7.1f} {rows:>9}  {r.checked}\n"
        )
    out.flush()


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(
    out: IO[str], events: int, days: int, checkpoint_every_s: float, timeout: float, keep: bool = False
) -> list[Run]:
    """Build the simulator, run the four scenarios, print the summary; the runs measured."""
    end = DATA_START + timedelta(days=days)
    out.write(
        f"machine: {os.cpu_count()} cores ({cpu_model()}), Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f} at start\n"
    )
    t0 = time.perf_counter()
    sim = start_simulator(events, None, DATA_START, end, latency_model=LATENCY_MODEL)
    work = Path(tempfile.mkdtemp(prefix="omniload-r19-"))
    bench = Bench(Ingest(sim, work, DATA_START, end, timeout), out, checkpoint_every_s)
    try:
        truth = sim.command(f"digest events {DATA_START.isoformat()} {end.isoformat()}")
        out.write(
            f"simulator built in {time.perf_counter() - t0:.0f} s: {truth['count']:,} events over "
            f"{DATA_START:%Y-%m-%d}..{end - timedelta(days=1):%Y-%m-%d} ({days} days); "
            f"{LATENCY_MODEL.replace(',', ' ms + ')} ms a record; Klaviyo's rate limits; "
            f"--extract-parallelism {PARALLELISM}; every load checked id for id\n"
        )
        bench.full()
        for scenario in (bench.kill9, bench.outage, bench.quota):
            try:
                scenario()
            except (RuntimeError, duckdb.Error) as exc:
                bench.say(f"  FAILED: {exc}")
        summarize(out, bench.runs)
    finally:
        sim.close()
        if keep:
            out.write(f"kept the scenarios' files and output in {work}\n")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return bench.runs


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m omniload_assets_tests.bench.resume",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the simulator")
    parser.add_argument("--days", type=int, default=60, help="days from 2024-01-01 the events spread over")
    parser.add_argument(
        "--checkpoint-every",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="OMNILOAD_CHECKPOINT_EVERY_S of the runs after the baseline (production: 300)",
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed per command")
    parser.add_argument("--keep", action="store_true", help="keep the DuckDB files and the runs' output")
    args = parser.parse_args()
    run(sys.stdout, args.events, args.days, args.checkpoint_every, args.timeout, args.keep)


if __name__ == "__main__":
    main()
