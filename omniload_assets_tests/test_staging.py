"""Staging (``warehouse.staging``): Parquet files written where told, and what dead runs left removed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from omniload_assets.klaviyo.catalog import get_table
from omniload_assets.klaviyo.windows import TimeWindow
from omniload_assets.warehouse.staging import (
    KeyRange,
    ParquetStager,
    StagingDirError,
    StagingOwner,
    Stretches,
    remove_stale_staging,
)
from omniload_assets_tests.harness import (
    REPO_ROOT,
)

TAGS = get_table("tags")
EVENTS = get_table("events")


def test_a_staging_dir_removed_mid_run_names_the_variable(tmp_path) -> None:
    stager = ParquetStager(TAGS, str(tmp_path / "staging"))
    shutil.rmtree(stager.directory)  # e.g. a temp-dir cleaner
    stager.add(pa.table({"id": ["a", "b"]}))
    with pytest.raises(StagingDirError) as caught:
        stager.flush()
    assert f"cannot write staged rows of tags to {stager.directory}/part-000000.parquet" in str(caught.value)
    assert "set OMNILOAD_STAGING_DIR to a writable directory" in str(caught.value)
    assert isinstance(caught.value.__cause__, FileNotFoundError)


# -- staging left by dead runs ---------------------------------------------------------------------

STAGE_AND_WAIT = """
import sys
import pyarrow as pa
from omniload_assets.klaviyo.catalog import get_table
from omniload_assets.klaviyo.windows import TimeWindow
from omniload_assets.warehouse.staging import ParquetStager

stager = ParquetStager(get_table("tags"), sys.argv[1], rows_per_file=2)
stager.add(pa.table({"id": ["a", "b", "c"]}))  # one file written, a row pending
print(stager.directory, flush=True)
if sys.argv[2] == "wait":
    sys.stdin.read()  # mid-staging until killed
"""


def _stage_in_child(base: Path, mode: str) -> tuple[subprocess.Popen[str], Path]:
    """A real process staging tags in ``base``; returns it and its staging directory."""
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(STAGE_AND_WAIT), str(base), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert child.stdout is not None
    directory = Path(child.stdout.readline().strip())
    assert directory.parent == base and list(directory.glob("part-*.parquet")), directory
    return child, directory


def test_staging_of_a_killed_run_is_removed_by_the_next_run_but_a_live_runs_stays(tmp_path) -> None:
    base = tmp_path / "staging"
    live, live_dir = _stage_in_child(base, "wait")
    killed, killed_dir = _stage_in_child(base, "wait")
    try:
        first = ParquetStager(TAGS, str(base))  # both owners alive: nothing removed
        assert live_dir.exists() and killed_dir.exists()
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=30)
        second = ParquetStager(TAGS, str(base))
        assert not killed_dir.exists()  # its owner died mid-staging
        assert live_dir.exists() and list(live_dir.glob("part-*.parquet"))  # never a live run's
        assert Path(first.directory).exists() and Path(second.directory).exists()  # this process's
    finally:
        for child in (live, killed):
            child.kill()
            child.wait(timeout=30)
    first.discard()
    second.discard()
    assert remove_stale_staging(base) == [str(live_dir)]  # once dead, it goes too
    assert list(base.iterdir()) == []


def test_staging_of_a_killed_unreaped_run_is_removed(tmp_path) -> None:
    base = tmp_path / "staging"
    zombie, directory = _stage_in_child(base, "wait")
    try:
        os.kill(zombie.pid, signal.SIGKILL)
        for _ in range(200):  # until the kernel has made it a zombie (not reaped: no wait)
            if not Path(f"/proc/{zombie.pid}").exists() or "Z" in _state(zombie.pid):
                break
            time.sleep(0.05)
        assert remove_stale_staging(base) == [str(directory)]
    finally:
        zombie.wait(timeout=30)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return ""


def test_staging_of_a_run_that_exited_without_cleaning_up_is_removed(tmp_path) -> None:
    base = tmp_path / "staging"
    child, directory = _stage_in_child(base, "exit")
    child.wait(timeout=30)
    assert directory.exists()
    ParquetStager(TAGS, str(base)).discard()
    assert not directory.exists()
    assert list(base.iterdir()) == []


def test_only_directories_of_dead_owners_on_this_machine_are_removed(tmp_path) -> None:
    me = StagingOwner.current()
    reused_pid = StagingOwner(me.pid, me.host, me.boot, me.namespace, me.start + 1)  # another start time
    elsewhere = StagingOwner(10**9 - 1, "f" * 8 if me.host != "f" * 8 else "e" * 8, me.boot, me.namespace, 1)
    other_container = StagingOwner(
        10**9 - 1, me.host, me.boot, "f" * 8 if me.namespace != "f" * 8 else "e" * 8, 1
    )
    impossible = StagingOwner(9_999_999_999, me.host, me.boot, me.namespace, 7)  # beyond any PID
    other_boot = "f" * 8 if me.boot != "f" * 8 else "e" * 8
    before_reboot = StagingOwner(me.pid, me.host, other_boot, me.namespace, me.start)  # same PID and start
    dirs = {
        "mine": f"omniload-tags-{me.tag}-abc123",
        "reused-pid": f"omniload-tags-{reused_pid.tag}-abc123",
        "gone-pid": f"omniload-tags-{StagingOwner(10**9 - 1, me.host, me.boot, me.namespace, 7).tag}-x",
        "elsewhere": f"omniload-tags-{elsewhere.tag}-abc123",
        "other-container": f"omniload-tags-{other_container.tag}-abc123",
        "unrelated": "omniload-notes",
        "impossible-pid": f"omniload-tags-{impossible.tag}-x",
        "before-reboot": f"omniload-tags-{before_reboot.tag}-x",
    }
    for name in dirs.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "part-000000.parquet").write_bytes(b"x" * 1000)
    (tmp_path / f"omniload-tags-{reused_pid.tag}-file").write_text("a file, not a staging directory")
    removed = remove_stale_staging(tmp_path)
    dead = ("reused-pid", "gone-pid", "impossible-pid", *(("before-reboot",) if me.boot != "0" * 8 else ()))
    assert sorted(removed) == sorted(str(tmp_path / dirs[k]) for k in dead)
    kept = {p.name for p in tmp_path.iterdir()}
    assert {dirs[k] for k in ("mine", "elsewhere", "other-container", "unrelated")} <= kept
    assert f"omniload-tags-{reused_pid.tag}-file" in kept
    assert StagingOwner.of_directory(Path(ParquetStager(TAGS, str(tmp_path)).directory).name) == me


# -- checkpoints: taking the rows of completed stretches -------------------------------------------

T0 = datetime(2025, 3, 1, tzinfo=UTC)
EVENT_TIME = pa.timestamp("us", tz="UTC")


def _at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def _stretch(start: float, end: float) -> TimeWindow:
    return TimeWindow(_at(start), _at(end))


def _events(rows: Sequence[tuple[str, datetime | None]], time_type: pa.DataType = EVENT_TIME) -> pa.Table:
    """Events with these ids and ``datetime`` keys (None: NULL)."""
    return pa.table(
        {"id": [i for i, _ in rows], "datetime": pa.array([t for _, t in rows], time_type)},
    )


def _ids(files: Sequence[str]) -> list[str]:
    """Every id in ``files``, in file order, duplicates kept."""
    return [i for f in files for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()]


def _identity(path: str) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_ino, stat.st_mtime_ns


def test_take_moves_exactly_the_rows_in_the_stretches(tmp_path) -> None:
    stager = ParquetStager(EVENTS, str(tmp_path), rows_per_file=10)
    order = [(m * 7) % 30 for m in range(30)]  # every file spans the whole half hour
    rows: list[tuple[str, datetime | None]] = [(f"m{m}", _at(m)) for m in order]
    rows += [("null-1", None), ("null-2", None), ("just-before-12", _at(12) - timedelta(microseconds=1))]
    for start in range(0, len(rows), 4):  # pages of 4 rows
        stager.add(_events(rows[start : start + 4]))
    schema = pq.read_schema(stager.files[0])
    # Unsorted, overlapping ([5, 10) and [8, 12)) and touching ([20, 22) and [22, 24)).
    taken = stager.take("datetime", [_stretch(22, 24), _stretch(8, 12), _stretch(20, 22), _stretch(5, 10)])

    expected = {f"m{m}" for m in [*range(5, 12), *range(20, 24)]} | {"just-before-12"}
    assert sorted(_ids(taken)) == sorted(expected)  # m5 (a start) taken, m12 (an end) not
    remaining = _ids(stager.files)
    assert sorted(remaining) == sorted({i for i, _ in rows} - expected)  # NULL keys included
    assert set(taken).isdisjoint(stager.files)
    assert all(os.path.dirname(f) == stager.directory for f in taken)
    assert all(pq.read_schema(f).equals(schema, check_metadata=False) for f in [*taken, *stager.files])
    assert stager.rows_taken == len(expected)
    assert stager.rows_written == len(rows) - len(expected) == len(remaining)

    staged = stager.finish(None, {"pages": 9}, {})
    assert staged.rows == len(remaining) and staged.stats["rows_checkpointed"] == len(expected)
    assert sorted(_ids(staged.files)) == sorted(remaining)
    assert stager.take("datetime", [_stretch(5, 12)]) == []  # nothing left there


def test_a_file_inside_is_moved_whole_and_files_outside_are_not_rewritten(tmp_path) -> None:
    stager = ParquetStager(EVENTS, str(tmp_path), rows_per_file=4)
    for base in (0, 10, 20, 30):  # four files: minutes 0-4 (no 2), 10-13, 20-23, 30-33
        stager.add(_events([(f"m{m}", _at(m)) for m in range(base, base + 5) if m != 2][:4]))
    first, inside, split, last = stager.files
    before = {f: _identity(f) for f in (first, last)}
    inside_inode, split_inode = os.stat(inside).st_ino, os.stat(split).st_ino

    # [10, 12) and [12, 14) touch: together they hold the second file. [2, 3) is within the first
    # file's range but holds none of its rows; [20, 23) ends on the third file's last row.
    stretches = [_stretch(12, 14), _stretch(2, 3), _stretch(20, 23), _stretch(10, 12)]
    taken = stager.take("datetime", stretches)

    assert len(taken) == 2 and os.stat(taken[0]).st_ino == inside_inode  # renamed, not rewritten
    assert not os.path.exists(inside)
    assert stager.files == [first, split, last]
    assert {f: _identity(f) for f in (first, last)} == before  # same files: not rewritten
    assert os.stat(split).st_ino != split_inode and _ids([split]) == ["m23"]  # rewritten in place
    assert _ids(taken) == ["m10", "m11", "m12", "m13", "m20", "m21", "m22"]

    stager.add(_events([("late", _at(12))]))  # written after a take: a file of its own, none lost
    staged = stager.finish(None, {}, {})
    assert sorted(_ids(staged.files)) == sorted(
        ["m0", "m1", "m3", "m4", "m23", *(f"m{m}" for m in range(30, 34)), "late"]
    )
    assert staged.rows == 10 and staged.stats["rows_checkpointed"] == 7
    assert sorted(_ids([*taken, *staged.files])) == sorted(set(_ids([*taken, *staged.files])))


def test_take_writes_pending_rows_first_and_splits_a_file_in_place(tmp_path) -> None:
    stager = ParquetStager(EVENTS, str(tmp_path), rows_per_file=100)
    stager.add(_events([("a", _at(1)), ("b", _at(5)), ("c", None)]))
    assert stager.files == []  # all pending
    taken = stager.take("datetime", [_stretch(0, 2)])
    assert _ids(taken) == ["a"]
    assert [Path(f).name for f in stager.files] == ["part-000000.parquet"]  # the rest, in place
    assert _ids(stager.files) == ["b", "c"]
    assert [p.name for p in Path(stager.directory).iterdir() if p.name.endswith(".tmp")] == []

    stager.add(_events([("d", _at(3))]))
    taken_again = stager.take("datetime", [_stretch(0, 10)])  # all non-NULL keys: b and d
    assert sorted(_ids(taken_again)) == ["b", "d"]
    assert _ids(stager.files) == ["c"]  # a NULL key is never taken
    assert (stager.rows_written, stager.rows_taken) == (1, 3)


def test_restore_stages_taken_rows_again_for_the_final_write(tmp_path) -> None:
    stager = ParquetStager(EVENTS, str(tmp_path), rows_per_file=3)
    rows = [(f"e{n}", _at(n % 6)) for n in range(12)]
    for start in range(0, 12, 3):
        stager.add(_events(rows[start : start + 3]))
    taken = stager.take("datetime", [_stretch(0, 3)])
    assert sorted(_ids(taken)) == ["e0", "e1", "e2", "e6", "e7", "e8"]
    assert (stager.rows_written, stager.rows_taken) == (6, 6)

    stager.restore(taken)  # the checkpoint's merge failed
    assert (stager.rows_written, stager.rows_taken) == (12, 0)
    with pytest.raises(ValueError, match="not taken from this stager"):
        stager.release(taken)  # restored: no longer the caller's
    staged = stager.finish(None, {}, {})
    assert sorted(_ids(staged.files)) == sorted(i for i, _ in rows)  # every row, once
    assert staged.rows == 12 and staged.stats["rows_checkpointed"] == 0

    retaken = stager.take("datetime", [_stretch(0, 1)])  # restored files can be taken again
    assert sorted(_ids(retaken)) == ["e0", "e6"]


def test_release_deletes_the_merged_files_and_keeps_them_counted(tmp_path) -> None:
    stager = ParquetStager(EVENTS, str(tmp_path), rows_per_file=2)
    stager.add(_events([("a", _at(0)), ("b", _at(1)), ("c", _at(2)), ("d", _at(3))]))
    taken = stager.take("datetime", [_stretch(0, 1)])
    stager.release(taken)  # the checkpoint merged them
    assert taken and not any(os.path.exists(f) for f in taken)
    assert (stager.rows_written, stager.rows_taken) == (3, 1)
    with pytest.raises(ValueError, match="not taken from this stager"):
        stager.restore(taken)
    with pytest.raises(ValueError, match="not taken from this stager"):
        stager.release([stager.files[0]])  # a staged file is not the caller's to delete
    assert os.path.exists(stager.files[0])
    staged = stager.finish(None, {}, {})
    assert staged.rows == 3 and staged.stats["rows_checkpointed"] == 1
    assert sorted(_ids(staged.files)) == ["b", "c", "d"]
    stager.discard()
    assert not os.path.exists(stager.directory)


def test_files_without_the_key_column_give_nothing(tmp_path) -> None:
    tags = ParquetStager(TAGS, str(tmp_path), rows_per_file=2)  # a table with no incremental key
    tags.add(pa.table({"id": ["a", "b", "c"]}))
    files = list(tags.files)
    assert tags.take("datetime", [_stretch(-(10**6), 10**6)]) == []
    assert tags.files == files and tags.rows_written == 3 and tags.rows_taken == 0

    events = ParquetStager(EVENTS, str(tmp_path), rows_per_file=2)
    events.add(pa.table({"id": ["x", "y"]}))  # a file without datetime
    events.add(_events([("a", _at(0)), ("b", _at(100))]))
    taken = events.take("datetime", [_stretch(-1, 1)])
    assert _ids(taken) == ["a"] and sorted(_ids(events.files)) == ["b", "x", "y"]


def test_any_unit_and_time_zone_are_compared_exactly(tmp_path) -> None:
    stager = ParquetStager(EVENTS, str(tmp_path), rows_per_file=100)
    nanos = pa.array([_at(0), _at(1)], pa.timestamp("ns", tz="UTC")).cast(pa.int64()).to_pylist()
    ns_values = pa.array([nanos[0] - 1, nanos[0], nanos[1] - 1, nanos[1]], pa.timestamp("ns", tz="UTC"))
    stager.add(pa.table({"id": ["ns-before", "ns-start", "ns-last", "ns-end"], "datetime": ns_values}))
    stager.flush()
    start_ms = int(_at(10).timestamp()) * 1000
    ms_values = pa.array(
        [start_ms + 1, start_ms + 2, start_ms + 3], pa.timestamp("ms", tz="America/New_York")
    )
    stager.add(pa.table({"id": ["ms-1", "ms-2", "ms-3"], "datetime": ms_values}))
    stager.flush()
    schemas = [pq.read_schema(f) for f in stager.files]
    # [1.5 ms, 2.5 ms) holds the value at 2 ms only: bounds in a coarser unit round up.
    micro = TimeWindow(_at(10) + timedelta(microseconds=1500), _at(10) + timedelta(microseconds=2500))

    taken = stager.take("datetime", [_stretch(0, 1), micro])
    assert [_ids([f]) for f in taken] == [["ns-start", "ns-last"], ["ms-2"]]
    assert sorted(_ids(stager.files)) == ["ms-1", "ms-3", "ns-before", "ns-end"]
    assert [pq.read_schema(f) for f in taken] == schemas  # units and time zones kept


def test_stretches_round_bounds_up_in_a_coarser_unit() -> None:
    start = int(T0.timestamp())
    seconds = pa.chunked_array(
        [
            pa.array([start, start + 1], pa.timestamp("s")),
            pa.array([0, start + 2, None, start + 3], pa.timestamp("s")).slice(1),  # an offset
        ]
    )
    stretch = TimeWindow(T0 + timedelta(seconds=0.5), T0 + timedelta(seconds=2.5))
    assert Stretches([stretch]).mask(seconds).tolist() == [False, True, True, False, False]
    assert Stretches([]).mask(seconds).tolist() == [False] * 5
    spans = [(5, 6), (1, 2), (0, 3), (3, 4), (2.5, 2.75), (5, 5.5)]  # unsorted, inside, touching
    merged = Stretches([_stretch(a, b) for a, b in spans])
    minute = 60 * 10**9
    base = int(T0.timestamp()) * 10**9
    assert merged.starts == [base, base + 5 * minute] and merged.ends == [
        base + 4 * minute,
        base + 6 * minute,
    ]
    assert KeyRange.of(seconds) == KeyRange(start * 10**9, (start + 3) * 10**9, 1)


def test_a_failed_take_leaves_every_row_staged(tmp_path) -> None:
    stager = ParquetStager(EVENTS, str(tmp_path), rows_per_file=2)
    stager.add(_events([("a", _at(0)), ("b", _at(1))]))  # taken whole, first
    stager.add(pa.table({"id": ["c", "d"], "datetime": ["not", "a timestamp"]}))  # then fails
    with pytest.raises(TypeError, match="not a timestamp column"):
        stager.take("datetime", [_stretch(0, 2)])
    assert sorted(_ids(stager.files)) == ["a", "b", "c", "d"]
    assert (stager.rows_written, stager.rows_taken) == (4, 0)
    assert sorted(_ids(stager.finish(None, {}, {}).files)) == ["a", "b", "c", "d"]
