"""``with_fields``: the one way resources are copied with changes, for Dagster to see them."""

from __future__ import annotations

import dagster as dg

from omniload_assets.klaviyo.resource import KlaviyoResource, with_fields
from omniload_assets.warehouse.io_manager import KlaviyoDuckDBIOManager


def test_a_copy_keeps_the_envvar_key_and_takes_the_changes() -> None:
    klaviyo = KlaviyoResource(api_key=dg.EnvVar("KLAVIYO_API_KEY"), base_url="http://127.0.0.1:8123")
    for copy in (with_fields(klaviyo, max_retries=1), klaviyo.model_copy(update={"max_retries": 1})):
        assert isinstance(copy.api_key, dg.EnvVar)
        assert (copy.max_retries, copy.base_url) == (1, "http://127.0.0.1:8123")
        assert copy is not klaviyo and klaviyo.max_retries == 5


def test_a_copy_passes_fields_by_their_aliases() -> None:
    manager = KlaviyoDuckDBIOManager(database="x.duckdb", schema="dest")
    copy = with_fields(manager, table_names={"events": "ev"})
    assert (copy.database, copy.schema_, copy.table_names) == ("x.duckdb", "dest", {"events": "ev"})
