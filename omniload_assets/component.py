"""``omniload_assets.KlaviyoComponent``: the Klaviyo assets as a Dagster component configured in YAML.

.. code-block:: yaml

    # defs/klaviyo_second/defs.yaml
    type: omniload_assets.KlaviyoComponent
    attributes: {tables: [events, profiles], database: second.duckdb, key_prefix: klaviyo_second}

Its attributes are :class:`~omniload_assets.factory.KlaviyoOptions` (every one optional), and it
builds :func:`~omniload_assets.factory.klaviyo_definitions`. ``dg scaffold defs
omniload_assets.KlaviyoComponent <name>`` writes a ``defs.yaml`` whose key prefix, group and
database are named after ``<name>``.
"""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
import yaml
from pydantic import BaseModel, Field

from omniload_assets.factory import KlaviyoOptions, klaviyo_definitions
from omniload_assets.klaviyo.catalog import TABLES


class KlaviyoScaffoldParams(BaseModel):
    """What ``dg scaffold defs omniload_assets.KlaviyoComponent <name>`` may be told."""

    tables: list[str] | None = Field(default=None, description="Tables to load (default: all 20).")
    database: str | None = Field(default=None, description="DuckDB database (default: <name>.duckdb).")
    key_prefix: str | None = Field(default=None, description="Asset key prefix (default: <name>).")


def scaffold_attributes(name: str, params: KlaviyoScaffoldParams) -> dict[str, object]:
    """The attributes of a new ``defs.yaml`` in the folder ``name``: named after it, every table."""
    stem = re.sub(r"[^A-Za-z0-9_]", "_", name) or "klaviyo"
    return {
        "tables": params.tables or [t.name for t in TABLES],
        "key_prefix": params.key_prefix or stem,
        "group_name": stem,
        "database": params.database or f"{stem}.duckdb",
        "schema_name": "klaviyo",
        "api_key_env_var": "KLAVIYO_API_KEY",
    }


class KlaviyoScaffolder(dg.Scaffolder[KlaviyoScaffoldParams]):
    """Writes ``defs.yaml`` with every attribute a user usually sets, and a comment on the rest."""

    @classmethod
    def get_scaffold_params(cls) -> type[KlaviyoScaffoldParams]:
        return KlaviyoScaffoldParams

    def scaffold(self, request: dg.ScaffoldRequest[KlaviyoScaffoldParams]) -> None:
        if request.scaffold_format != "yaml":
            dg.scaffold_component(request)
            return
        target = Path(request.target_path)
        attributes = scaffold_attributes(target.name, request.params)
        body = yaml.safe_dump(
            {"type": request.type_name, "attributes": attributes}, sort_keys=False, default_flow_style=False
        )
        header = (
            "# The Klaviyo tables of omniload_assets as Dagster assets (see its README, Component).\n"
            "# Unset attributes come from the environment: OMNILOAD_START_DATE, OMNILOAD_ASSET_OWNERS...\n"
            "# Also: start_date, owners, tags, base_url, predictive_analytics, automation: {tables,\n"
            "# schedules, sensor, deletion_sweep, running, incremental_cron, replace_cron, sweep_cron,\n"
            "# lookback_days, sensor_interval_s, sweep_tables, per_table: {events: {cron, lookback_days,\n"
            "# schedule, sensor}}}. Two components need two key_prefixes.\n"
        )
        target.mkdir(parents=True, exist_ok=True)
        (target / "defs.yaml").write_text(header + body, encoding="utf-8")


@dg.scaffold_with(KlaviyoScaffolder)
class KlaviyoComponent(dg.Component, dg.Resolvable, KlaviyoOptions):
    """Klaviyo tables loaded into DuckDB, with checks, freshness policies and automation.

    One asset per table, blocking primary-key checks, jobs, schedules, a change sensor and a
    deletion sweep. Attributes left unset come from the environment (OMNILOAD_*); tables default
    to all 20.
    """

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        options = KlaviyoOptions.model_validate(self.model_dump(exclude_unset=True))
        return klaviyo_definitions(options)
