"""The factory, the component and the default location built from them (issue 20): which tables, under
which keys and names; two sets side by side; ``dg`` scaffolding and listing; ``make dev``'s pools;
blocking primary-key checks; freshness policies."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml

from omniload_assets import KlaviyoOptions, klaviyo_definitions
from omniload_assets.checks import DELETED, NOT_NULL, UNIQUE
from omniload_assets.klaviyo.catalog import TABLES, get_table
from omniload_assets.settings import SettingsError
from omniload_assets.warehouse.reads import qualified_name

BIN = Path(sys.executable).parent
AT = datetime(2024, 1, 10, 3, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[1]
DEFAULT_JOBS = {"klaviyo_incremental_job", "klaviyo_replace_job", "klaviyo_deletion_sweep"}
DEFAULT_SCHEDULES = {
    "klaviyo_incremental_schedule",
    "klaviyo_replace_schedule",
    "klaviyo_deletion_sweep_schedule",
}


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default environment, DuckDB in ``tmp_path``; returns that database's path."""
    for name in ("OMNILOAD_TABLES", "OMNILOAD_AUTOMATION", "OMNILOAD_SWEEP_TABLES", "OMNILOAD_ASSET_OWNERS"):
        monkeypatch.delenv(name, raising=False)
    database = tmp_path / "klaviyo.duckdb"
    monkeypatch.setenv("OMNILOAD_DUCKDB_PATH", str(database))
    monkeypatch.setenv("KLAVIYO_API_KEY", "pk_test")
    return database


def asset_keys(defs: dg.Definitions) -> set[str]:
    return {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}


def check_keys(defs: dg.Definitions) -> set[tuple[str, str]]:
    return {(k.asset_key.to_user_string(), k.name) for k in defs.resolve_asset_graph().asset_check_keys}


def names(defs: dg.Definitions) -> dict[str, set[str]]:
    return {
        "jobs": {j.name for j in defs.jobs or []},
        "schedules": {s.name for s in defs.schedules or []},
        "sensors": {s.name for s in defs.sensors or []},
        "resources": set(defs.resources or {}),
    }


def spec_of(defs: dg.Definitions, key: str) -> dg.AssetSpec:
    asset_key = dg.AssetKey.from_user_string(key)
    return defs.get_assets_def(asset_key).specs_by_key[asset_key]


def job_nodes(defs: dg.Definitions, job: str) -> set[str]:
    return {node.name for node in defs.resolve_job_def(job).graph.nodes}


# -- the default location ------------------------------------------------------------------------


def test_the_default_location_is_unchanged(env: Path) -> None:
    from omniload_assets.definitions import build_definitions, defs

    built = build_definitions()
    assert asset_keys(built) == {f"klaviyo/{t.asset_name}" for t in TABLES}
    expected = {(f"klaviyo/{t.asset_name}", c) for t in TABLES for c in (UNIQUE, NOT_NULL)}
    expected |= {(f"klaviyo/{t.asset_name}", DELETED) for t in TABLES if t.strategy == "merge"}
    assert check_keys(built) == expected
    assert names(built) == {
        "jobs": DEFAULT_JOBS,
        "schedules": DEFAULT_SCHEDULES,
        "sensors": {"klaviyo_change_sensor"},
        "resources": {"klaviyo", "klaviyo_duckdb", "klaviyo_sweep"},
    }
    for table in TABLES:
        assets_def = built.get_assets_def(dg.AssetKey(["klaviyo", table.asset_name]))
        assert assets_def.op.pool == f"klaviyo_{table.asset_name}"
        assert spec_of(built, f"klaviyo/{table.asset_name}").group_name == "klaviyo"
    assert {n for n in job_nodes(built, "klaviyo_replace_job") if not n.endswith("_checks")} == {
        f"klaviyo__{t.asset_name}" for t in TABLES if not t.partitioned
    }
    # The module's location (workspace.yaml, dagster -m omniload_assets, dg) is the same set.
    location = defs()
    assert asset_keys(location) == asset_keys(built) and names(location) == names(built)
    assert isinstance(built.executor, dg.ExecutorDefinition)


def test_omniload_tables_selects_the_default_locations_tables(env: Path, monkeypatch) -> None:
    from omniload_assets.definitions import build_definitions

    monkeypatch.setenv("OMNILOAD_TABLES", "events, Profiles")
    defs = build_definitions()
    assert asset_keys(defs) == {"klaviyo/events", "klaviyo/profiles"}
    assert {a for a, _ in check_keys(defs)} == {"klaviyo/events", "klaviyo/profiles"}
    # Automation over those two only: no replace job or schedule, a sweep of profiles alone.
    assert names(defs)["jobs"] == {"klaviyo_incremental_job", "klaviyo_deletion_sweep"}
    assert names(defs)["schedules"] == {"klaviyo_incremental_schedule", "klaviyo_deletion_sweep_schedule"}
    assert names(defs)["sensors"] == {"klaviyo_change_sensor"}
    assert job_nodes(defs, "klaviyo_incremental_job") == {
        "klaviyo__events",
        "klaviyo__profiles",
        "events_checks",
        "profiles_checks",
    }
    assert job_nodes(defs, "klaviyo_deletion_sweep") == {"sweep_profiles"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "flows,flow_messages",
            "OMNILOAD_TABLES='flows,flow_messages': flow-messages is read per flow-actions id, so it "
            "needs its parent table: add flow-actions to OMNILOAD_TABLES",
        ),
        ("events,evnts", "OMNILOAD_TABLES='events,evnts': 'evnts' is not a table; use names from: events,"),
        (",", "OMNILOAD_TABLES=',' names no table"),
    ],
)
def test_a_bad_omniload_tables_fails_the_load_with_one_line(env: Path, monkeypatch, value, message) -> None:
    from omniload_assets.definitions import build_definitions

    monkeypatch.setenv("OMNILOAD_TABLES", value)
    with pytest.raises(SettingsError) as caught:
        build_definitions()
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


# -- the factory ----------------------------------------------------------------------------------


def test_the_factory_builds_exactly_what_its_options_say(env: Path, tmp_path: Path) -> None:
    second = tmp_path / "second.duckdb"
    options = KlaviyoOptions(
        tables=["events", "lists", "list_profiles"],
        key_prefix="raw/klaviyo",
        group_name="raw_klaviyo",
        owners=["team:growth"],
        tags={"source": "klaviyo"},
        database=str(second),
        schema_name="crm",
        start_date="2024-01-01",
    )
    defs = klaviyo_definitions(options)
    assert asset_keys(defs) == {"raw/klaviyo/events", "raw/klaviyo/lists", "raw/klaviyo/list_profiles"}
    for key in asset_keys(defs):
        spec = spec_of(defs, key)
        assert spec.group_name == "raw_klaviyo" and list(spec.owners) == ["team:growth"]
        assert spec.tags["source"] == "klaviyo" and "klaviyo/strategy" in spec.tags
        assert spec.metadata["dagster/table_name"] == f"crm.{key.rsplit('/', 1)[-1]}"
    assert {d.asset_key.to_user_string() for d in spec_of(defs, "raw/klaviyo/list_profiles").deps} == {
        "raw/klaviyo/lists"
    }
    events = defs.get_assets_def(dg.AssetKey.from_user_string("raw/klaviyo/events"))
    assert events.partitions_def is not None
    assert events.partitions_def.get_first_partition_key() == "2024-01-01"
    assert names(defs) == {
        "jobs": {"raw_klaviyo_incremental_job", "raw_klaviyo_replace_job", "raw_klaviyo_deletion_sweep"},
        "schedules": {
            "raw_klaviyo_incremental_schedule",
            "raw_klaviyo_replace_schedule",
            "raw_klaviyo_deletion_sweep_schedule",
        },
        "sensors": {"raw_klaviyo_change_sensor"},
        "resources": {"raw_klaviyo", "raw_klaviyo_duckdb", "raw_klaviyo_sweep"},
    }
    warehouse = defs.resources["raw_klaviyo_duckdb"]
    assert warehouse.database == str(second) and warehouse.schema_name == "crm"


def test_automation_options_choose_what_runs_and_when(env: Path) -> None:
    options = KlaviyoOptions(
        tables=["events", "profiles", "tags"],
        key_prefix=["eu", "klaviyo"],
        automation={
            "tables": ["events", "tags"],
            "sensor": False,
            "deletion_sweep": False,
            "running": ["incremental_schedule"],
            "incremental_cron": "*/15 * * * *",
            "replace_cron": "@daily",
        },
    )
    defs = klaviyo_definitions(options)
    assert names(defs)["jobs"] == {"eu_klaviyo_incremental_job", "eu_klaviyo_replace_job"}
    assert names(defs)["sensors"] == set()
    schedules = {s.name: s for s in defs.schedules or []}
    assert set(schedules) == {"eu_klaviyo_incremental_schedule", "eu_klaviyo_replace_schedule"}
    assert schedules["eu_klaviyo_incremental_schedule"].cron_schedule == "*/15 * * * *"
    assert schedules["eu_klaviyo_incremental_schedule"].default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedules["eu_klaviyo_replace_schedule"].default_status == dg.DefaultScheduleStatus.STOPPED
    assert job_nodes(defs, "eu_klaviyo_incremental_job") == {
        "eu__klaviyo__events",
        "eu_klaviyo_events_checks",
    }
    # profiles is loaded but not automated: materialized by hand only.
    assert "eu/klaviyo/profiles" in asset_keys(defs)


def test_two_sets_merge_into_one_location_without_clashes(env: Path, tmp_path: Path) -> None:
    default = klaviyo_definitions()
    second = klaviyo_definitions(
        KlaviyoOptions(
            tables=["events", "profiles"],
            key_prefix="klaviyo_second",
            database=str(tmp_path / "second.duckdb"),
        )
    )
    merged = dg.Definitions.merge(default, second)
    dg.Definitions.validate_loadable(merged)
    assert asset_keys(merged) == asset_keys(default) | {"klaviyo_second/events", "klaviyo_second/profiles"}
    for kind, found in names(merged).items():
        assert found == names(default)[kind] | names(second)[kind], kind
        assert not names(default)[kind] & names(second)[kind], kind
    assert len(check_keys(merged)) == len(check_keys(default)) + len(check_keys(second))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"tables": ["flow-messages", "flows"]},
            "tables=['flow-messages', 'flows']: flow-messages is read per flow-actions id, so it needs its "
            "parent table: add flow-actions to tables",
        ),
        ({"tables": ["list-profiles"]}, "add lists to tables"),
        ({"tables": ["event"]}, "tables=['event']: 'event' is not a table"),
        ({"key_prefix": "raw klaviyo"}, "key_prefix='raw klaviyo' is not an asset key prefix"),
        ({"start_date": "yesterday"}, "start_date='yesterday' is not a date"),
        ({"owners": ["nobody"]}, "owners: 'nobody' is not an owner"),
        (
            {"automation": {"incremental_cron": "hourly"}},
            "automation.incremental_cron='hourly' is not a cron",
        ),
        ({"automation": {"running": ["sometimes"]}}, "automation.running: 'sometimes' is not a schedule"),
        ({"tables": ["events"], "automation": {"tables": ["tags"]}}, "automation.tables: tags is not one of"),
        ({"database": "postgres://x/y"}, "database='postgres://x/y' is not a DuckDB database"),
    ],
)
def test_a_bad_option_fails_with_one_line_naming_it(env: Path, options: dict, message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        klaviyo_definitions(KlaviyoOptions(**options))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_prefixed_set_loads_its_tables_into_its_own_database(
    env: Path, simulator, tmp_path: Path, instance, monkeypatch
) -> None:
    """Another key prefix, resource keys, API key variable, database and schema, end to end."""
    monkeypatch.setenv("OMNILOAD_STAGING_DIR", str(tmp_path / "staging"))
    monkeypatch.setenv("SECOND_KLAVIYO_KEY", simulator.api_key)
    monkeypatch.setenv("KLAVIYO_API_KEY", "pk_not_this_one")
    second = tmp_path / "second.duckdb"
    options = KlaviyoOptions(
        tables=["tags"],
        key_prefix="raw/klaviyo",
        database=str(second),
        schema_name="crm",
        api_key_env_var="SECOND_KLAVIYO_KEY",
        base_url=simulator.base_url,
    )
    defs = klaviyo_definitions(options)
    key = dg.AssetKey(["raw", "klaviyo", "tags"])
    checks = defs.get_asset_checks_def(dg.AssetCheckKey(key, UNIQUE))
    result = dg.materialize([defs.get_assets_def(key), checks], instance=instance, resources=defs.resources)
    assert result.success
    assert all(e.passed for e in result.get_asset_check_evaluations())
    with duckdb.connect(str(second), read_only=True) as conn:
        (rows,) = conn.execute(f"SELECT count(*) FROM {qualified_name(conn, 'crm', 'tags')}").fetchone()
    assert rows == len(simulator.records("tags")) > 0
    assert not env.exists()  # the default database was not touched


def test_a_prefixed_schedule_reads_its_own_io_manager(env: Path, tmp_path: Path) -> None:
    defs = klaviyo_definitions(KlaviyoOptions(tables=["tags"], key_prefix="second"))
    (schedule,) = [s for s in defs.schedules or [] if s.name == "second_replace_schedule"]
    with (
        dg.instance_for_test() as instance,
        dg.build_schedule_context(
            instance=instance, resources=defs.resources, scheduled_execution_time=AT
        ) as context,
    ):
        data = schedule.evaluate_tick(context)
    (request,) = data.run_requests or []
    assert request.tags["omniload/trigger"] == "second_replace_schedule"
    assert request.run_key == f"second_replace_schedule@{AT.isoformat()}"


# -- checks and freshness -------------------------------------------------------------------------


def test_primary_key_checks_block_and_freshness_is_a_policy(env: Path, monkeypatch) -> None:
    monkeypatch.setenv("OMNILOAD_FRESHNESS_HOURS", "48,events=6")
    defs = klaviyo_definitions(KlaviyoOptions(tables=["events", "tags"]))
    for table, hours in (("events", 6), ("tags", 48)):
        key = dg.AssetKey(["klaviyo", table])
        checks = defs.get_asset_checks_def(dg.AssetCheckKey(key, UNIQUE))
        blocking = {spec.name: spec.blocking for spec in checks.check_specs}
        assert blocking[UNIQUE] and blocking[NOT_NULL]
        assert not blocking.get(DELETED, False)
        policy = spec_of(defs, key.to_user_string()).freshness_policy
        assert policy == dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=hours))


def test_a_failed_primary_key_check_stops_the_downstream_assets(defs, instance, db_path: Path) -> None:
    tags_key = dg.AssetKey(["klaviyo", "tags"])
    tags, checks = (
        defs.get_assets_def(tags_key),
        defs.get_asset_checks_def(dg.AssetCheckKey(tags_key, UNIQUE)),
    )
    assert dg.materialize([tags, checks], instance=instance, resources=defs.resources).success
    with duckdb.connect(str(db_path)) as conn:
        conn.execute(f"INSERT INTO {qualified_name(conn, 'klaviyo', 'tags')} (id, name) VALUES (NULL, 'x')")

    @dg.asset(deps=[tags_key])
    def tag_report() -> None: ...

    result = dg.materialize(
        [tags, checks, tag_report],
        instance=instance,
        resources=defs.resources,
        selection=dg.AssetSelection.checks_for_assets(tags) | dg.AssetSelection.assets(tag_report),
        raise_on_error=False,
    )
    failed = {e.check_name for e in result.get_asset_check_evaluations() if not e.passed}
    assert failed == {NOT_NULL}
    assert not result.success
    assert result.asset_materializations_for_node("tag_report") == []


# -- make dev -------------------------------------------------------------------------------------


def test_make_dev_runs_with_pool_limits_of_one(tmp_path: Path) -> None:
    shipped = resources.files("omniload_assets").joinpath("dagster.yaml")
    (tmp_path / "dagster.yaml").write_text(shipped.read_text("utf-8"), encoding="utf-8")
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    try:
        pools = instance.get_concurrency_config().pool_config
        assert pools.default_pool_limit == 1
        assert pools.pool_granularity is not None and pools.pool_granularity.value == "op"
        assert instance.freshness_enabled
    finally:
        instance.dispose()
    recipe = re.search(r"^dev:.*\n((?:\t.*\n)+)", (REPO / "Makefile").read_text("utf-8"), re.MULTILINE)
    assert recipe is not None
    assert "cp omniload_assets/dagster.yaml $(DAGSTER_HOME_DIR)/dagster.yaml" in recipe.group(1)
    assert "DAGSTER_HOME=$(DAGSTER_HOME_DIR) $(BIN)/dagster dev" in recipe.group(1)


# -- the component --------------------------------------------------------------------------------


def dg_project(root: Path, module: str) -> Path:
    """A minimal ``dg`` project at ``root`` whose package ``module`` loads its ``defs`` folder."""
    (root / module / "defs").mkdir(parents=True)
    (root / "pyproject.toml").write_text(
        f'[project]\nname = "{module}"\nversion = "0.1.0"\n\n'
        f'[tool.dg]\ndirectory_type = "project"\n\n[tool.dg.project]\nroot_module = "{module}"\n',
        encoding="utf-8",
    )
    (root / module / "__init__.py").write_text("", encoding="utf-8")
    (root / module / "defs" / "__init__.py").write_text("", encoding="utf-8")
    (root / module / "definitions.py").write_text(
        "from pathlib import Path\n\nimport dagster as dg\n\n\n"
        "@dg.definitions\ndef defs() -> dg.Definitions:\n"
        "    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)\n",
        encoding="utf-8",
    )
    return root / module / "defs"


def run_dg(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNILOAD_")}
    env["PYTHONPATH"] = str(project)
    return subprocess.run(
        [str(BIN / "dg"), *args], cwd=project, env=env, capture_output=True, text=True, timeout=240
    )


def test_dg_scaffolds_lists_and_checks_a_component_of_two_tables(env: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    defs_folder = dg_project(project, "kproject")
    listed = run_dg(project, "list", "components")
    assert "omniload_assets.KlaviyoComponent" in listed.stdout, listed.stderr

    scaffolded = run_dg(project, "scaffold", "defs", "omniload_assets.KlaviyoComponent", "klaviyo")
    assert scaffolded.returncode == 0, scaffolded.stdout + scaffolded.stderr
    defs_yaml = defs_folder / "klaviyo" / "defs.yaml"
    loaded = yaml.safe_load(defs_yaml.read_text("utf-8"))
    assert loaded["type"] == "omniload_assets.KlaviyoComponent"
    assert loaded["attributes"]["tables"] == [t.name for t in TABLES]
    assert loaded["attributes"]["key_prefix"] == "klaviyo"
    loaded["attributes"]["tables"] = ["events", "profiles"]
    defs_yaml.write_text(yaml.safe_dump(loaded, sort_keys=False), encoding="utf-8")

    out = run_dg(project, "list", "defs", "--json")
    assert out.returncode == 0, out.stderr
    listing = json.loads(out.stdout[out.stdout.index("{") :])
    assert sorted(a["asset_key"] for a in listing["assets"]) == ["klaviyo/events", "klaviyo/profiles"]
    checked = run_dg(project, "check", "defs")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "All definitions loaded successfully" in checked.stdout + checked.stderr


def test_the_readme_component_loads_two_tables_into_a_second_database(
    env: Path, tmp_path: Path, monkeypatch
) -> None:
    project = tmp_path / "project"
    defs_folder = dg_project(project, "kproject_readme")
    (defs_folder / "second").mkdir()
    (defs_folder / "second" / "defs.yaml").write_text(
        "type: omniload_assets.KlaviyoComponent\n"
        "attributes: {tables: [events, profiles], database: second.duckdb, key_prefix: klaviyo_second}\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(project))
    defs = dg.load_from_defs_folder(path_within_project=project)
    assert asset_keys(defs) == {"klaviyo_second/events", "klaviyo_second/profiles"}
    assert defs.resources["klaviyo_second_duckdb"].database == "second.duckdb"
    assert {"klaviyo_second_incremental_job", "klaviyo_second_deletion_sweep"} == names(defs)["jobs"]
    assert get_table("profiles").name in {s.name for s in TABLES}
