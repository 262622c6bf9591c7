"""`make demo`: every table from the bundled Klaviyo simulator into a DuckDB file, no account needed.

The child tables (list and segment members, campaign messages, flow actions and messages) load in
the same run as their parents, after them.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, date, datetime

import dagster as dg
import duckdb

from omniload_assets.klaviyo.catalog import TABLES
from omniload_assets.warehouse.reads import qualified_name
from omniload_assets_tests.simulator import KlaviyoSimulator

FIRST_DAY = date(2024, 1, 1)
LAST_DAY = date(2024, 1, 31)
DEMO_SCALE = {"flows": 8, "flow-actions": 3}


def main() -> None:
    database = os.environ.get("OMNILOAD_DUCKDB_PATH", "demo.duckdb")
    start = datetime.combine(FIRST_DAY, datetime.min.time(), tzinfo=UTC)
    end = datetime(2024, 2, 1, tzinfo=UTC)
    # Flow actions and their messages are read one request per flow and per action, at Klaviyo's
    # 3 requests/s and 60/min: 8 flows of up to 3 actions keep that wait to seconds (24 flows: 90 s).
    with KlaviyoSimulator(seed=7, start=start, end=end, scale=DEMO_SCALE) as sim:
        os.environ.update(
            KLAVIYO_API_KEY=sim.api_key,
            KLAVIYO_BASE_URL=sim.base_url,
            OMNILOAD_START_DATE=FIRST_DAY.isoformat(),
            OMNILOAD_DUCKDB_PATH=database,
        )
        # Imported after the environment is set: definitions read it when they are built.
        from omniload_assets.definitions import build_definitions
        from omniload_assets.runner import materialize_tables

        began = time.monotonic()
        print(f"Klaviyo simulator at {sim.base_url}; loading {FIRST_DAY}..{LAST_DAY} into {database}")
        with dg.DagsterInstance.ephemeral() as instance:
            materialize_tables(
                build_definitions(),
                TABLES,
                first_day=FIRST_DAY,
                last_day=LAST_DAY,
                instance=instance,
                # Dagster's step-by-step console log is for `dagster dev`; the demo prints a summary.
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            )
        elapsed = time.monotonic() - began
    with duckdb.connect(database, read_only=True) as conn:
        print(f"\n{'table':<30}{'rows':>10}")
        for spec in TABLES:
            (count,) = conn.execute(
                f"SELECT count(*) FROM {qualified_name(conn, 'klaviyo', spec.asset_name)}"
            ).fetchone()
            print(f"{'klaviyo.' + spec.asset_name:<30}{count:>10,}")
    print(f"\nall {len(TABLES)} tables loaded in {elapsed:.1f} s -> {database}")


if __name__ == "__main__":
    sys.exit(main())
