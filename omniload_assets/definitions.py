"""The code location's table of contents: assets, resources, checks, automation and the deletion sweep."""

from __future__ import annotations

import dagster as dg

from omniload_assets import settings
from omniload_assets.assets import IO_MANAGER_KEY, build_assets
from omniload_assets.automation import build_jobs, build_schedules
from omniload_assets.checks import build_checks
from omniload_assets.deletions import SWEEP_RESOURCE, DeletionSweepResource
from omniload_assets.klaviyo.client import DEFAULT_BASE_URL
from omniload_assets.klaviyo.resource import KlaviyoResource
from omniload_assets.sensors import build_sensors
from omniload_assets.warehouse.io_manager import KlaviyoDuckDBIOManager


def build_resources() -> dict[str, dg.ConfigurableResource | dg.ConfigurableIOManagerFactory]:
    """Resources for this deployment, configured from the environment (see ``settings``)."""
    return {
        "klaviyo": KlaviyoResource(
            api_key=dg.EnvVar("KLAVIYO_API_KEY"),
            base_url=settings.env("KLAVIYO_BASE_URL") or DEFAULT_BASE_URL,
        ),
        IO_MANAGER_KEY: KlaviyoDuckDBIOManager(
            database=settings.duckdb_path(),
            schema=settings.duckdb_schema(),
            lock_timeout_s=settings.lock_timeout_s(),
            memory_limit=settings.duckdb_memory_limit(),
        ),
        SWEEP_RESOURCE: DeletionSweepResource(
            hard_delete=settings.hard_delete(), allow_empty=settings.sweep_allow_empty()
        ),
    }


def build_executor() -> dg.ExecutorDefinition:
    """Dagster's default executor, but in process unless ``OMNILOAD_EXECUTOR=multiprocess``.

    A step process re-imports the code location (1.5-2 s of CPU each, two per table with its checks):
    for one table that was more than half of a `dagster asset materialize` (7.7 -> 3.4 s), and on
    2 cores 30 of them made up most of a 15-table run. In process, the tables of a run go one after
    another, each with its own worker threads (README, Performance). Run config still picks either
    (``execution: {config: {multiprocess: {...}}}``), as with Dagster's default.
    """
    default = {settings.executor_name(): {}}
    return dg.multi_or_in_process_executor.configured(
        lambda config: config or default,
        name="multi_or_in_process_executor",
        config_schema=dg.Field(
            dg.Permissive(),
            default_value={},
            description="multiprocess: {...} or in_process: {...}, as Dagster's default executor takes; "
            f"empty: {settings.executor_name()} (OMNILOAD_EXECUTOR)",
        ),
    )


def build_definitions() -> dg.Definitions:
    """Everything the code location holds, read from the environment at call time.

    Every ``OMNILOAD_*`` variable is checked first (``settings.validate_all``): a bad one fails the
    load, ``dagster definitions validate`` included, with one line naming it.
    """
    settings.validate_all()
    jobs = build_jobs()
    return dg.Definitions(
        assets=build_assets(),
        asset_checks=build_checks(),
        jobs=jobs.all(),
        schedules=build_schedules(jobs),
        sensors=build_sensors(jobs.incremental),
        resources=build_resources(),
        executor=build_executor(),
    )


defs = build_definitions()
