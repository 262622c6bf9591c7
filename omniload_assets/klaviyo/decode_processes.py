"""Decode processes: pages decoded into Arrow rows by a pool of processes, so one interpreter's
GIL does not cap a run.

Decoding a page of 1,000 events and building its columns costs ~9 ms of CPU under the GIL, about
as much again as fetching it; with every page decoded in the run's process, that process (one core
at most) capped a backfill at ~30,000 events/s. Here a pool of ``spawn``-ed processes, each with its
own ``RowBuilder``, turns bodies into rows; the run's process only fetches, reads each page's keys
and ``links.next`` from the answer, and stages the rows. Starting a process costs about half a
second of CPU, so ``decoders.ProcessDecoder`` starts them only for a table that proves large.

The wire, both ends of which are here: each process has two pipes of 1 MiB (a body or its rows
cross in a write or two). Bodies go as *frames*, an 8-byte big-endian length then the bytes,
written straight to the pipe's file descriptor and read by the process into one buffer it keeps
(:class:`_Frames`). Answers come back with ``multiprocessing.Connection.send``/``recv`` (pickled):
the page's raw keys, ``links.next``, its rows as an Arrow IPC stream (one ``bytes`` object, read
without copying) and the extra columns seen. A process takes up to ``PAGES_PER_PROCESS`` pages at
once, answering in order, so the next body crosses while it decodes; the fetching thread writes its
body and reads its answer itself, with no thread in between (``ProcessPoolExecutor``'s feeder and
manager threads cost ~10% of the run's process's CPU).
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import queue
import signal
import struct
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import pyarrow as pa

from omniload_assets.klaviyo.catalog import TableSpec
from omniload_assets.klaviyo.pages import PageBatch, RawPage, read_page
from omniload_assets.klaviyo.rows import RowBuilder
from omniload_assets.process_tuning import block_pandas, without_main_script

log = logging.getLogger(__name__)

# -- in the decode processes ---------------------------------------------------------------------


def _decode(builder: RowBuilder, body: bytes | memoryview) -> tuple[list[Any], Any, bytes, dict[str, str]]:
    """A page's raw keys, ``links.next``, rows (Arrow IPC stream) and the extra columns seen so far."""
    page = read_page(builder.spec, body)
    table = builder.page_table(PageBatch(page))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return page.keys, page.next, sink.getvalue().to_pybytes(), dict(builder.extra_columns)


#: A frame's header: the body's length in bytes, 8 bytes big-endian.
_HEADER = struct.Struct("!Q")


def _write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` to the pipe ``fd`` (a pipe takes at most its capacity per write)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def send_frame(fd: int, body: bytes) -> None:
    """Send ``body`` as one frame on the pipe ``fd`` (see the module's docstring)."""
    _write_all(fd, _HEADER.pack(len(body)))
    _write_all(fd, body)


class _Frames:
    """The frames the run's process sends, read into one buffer this process keeps: with a fresh
    megabyte for each body (page faults and two copies), a process spent 6.6-6.9 ms of CPU a page
    of 1,000 events, against 4.8-5.5 ms with the kept buffer (measured by hand, 300 pages)."""

    def __init__(self, fd: int) -> None:
        self._file = io.FileIO(fd, "rb", closefd=False)
        self._buffer = bytearray(2 * PIPE_BYTES)

    def next(self) -> memoryview | None:
        """The next body, or None once the run's process closed the pipe. Release it (see
        :meth:`done`) before asking for the next."""
        header = bytearray(_HEADER.size)
        if not self._fill(memoryview(header)):
            return None
        (size,) = _HEADER.unpack(header)
        if size > len(self._buffer):
            self._buffer = bytearray(size)
        body = memoryview(self._buffer)[:size]
        if not self._fill(body):
            raise EOFError("the run's process closed the pipe within a body")
        return body

    def done(self, body: memoryview) -> None:
        """``body`` is answered. If anything still holds a view of it (a ``msgspec.Raw``), the
        buffer is left to it and the next body gets a new one."""
        try:
            body.release()
        except BufferError:
            self._buffer = bytearray(len(self._buffer))

    def _fill(self, view: memoryview) -> bool:
        got = 0
        while got < len(view):
            n = self._file.readinto(view[got:])
            if not n:
                return False
            got += n
        return True


def _serve(spec: TableSpec, bodies: Connection, replies: Connection) -> None:
    """A decode process: answer each frame of ``bodies`` on ``replies`` with ``("ok", decoded)``
    or ``("error", exception)`` until the run's process closes either pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the run's to handle; it closes the pipe
    block_pandas()
    builder = RowBuilder(spec)
    received = _Frames(bodies.fileno())
    try:
        replies.send(("ready", None))
        while (body := received.next()) is not None:
            try:
                reply: tuple[str, Any] = ("ok", _decode(builder, body))
            except Exception as exc:  # noqa: BLE001 - raised again in the run's process
                reply = ("error", exc)
            replies.send(reply)
            del reply
            received.done(body)
    except (OSError, EOFError):  # a broken pipe: the run is over (it may end before this is up)
        return


# -- in the run's process ------------------------------------------------------------------------


def _peak_rss_mb(pid: int | None) -> float:
    """A process's peak resident set (Linux ``VmHWM``) in MB; 0 where unknown."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


#: Pipe capacity asked for (Linux allows unprivileged processes up to 1 MiB by default). With the
#: default 64 KiB a page's body (~1.1 MB for 1,000 events) or its rows cross in a dozen writes and
#: reads, and in this process each one waits its turn at the GIL.
PIPE_BYTES = 1 << 20


def _widen(conn: Connection) -> None:
    """Ask for :data:`PIPE_BYTES` of pipe capacity; keep the default where that is refused."""
    if not sys.platform.startswith("linux"):
        return
    import fcntl

    for size in (PIPE_BYTES, PIPE_BYTES // 4):
        try:
            fcntl.fcntl(conn.fileno(), fcntl.F_SETPIPE_SZ, size)
            return
        except OSError:  # above /proc/sys/fs/pipe-max-size
            continue


#: Pages a process may hold at once: the next bodies cross the pipe while it decodes (3 did better
#: than 2 and 4 in A/B runs of the bench's events backfill on 2 cores).
PAGES_PER_PROCESS = 3


class _Channel:
    """The run's ends of the two pipes of one decode process. Answers come in the order bodies went."""

    def __init__(self, to_process: Connection, from_process: Connection) -> None:
        self.to_process = to_process
        self.from_process = from_process
        self.dead = False  # counted as dead by the pool
        self._broken = False
        self._sending = threading.Lock()
        self._turn = threading.Condition()
        self._sent = 0
        self._answered = 0

    def exchange(self, body: bytes) -> tuple[str, Any]:
        """Send ``body`` and wait for its answer; :class:`_ProcessDied` if the pipe broke."""
        with self._sending:
            ticket = self._sent
            self._sent += 1
            try:
                if self._broken:
                    raise _ProcessDied
                send_frame(self.to_process.fileno(), body)
            except OSError as exc:
                self._break()
                raise _ProcessDied from exc
        with self._turn:
            while self._answered != ticket and not self._broken:
                self._turn.wait()
            try:
                if self._broken:
                    raise _ProcessDied
                answer: tuple[str, Any] = self.from_process.recv()
            except (EOFError, OSError) as exc:
                self._broken = True
                raise _ProcessDied from exc
            finally:
                self._answered += 1
                self._turn.notify_all()
        return answer

    def _break(self) -> None:
        with self._turn:
            self._broken = True
            self._turn.notify_all()

    def close(self) -> None:
        self.to_process.close()
        self.from_process.close()


class _ProcessDied(Exception):
    """A decode process's pipe broke: the process is gone."""


class DecodeProcesses:
    """The decode processes of one table. Thread-safe."""

    def __init__(self, spec: TableSpec, processes: int) -> None:
        self.spec = spec
        context = multiprocessing.get_context("spawn")  # never fork a process running threads
        self._processes: list[multiprocessing.process.BaseProcess] = []
        self._starting: list[_Channel] = []  # processes not yet ready
        self._free: queue.SimpleQueue[_Channel | None] = queue.SimpleQueue()
        with without_main_script():
            for i in range(processes):
                bodies, to_process = context.Pipe(duplex=False)
                from_process, replies = context.Pipe(duplex=False)
                _widen(to_process)
                _widen(replies)
                process = context.Process(
                    target=_serve,
                    args=(spec, bodies, replies),
                    name=f"omniload-decode-{spec.name}-{i}",
                    daemon=True,
                )
                process.start()
                bodies.close()
                replies.close()
                self._processes.append(process)
                self._starting.append(_Channel(to_process, from_process))
        self._lock = threading.Lock()
        self._alive = processes
        self._ready = 0
        self._closed = False
        #: Pages the processes decoded.
        self.pages = 0
        #: Sum of the processes' peak RSS in MB, known once :meth:`close` has run (Linux).
        self.peak_rss_mb = 0.0

    @property
    def ready(self) -> bool:
        """True once a process has started (until then pages are better decoded in-process) and
        while one lives."""
        with self._lock:
            if self._closed or self._alive == 0:
                return False
            for channel in [c for c in self._starting if c.from_process.poll()]:
                self._starting.remove(channel)
                try:
                    channel.from_process.recv()
                except (EOFError, OSError):
                    self._died_locked(channel)
                else:
                    self._ready += 1
                    for _ in range(PAGES_PER_PROCESS):
                        self._free.put(channel)
            return self._ready > 0

    def wait_started(self, timeout: float | None = None) -> None:
        """Block until every process has started (or failed to), or ``timeout`` seconds passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                starting = [c.from_process for c in self._starting]
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not starting or not multiprocessing.connection.wait(starting, left):
                return
            _ = self.ready  # takes in the processes that answered

    def read(self, body: bytes) -> RawPage:
        """The page decoded by a process (waiting for one to start or be free); in this process if
        none is alive. Raises what ``read_page`` raises for a body that is not a JSON:API page."""
        if not self.ready:
            self.wait_started()
            if not self.ready:
                return read_page(self.spec, body)
        channel = self._free.get()
        if channel is not None:
            try:
                status, reply = channel.exchange(body)
            except _ProcessDied:
                with self._lock:
                    self._died_locked(channel)
            else:
                self._free.put(channel)
                if status == "error":
                    raise reply
                keys, next_link, stream, columns = reply
                with self._lock:
                    self.pages += 1
                table = pa.ipc.open_stream(stream).read_all()
                return RawPage(body, keys, next_link, None, table=table, extra_columns=columns)
        else:
            self._free.put(None)  # every process died, or the pool closed: wake the next waiter too
        return read_page(self.spec, body)

    def _died_locked(self, channel: _Channel) -> None:
        if channel.dead:  # its other pages' threads saw it too
            return
        channel.dead = True
        channel.close()
        self._alive -= 1
        if self._alive:
            log.warning("a decode process died; %d left", self._alive)
        else:
            log.warning("the last decode process died; pages are decoded in the run's process")
        if self._alive == 0:
            self._free.put(None)  # wakes the threads waiting for a process

    def close(self) -> None:
        """Stop the processes (they exit when their pipe closes); note their peak RSS."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.peak_rss_mb = sum(_peak_rss_mb(process.pid) for process in self._processes)
        self._free.put(None)
        while (channel := self._free.get()) is not None:
            channel.close()
        for channel in self._starting:
            channel.close()
        self._starting = []
        for process in self._processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
