"""The child tables end to end: list and segment members, campaign messages, flow actions and their
messages, materialized after their parents against the simulator and compared with its ground truth,
before and after the simulator's members change and its parents are deleted."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from omniload_assets.assets import asset_key
from omniload_assets.checks import build_table_checks
from omniload_assets.klaviyo.catalog import TABLES, TableSpec, get_table
from omniload_assets.runner import materialize_tables
from omniload_assets.warehouse.reads import qualified_name
from omniload_assets_tests.conftest import SIM_END, SIM_START
from omniload_assets_tests.harness import reason
from omniload_assets_tests.simulator import KlaviyoSimulator

CHILDREN = [t for t in TABLES if t.parent is not None]
PARENTS = [get_table(name) for name in dict.fromkeys(t.parent for t in CHILDREN if t.parent)]
TOP_PARENTS = [t for t in PARENTS if t.parent is None]
FIRST_DAY, LAST_DAY = SIM_START.date(), SIM_END.date()
Pairs = set[tuple[str, str]]


@pytest.fixture
def simulator() -> Iterator[KlaviyoSimulator]:
    """The suite's simulator with fewer flows and campaigns: flow actions and messages are read at
    Klaviyo's 3 requests/s, 60/min (the client paces to it), one request per flow and per action."""
    scale = {"flows": 4, "flow-actions": 3, "campaigns": 8}
    with KlaviyoSimulator(seed=11, start=SIM_START, end=SIM_END, rate_limits=False, scale=scale) as sim:
        yield sim


def truth(sim: KlaviyoSimulator, spec: TableSpec) -> Pairs:
    """The simulator's (parent id, child id) pairs of a child table (member: profile id)."""
    return sim.members(spec.parent or "") if spec.member_id_column else sim.children(spec.name)


def rows(db_path: Path, table: str, *columns: str) -> list[tuple]:
    with duckdb.connect(str(db_path), read_only=True) as conn:
        select = ", ".join(f'"{c}"' for c in columns)
        return conn.execute(f"SELECT {select} FROM {qualified_name(conn, 'klaviyo', table)}").fetchall()


def stored(db_path: Path, spec: TableSpec) -> Pairs:
    """The (parent id, child id) pairs of a child table in the warehouse; its keys checked unique."""
    child = spec.member_id_column or spec.primary_key
    found = rows(db_path, spec.asset_name, spec.primary_key, spec.parent_column or "", child)
    keys = Counter(key for key, _, _ in found)
    assert not [k for k, n in keys.items() if n > 1], f"duplicate keys in {spec.name}"
    if spec.member_id_column:
        assert all(key == f"{parent}:{member}" for key, parent, member in found), spec.name
    return {(parent, member) for _, parent, member in found}


def assert_children_match(db_path: Path, sim: KlaviyoSimulator) -> None:
    for spec in CHILDREN:
        expected = truth(sim, spec)
        assert expected, f"the simulator has no {spec.name}: the check proves nothing"
        assert stored(db_path, spec) == expected, spec.name


def load_everything(defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
    """Parents and children over the simulator's whole history, in one run (children after parents)."""
    outcomes = materialize_tables(
        defs, [*PARENTS, *CHILDREN], first_day=FIRST_DAY, last_day=LAST_DAY, instance=instance
    )
    assert all(o.success for o in outcomes)


def materialize_children(defs: dg.Definitions, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    """One run of the child tables alone, with their checks."""
    assets = [defs.get_assets_def(asset_key(spec)) for spec in CHILDREN]
    checks = [build_table_checks(spec) for spec in CHILDREN]
    return dg.materialize([*assets, *checks], resources=defs.resources, instance=instance)


def assert_every_child_table_equals_the_simulators_children(
    db_path: Path, simulator: KlaviyoSimulator
) -> None:
    for parent in TOP_PARENTS:  # every parent was loaded: the children compared are all of them
        assert {i for (i,) in rows(db_path, parent.asset_name, "id")} == simulator.ids(parent.name)
    assert_children_match(db_path, simulator)
    joined = rows(db_path, "list_profiles", "joined_group_at")
    assert joined and all(value is not None for (value,) in joined)
    assert {c for c, _ in rows(db_path, "campaign_messages", "campaign_id", "definition")} <= simulator.ids(
        "campaigns"
    )


def test_members_and_deleted_parents_disappear_after_one_run_of_the_children(
    defs, simulator, db_path, instance
) -> None:
    """The first load gives every child table as the simulator holds it (one load serves both)."""
    load_everything(defs, instance)
    assert_every_child_table_equals_the_simulators_children(db_path, simulator)
    lists, segments = sorted(simulator.members("lists")), sorted(simulator.members("segments"))
    (list_id, leaving), (segment_id, quitting) = lists[0], segments[-1]
    newcomer = sorted(simulator.ids("profiles") - {p for lst, p in lists if lst == list_id})[0]
    simulator.remove_member("lists", list_id, leaving)
    simulator.remove_member("segments", segment_id, quitting)
    simulator.add_member("lists", list_id, newcomer)
    deleted_list = next(lst for lst, _ in lists if lst != list_id)
    deleted_campaign = sorted(simulator.children("campaign-messages"))[0][0]
    deleted_flow = sorted(simulator.children("flow-actions"))[0][0]
    # An action of another flow, with messages: its messages go with it.
    deleted_action = next(
        a
        for a, _ in sorted(simulator.children("flow-messages"))
        if a not in {action for flow, action in simulator.children("flow-actions") if flow == deleted_flow}
    )
    deleted_profile = next(p for lst, p in lists if lst != deleted_list and p != leaving)
    for table, rid in (
        ("lists", deleted_list),
        ("campaigns", deleted_campaign),
        ("flows", deleted_flow),
        ("flow-actions", deleted_action),
        ("profiles", deleted_profile),
    ):
        assert simulator.delete_record(table, rid), (table, rid)

    # The parents' tables still hold the deleted parents: Klaviyo's 404 for them means no children.
    result = materialize_children(defs, instance)

    assert result.success
    assert_children_match(db_path, simulator)
    gone = {
        spec.name: result.asset_materializations_for_node(defs.get_assets_def(asset_key(spec)).op.name)[0]
        .metadata["parents_gone"]
        .value
        for spec in CHILDREN
    }
    # flow-messages' parents are the flow actions just reloaded: the deleted ones are not asked for.
    assert gone == {n: int(n in ("list-profiles", "campaign-messages", "flow-actions")) for n in gone}
    members = stored(db_path, get_table("list-profiles"))
    assert (list_id, newcomer) in members and (list_id, leaving) not in members
    assert deleted_list not in {lst for lst, _ in members}
    assert (segment_id, quitting) not in stored(db_path, get_table("segment-profiles"))
    assert deleted_campaign not in {c for c, _ in stored(db_path, get_table("campaign-messages"))}
    assert deleted_flow not in {f for f, _ in stored(db_path, get_table("flow-actions"))}
    assert deleted_action not in {a for a, _ in stored(db_path, get_table("flow-messages"))}
    assert deleted_profile not in {p for _, p in members}
    for evaluation in result.get_asset_check_evaluations():
        assert evaluation.passed, (evaluation.asset_key, evaluation.check_name)
    assert len(result.get_asset_check_evaluations()) == 2 * len(CHILDREN)

    # Loaded again with their parents, the same: a parent gone from Klaviyo is not asked for twice.
    load_everything(defs, instance)
    assert_children_match(db_path, simulator)


def test_a_child_whose_parent_was_never_loaded_fails_naming_it(defs, db_path, instance) -> None:
    members = defs.get_assets_def(asset_key(get_table("list-profiles")))
    result = dg.materialize([members], resources=defs.resources, instance=instance, raise_on_error=False)
    assert not result.success
    line = reason(result)
    assert "klaviyo.lists is not in the warehouse yet: materialize klaviyo/lists first" in line
    assert "\n" not in line


def test_a_parent_without_children_empties_the_child_table(defs, simulator, db_path, instance) -> None:
    load_everything(defs, instance)
    for lst, profile in simulator.members("lists"):
        simulator.remove_member("lists", lst, profile)
    assert materialize_children(defs, instance).success
    assert rows(db_path, "list_profiles", "id") == []
    assert simulator.members("lists") == set()


# -- the command line ----------------------------------------------------------------------------------

OMNILOAD = Path(sys.executable).parent / "omniload"


def ingest(tmp_path: Path, sim: KlaviyoSimulator, tables: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMNILOAD_", "KLAVIYO_", "DAGSTER_"))}
    env.update(
        KLAVIYO_API_KEY=sim.api_key,
        KLAVIYO_BASE_URL=sim.base_url,
        OMNILOAD_STAGING_DIR=str(tmp_path / "staging"),
    )
    args = ["--dest-uri", "duckdb:///klaviyo.duckdb", "--progress", "off"]
    args += ["--interval-start", FIRST_DAY.isoformat(), "--interval-end", LAST_DAY.isoformat()]
    return subprocess.run(
        [str(OMNILOAD), "ingest", "--source-table", tables, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_omniload_ingest_loads_a_child_table_after_its_parent(simulator, tmp_path) -> None:
    if not OMNILOAD.exists():
        pytest.fail(f"{OMNILOAD} is missing: run `.venv/bin/pip install -e '.[dev]'`")
    alone = ingest(tmp_path, simulator, "list_profiles")
    assert alone.returncode == 1
    assert "materialize klaviyo/lists first" in alone.stderr
    both = ingest(tmp_path, simulator, "list_profiles,lists")
    assert both.returncode == 0, both.stderr
    assert stored(tmp_path / "klaviyo.duckdb", get_table("list-profiles")) == simulator.members("lists")
    assert "omniload: loaded list-profiles into klaviyo.list_profiles" in both.stdout
