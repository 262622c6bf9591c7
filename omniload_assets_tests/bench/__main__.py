"""``make bench``: the product against a simulated Klaviyo with real latency and rate limits.

Prints, per table and scenario: records/s, requests/s, the rate-limit ceiling in records/s and the
ratio to it, 429s, peak RSS; the client's own ceiling (limits and latency lifted, records per CPU
second); peak RSS for the whole 1M-event range; DuckDB merge throughput; and ingestr 0.14's
throughput on the same events window (when ``--ingestr-python`` points at a venv that has it).
Every measured run is a separate process; the simulator is another, built before serving.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from omniload_assets.klaviyo.catalog import get_table
from omniload_assets.klaviyo.decoders import default_processes
from omniload_assets.klaviyo.extraction import workers_for
from omniload_assets_tests.bench import entry_points
from omniload_assets_tests.bench.simclient import Simulator, run_json, start_simulator

HERE = Path(__file__).resolve().parent


def pipeline(
    sim: Simulator,
    table: str,
    start: datetime,
    end: datetime,
    parallelism: int,
    paced: bool,
    timeout: float,
    decode_processes: int | None = None,
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "omniload_assets_tests.bench.pipeline",
        f"--base-url={sim.url}",
        f"--api-key={sim.api_key}",
        f"--table={table}",
        f"--start={start.isoformat()}",
        f"--end={end.isoformat()}",
        f"--parallelism={parallelism}",
    ]
    if not paced:
        cmd.append("--no-pace")
    if decode_processes is not None:
        cmd.append(f"--decode-processes={decode_processes}")
    before = sim.command("stats")
    result = run_json(cmd, timeout)
    after = sim.command("stats")
    result["throttled_server"] = after["throttled"] - before["throttled"]
    return result


def measured_latency(sim: Simulator, start: datetime, end: datetime, pages: int = 12) -> str:
    """Time full pages of events and of profiles, one at a time, as the simulator serves them."""
    import httpx

    from omniload_assets.klaviyo.client import DEFAULT_REVISION
    from omniload_assets.klaviyo.windows import TimeWindow, combine_filters, window_filter

    headers = {"Authorization": f"Klaviyo-API-Key {sim.api_key}", "revision": DEFAULT_REVISION}
    parts = []
    with httpx.Client(base_url=sim.url, headers=headers, timeout=30) as http:
        for table in ("events", "profiles"):
            spec = get_table(table)
            size = spec.max_page_size or 1
            window = combine_filters(window_filter(spec, TimeWindow(start, end)))
            params = {"page[size]": str(size), "filter": window or ""}
            http.get(spec.path, params=params)  # not timed: the simulator's first page of a query
            seconds = []
            for _ in range(pages):
                started = time.perf_counter()
                http.get(spec.path, params=params).raise_for_status()
                seconds.append(time.perf_counter() - started)
            seconds.sort()
            low, mid, high = seconds[0], seconds[len(seconds) // 2], seconds[-1]
            parts.append(f"{table} page of {size}: {low:.2f}/{mid:.2f}/{high:.2f} s")
    sim.command("limits on")  # forget the requests just made
    return f"measured latency (min/median/max of {pages} requests): " + "; ".join(parts)


def ceiling(table: str) -> float:
    """Records/s at the endpoint's steady rate limit with its largest page."""
    return get_table(table).ceiling


def print_row(out: IO[str], label: str, table: str, r: dict[str, Any], limited: bool) -> None:
    seconds = r["extract_s"]
    rate = r["records"] / seconds
    ratio = f"{rate / ceiling(table):6.0%}" if limited else "     -"
    per_core = r["records"] / max(r["extract_cpu_s"] + r["decoders_cpu_s"], 1e-9)
    rss_sum = r["peak_rss_extract_mb"] + r["decoders_peak_rss_mb"]
    out.write(
        f"{label:<22} {table:<9} {r['records']:>9,} {seconds:>7.1f} {rate:>10,.0f} "
        f"{r['requests'] / seconds:>7.1f} {ceiling(table):>9,.0f} {ratio} {r['throttled_server']:>5} "
        f"{per_core:>10,.0f} {r['load_s']:>6.1f} {r['peak_rss_tree_extract_mb']:>7.0f} {rss_sum:>7.0f} "
        f"{r['peak_rss_mb']:>7.0f}\n"
    )
    out.flush()


HEADER = (
    f"{'scenario':<22} {'table':<9} {'records':>9} {'extr s':>7} {'records/s':>10} {'req/s':>7} "
    f"{'ceiling':>9} {'ratio':>6} {'429s':>5} {'rec/cpu-s':>10} {'load s':>6} {'RSS ext':>7} {'RSS sum':>7} "
    f"{'RSS MB':>7}\n"
)


def decoders() -> str:
    """stdlib ``json``, ``orjson`` (dicts) and ``msgspec`` (the catalogue's structs, the client's path
    for pages that fit) on a page of 1,000 simulated events; CPU time, best of 7."""
    import json as stdlib_json

    import orjson

    from omniload_assets.klaviyo.pages import page_schema
    from omniload_assets_tests.simulator import KlaviyoSimulator

    sim = KlaviyoSimulator(seed=1, scale={"events": 1000})
    body = orjson.dumps({"data": sim.records("events"), "links": {"next": None}})
    candidates = {
        "json": stdlib_json.loads,
        "orjson": orjson.loads,
        "msgspec structs": page_schema(get_table("events")).decoder.decode,
    }
    best = {}
    for name, loads in candidates.items():
        times = []
        for _ in range(7):
            started = time.process_time()
            loads(body)
            times.append(time.process_time() - started)
        best[name] = min(times)
    figures = ", ".join(f"{name} {seconds * 1e3:.1f} ms" for name, seconds in best.items())
    return (
        f"decoding a page of 1,000 events ({len(body) / 1e6:.2f} MB): {figures} "
        "(msgspec structs used; orjson for pages that do not fit them)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m omniload_assets_tests.bench", description=__doc__)
    parser.add_argument(
        "--events", type=int, default=1_000_000, help="events in the simulator (window: half)"
    )
    parser.add_argument("--profiles", type=int, default=50_000)
    parser.add_argument(
        "--parallelism", type=int, default=None, help="default: the product's per-tier default"
    )
    parser.add_argument("--ingestr-python", default=None, help="python of a venv with ingestr 0.14.x")
    parser.add_argument(
        "--ingestr-parallelism", type=int, default=20, help="the seed's --extract-parallelism"
    )
    parser.add_argument("--merge-rows", type=int, default=1_000_000)
    parser.add_argument("--compare-days", type=int, default=2, help="days of events for the ingestr run")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed per measured run")
    parser.add_argument(
        "--entry-points-only",
        action="store_true",
        help="only the commands users run (omniload ingest, ingestr, dagster asset materialize)",
    )
    args = parser.parse_args()
    out = sys.stdout
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = end - timedelta(days=20)
    window_start = end - timedelta(days=10)
    cpu = platform.processor() or platform.machine()
    out.write(
        f"machine: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f} at start\n"
    )
    t0 = time.perf_counter()
    ingestr = str(Path(args.ingestr_python).absolute()) if args.ingestr_python else None
    entry_points.run(out, ingestr, args.timeout)
    if args.entry_points_only:
        out.write(f"\nbenchmark wall time {time.perf_counter() - t0:.0f} s\n")
        return
    out.write("\nthe pipeline alone (extract, stage, merge in one process, no Dagster run):\n")
    t1 = time.perf_counter()
    sim = start_simulator(args.events, args.profiles, start, end)
    work = tempfile.mkdtemp(prefix="omniload-bench-")
    try:
        n_events = sim.command(f"count events {window_start.isoformat()} {end.isoformat()}")["count"]
        n_profiles = sim.command(f"count profiles {start.isoformat()} {end.isoformat()}")["count"]
        out.write(
            f"simulator built in {time.perf_counter() - t1:.0f} s: events window {window_start:%Y-%m-%d}.."
            f"{end:%Y-%m-%d} holds {n_events:,}; profiles {start:%Y-%m-%d}..{end:%Y-%m-%d} "
            f"hold {n_profiles:,}\n{measured_latency(sim, window_start, end)}\n"
            "ceiling: steady limit x page size; 429s: answered by the simulator; rec/cpu-s counts the "
            f"page-decoding processes (default {default_processes()}); RSS ext: the run's process plus "
            "its decoding processes during extraction, peak of their sum sampled every 20 ms; RSS sum: "
            "the sum of each one's own peak (an upper bound); RSS MB: the run's process, merge included\n\n"
        )
        out.write(HEADER)
        windows = {"events": (window_start, end), "profiles": (start, end)}
        results: dict[str, dict[str, Any]] = {}
        for table in ("events", "profiles"):
            workers = args.parallelism or workers_for(get_table(table), None)
            sim.command("limits on")
            r = pipeline(sim, table, *windows[table], workers, True, args.timeout)
            results[f"limited/{table}"] = r
            print_row(out, f"real limits, P={workers}", table, r, True)
        sim.command("limits on")
        workers = args.parallelism or workers_for(get_table("events"), None)
        r = pipeline(sim, "events", *windows["events"], workers, True, args.timeout, decode_processes=0)
        print_row(out, "  decoded in-process", "events", r, True)
        sim.command("latency 0")
        for table in ("events", "profiles"):
            workers = args.parallelism or workers_for(get_table(table), None)
            sim.command("limits off")
            r = pipeline(sim, table, *windows[table], workers, False, args.timeout)
            results[f"lifted/{table}"] = r
            print_row(out, f"lifted, P={workers}", table, r, False)
        sim.command("limits off")
        workers = args.parallelism or workers_for(get_table("events"), None)
        r = pipeline(sim, "events", start, end, workers, False, args.timeout)
        results["lifted/events-all"] = r
        print_row(out, f"lifted, P={workers}, all", "events", r, False)
        sim.command("latency 1")
        out.write("\n")
        merge = run_json(
            [sys.executable, "-m", "omniload_assets_tests.bench.merge", f"--rows={args.merge_rows}"],
            args.timeout,
        )
        out.write(
            f"DuckDB merge: {merge['rows']:,} rows into a {merge['rows']:,}-row table "
            f"({merge['updated']:,} updated, {merge['inserted']:,} inserted) in {merge['seconds']:.1f} s = "
            f"{merge['rows_per_s']:,.0f} rows/s ({merge['threads']} threads, memory_limit "
            f"{merge['memory_limit']}, peak RSS {merge['peak_rss_mb']:.0f} MB)\n"
        )
        unlimited = run_json(
            [
                sys.executable,
                "-m",
                "omniload_assets_tests.bench.merge",
                f"--rows={args.merge_rows}",
                "--memory-limit=none",
            ],
            args.timeout,
        )
        out.write(
            f"DuckDB merge without memory_limit (DuckDB's default): {unlimited['seconds']:.1f} s = "
            f"{unlimited['rows_per_s']:,.0f} rows/s, peak RSS {unlimited['peak_rss_mb']:.0f} MB\n"
        )
        out.write(decoders() + "\n")
        if args.ingestr_python:
            # ingestr reads one day at a time up to now: the last days of the events window.
            compare_start = end - timedelta(days=args.compare_days)
            workers = args.parallelism or workers_for(get_table("events"), None)
            sim.command("limits on")
            ours = pipeline(sim, "events", compare_start, end, workers, True, args.timeout)
            print_row(out, f"real limits, P={workers}", "events", ours, True)
            sim.command("limits on")
            database = str(Path(work) / "ingestr.duckdb")
            env = {**os.environ, "DISABLE_TELEMETRY": "1"}
            cmd = [
                args.ingestr_python,
                str(HERE / "ingestr_run.py"),
                sim.url,
                sim.api_key,
                compare_start.date().isoformat(),
                database,
                str(args.ingestr_parallelism),
            ]
            before = sim.command("stats")
            ing = run_json(cmd, args.timeout, env)
            after = sim.command("stats")
            ours_rate = ours["records"] / ours["extract_s"]
            ours_e2e = ours["records"] / ours["total_s"]
            rate = ing["rows"] / ing["seconds"]
            requests = after["requests"] - before["requests"]
            out.write(
                f"ingestr {ing['version']} events, --extract-parallelism {args.ingestr_parallelism}: "
                f"{ing['rows']:,} rows "
                f"in {ing['seconds']:.1f} s = {rate:,.0f} rows/s end to end ({requests:,} requests, "
                f"{after['throttled'] - before['throttled']} 429s, peak RSS {ing['peak_rss_mb']:.0f} MB)\n"
                f"omniload events end to end (extract + merge): {ours_e2e:,.0f} rows/s = "
                f"{ours_e2e / rate:.1f}x ingestr (extraction alone {ours_rate / rate:.1f}x)\n"
            )
        else:
            out.write("ingestr: skipped (no --ingestr-python)\n")
        out.write(f"\nbenchmark wall time {time.perf_counter() - t0:.0f} s\n")
    finally:
        sim.close()
        for path in Path(work).glob("*"):
            path.unlink()
        Path(work).rmdir()


if __name__ == "__main__":
    main()
