"""Dagster's own floor: one asset per catalogue table that does nothing, run the ways the product runs.

``dagster asset materialize -m omniload_assets_tests.bench.bare_asset --select bare/events
--partition-range A...B`` (or ``--select '*'``) times a partition-range run of them, in process like
the product's default; ``python -m omniload_assets_tests.bench.bare_asset START END [TABLES]`` times
what ``omniload ingest`` does without a Dagster home: import Dagster, an ephemeral instance, one run
that gives the partitioned ones a window config, and an exit without interpreter teardown. The
assets are partitioned as the product's are (daily from ``OMNILOAD_START_DATE``, tags and coupons
not at all). Whatever these cost is Dagster's, not the product's (README, Performance).
"""

import os
import sys
import time
import warnings

warnings.simplefilter("ignore")  # BackfillPolicy's beta notice
T0 = time.perf_counter()

import dagster as dg  # noqa: E402  (timed from the interpreter's start, as the CLI is)

from omniload_assets.klaviyo.catalog import TABLES, TableSpec  # noqa: E402

START = os.environ.get("OMNILOAD_START_DATE", "2022-01-01")
DAILY = dg.DailyPartitionsDefinition(start_date=START, timezone="UTC", end_offset=1)


class Window(dg.Config):
    start: str | None = None
    end: str | None = None


def bare_asset(spec: TableSpec) -> dg.AssetsDefinition:
    # No ``from __future__ import annotations`` here: Dagster reads the config class from the annotation.
    @dg.asset(
        key=["bare", spec.asset_name],
        partitions_def=DAILY if spec.partitioned else None,
        backfill_policy=dg.BackfillPolicy.single_run(),
    )
    def _bare(context: dg.AssetExecutionContext, config: Window) -> dg.MaterializeResult:
        """Nothing: the cost of its run is Dagster's alone."""
        return dg.MaterializeResult(metadata={"window_start": config.start or "", "rows_written": 0})

    return _bare


ASSETS = {spec.name: bare_asset(spec) for spec in TABLES}
defs = dg.Definitions(assets=list(ASSETS.values()), executor=dg.in_process_executor)


def main() -> None:
    """Run the named bare assets once over ``[START, END)`` as ``omniload ingest`` runs tables."""
    start, end = sys.argv[1:3]
    names = sys.argv[3].split(",") if len(sys.argv) > 3 else ["events"]
    assets = list(ASSETS.values()) if names == ["all"] else [ASSETS[n] for n in names]
    window = {"start": start, "end": end}
    ops = {a.op.name: {"config": window} for a in assets if a.partitions_def is not None}
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            assets,
            instance=instance,
            run_config={"ops": ops, "loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
        )
    assert result.success
    print(f"{time.perf_counter() - T0:.3f}", flush=True)
    os._exit(0)  # as ``omniload``'s console script ends: no interpreter teardown


if __name__ == "__main__":
    main()
