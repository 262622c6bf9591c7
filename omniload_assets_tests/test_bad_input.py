"""Bad input: a clear one-line error naming the fix, raised before any write (the table stays as it
was); from the ``dagster asset materialize`` CLI, a non-zero exit whose last line says why.

(The ``omniload`` CLI's own handling is tested with the CLI.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pydantic
import pytest

from omniload_assets import settings
from omniload_assets.assets import asset_key
from omniload_assets.klaviyo.catalog import get_table
from omniload_assets.klaviyo.client import KlaviyoClient
from omniload_assets.klaviyo.errors import KlaviyoConfigError
from omniload_assets.klaviyo.resource import KlaviyoResource
from omniload_assets.warehouse.connection import DuckDBPathError, check_writable
from omniload_assets.warehouse.io_manager import KlaviyoDuckDBIOManager
from omniload_assets_tests.harness import (
    REPO_ROOT,
    LineWatcher,
    fast_resources,
    reason,
    snapshot,
)

TAGS = get_table("tags")


def materialize_tags(
    defs: dg.Definitions, instance: dg.DagsterInstance, **overrides
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [defs.get_assets_def(asset_key(TAGS))],
        resources=fast_resources(defs, **overrides),
        instance=instance,
        raise_on_error=False,
    )


@pytest.fixture(autouse=True)
def _definitions_module_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    """Import ``omniload_assets.definitions`` (which builds ``defs`` when imported) with the defaults,
    so a test can set a bad value and then call ``build_definitions`` whichever test runs first."""
    with monkeypatch.context() as patch:
        for name in [n for n in os.environ if n.startswith(("OMNILOAD_", "KLAVIYO_"))]:
            patch.delenv(name)
        import omniload_assets.definitions  # noqa: F401


@pytest.fixture
def loaded(defs, simulator, db_path, instance) -> dict:
    """A tags table already loaded, and its rows: what every failure below must leave untouched."""
    assert materialize_tags(defs, instance).success
    simulator.mutate("tags", updated=3, added=3)
    simulator.reset_stats()
    return snapshot(db_path, ["tags"])


def dagster_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``dagster asset materialize -m omniload_assets ARGS`` in a fresh process."""
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "asset",
            "materialize",
            "-m",
            "omniload_assets",
            *args,
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- credentials ---------------------------------------------------------------------------------


def test_missing_api_key_names_the_variable_and_writes_nothing(
    loaded, defs, simulator, db_path, instance, monkeypatch
) -> None:
    monkeypatch.delenv("KLAVIYO_API_KEY")
    with pytest.raises(dg.DagsterInvalidConfigError, match='"KLAVIYO_API_KEY" which is not set'):
        materialize_tags(defs, instance)
    assert simulator.stats.total_requests == 0
    assert snapshot(db_path, ["tags"]) == loaded


def test_invalid_key_401_fails_without_retrying_and_writes_nothing(
    loaded, defs, simulator, db_path, instance
) -> None:
    simulator.api_key = "pk_rotated_key_0000000000000000"
    result = materialize_tags(defs, instance)
    assert not result.success
    assert reason(result) == (
        "omniload_assets.klaviyo.errors.KlaviyoAuthError: Klaviyo rejected the API key "
        "(401: Missing or invalid private key.); set KLAVIYO_API_KEY to a valid private API key"
    )
    assert simulator.stats.statuses == {401: 1}
    assert snapshot(db_path, ["tags"]) == loaded


def test_key_without_the_scope_403_names_the_scope(loaded, defs, simulator, db_path, instance) -> None:
    simulator.scopes.discard("tags:read")
    result = materialize_tags(defs, instance)
    assert not result.success
    line = reason(result)
    assert "KlaviyoPermissionError" in line and "give the API key the 'tags:read' scope" in line
    assert simulator.stats.statuses == {403: 1}
    assert snapshot(db_path, ["tags"]) == loaded


@pytest.mark.parametrize(
    "url", ["http://a.klaviyo.com", "http://10.0.0.8:8080", "ftp://127.0.0.1", "http://127.0.0.1.nip.io"]
)
def test_plain_http_off_loopback_is_refused_before_any_request(url) -> None:
    # Refused when the resource is configured, or at the latest when its client is made.
    with (
        pytest.raises(KlaviyoConfigError, match="must be https://.*fix KLAVIYO_BASE_URL"),
        KlaviyoResource(api_key="pk_x", base_url=url).get_client(),
    ):
        pass


def test_a_run_with_a_plain_http_remote_base_url_fails_before_any_write(
    loaded, defs, db_path, instance, monkeypatch
) -> None:
    monkeypatch.setenv("KLAVIYO_BASE_URL", "http://a.klaviyo.com")
    from omniload_assets.definitions import build_definitions

    try:  # refused when the definitions load, or at the latest when the run starts
        line = reason(materialize_tags(build_definitions(), instance))
    except KlaviyoConfigError as exc:
        line = str(exc)
    assert "plain http is allowed only on loopback" in line
    assert snapshot(db_path, ["tags"]) == loaded


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "OMNILOAD_START_DATE",
            "2024-13-45",
            "OMNILOAD_START_DATE='2024-13-45' is not a date; use YYYY-MM-DD",
        ),
        ("OMNILOAD_START_DATE", "01/02/2024", "is not a date; use YYYY-MM-DD"),
        ("OMNILOAD_START_DATE", "20240101", "is not a date; use YYYY-MM-DD"),
        ("OMNILOAD_START_DATE", "2999-01-01", "is in the future; use a past date"),
        ("OMNILOAD_START_DATE", "0001-01-01", "is before 2012-01-01"),
        ("OMNILOAD_DUCKDB_LOCK_TIMEOUT", "soon", "is not a number of seconds"),
        ("OMNILOAD_DUCKDB_LOCK_TIMEOUT", "-1", "is not a number of seconds"),
        ("OMNILOAD_DUCKDB_LOCK_TIMEOUT", "inf", "is not a number of seconds"),
        ("OMNILOAD_DUCKDB_MEMORY_LIMIT", "lots", "OMNILOAD_DUCKDB_MEMORY_LIMIT='lots' is not a memory size"),
        ("OMNILOAD_DUCKDB_MEMORY_LIMIT", "512", "is not a memory size; use e.g. 512MB or 2GB"),
        ("OMNILOAD_DUCKDB_MEMORY_LIMIT", "1MB", "OMNILOAD_DUCKDB_MEMORY_LIMIT='1MB' is below 64MB"),
        ("OMNILOAD_DUCKDB_MEMORY_LIMIT", "150%", "is not a percentage of RAM from 1 to 100"),
        ("OMNILOAD_DUCKDB_MEMORY_LIMIT", "\u0661\u0662\u0668MB", "is not a memory size"),  # Arabic digits
        ("OMNILOAD_DUCKDB_MEMORY_LIMIT", "9" * 40 + "TB", "is more than 1PB"),
        ("OMNILOAD_DUCKDB_PATH", "postgres://h/db", "OMNILOAD_DUCKDB_PATH='postgres://h/db' is not a DuckDB"),
        ("OMNILOAD_DUCKDB_SCHEMA", "  ", "OMNILOAD_DUCKDB_SCHEMA='  ' is not a schema name"),
        ("OMNILOAD_AUTOMATION", "maybe", "OMNILOAD_AUTOMATION='maybe': 'maybe' is not a schedule or sensor"),
        (
            "OMNILOAD_AUTOMATION",
            "klaviyo_change_sensr",
            "from: klaviyo_incremental_schedule, klaviyo_replace",
        ),
        ("OMNILOAD_SCHEDULE_CRON", "every hour", "OMNILOAD_SCHEDULE_CRON='every hour' is not a cron"),
        ("OMNILOAD_REPLACE_CRON", "61 * * * *", "OMNILOAD_REPLACE_CRON='61 * * * *' is not a cron"),
        ("OMNILOAD_LOOKBACK_DAYS", "nan", "OMNILOAD_LOOKBACK_DAYS='nan' is not a whole number of days"),
        ("OMNILOAD_LOOKBACK_DAYS", "inf", "is not a whole number of days from 0 to 36500"),
        ("OMNILOAD_LOOKBACK_DAYS", "2.5", "is not a whole number of days"),
        ("OMNILOAD_LOOKBACK_DAYS", "1e9", "is not a whole number of days"),
        ("OMNILOAD_SENSOR_INTERVAL", "5", "OMNILOAD_SENSOR_INTERVAL='5' is not a whole number of seconds"),
        ("OMNILOAD_SENSOR_INTERVAL", "1e400", "from 30 to 604800"),
        ("OMNILOAD_FRESHNESS_HOURS", "evnts=6", "OMNILOAD_FRESHNESS_HOURS='evnts=6': 'evnts' is not a table"),
        ("OMNILOAD_FRESHNESS_HOURS", "inf", "'inf' is not a number of hours above 0"),
        ("OMNILOAD_FRESHNESS_HOURS", "48,events=nan", "'nan' is not a number of hours"),
        (
            "OMNILOAD_EXECUTOR",
            "threads",
            "OMNILOAD_EXECUTOR='threads' is not one of in_process, multiprocess",
        ),
        ("OMNILOAD_ASSET_OWNERS", "me@", "OMNILOAD_ASSET_OWNERS: 'me@' is not an owner"),
        ("OMNILOAD_ASSET_OWNERS", "team:", "OMNILOAD_ASSET_OWNERS: 'team:' is not an owner"),
    ],
)
def test_bad_settings_fail_loading_with_one_line_naming_the_variable(
    sim_env, monkeypatch, name, value, message
) -> None:
    monkeypatch.setenv(name, value)
    from omniload_assets.definitions import build_definitions

    with pytest.raises(settings.SettingsError) as caught:
        build_definitions()
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_every_omniload_variable_is_checked_at_load() -> None:
    assert set(settings.VALIDATORS) == {name for name in settings.ENV_VARS if name.startswith("OMNILOAD_")}


def test_all_bad_settings_are_named_in_one_line(sim_env, monkeypatch, tmp_path) -> None:
    bad = {
        "OMNILOAD_AUTOMATION": "maybe",
        "OMNILOAD_DUCKDB_PATH": str(tmp_path),  # a directory
        "OMNILOAD_LOOKBACK_DAYS": "soon",
        "OMNILOAD_EXECUTOR": "threads",
    }
    for name, value in bad.items():
        monkeypatch.setenv(name, value)
    from omniload_assets.definitions import build_definitions

    with pytest.raises(settings.SettingsError) as caught:
        build_definitions()
    message = str(caught.value)
    assert "\n" not in message
    assert all(name in message for name in bad)
    assert f"DuckDB path {tmp_path} is a directory; point OMNILOAD_DUCKDB_PATH at a file" in message


def _bad_staging_dirs(tmp_path: Path) -> dict[str, tuple[str, str]]:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    return {
        "a-file": (str(blocker), "is not a directory"),
        "under-a-file": (str(blocker / "staging"), f"cannot be created: {blocker} is not a directory"),
        "blank": ("  ", "is blank or holds a NUL"),
    }


@pytest.mark.parametrize("case", ["a-file", "under-a-file", "blank"])
def test_bad_staging_dir_fails_loading_naming_the_variable(sim_env, monkeypatch, tmp_path, case) -> None:
    value, why = _bad_staging_dirs(tmp_path)[case]
    monkeypatch.setenv("OMNILOAD_STAGING_DIR", value)
    from omniload_assets.definitions import build_definitions

    with pytest.raises(settings.SettingsError) as caught:
        build_definitions()
    assert str(caught.value).startswith(f"OMNILOAD_STAGING_DIR={value!r} {why}; set OMNILOAD_STAGING_DIR to")
    assert "\n" not in str(caught.value)


def test_a_staging_dir_to_create_or_unset_is_fine(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("OMNILOAD_STAGING_DIR", str(tmp_path / "new" / "staging"))
    assert settings.staging_dir() == str(tmp_path / "new" / "staging")
    assert not (tmp_path / "new").exists()  # checked, not created, at load
    monkeypatch.delenv("OMNILOAD_STAGING_DIR")
    assert settings.staging_dir() is None


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_staging_dir_fails_loading(monkeypatch, tmp_path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    monkeypatch.setenv("OMNILOAD_STAGING_DIR", str(locked / "staging"))
    with pytest.raises(settings.SettingsError, match=r"is not writable \(nor is .*locked, where it would be"):
        settings.staging_dir()


def test_a_staging_dir_gone_bad_after_loading_fails_the_run_naming_the_variable(
    loaded, defs, simulator, db_path, instance, tmp_path, monkeypatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("OMNILOAD_STAGING_DIR", str(blocker / "staging"))  # read when the run starts
    result = materialize_tags(defs, instance)
    assert not result.success
    line = reason(result)
    assert line.startswith(
        f"omniload_assets.warehouse.staging.StagingDirError: cannot stage tags in {blocker}"
    )
    assert "set OMNILOAD_STAGING_DIR to a writable directory" in line
    assert simulator.stats.total_requests == 0
    assert snapshot(db_path, ["tags"]) == loaded


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("OMNILOAD_AUTOMATION", "maybe", "OMNILOAD_AUTOMATION='maybe': 'maybe' is not a schedule or sensor"),
        ("OMNILOAD_DUCKDB_PATH", "{tmp}", "DuckDB path {tmp} is a directory; point OMNILOAD_DUCKDB_PATH"),
        ("OMNILOAD_STAGING_DIR", "{tmp}/a-file", "OMNILOAD_STAGING_DIR='{tmp}/a-file' is not a directory"),
    ],
)
def test_dagster_definitions_validate_fails_on_a_bad_setting_with_one_line(
    sim_env, tmp_path, name, value, message
) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    env = {**_base_env(), **sim_env, name: value.format(tmp=tmp_path)}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-m", "omniload_assets"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines()]
    errors = [line for line in lines if line.startswith("omniload_assets.settings.SettingsError: ")]
    assert len(errors) == 1 and message.format(tmp=tmp_path) in errors[0]


def test_bad_start_date_from_the_dagster_cli_exits_non_zero_with_one_line(sim_env, tmp_path) -> None:
    env = {**_base_env(), **sim_env, "OMNILOAD_START_DATE": "2024-02-30"}
    done = dagster_cli(["--select", "klaviyo/tags"], env, tmp_path)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        "omniload_assets.settings.SettingsError: OMNILOAD_START_DATE='2024-02-30' is not a date; "
        "use YYYY-MM-DD, e.g. 2022-01-01"
    )


def test_invalid_key_from_the_dagster_cli_exits_non_zero_naming_the_fix(
    sim_env, simulator, db_path, tmp_path
) -> None:
    env = {**_base_env(), **sim_env, "KLAVIYO_API_KEY": "pk_wrong_key_1111111111111111"}
    in_process = '{"execution": {"config": {"in_process": {}}}}'  # no step subprocess: faster
    done = dagster_cli(["--select", "klaviyo/tags", "--config-json", in_process], env, tmp_path)
    assert done.returncode != 0
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines()]
    # Dagster prints the step's traceback; the reason is one line of it, naming the fix.
    assert (
        "omniload_assets.klaviyo.errors.KlaviyoAuthError: Klaviyo rejected the API key (401: Missing or "
        "invalid private key.); set KLAVIYO_API_KEY to a valid private API key"
    ) in lines
    assert lines[-1] == "Error: Materialization failed."
    assert not db_path.exists() or snapshot(db_path, ["tags"]) == {"tags": []}


# -- selection -----------------------------------------------------------------------------------


def test_unknown_table_is_named_with_the_valid_ones() -> None:
    with pytest.raises(KeyError, match="unknown Klaviyo table 'evnts'; valid tables: events, profiles"):
        get_table("evnts")


@pytest.mark.parametrize("key", ["2019-06-01", "2024-1-5", "yesterday"])
def test_unknown_partition_key_is_refused_before_any_request(defs, simulator, db_path, instance, key) -> None:
    events = defs.get_assets_def(asset_key(get_table("events")))
    with pytest.raises(
        dg.DagsterUnknownPartitionError, match=f"Could not find a partition with key `{key}`"
    ) as caught:
        dg.materialize([events], partition_key=key, resources=defs.resources, instance=instance)
    assert "\n" not in str(caught.value).strip()
    assert simulator.stats.total_requests == 0
    assert not db_path.exists()


# -- the DuckDB file -----------------------------------------------------------------------------


def _unwritable_paths(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    directory = tmp_path / "a-directory"
    directory.mkdir()
    return {
        "parent-is-a-file": (blocker / "sub" / "klaviyo.duckdb", "cannot create directory"),
        "path-is-a-directory": (directory, "is a directory"),
    }


@pytest.mark.parametrize("case", ["parent-is-a-file", "path-is-a-directory"])
def test_unwritable_duckdb_path_fails_loading_and_running_before_extracting(
    sim_env, simulator, instance, tmp_path, monkeypatch, case
):
    path, why = _unwritable_paths(tmp_path)[case]
    monkeypatch.setenv("OMNILOAD_DUCKDB_PATH", str(path))
    from omniload_assets.definitions import build_definitions

    with pytest.raises(settings.SettingsError) as caught:  # at load: `dagster definitions validate`
        build_definitions()
    assert why in str(caught.value) and "OMNILOAD_DUCKDB_PATH" in str(caught.value)
    assert "\n" not in str(caught.value)
    # A path that goes bad after the load still fails the run before any request.
    monkeypatch.setenv("OMNILOAD_DUCKDB_PATH", sim_env["OMNILOAD_DUCKDB_PATH"])
    defs = build_definitions()
    io_manager = KlaviyoDuckDBIOManager(database=str(path), schema="klaviyo")
    result = dg.materialize(
        [defs.get_assets_def(asset_key(TAGS))],
        resources={**fast_resources(defs), "klaviyo_duckdb": io_manager},
        instance=instance,
        raise_on_error=False,
    )
    assert not result.success
    line = reason(result)
    assert "DuckDBPathError" in line and why in line and "OMNILOAD_DUCKDB_PATH" in line
    assert simulator.stats.total_requests == 0  # failed at start-up, not after the extraction
    with pytest.raises(DuckDBPathError):
        check_writable(path)


def test_duckdb_file_locked_by_another_program_past_the_wait_fails_cleanly(
    loaded, defs, simulator, db_path, instance
) -> None:
    holder_code = (
        "import sys, duckdb; conn = duckdb.connect(sys.argv[1]); print('LOCKED', flush=True); "
        "sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", holder_code, str(db_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        watcher = LineWatcher(holder)
        watcher.wait_for("LOCKED", timeout=60)
        resources = {
            **fast_resources(defs),
            "klaviyo_duckdb": KlaviyoDuckDBIOManager(
                database=str(db_path), schema="klaviyo", lock_timeout_s=1.0
            ),
        }
        result = dg.materialize(
            [defs.get_assets_def(asset_key(TAGS))],
            resources=resources,
            instance=instance,
            raise_on_error=False,
        )
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    assert not result.success
    line = reason(result)
    assert "DuckDBLockedError" in line
    assert f"is locked by another process (PID {holder.pid}: " in line
    assert "for more than 1 s; stop that process or raise OMNILOAD_DUCKDB_LOCK_TIMEOUT" in line
    assert snapshot(db_path, ["tags"]) == loaded


def test_resource_settings_are_validated(sim_env) -> None:
    with pytest.raises(pydantic.ValidationError, match="extract_parallelism"):
        KlaviyoResource(api_key="pk_x", extract_parallelism=0)
    with pytest.raises(pydantic.ValidationError, match="timeout_s"):
        KlaviyoResource(api_key="pk_x", timeout_s=0)
    with pytest.raises(KlaviyoConfigError, match="set KLAVIYO_API_KEY"):
        KlaviyoClient("   ")


def _base_env() -> dict[str, str]:
    """A minimal environment for a Dagster CLI child: no inherited Klaviyo or omniload settings."""
    keep = {
        k: v for k, v in os.environ.items() if not k.startswith(("KLAVIYO_", "OMNILOAD_", "DAGSTER_HOME"))
    }
    keep["PYTHONPATH"] = str(REPO_ROOT)
    return keep
