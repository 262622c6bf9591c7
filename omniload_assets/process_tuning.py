"""Process-wide tuning that a measurement paid for: memory allocators and decode-process start-up.

Everything here changes the whole process, so it lives in one place, and each piece is used from
one place only:

* :data:`ROWS_POOL` — the Arrow memory pool rows are built in (``klaviyo.rows``, ``warehouse.staging``).
* :func:`limit_malloc_arenas` — before extraction starts its fetching threads (``klaviyo.extraction``).
* :func:`release_free_memory` — after each staged file and before the write (``warehouse.staging``).
* :func:`without_main_script` — while decode processes are spawned (``klaviyo.decode_processes``).
* :func:`block_pandas` — in each decode process, first thing (``klaviyo.decode_processes``).
"""

from __future__ import annotations

import ctypes
import importlib.abc
import sys
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa


def _rows_pool() -> pa.MemoryPool:
    """The Arrow memory pool for rows built by many fetching threads.

    Arrow's default (mimalloc) keeps freed memory in per-thread heaps: with dozens of workers, the
    process's peak RSS grew with the run (measured: 760 MB after 200,000 events, 420 MB with
    jemalloc, the system allocator close behind).
    """
    try:
        pool = pa.jemalloc_memory_pool()
        # Freed pages go back to the OS at once; with staging releasing the pool before the write,
        # a 1M-event run peaked ~30 MB lower (the two were measured together).
        pa.jemalloc_set_decay_ms(0)
        return pool
    except NotImplementedError:  # a pyarrow built without jemalloc
        return pa.system_memory_pool()


ROWS_POOL = _rows_pool()

#: glibc malloc arenas for the whole process (glibc's default: 8 per core). Each thread that
#: allocates while another does gets an arena of its own, and each arena keeps its own freed memory:
#: with 40 fetching threads the heaps fragmented and peak RSS grew with the run (100k / 500k / 1M
#: events: 378 / 501 / 562+ MB). With 2 arenas and :func:`release_free_memory` after each staged file:
#: 321 / 438 / 425 MB, flat from about 250k events, at much the same records/s (the GIL serializes
#: most allocations anyway).
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt parameter (glibc malloc.h)
_libc_lock = threading.Lock()
_arenas_limited = False


def _glibc() -> ctypes.CDLL | None:
    """The process's C library if it is glibc (has ``mallopt`` and ``malloc_trim``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt  # noqa: B018 -- lookups raise AttributeError where the symbols are missing (musl)
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()


def limit_malloc_arenas() -> None:
    """Cap glibc's malloc arenas at :data:`MALLOC_ARENAS` (once; no-op elsewhere). Call it before
    starting threads that parse pages: threads get their arena at their first allocation."""
    global _arenas_limited
    with _libc_lock:
        if _LIBC is not None and not _arenas_limited:
            _LIBC.mallopt(_M_ARENA_MAX, MALLOC_ARENAS)
            _arenas_limited = True


def release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc's ``malloc_trim``; no-op elsewhere): parsed
    pages leave free holes the heap would otherwise keep resident. A few ms; call it rarely."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


@contextmanager
def without_main_script() -> Iterator[None]:
    """Hide the ``__main__`` script from ``spawn``: its children would re-import it, and for
    ``dagster`` that is all of Dagster (a second and some 150 MB a process) they do not need."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")  # no __file__, no __spec__
    try:
        yield
    finally:
        sys.modules["__main__"] = main


class _NoPandas(importlib.abc.MetaPathFinder):
    """pyarrow imports pandas (~0.3 s of CPU) the first time it converts a list, only to ask
    whether the list is a pandas object; a decode process never has one."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        if fullname == "pandas":
            raise ModuleNotFoundError("pandas is not imported by decode processes", name=fullname)
        return None


def block_pandas() -> None:
    """Make ``import pandas`` fail in this process (a decode process; see :class:`_NoPandas`)."""
    sys.meta_path.insert(0, _NoPandas())
