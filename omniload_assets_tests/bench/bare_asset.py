"""Dagster's own floor: a daily-partitioned asset that does nothing, run the ways the product is run.

``dagster asset materialize -m omniload_assets_tests.bench.bare_asset --select bare --partition-range
A...B`` times a partition-range run of it (in process, like the product's default); ``python -m
omniload_assets_tests.bench.bare_asset START END`` times what ``omniload ingest`` does without a
Dagster home: import Dagster, an ephemeral instance, one run with a window config. Whatever these cost
is Dagster's, not the product's (README, Performance).
"""

import os
import sys
import time
import warnings

warnings.simplefilter("ignore")  # BackfillPolicy's beta notice
T0 = time.perf_counter()

import dagster as dg  # noqa: E402  (timed from the interpreter's start, as the CLI is)

START = os.environ.get("OMNILOAD_START_DATE", "2022-01-01")


class Window(dg.Config):
    start: str | None = None
    end: str | None = None


# No ``from __future__ import annotations`` here: Dagster reads the config class from the annotation.
@dg.asset(
    partitions_def=dg.DailyPartitionsDefinition(start_date=START, timezone="UTC", end_offset=1),
    backfill_policy=dg.BackfillPolicy.single_run(),
)
def bare(context: dg.AssetExecutionContext, config: Window) -> dg.MaterializeResult:
    """Nothing: the cost of its run is Dagster's alone."""
    return dg.MaterializeResult(metadata={"window_start": config.start or "", "rows_written": 0})


defs = dg.Definitions(assets=[bare], executor=dg.in_process_executor)


def main() -> None:
    """Run ``bare`` once over ``[START, END)`` as ``omniload ingest`` runs a table; print the seconds."""
    start, end = sys.argv[1:3]
    warnings.simplefilter("ignore")
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [bare],
            instance=instance,
            run_config={
                "ops": {"bare": {"config": {"start": start, "end": end}}},
                "loggers": {"console": {"config": {"log_level": "CRITICAL"}}},
            },
        )
    assert result.success
    print(f"{time.perf_counter() - T0:.3f}")


if __name__ == "__main__":
    main()
