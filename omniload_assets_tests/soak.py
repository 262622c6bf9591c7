"""Soak: sync repeatedly while the simulator changes data and injects faults; after every round,
DuckDB must equal the simulator's ground truth. Bounded (``--minutes``); run by ``make soak``,
not by the test suite.

Each round: mutate every table (updates, additions; a deletion from a replace table), arm a few
transient faults (5xx, 429, dropped or broken bodies), and sync either the whole range (a backfill)
or one day (a sensor-like run). Every few rounds a fatal fault makes the run fail: the tables must
then be exactly as they were, and the next round must repair everything. Prints a summary; exits
1 on any mismatch.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg

from omniload_assets.klaviyo.catalog import TableSpec, get_table
from omniload_assets_tests.harness import (
    error_messages,
    fast_resources,
    ids_in,
    incremental_values,
    range_tags,
    snapshot,
    truth_incremental_values,
)
from omniload_assets_tests.simulator import KlaviyoSimulator

DATA_START = datetime(2024, 1, 1, tzinfo=UTC)
DATA_END = datetime(2024, 1, 8, tzinfo=UTC)
#: The synced range runs past the generated data, so mutations (keyed later) stay inside it.
SYNC_END = datetime(2024, 1, 15, tzinfo=UTC)
TABLES = ("events", "profiles", "campaigns", "lists", "catalog-variants", "tags", "coupons")
TRANSIENT = (("500", {}), ("502", {}), ("503", {}), ("504", {}), ("429", {"retry_after": 1}), ("drop", {}))
TRANSIENT += (("truncate", {}), ("truncate", {"malformed": True}))
#: Run config keeping Dagster's console to errors, so the rounds stay readable.
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def check(sim: KlaviyoSimulator, db_path: Path, specs: list[TableSpec]) -> list[str]:
    """Differences between DuckDB and the simulator: missing, extra, duplicate, stale rows."""
    problems = []
    for spec in specs:
        ids = ids_in(db_path, spec.asset_name)
        counts = Counter(ids)
        expected = sim.ids(spec.name, DATA_START, SYNC_END) if spec.partitioned else sim.ids(spec.name)
        dupes = [i for i, n in counts.items() if n > 1]
        missing, extra = expected - counts.keys(), counts.keys() - expected
        for label, found in (("duplicate", dupes), ("missing", missing), ("extra", extra)):
            if found:
                problems.append(f"{spec.name}: {len(found)} {label} ids, e.g. {sorted(found)[:3]}")
        if spec.incremental_key:
            stored = incremental_values(db_path, spec)
            truth = truth_incremental_values(sim, spec, expected)
            stale = [i for i in truth if i in stored and stored[i] != truth[i]]
            if stale:
                problems.append(f"{spec.name}: {len(stale)} stale rows, e.g. {stale[:3]}")
    return problems


def check_day(sim: KlaviyoSimulator, db_path: Path, specs: list[TableSpec], day: date) -> list[str]:
    """After a one-day run: that day's records are all there and current; replace tables in full."""
    problems = []
    start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    for spec in specs:
        if not spec.partitioned:
            problems += check(sim, db_path, [spec])
            continue
        expected = sim.ids(spec.name, start, start + timedelta(days=1))
        stored = incremental_values(db_path, spec)
        missing = expected - stored.keys()
        stale = [i for i, v in truth_incremental_values(sim, spec, expected).items() if stored.get(i) != v]
        ids = ids_in(db_path, spec.asset_name)
        if missing or stale or len(ids) != len(set(ids)):
            problems.append(f"{spec.name} {day}: {len(missing)} missing, {len(stale)} stale, duplicates?")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=3.0, help="stop starting rounds after this long")
    parser.add_argument("--rounds", type=int, default=1000, help="at most this many rounds")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--fault-rate", type=float, default=0.05, help="per request, per armed fault")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    deadline = time.monotonic() + args.minutes * 60
    specs = [get_table(t) for t in TABLES]
    workdir = Path(tempfile.mkdtemp(prefix="omniload-soak-"))
    db_path = workdir / "soak.duckdb"

    with KlaviyoSimulator(seed=args.seed, start=DATA_START, end=DATA_END, rate_limits=False) as sim:
        os.environ.update(
            {
                "KLAVIYO_API_KEY": sim.api_key,
                "KLAVIYO_BASE_URL": sim.base_url,
                "OMNILOAD_START_DATE": DATA_START.date().isoformat(),
                "OMNILOAD_DUCKDB_PATH": str(db_path),
                "OMNILOAD_STAGING_DIR": str(workdir / "staging"),
            }
        )
        from omniload_assets.assets import asset_key
        from omniload_assets.definitions import build_definitions

        defs = build_definitions()
        resources = fast_resources(defs, page_size=20, max_retries=8, extract_parallelism=4)
        partitioned = [defs.get_assets_def(asset_key(s)) for s in specs if s.partitioned]
        whole = [defs.get_assets_def(asset_key(s)) for s in specs if not s.partitioned]
        first, last = DATA_START.date(), (SYNC_END - timedelta(days=1)).date()
        rounds = runs = failed_runs = mismatches = 0
        mutation_at = DATA_END
        started = time.monotonic()
        with dg.DagsterInstance.ephemeral() as instance:

            def sync(day: date | None) -> bool:
                nonlocal runs
                ok = True
                tags = range_tags(first, last) if day is None else {}
                for group, extra in (
                    (partitioned, {"partition_key": day.isoformat()} if day else {}),
                    (whole, {}),
                ):
                    runs += 1
                    result = dg.materialize(
                        group,
                        resources=resources,
                        instance=instance,
                        run_config=QUIET,
                        tags=tags if group is partitioned else {},
                        raise_on_error=False,
                        **extra,
                    )
                    if not result.success:
                        ok = False
                        print(f"    run failed: {error_messages(result).splitlines()[-1:]}")
                return ok

            assert sync(None), "the first full sync failed without faults"
            while rounds < args.rounds and time.monotonic() < deadline:
                rounds += 1
                mutation_at += timedelta(minutes=7)
                for spec in specs:
                    sim.mutate(spec.name, updated=rng.randint(1, 8), added=rng.randint(0, 4), at=mutation_at)
                sim.delete_record("tags", rng.choice(sorted(sim.ids("tags"))))
                kind, options = rng.choice(TRANSIENT)
                sim.set_fault(kind, rate=args.fault_rate, **options)
                fatal = rounds % 5 == 0
                day = None if fatal or rng.random() < 0.6 else mutation_at.date()
                if fatal:
                    before = snapshot(db_path, [s.asset_name for s in specs])
                    sim.set_fault("503", after=rng.randint(5, 60))
                ok = sync(day)
                sim.clear_faults()
                problems: list[str] = []
                if fatal and not ok:
                    failed_runs += 1
                    after = snapshot(db_path, [s.asset_name for s in specs])
                    for spec in specs:  # each table: as it was, or completely right
                        name = spec.asset_name
                        if after[name] != before[name] and check(sim, db_path, [spec]):
                            problems.append(f"{spec.name}: the failed run left a partial table")
                    ok = sync(None)  # the re-run repairs everything
                if not ok:
                    problems.append("a sync failed on transient faults alone")
                elif day is None:
                    problems += check(sim, db_path, specs)
                else:
                    problems += check_day(sim, db_path, specs, day)
                mismatches += len(problems)
                rows = sum(len(ids_in(db_path, s.asset_name)) for s in specs)
                scope = "full" if day is None else f"day {day}"
                status = "ok" if not problems else "; ".join(problems)
                fatal_note = " + fatal 503" if fatal else ""
                print(
                    f"round {rounds:3d} ({scope}, fault {kind}{fatal_note}): {rows} rows, {status}",
                    flush=True,
                )

        stats = sim.stats
        rows = sum(len(ids_in(db_path, s.asset_name)) for s in specs)
        print()
        print(f"soak summary: {rounds} rounds in {time.monotonic() - started:.0f} s, {runs} runs")
        print(f"  rows in DuckDB: {rows} across {len(specs)} tables")
        print(f"  requests served: {stats.total_requests}, pages: {stats.pages}, records: {stats.records}")
        faults = ", ".join(f"{k}={v}" for k, v in sorted(stats.faults.items())) or "none"
        print(f"  faults injected: {sum(stats.faults.values())} ({faults})")
        print(f"  runs failed by fatal faults (tables checked, then repaired): {failed_runs}")
        print(f"  mismatches: {mismatches}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
