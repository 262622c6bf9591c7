"""Short-lived DuckDB connections that wait for the single-writer file lock.

DuckDB allows one read-write process per database file, and while it holds the file no other
process can open it at all (not even read-only). Everything in this project therefore opens a
connection, does one short piece of work and closes it; :func:`connect` waits (with jittered,
capped backoff) while another process holds the lock instead of failing at once.
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

logger = logging.getLogger(__name__)

#: Environment variables named in error messages (read by the IO manager / resources).
DUCKDB_PATH_ENV = "OMNILOAD_DUCKDB_PATH"
LOCK_TIMEOUT_ENV = "OMNILOAD_DUCKDB_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT_S = 300.0

_FIRST_DELAY_S = 0.05
_MAX_DELAY_S = 1.0
_LOCK_MARKERS = ("could not set lock on file", "conflicting lock")
_PATH_MARKERS = (
    "cannot open file",
    "cannot open database",
    "permission denied",
    "read-only file system",
    "is a directory",
    "no such file or directory",
    "not a directory",
)
_HOLDER = re.compile(r"held in (?P<exe>.*?) \(PID (?P<pid>\d+)\)")


class WarehouseError(Exception):
    """Base class of the errors raised by the warehouse package."""


class DuckDBLockedError(WarehouseError):
    """Another process held the DuckDB file lock for longer than the allowed wait."""

    def __init__(self, message: str, *, path: str, lock_timeout_s: float) -> None:
        super().__init__(message)
        self.path = path
        self.lock_timeout_s = lock_timeout_s


class DuckDBPathError(WarehouseError):
    """The DuckDB database path cannot be created, opened or written."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


def resolve_database(database: str | os.PathLike[str]) -> str:
    """Turn a path or ``duckdb://`` URI into what :func:`duckdb.connect` takes.

    ``duckdb:///klaviyo.duckdb`` is the relative path ``klaviyo.duckdb`` and
    ``duckdb:////abs/klaviyo.duckdb`` the absolute ``/abs/klaviyo.duckdb`` (SQLAlchemy style, as
    in the seed's ``--dest-uri``); a query string on the URI is ignored. ``:memory:`` and MotherDuck
    paths (``md:…``, ``motherduck:…``) are returned unchanged; a ``~`` in a file path is expanded.
    """
    text = os.fspath(database).strip()
    if text.startswith("duckdb://"):
        text = text[len("duckdb://") :].split("?", 1)[0]
        if text.startswith("/"):
            text = text[1:]
    if not text:
        raise DuckDBPathError(
            f"empty DuckDB database path {os.fspath(database)!r}; set {DUCKDB_PATH_ENV} "
            "to a file path such as duckdb:///klaviyo.duckdb",
            path=os.fspath(database),
        )
    if not is_local_file(text):
        return text
    return str(Path(text).expanduser())


def is_local_file(database: str) -> bool:
    """True for a file path; False for ``:memory:`` and MotherDuck (``md:``) databases."""
    return not (database.startswith(":memory:") or database.startswith(("md:", "motherduck:")))


def connect(
    database: str | os.PathLike[str],
    *,
    read_only: bool = False,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    memory_limit: str | None = None,
) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB connection, waiting up to ``lock_timeout_s`` for another process's lock.

    ``database`` is a path, a ``duckdb:///`` URI (see :func:`resolve_database`) or a MotherDuck
    ``md:`` path. For a writable file the parent directory is created. While another process
    holds the file, retries with exponential backoff (jittered, at most ~1 s apart) and then raises
    :class:`DuckDBLockedError`; a path that cannot be created or opened raises
    :class:`DuckDBPathError`. Close the connection as soon as the work is done (or use
    :func:`open_database`): holding it blocks every other process.

    ``memory_limit`` (e.g. ``150MB``) caps DuckDB's memory on a writable local file (it spills to
    ``<file>.tmp`` beyond it); read-only, ``:memory:`` and MotherDuck connections keep the default.
    """
    target = resolve_database(database)
    local = is_local_file(target)
    if local:
        _check_path(Path(target), read_only=read_only)
    conn = _connect_waiting(target, local=local, read_only=read_only, lock_timeout_s=lock_timeout_s)
    if memory_limit and local and not read_only:
        try:
            quoted = "'" + memory_limit.replace("'", "''") + "'"
            conn.execute(f"SET memory_limit = {quoted}")
        except BaseException:
            conn.close()
            raise
    return conn


def _connect_waiting(
    target: str, *, local: bool, read_only: bool, lock_timeout_s: float
) -> duckdb.DuckDBPyConnection:
    """:func:`duckdb.connect`, retried while another process holds the file's lock."""
    deadline = time.monotonic() + max(lock_timeout_s, 0.0)
    delay = _FIRST_DELAY_S
    attempts = 0
    while True:
        attempts += 1
        try:
            return duckdb.connect(target, read_only=read_only)
        except duckdb.Error as exc:
            message = str(exc)
            if not _is_lock_error(message):
                if local and _is_path_error(message):
                    raise DuckDBPathError(
                        f"cannot open DuckDB file {target} ({_first_line(message)}); "
                        f"fix the path or its permissions, or point {DUCKDB_PATH_ENV} elsewhere",
                        path=target,
                    ) from exc
                raise
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DuckDBLockedError(
                    f"DuckDB file {target} is locked by another process ({_holder(message)}) "
                    f"for more than {lock_timeout_s:g} s; stop that process or raise "
                    f"{LOCK_TIMEOUT_ENV}",
                    path=target,
                    lock_timeout_s=lock_timeout_s,
                ) from exc
            if attempts == 1:
                logger.info(
                    "DuckDB file %s is locked by another process (%s); waiting up to %g s",
                    target,
                    _holder(message),
                    lock_timeout_s,
                )
            time.sleep(min(delay * random.uniform(0.5, 1.0), remaining))
            delay = min(delay * 2, _MAX_DELAY_S)


def check_writable(database: str | os.PathLike[str]) -> str:
    """Fail now, with :class:`DuckDBPathError`, if a writable ``database`` could not be opened.

    Creates the parent directory and checks its permissions (and that an existing file is not
    read-only), without opening the file: no lock is taken. Returns the resolved target.
    Call it before extracting, so a bad path fails a run before any API work or write.
    """
    target = resolve_database(database)
    if is_local_file(target):
        path = Path(target)
        _check_path(path, read_only=False)
        if path.exists() and not os.access(path, os.R_OK | os.W_OK):
            raise DuckDBPathError(
                f"DuckDB file {path} is not readable and writable; fix its permissions or "
                f"point {DUCKDB_PATH_ENV} elsewhere",
                path=str(path),
            )
    return target


@contextmanager
def open_database(
    database: str | os.PathLike[str],
    *,
    read_only: bool = False,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    memory_limit: str | None = None,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Yield a connection from :func:`connect` and always close it afterwards."""
    conn = connect(database, read_only=read_only, lock_timeout_s=lock_timeout_s, memory_limit=memory_limit)
    try:
        yield conn
    finally:
        conn.close()


def _check_path(path: Path, *, read_only: bool) -> None:
    """Fail early, with a useful message, on a path DuckDB could not use."""
    if path.is_dir():
        raise DuckDBPathError(
            f"DuckDB path {path} is a directory; point {DUCKDB_PATH_ENV} at a file "
            f"such as {path / 'klaviyo.duckdb'}",
            path=str(path),
        )
    if read_only:
        if not path.exists():
            raise DuckDBPathError(
                f"DuckDB file {path} does not exist and a read-only connection cannot create "
                f"it; materialize a table first or fix {DUCKDB_PATH_ENV}",
                path=str(path),
            )
        return
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DuckDBPathError(
            f"cannot create directory {parent} for DuckDB file {path} ({reason}); "
            f"choose a writable location for {DUCKDB_PATH_ENV}",
            path=str(path),
        ) from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DuckDBPathError(
            f"directory {parent} of DuckDB file {path} is not writable; fix its permissions "
            f"or choose another location for {DUCKDB_PATH_ENV}",
            path=str(path),
        )


def _is_lock_error(message: str) -> bool:
    lowered = message.lower()
    return any(marker in lowered for marker in _LOCK_MARKERS)


def _is_path_error(message: str) -> bool:
    lowered = message.lower()
    return any(marker in lowered for marker in _PATH_MARKERS)


def _holder(message: str) -> str:
    """``PID 123: /usr/bin/python3`` from DuckDB's lock message, when it names the holder."""
    match = _HOLDER.search(message)
    if match is None:
        return "holder unknown"
    return f"PID {match['pid']}: {match['exe']}"


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else message
