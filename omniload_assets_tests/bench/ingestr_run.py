"""Run ingestr 0.14.x's Klaviyo events source against the simulator (its own venv runs this file).

Not imported by the product: ``python ingestr_run.py BASE_URL API_KEY START DUCKDB PARALLELISM [END]``.
Patched inside this process only: ingestr's module-level ``BASE_URL`` (to the simulator), the
``revision`` header (ingestr pins 2024-07-15; the simulator serves only 2026-10-15, and events have
the same shape in both), and the filter datetimes' ``+00:00`` sent unencoded (arrives as a space;
sent as ``Z`` instead). Prints one JSON line.
"""

import importlib.metadata
import json
import os
import resource
import sys
import time

os.environ["DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")

REVISION = "2026-10-15"


def main() -> None:
    base_url, api_key, start, database, parallelism = sys.argv[1:6]
    end = ["--interval-end", sys.argv[6]] if len(sys.argv) > 6 else []
    import ingestr.src.klaviyo as source
    import ingestr.src.klaviyo.client as client
    import ingestr.src.klaviyo.helpers as helpers

    client.BASE_URL = base_url.rstrip("/") + "/api"
    get_headers = client.KlaviyoClient._KlaviyoClient__get_headers

    def headers(self: object) -> dict:
        return {**get_headers(self), "revision": REVISION}

    client.KlaviyoClient._KlaviyoClient__get_headers = headers
    split = helpers.split_date_range

    def split_utc(start_date: object, end_date: object) -> list:
        return [(a.replace("+00:00", "Z"), b.replace("+00:00", "Z")) for a, b in split(start_date, end_date)]

    source.split_date_range = split_utc
    client.print = lambda *args, **kwargs: None  # one line per day window otherwise

    from ingestr.main import app

    started = time.perf_counter()
    app(
        [
            "ingest",
            "--source-uri",
            f"klaviyo://?api_key={api_key}",
            "--source-table",
            "events",
            "--dest-uri",
            f"duckdb:///{database}",
            "--dest-table",
            "dest.events",
            "--interval-start",
            start,
            "--extract-parallelism",
            parallelism,
            *end,
            "--progress",
            "log",
            "--yes",
        ],
        standalone_mode=False,
    )
    seconds = time.perf_counter() - started
    import duckdb

    with duckdb.connect(database, read_only=True) as conn:
        rows = conn.execute("SELECT count(*) FROM dest.events").fetchone()[0]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        json.dumps(
            {
                "rows": rows,
                "version": importlib.metadata.version("ingestr"),
                "seconds": seconds,
                "cpu_s": usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime,
                "peak_rss_mb": max(usage.ru_maxrss, children.ru_maxrss) / 1024,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
