"""Helpers shared by the fault, bad-input and security tests and the soak script.

Also runnable as a script (``python -m omniload_assets_tests.harness``): one materialization in a
fresh process, configured from the environment like the code location, for tests that need a
second process (concurrent runs, ``kill -9``). ``--pause-in-write`` makes that process print
``IN_WRITE`` and stop inside the DuckDB transaction, after the rows are written and before
``COMMIT``: the moment a test kills it.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import dagster as dg
import duckdb

from omniload_assets.klaviyo.catalog import TableSpec, get_table
from omniload_assets.warehouse.reads import qualified_name

IN_WRITE = "IN_WRITE"
LOCK_WAIT_MARKER = "is locked by another process"
REPO_ROOT = Path(__file__).resolve().parents[1]

#: Resource settings that keep fault tests fast: small pages, short timeouts, tiny backoff.
FAST_KLAVIYO: dict[str, Any] = {
    "page_size": 50,
    "max_retries": 6,
    "timeout_s": 2.0,
    "max_retry_after_s": 5.0,
    "retry_backoff_s": 0.01,
}


def fast_resources(defs: dg.Definitions, **overrides: Any) -> dict[str, Any]:
    """``defs``' resources with the Klaviyo resource tuned for tests (see ``FAST_KLAVIYO``)."""
    resources = dict(defs.resources or {})
    resources["klaviyo"] = resources["klaviyo"].model_copy(update={**FAST_KLAVIYO, **overrides})
    return resources


def expected_ids(sim: Any, spec: TableSpec, start: datetime, end: datetime) -> set[str]:
    """The simulator's ground truth for a run of ``spec`` over ``[start, end)``."""
    return sim.ids(spec.name, start, end) if spec.partitioned else sim.ids(spec.name)


def ids_in(db_path: Path, table: str) -> list[str]:
    """Every id of ``klaviyo.<table>`` (duplicates kept); empty if the table does not exist."""
    if not db_path.exists():
        return []
    with duckdb.connect(str(db_path), read_only=True) as conn:
        exists = conn.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'klaviyo' AND table_name = ?", [table]
        ).fetchone()
        if not exists or not exists[0]:
            return []
        name = qualified_name(conn, "klaviyo", table)
        return [r[0] for r in conn.execute(f"SELECT id FROM {name}").fetchall()]


def snapshot(db_path: Path, tables: Iterable[str]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row (load metadata included) of each table, sorted: 'the table as it was'."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    if not db_path.exists():
        return {t: [] for t in tables}
    with duckdb.connect(str(db_path), read_only=True) as conn:
        for table in tables:
            exists = conn.execute(
                "SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'klaviyo' AND table_name = ?",
                [table],
            ).fetchone()
            if not exists or not exists[0]:
                out[table] = []
                continue
            name = qualified_name(conn, "klaviyo", table)
            out[table] = sorted(conn.execute(f"SELECT * FROM {name}").fetchall(), key=repr)
    return out


def incremental_values(db_path: Path, spec: TableSpec) -> dict[str, datetime | None]:
    """``id -> incremental key`` of the stored rows."""
    assert spec.incremental_key is not None
    with duckdb.connect(str(db_path), read_only=True) as conn:
        name = qualified_name(conn, "klaviyo", spec.asset_name)
        rows = conn.execute(f'SELECT id, "{spec.incremental_key}" FROM {name}').fetchall()
    return {r[0]: r[1] for r in rows}


def truth_incremental_values(sim: Any, spec: TableSpec, ids: set[str]) -> dict[str, datetime | None]:
    """``id -> incremental key`` of the simulator's current records among ``ids``."""
    assert spec.incremental_key is not None
    out: dict[str, datetime | None] = {}
    for record in sim.records(spec.name):
        if record["id"] in ids:
            raw = record["attributes"].get(spec.incremental_key)
            out[record["id"]] = None if raw is None else datetime.fromisoformat(raw).astimezone(UTC)
    return out


def error_messages(result: dg.ExecuteInProcessResult) -> str:
    """Every error message (causes included) of the run's failures: steps and start-up alike."""
    lines: list[str] = []
    for event in result.all_events:
        error = getattr(event.event_specific_data, "error", None)
        while error is not None:
            lines.append(error.message.strip())
            error = error.cause
    return "\n".join(lines)


def reason(result: dg.ExecuteInProcessResult) -> str:
    """The first error of the run raised by this project (not a Dagster wrapper), as one line."""
    for message in error_messages(result).splitlines():
        if message.startswith("omniload_assets."):
            return message
    raise AssertionError(f"no omniload_assets error in:\n{error_messages(result)}")


def range_tags(first: date, last: date) -> dict[str, str]:
    return {
        "dagster/asset_partition_range_start": first.isoformat(),
        "dagster/asset_partition_range_end": last.isoformat(),
    }


# -- a materialization in another process --------------------------------------------------------


def child_command(
    tables: Sequence[str],
    *,
    first: date | None = None,
    last: date | None = None,
    partition: str | None = None,
    pause_in_write: bool = False,
) -> list[str]:
    """The command line of :func:`main` for one run of ``tables``."""
    cmd = [sys.executable, "-m", "omniload_assets_tests.harness", "--tables", ",".join(tables)]
    if first is not None and last is not None:
        cmd += ["--first", first.isoformat(), "--last", last.isoformat()]
    if partition is not None:
        cmd += ["--partition", partition]
    if pause_in_write:
        cmd.append("--pause-in-write")
    return cmd


def start_child(cmd: Sequence[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """Start ``cmd`` in its own process group with ``env`` on top of this process's environment."""
    return subprocess.Popen(
        list(cmd),
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


class LineWatcher:
    """Reads a child's stdout and stderr on threads; :meth:`wait_for` blocks until a line appears."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._pump, args=(stream,), daemon=True)
            for stream in (proc.stdout, proc.stderr)
            if stream is not None
        ]
        for thread in self._threads:
            thread.start()

    def _pump(self, stream: TextIO) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, marker: str, timeout: float = 120.0) -> None:
        """Block until a line containing ``marker`` arrives; fail if the child ends first."""
        ended = 0
        deadline = datetime.now(UTC) + timedelta(seconds=timeout)
        while True:
            remaining = (deadline - datetime.now(UTC)).total_seconds()
            if remaining <= 0:
                raise AssertionError(f"no {marker!r} within {timeout} s:\n{self.text()}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                ended += 1
                if ended == len(self._threads):
                    raise AssertionError(f"the child ended before printing {marker!r}:\n{self.text()}")
                continue
            self.lines.append(line)
            if marker in line:
                return

    def finish(self, timeout: float = 120.0) -> int:
        """Wait for the child to exit and for its output; returns the exit code."""
        code = self.proc.wait(timeout=timeout)
        for thread in self._threads:
            thread.join(timeout=10)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return code

    def text(self) -> str:
        return "".join(self.lines)


def _pause_inside_write() -> None:
    """Make every DuckDB write stop after its rows are written, before ``COMMIT``."""
    from omniload_assets.warehouse import writer

    def pausing(original: Any) -> Any:
        def body(self: Any, run_id: str | None, *args: Any, **kwargs: Any) -> Any:
            result = original(self, run_id, *args, **kwargs)
            print(IN_WRITE, flush=True)
            threading.Event().wait()  # until killed
            return result

        return body

    writer._Loader.merge = pausing(writer._Loader.merge)  # type: ignore[method-assign]
    writer._Loader.replace = pausing(writer._Loader.replace)  # type: ignore[method-assign]


def main(argv: Sequence[str] | None = None) -> int:
    """Materialize some tables once, like a Dagster run of the code location; exit 1 on failure."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tables", required=True)
    parser.add_argument("--first")
    parser.add_argument("--last")
    parser.add_argument("--partition")
    parser.add_argument("--pause-in-write", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    logging.getLogger("omniload_assets.warehouse.connection").setLevel(logging.INFO)
    if args.pause_in_write:
        _pause_inside_write()

    from omniload_assets.assets import asset_key
    from omniload_assets.definitions import build_definitions

    defs = build_definitions()
    resources = dict(defs.resources or {})
    overrides = {k: v for k, v in FAST_KLAVIYO.items() if k != "max_retry_after_s"}
    overrides["page_size"] = 200
    resources["klaviyo"] = resources["klaviyo"].model_copy(update=overrides)
    assets = [defs.get_assets_def(asset_key(get_table(t))) for t in args.tables.split(",")]
    tags = range_tags(date.fromisoformat(args.first), date.fromisoformat(args.last)) if args.first else {}
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            assets,
            resources=resources,
            instance=instance,
            partition_key=args.partition,
            tags=tags,
            raise_on_error=False,
        )
    print("SUCCESS" if result.success else f"FAILURE\n{error_messages(result)}", flush=True)
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())


def ledger(db_path: Path, schema: str = "klaviyo") -> list[tuple[datetime, datetime, str]]:
    """The stretches checkpoints committed (``_omniload_checkpoints``): start, end, run; sorted."""
    from omniload_assets.warehouse.checkpoints import CHECKPOINTS_TABLE
    from omniload_assets.warehouse.reads import qualified_name, table_exists

    if not db_path.exists():
        return []
    with duckdb.connect(str(db_path), read_only=True) as conn:
        if not table_exists(conn, schema, CHECKPOINTS_TABLE):
            return []
        return conn.execute(
            "SELECT stretch_start, stretch_end, run_id "
            f"FROM {qualified_name(conn, schema, CHECKPOINTS_TABLE)} ORDER BY 1"
        ).fetchall()


def assert_unchanged_outside_checkpoints(
    db_path: Path, before: dict[str, list[tuple[Any, ...]]], key_index: int = 2
) -> None:
    """A failed run changed no row but those of the stretches its checkpoints committed (issue 19):
    the rows whose key (column ``key_index``) lies outside them are as ``before``."""
    stretches = ledger(db_path)
    after = snapshot(db_path, before)

    def outside(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        return [r for r in rows if not any(start <= r[key_index] < end for start, end, _ in stretches)]

    for table, rows in before.items():
        if table == "events":
            assert outside(after[table]) == outside(rows), table
        else:
            assert after[table] == rows, table
