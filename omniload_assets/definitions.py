"""The code location's table of contents: assets, resources, checks and automation."""

from __future__ import annotations

import dagster as dg

from omniload_assets import settings
from omniload_assets.assets import IO_MANAGER_KEY, klaviyo_assets
from omniload_assets.klaviyo.resource import KlaviyoResource
from omniload_assets.warehouse.io_manager import KlaviyoDuckDBIOManager


def build_resources() -> dict[str, object]:
    """Resources for this deployment, configured from the environment (see ``settings``)."""
    return {
        "klaviyo": KlaviyoResource(
            api_key=dg.EnvVar("KLAVIYO_API_KEY"),
            base_url=settings.env("KLAVIYO_BASE_URL") or "https://a.klaviyo.com",
        ),
        IO_MANAGER_KEY: KlaviyoDuckDBIOManager(
            database=settings.duckdb_path(),
            schema=settings.duckdb_schema(),
            lock_timeout_s=settings.lock_timeout_s(),
        ),
    }


defs = dg.Definitions(assets=klaviyo_assets, resources=build_resources())
