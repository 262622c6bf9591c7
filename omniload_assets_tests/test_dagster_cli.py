"""The `dagster` command line in a subprocess: validate, one partition, a range, the multiprocess executor."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from omniload_assets.klaviyo.catalog import get_table
from omniload_assets_tests.conftest import SIM_END, SIM_START, assert_tables_match_simulator, table_ids

DAGSTER = str(Path(sys.executable).with_name("dagster"))
IN_PROCESS_CONFIG = "execution:\n  config:\n    in_process: {}\n"
MULTIPROCESS_CONFIG = """
execution:
  config:
    multiprocess:
      max_concurrent: 4
      start_method:
        forkserver:
          preload_modules: [omniload_assets]
"""


@pytest.fixture
def cli_env(sim_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    return {**os.environ, **sim_env, "DAGSTER_HOME": str(home)}


@pytest.fixture
def in_process(tmp_path: Path) -> list[str]:
    """Run config for one process: these tests are about the command line, not the executor."""
    config = tmp_path / "in_process.yaml"
    config.write_text(IN_PROCESS_CONFIG)
    return ["-c", str(config)]


def dagster(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DAGSTER, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def day(iso: str) -> datetime:
    return datetime.fromisoformat(iso).replace(tzinfo=UTC)


def test_definitions_validate(cli_env, tmp_path) -> None:
    result = dagster(cli_env, "definitions", "validate", "-m", "omniload_assets", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]


def test_materialize_one_partition(cli_env, simulator, db_path, tmp_path, in_process) -> None:
    args = ["asset", "materialize", "-m", "omniload_assets", "--select", "klaviyo/events", *in_process]
    result = dagster(cli_env, *args, "--partition", "2024-01-05", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ids = table_ids(db_path, "events")
    assert len(ids) == len(set(ids))
    assert set(ids) == simulator.ids("events", day("2024-01-05"), day("2024-01-06"))


def test_materialize_a_partition_range_in_one_run(cli_env, simulator, db_path, tmp_path, in_process) -> None:
    select = "klaviyo/events,klaviyo/profiles"
    args = ["asset", "materialize", "-m", "omniload_assets", "--select", select, *in_process]
    result = dagster(cli_env, *args, "--partition-range", "2024-01-01...2024-01-10", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for table in ("events", "profiles"):
        ids = table_ids(db_path, table)
        assert len(ids) == len(set(ids))
        assert set(ids) == simulator.ids(table, SIM_START, SIM_END)
    assert result.stderr.count("RUN_START") == 1


@pytest.mark.parametrize(
    ("executor", "said"), [(None, "Executing steps in process"), ("multiprocess", "multiprocess")]
)
def test_runs_are_in_process_unless_the_environment_says_multiprocess(
    cli_env, simulator, db_path, tmp_path, executor, said
) -> None:
    env = {**cli_env, **({"OMNILOAD_EXECUTOR": executor} if executor else {})}
    args = ["asset", "materialize", "-m", "omniload_assets", "--select", "klaviyo/tags"]
    result = dagster(env, *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert said in result.stderr
    assert ("STEP_WORKER_STARTING" in result.stderr) == (executor == "multiprocess")
    assert set(table_ids(db_path, "tags")) == simulator.ids("tags")


def test_multiprocess_executor_steps_write_one_file_at_once(cli_env, simulator, db_path, tmp_path) -> None:
    """Step processes write one DuckDB file at once: lock waits, no lock errors, all complete. Five
    tables, merged and replaced (every step process re-imports the code location, ~2 s of CPU)."""
    config = tmp_path / "run_config.yaml"
    config.write_text(MULTIPROCESS_CONFIG)
    listing = [get_table(name) for name in ("events", "profiles", "campaigns", "tags", "coupons")]
    select = ",".join(f"klaviyo/{t.asset_name}" for t in listing)
    args = ["asset", "materialize", "-m", "omniload_assets", "--select", select, "-c", str(config)]
    result = dagster(cli_env, *args, "--partition-range", "2024-01-01...2024-01-10", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "multiprocess" in result.stderr
    assert_tables_match_simulator(db_path, simulator, listing)
