"""The HTTP shell: :class:`~autodeco.serving.app.OpenAIApp` behind the standard library's ``ThreadingHTTPServer``.

One thread per connection; JSON replies carry a ``Content-Length``, streams are server-sent events sent
with chunked transfer encoding. A client that disconnects (mid-stream or while a whole answer is being
generated) is noticed between tokens: its engine stream is closed, which stops the generation, and the
server carries on.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from autodeco.engines.base import Engine
from autodeco.serving.app import OpenAIApp, Reply
from autodeco.serving.openai_api import error_body

MAX_BODY_BYTES = 32 * 1024 * 1024
"""Largest request body accepted (a larger one gets a 413)."""
DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
"""What writing to a client that went away raises."""


class OpenAIServer(ThreadingHTTPServer):
    """A threading HTTP server holding the app; ``log`` receives one line per request (None: silent).

    Example:
        >>> server = OpenAIServer(("127.0.0.1", 0), engine)  # doctest: +SKIP
        >>> threading.Thread(target=server.serve_forever, daemon=True).start()  # doctest: +SKIP
        >>> server.url  # doctest: +SKIP
        'http://127.0.0.1:41873/v1'
    """

    daemon_threads = False  # request threads are joined by server_close(), so none is cut short when Python exits
    block_on_close = True

    def __init__(self, address: tuple[str, int], engine: Engine, *, log: Callable[[str], None] | None = None):
        self.app = OpenAIApp(engine)
        self.log = log
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request, client_address):
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def server_close(self) -> None:
        """Stop listening, end every open connection (a stream under way stops its generation) and wait for them."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        super().server_close()

    @property
    def url(self) -> str:
        """The API's base URL (what the openai client takes as ``base_url``)."""
        host, port = self.server_address[:2]
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/v1"


def serve_in_thread(engine: Engine, host: str = "127.0.0.1", port: int = 0, **kwargs) -> OpenAIServer:
    """Start a server on ``host:port`` (0: a free port) in a daemon thread; stop it with ``server.shutdown()``."""
    server = OpenAIServer((host, port), engine, **kwargs)
    threading.Thread(target=server.serve_forever, name="autodeco-serve", daemon=True).start()
    return server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "autodeco"
    server: OpenAIServer

    def do_GET(self):
        self._answer("GET")

    def do_POST(self):
        self._answer("POST")

    def do_PUT(self):
        self._answer("PUT")

    def do_DELETE(self):
        self._answer("DELETE")

    def _answer(self, method: str) -> None:
        try:
            body = self._read_body() if method in ("POST", "PUT") else b""
        except _BadBody as error:
            self._send_json(error.status, error_body(str(error), code=error.code))
            self.close_connection = True
            return
        try:
            reply = self.server.app.handle(method, self.path, body, self._client_gone)
        except Exception as error:  # a bug or an engine failure: a 500 for this request, the server lives on
            self.log_error("internal error: %r", error)
            self._send_json(500, error_body(f"internal error: {error}", type="server_error"))
            return
        try:
            if reply.events is None:
                self._send_json(reply.status, reply.body, reply.headers)
            else:
                self._send_events(reply)
        except DISCONNECTS:
            self.close_connection = True
        except Exception as error:  # the engine failed mid-stream: the status is sent already, so end the stream
            self.log_error("internal error while streaming: %r", error)
            self.close_connection = True

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                raise _BadBody("send the request body with a Content-Length (chunked requests are not read)", 411)
            return b""
        try:
            size = int(length)
        except ValueError:
            raise _BadBody(f"Content-Length must be a number of bytes, but is {length!r}", 400) from None
        if size < 0 or size > MAX_BODY_BYTES:
            raise _BadBody(f"the request body has {size} bytes; at most {MAX_BODY_BYTES} are accepted", 413)
        return self.rfile.read(size)

    def _send_json(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_events(self, reply: Reply) -> None:
        events = reply.events
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Transfer-Encoding", "chunked")
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            for event in events:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        finally:
            events.close()  # stops the generation when the client went away mid-stream

    def _client_gone(self) -> bool:
        """Whether the client closed its end (readable with nothing to read), without consuming anything."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def log_message(self, format: str, *args) -> None:
        if self.server.log is not None:
            self.server.log(f"{self.address_string()} - {format % args}")


class _BadBody(Exception):
    def __init__(self, message: str, status: int, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


def print_log(line: str) -> None:
    """Write a request log line to standard error."""
    print(line, file=sys.stderr, flush=True)
