"""Short-lived DuckDB connections that wait for the single-writer file lock.

DuckDB allows one read-write process per database file, and while it holds the file no other
process can open it at all (not even read-only). Everything in this project therefore opens a
connection, does one short piece of work and closes it; :func:`connect` waits (with jittered,
capped backoff) while another process holds the lock instead of failing at once.
"""

from __future__ import annotations

import logging
import os
import re
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from omniload_assets.backoff import backoff_s

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
_MEMORY = ":memory:"
#: Every DuckDB database file starts with an 8-byte checksum and then these 4 bytes.
_MAGIC, _MAGIC_OFFSET = b"DUCK", 8
#: Errors of a read-only open that mean the file is a database someone is using, not a broken one.
_IN_USE_MARKERS = (*_LOCK_MARKERS, "different configuration")
#: A query parameter name shown as it is in messages (its value never is).
_PARAM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_MASK = "***"
_SHOWN_CHARS = 200  # longest database path shown in a message


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


def resolve_database(database: str | os.PathLike[str], *, setting: str = DUCKDB_PATH_ENV) -> str:
    """Turn a path or ``duckdb://`` URI into what :func:`duckdb.connect` takes.

    ``duckdb:///klaviyo.duckdb`` is the relative path ``klaviyo.duckdb`` and
    ``duckdb:////abs/klaviyo.duckdb`` the absolute ``/abs/klaviyo.duckdb`` (SQLAlchemy style, as
    in the seed's ``--dest-uri``); a query string on the URI is ignored. ``:memory:`` and MotherDuck
    paths (``md:…``, ``motherduck:…``) are returned unchanged; a ``~`` in a file path is expanded.
    An empty path, or one with control characters, raises :class:`DuckDBPathError`; its message
    names ``setting`` (where the value came from: the environment variable or a CLI flag).
    """
    text = os.fspath(database).strip()
    if text.startswith("duckdb://"):
        text = text[len("duckdb://") :].split("?", 1)[0]
        if "@" in text.partition("/")[0]:  # duckdb://user:password@host/...: a server URI, not a file
            raise DuckDBPathError(
                f"{show_database(database)} has a user or password, which a DuckDB file does not take; "
                f"point {setting} at a file such as duckdb:///klaviyo.duckdb",
                path=mask_database(database),
            )
        if text.startswith("/"):
            text = text[1:]
    if not text:
        raise DuckDBPathError(
            f"empty DuckDB database path; point {setting} at a file such as duckdb:///klaviyo.duckdb",
            path=mask_database(database),
        )
    bad = sorted({f"U+{ord(c):04X}" for c in text if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp")})
    if bad:
        raise DuckDBPathError(
            f"DuckDB path {show_database(database)} contains control characters ({', '.join(bad[:5])}); "
            f"point {setting} at a plain file name such as duckdb:///klaviyo.duckdb",
            path=mask_database(database),
        )
    if not is_local_file(text):
        return text
    try:
        return str(Path(text).expanduser())
    except RuntimeError as exc:  # ~user that does not exist, or no home directory
        raise DuckDBPathError(
            f"cannot expand ~ in DuckDB path {show_database(database)} ({exc}); give {setting} a full path",
            path=mask_database(database),
        ) from None


def mask_database(database: str | os.PathLike[str]) -> str:
    """``database`` with its secrets replaced by ``***``: every query parameter value and URL userinfo.

    ``md:klaviyo?motherduck_token=eyJ…`` gives ``md:klaviyo?motherduck_token=***`` and
    ``scheme://user:password@host/db`` gives ``scheme://***@host/db``. This is the one function
    that makes a database path fit for a message or a log line.
    """
    text = os.fspath(database)
    head, question, query = text.partition("?")
    if "://" in head:
        scheme, _, rest = head.partition("://")
        authority, slash, path = rest.partition("/")
        if "@" in authority:
            authority = _MASK + "@" + authority.rsplit("@", 1)[1]
        head = f"{scheme}://{authority}{slash}{path}"
    if not question:
        return head
    parts = re.split(r"([&;])", query)
    return head + "?" + "".join(part if part in "&;" else _mask_param(part) for part in parts)


def show_database(database: str | os.PathLike[str]) -> str:
    """``database`` as messages show it: masked (:func:`mask_database`), one line, at most 200 characters."""
    masked = mask_database(database)
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in masked)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…"


def _mask_param(part: str) -> str:
    """``key=value`` -> ``key=***``; a bare value or an odd key is masked whole."""
    key, equals, value = part.partition("=")
    if not equals:
        return _MASK if part else part
    return f"{key if _PARAM_NAME.fullmatch(key) else _MASK}={_MASK if value else ''}"


def _secrets(database: str) -> list[str]:
    """The parts of ``database`` that :func:`mask_database` hides, longest first."""
    head, _, query = database.partition("?")
    found: list[str] = []
    if "://" in head:
        authority = head.partition("://")[2].partition("/")[0]
        if "@" in authority:
            found.append(authority.rsplit("@", 1)[0])
    for part in re.split(r"[&;]", query):
        key, equals, value = part.partition("=")
        found.extend([value] if equals and _PARAM_NAME.fullmatch(key) else [part])
    return sorted((s for s in found if len(s) >= 4), key=len, reverse=True)


def scrub(message: str, database: str | os.PathLike[str]) -> str:
    """``message`` (DuckDB's own, say) without the secrets of ``database``, on one line."""
    text = os.fspath(database)
    message = _first_line(message).replace(text, mask_database(text)) if text else _first_line(message)
    for secret in _secrets(text):
        message = message.replace(secret, _MASK)
    return message


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
                        f"cannot open DuckDB file {show_database(target)} ({scrub(message, target)}); "
                        f"fix the path or its permissions, or point {DUCKDB_PATH_ENV} elsewhere",
                        path=mask_database(target),
                    ) from None
                if scrub(message, target) != _first_line(message):  # DuckDB echoed a secret
                    raise WarehouseError(
                        f"cannot open DuckDB database {show_database(target)}: {scrub(message, target)}"
                    ) from None
                raise
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DuckDBLockedError(
                    f"DuckDB file {show_database(target)} is locked by another process ({_holder(message)}) "
                    f"for more than {lock_timeout_s:g} s; stop that process or raise "
                    f"{LOCK_TIMEOUT_ENV}",
                    path=mask_database(target),
                    lock_timeout_s=lock_timeout_s,
                ) from None
            if attempts == 1:
                logger.info(
                    "DuckDB file %s is locked by another process (%s); waiting up to %g s",
                    show_database(target),
                    _holder(message),
                    lock_timeout_s,
                )
            time.sleep(min(backoff_s(attempts, _FIRST_DELAY_S, _MAX_DELAY_S), remaining))


def check_writable(database: str | os.PathLike[str], *, setting: str = DUCKDB_PATH_ENV) -> str:
    """Fail now, with :class:`DuckDBPathError`, if a writable ``database`` could not be opened.

    Refuses an in-memory database (nothing would be kept), creates the parent directory and checks
    its permissions and that its filesystem can store files (not ``/proc``), and checks that an
    existing file is readable, writable and a DuckDB database (:func:`check_destination`). Returns
    the resolved target. Call it before extracting, so a bad path fails a run before any API work.
    """
    target = _persistent(database, setting)
    if is_local_file(target):
        path = Path(target)
        try:
            _check_path(path, read_only=False, setting=setting)
            if path.exists() and not os.access(path, os.R_OK | os.W_OK):
                raise DuckDBPathError(
                    f"DuckDB file {show_database(path)} is not readable and writable; fix its "
                    f"permissions or point {setting} elsewhere",
                    path=mask_database(path),
                )
            _check_local(path, setting)
        except OSError as exc:
            raise _os_error(path, exc, setting) from None
    return target


def check_destination(database: str | os.PathLike[str], *, setting: str = DUCKDB_PATH_ENV) -> str:
    """Like :func:`check_writable`, but creates nothing: for checking a flag before a run.

    Refuses an in-memory database, a directory, a path below a file or on a filesystem that cannot
    store files (``/proc``, ``/sys``), and an existing file that is not a DuckDB database (not a
    regular file, no DuckDB header, or DuckDB cannot open it: truncated, another version). A valid
    database another process holds open is accepted. Messages name ``setting`` and mask secrets.
    """
    target = _persistent(database, setting)
    if is_local_file(target):
        path = Path(target)
        try:
            if path.is_dir():
                _check_path(path, read_only=True, setting=setting)  # raises: a directory
            _check_local(path, setting)
        except OSError as exc:
            raise _os_error(path, exc, setting) from None
    return target


def _persistent(database: str | os.PathLike[str], setting: str) -> str:
    """The resolved target, unless it is an in-memory database that would keep nothing."""
    target = resolve_database(database, setting=setting)
    if target.startswith(_MEMORY):
        raise DuckDBPathError(
            f"{show_database(database)} is an in-memory DuckDB database: the tables would be gone when "
            f"the run ends; point {setting} at a file such as duckdb:///klaviyo.duckdb",
            path=mask_database(database),
        )
    return target


def _check_local(path: Path, setting: str) -> None:
    """The checks of :func:`check_destination` on a local ``path`` that is not a directory."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise DuckDBPathError(
            f"cannot create directory {show_database(path.parent)} for DuckDB file {show_database(path)} "
            f"({show_database(ancestor)} is a file); choose a writable location for {setting}",
            path=mask_database(path),
        )
    if hasattr(os, "statvfs") and os.statvfs(ancestor).f_blocks == 0:
        raise DuckDBPathError(
            f"DuckDB file {show_database(path)} is on a virtual filesystem that stores no files "
            f"(such as /proc or /sys); point {setting} at a file on a disk",
            path=mask_database(path),
        )
    if path.exists():
        _check_database_file(path, setting)


def _check_database_file(path: Path, setting: str) -> None:
    """Refuse an existing ``path`` that is not a DuckDB database; a locked one is fine."""
    shown = show_database(path)
    if not path.is_file():
        raise DuckDBPathError(
            f"{shown} is not a regular file and cannot hold a DuckDB database; point {setting} "
            "at a file such as klaviyo.duckdb",
            path=mask_database(path),
        )
    with path.open("rb") as file:
        header = file.read(_MAGIC_OFFSET + len(_MAGIC))
    if header[_MAGIC_OFFSET:] != _MAGIC:
        what = "it is empty" if not header else "it has no DuckDB header"
        raise DuckDBPathError(
            f"{shown} exists but is not a DuckDB database ({what}); move it away or point {setting} "
            "at another file",
            path=mask_database(path),
        )
    try:
        duckdb.connect(str(path), read_only=True).close()
    except duckdb.Error as exc:
        message = str(exc)
        if any(marker in message.lower() for marker in _IN_USE_MARKERS):
            return  # another process (or connection) has it open: a database in use
        raise DuckDBPathError(
            f"{shown} is a DuckDB file DuckDB cannot open ({scrub(message, str(path))}); restore it "
            f"from a backup, move it away or point {setting} at another file",
            path=mask_database(path),
        ) from None


def _os_error(path: Path, exc: OSError, setting: str) -> DuckDBPathError:
    """An unexpected OS error while checking ``path`` (name too long, I/O error), as one line."""
    reason = exc.strerror or type(exc).__name__
    return DuckDBPathError(
        f"cannot use {show_database(path)} as a DuckDB file ({reason}); point {setting} elsewhere",
        path=mask_database(path),
    )


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


def _check_path(path: Path, *, read_only: bool, setting: str = DUCKDB_PATH_ENV) -> None:
    """Fail early, with a useful message, on a path DuckDB could not use."""
    if path.is_dir():
        raise DuckDBPathError(
            f"DuckDB path {show_database(path)} is a directory; point {setting} at a file "
            f"such as {show_database(path / 'klaviyo.duckdb')}",
            path=mask_database(path),
        )
    if read_only:
        if not path.exists():
            raise DuckDBPathError(
                f"DuckDB file {show_database(path)} does not exist and a read-only connection cannot "
                f"create it; materialize a table first or fix {setting}",
                path=mask_database(path),
            )
        return
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DuckDBPathError(
            f"cannot create directory {show_database(parent)} for DuckDB file {show_database(path)} "
            f"({reason}); choose a writable location for {setting}",
            path=mask_database(path),
        ) from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DuckDBPathError(
            f"directory {show_database(parent)} of DuckDB file {show_database(path)} is not writable; "
            f"fix its permissions or choose another location for {setting}",
            path=mask_database(path),
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
