"""Klaviyo to DuckDB as Dagster software-defined assets."""

from omniload_assets.definitions import defs

__all__ = ["defs"]
