"""The HTTP transport: a threaded HTTP/1.1 keep-alive server on loopback."""

from __future__ import annotations

import contextlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .api import Api, Response


class SimulatorServer(ThreadingHTTPServer):
    """One thread per connection (daemon threads); tracks connections so stop() can cut them."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    block_on_close = False

    def __init__(self, address: tuple[str, int], api: Api) -> None:
        super().__init__(address, _Handler)
        self.api = api
        self.stopping = threading.Event()
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def close_connections(self) -> None:
        """Shut every open client connection (wakes threads blocked on keep-alive reads)."""
        with self.connections_lock:
            connections = list(self.connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "KlaviyoSimulator/1.0"
    sys_version = ""
    server: SimulatorServer

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Quiet: no per-request logging."""

    def _discard_body(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > 0:
            self.rfile.read(length)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._discard_body()
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._discard_body()
        self._dispatch("PATCH")

    def do_PUT(self) -> None:
        self._discard_body()
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        response = self.server.api.handle(method, self.path, self.headers)
        fault = response.fault
        delay = response.delay + (fault.seconds if fault is not None and fault.kind == "slow" else 0.0)
        if delay > 0 and self.server.stopping.wait(delay):
            self.close_connection = True
            return
        try:
            self._send(response)
        except OSError:  # the client went away (e.g. it timed out during a slow response)
            self.close_connection = True

    def _send(self, response: Response) -> None:
        fault = response.fault
        kind = fault.kind if fault is not None else None
        body = response.body
        if kind == "truncate" and fault is not None:
            body = body[:-1] + b"," if fault.malformed else body[: max(1, len(body) // 2)]
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if kind == "drop":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)
