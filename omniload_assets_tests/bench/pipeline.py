"""One measured run of the product's pipeline in its own process: extract, stage, merge.

The same steps as an asset materialization (``assets.extract`` then the IO manager's merge), without
Dagster's run machinery: the client pages the window with ``parallelism`` workers, rows are staged
to Parquet as they arrive, and one transaction merges them into DuckDB. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

from omniload_assets import settings
from omniload_assets.klaviyo.catalog import get_table
from omniload_assets.klaviyo.client import ClientStats, KlaviyoClient
from omniload_assets.klaviyo.decoders import decoder_for
from omniload_assets.klaviyo.extraction import extract
from omniload_assets.klaviyo.windows import TimeWindow
from omniload_assets.warehouse.connection import open_database
from omniload_assets.warehouse.staging import ParquetStager
from omniload_assets.warehouse.writer import merge_into


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu_s() -> float:
    """CPU of this process's finished children: here, the decode processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def rss_mb(pid: int | str) -> float:
    """A process's resident set in MB now (Linux); 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration, ValueError):
        return 0.0


class TreePeak:
    """Samples this process's RSS plus its decode processes' every 20 ms: the run's peak at any
    one moment (the sum of each process's own peak is an upper bound of it)."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            # multiprocessing's own record of this process's children (the decode processes): cheap,
            # unlike scanning /proc for 40 threads' children every 20 ms (which cost the run ~15%
            # of its CPU in the first measurement of this bench, commit 5abf798).
            children = multiprocessing.active_children()
            now = rss_mb("self") + sum(rss_mb(p.pid) for p in children if p.pid is not None)
            self.peak_mb = max(self.peak_mb, now)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_mb


def run(args: argparse.Namespace) -> dict[str, float]:
    spec = get_table(args.table)
    window = TimeWindow(args.start, args.end)
    stats = ClientStats()
    workdir = Path(tempfile.mkdtemp(prefix="omniload-bench-", dir=args.workdir))
    stager = ParquetStager(spec, str(workdir / "staging"))
    cpu0, t0 = cpu_s(), time.perf_counter()
    decoder = decoder_for(spec, args.decode_processes)
    tree = TreePeak()
    with KlaviyoClient(
        args.api_key, base_url=args.base_url, pace=not args.no_pace, max_connections=args.parallelism + 4
    ) as client:
        extract(client, spec, window, decoder, stager.add, parallelism=args.parallelism, stats=stats)
    peak_tree_extract = tree.stop()
    decoder.close()
    staged = stager.finish(window, stats.as_dict(), decoder.column_types())
    extract_s, extract_cpu = time.perf_counter() - t0, cpu_s() - cpu0
    rss_extract = peak_rss_mb()
    decoders_cpu = children_cpu_s()
    t1 = time.perf_counter()
    # As the IO manager writes: under OMNILOAD_DUCKDB_MEMORY_LIMIT (default 150MB).
    with open_database(workdir / "bench.duckdb", memory_limit=settings.duckdb_memory_limit()) as conn:
        result = merge_into(
            conn,
            schema="klaviyo",
            table=spec.asset_name,
            files=staged.files,
            primary_key=spec.primary_key,
            incremental_key=spec.incremental_key,
            column_types=staged.column_types,
            run_id="bench",
        )
    load_s = time.perf_counter() - t1
    staged.cleanup()
    return {
        "records": stats.records,
        "rows_loaded": result.table_rows,
        "requests": stats.requests,
        "pages": stats.pages,
        "throttled": stats.throttled,
        "pacing_wait_s": stats.pacing_wait_s,
        "extract_s": extract_s,
        "extract_cpu_s": extract_cpu,
        "decoders_cpu_s": decoders_cpu,
        "decoders_peak_rss_mb": decoder.peak_rss_mb,
        "load_s": load_s,
        "total_s": extract_s + load_s,
        "peak_rss_extract_mb": rss_extract,
        "peak_rss_tree_extract_mb": peak_tree_extract,
        "peak_rss_mb": peak_rss_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m omniload_assets_tests.bench.pipeline")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--start", type=datetime.fromisoformat, required=True)
    parser.add_argument("--end", type=datetime.fromisoformat, required=True)
    parser.add_argument("--parallelism", type=int, required=True)
    parser.add_argument("--no-pace", action="store_true", help="no client-side pacing (limits lifted)")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--decode-processes", type=int, default=None, help="default: the product's")
    print(json.dumps(run(parser.parse_args())), flush=True)


if __name__ == "__main__":
    main()
