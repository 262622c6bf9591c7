"""Staging (``warehouse.staging``): Parquet files written where told, and what dead runs left removed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pytest

from omniload_assets.klaviyo.catalog import get_table
from omniload_assets.warehouse.staging import (
    ParquetStager,
    StagingDirError,
    StagingOwner,
    remove_stale_staging,
)
from omniload_assets_tests.harness import (
    REPO_ROOT,
)

TAGS = get_table("tags")


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
