"""Shared fixtures: a running Klaviyo simulator and an environment pointing the code location at it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from omniload_assets.klaviyo.catalog import TableSpec
from omniload_assets.klaviyo.client import KlaviyoClient
from omniload_assets.warehouse.reads import qualified_name
from omniload_assets_tests.klaviyo_mocks import KEY as MOCK_KEY
from omniload_assets_tests.simulator import KlaviyoSimulator

SIM_START = datetime(2024, 1, 1, tzinfo=UTC)
SIM_END = datetime(2024, 1, 11, tzinfo=UTC)
SIM_SCALE = {"flows": 4, "flow-actions": 2}


@pytest.fixture
def simulator() -> Iterator[KlaviyoSimulator]:
    # Few flows: flow actions and messages are read one request per flow and per action, which the
    # client paces to Klaviyo's 3 requests/s (the server's limits are off, the client's pacing is not).
    with KlaviyoSimulator(seed=11, start=SIM_START, end=SIM_END, rate_limits=False, scale=SIM_SCALE) as sim:
        yield sim


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "warehouse" / "klaviyo.duckdb"


@pytest.fixture
def sim_env(
    simulator: KlaviyoSimulator, db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """Environment variables that point the code location at the simulator and a fresh DuckDB file."""
    env = {
        "KLAVIYO_API_KEY": simulator.api_key,
        "KLAVIYO_BASE_URL": simulator.base_url,
        "OMNILOAD_START_DATE": SIM_START.date().isoformat(),
        "OMNILOAD_DUCKDB_PATH": str(db_path),
        "OMNILOAD_STAGING_DIR": str(tmp_path / "staging"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def defs(sim_env: dict[str, str]) -> dg.Definitions:
    from omniload_assets.definitions import build_definitions

    return build_definitions()


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


@pytest.fixture(scope="module")
def module_instance() -> Iterator[dg.DagsterInstance]:
    """build_sensor_context / build_schedule_context need a persistent instance (slow to create)."""
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def persistent_instance(module_instance: dg.DagsterInstance) -> dg.DagsterInstance:
    """The module's instance, emptied of the runs earlier tests left."""
    module_instance.wipe()
    return module_instance


def table_ids(db_path: Path, table: str) -> list[str]:
    """Every id in ``klaviyo.<table>`` (duplicates kept, so callers can check for them)."""
    with duckdb.connect(str(db_path), read_only=True) as conn:
        return [
            r[0] for r in conn.execute(f"SELECT id FROM {qualified_name(conn, 'klaviyo', table)}").fetchall()
        ]


def table_rows(db_path: Path, table: str) -> list[tuple]:
    """The table's rows without load metadata, sorted: for before/after comparisons."""
    with duckdb.connect(str(db_path), read_only=True) as conn:
        cols = [
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema='klaviyo' "
                "AND table_name=? AND column_name NOT IN ('_loaded_at', '_run_id') ORDER BY ordinal_position",
                [table],
            ).fetchall()
        ]
        select = ", ".join(f'"{c}"' for c in cols)
        return conn.execute(
            f"SELECT {select} FROM {qualified_name(conn, 'klaviyo', table)} ORDER BY id"
        ).fetchall()


def assert_tables_match_simulator(
    db_path: Path, simulator: KlaviyoSimulator, specs: Iterable[TableSpec]
) -> None:
    """Each table holds exactly the simulator's ids (over the sim's window when partitioned), once each."""
    for spec in specs:
        if spec.parent is not None:
            assert_children_match_simulator(db_path, simulator, spec)
            continue
        ids = table_ids(db_path, spec.asset_name)
        assert not [i for i, n in Counter(ids).items() if n > 1], f"duplicate ids in {spec.name}"
        expected = (
            simulator.ids(spec.name, SIM_START, SIM_END) if spec.partitioned else simulator.ids(spec.name)
        )
        assert expected, f"the simulator served no {spec.name}: the check proves nothing"
        assert set(ids) == expected, spec.name


def assert_children_match_simulator(db_path: Path, simulator: KlaviyoSimulator, spec: TableSpec) -> None:
    """A child table holds exactly the simulator's (parent id, child id) pairs, each key once."""
    member = spec.member_id_column or spec.primary_key
    with duckdb.connect(str(db_path), read_only=True) as conn:
        table = qualified_name(conn, "klaviyo", spec.asset_name)
        found = conn.execute(
            f'SELECT "{spec.primary_key}", "{spec.parent_column}", "{member}" FROM {table}'
        ).fetchall()
    assert len({r[0] for r in found}) == len(found), f"duplicate keys in {spec.name}"
    expected = simulator.members(spec.parent) if spec.member_id_column else simulator.children(spec.name)
    assert expected, f"the simulator served no {spec.name}: the check proves nothing"
    assert {(r[1], r[2]) for r in found} == expected, spec.name


# -- the mocked client of the client and extraction unit tests --------------------------------


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(sleeps: list[float]) -> Iterator[KlaviyoClient]:
    """A client of the mocked API (pytest-httpx): no pacing, sleeps recorded, 3 retries."""
    c = KlaviyoClient(MOCK_KEY, pace=False, sleep=sleeps.append, max_retries=3, max_retry_after_s=60)
    yield c
    c.close()
