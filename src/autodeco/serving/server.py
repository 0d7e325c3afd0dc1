"""The HTTP shell: :class:`~autodeco.serving.app.OpenAIApp` behind the standard library's ``ThreadingHTTPServer``.

One thread per connection; JSON replies carry a ``Content-Length``, streams are server-sent events sent
with chunked transfer encoding. What the shell guards, so that the app only sees well-formed requests:

- **A crowd**: the kernel queues up to ``backlog`` connections (:data:`DEFAULT_BACKLOG`; the standard library's
  5 reset bursts of a few dozen clients) until a thread takes them.
- **Slow or idle clients**: a request (line, headers and body) must arrive within ``timeout`` seconds of the
  first byte, or of the end of the previous answer on a kept-alive connection; a client that reads nothing of
  its answer for ``timeout`` seconds is dropped. Generating takes as long as it takes: the clock does not run
  while the engine works.
- **Who may ask**: with an ``api_key``, every path but ``/health`` needs ``Authorization: Bearer <key>`` (401);
  a POST body must be declared ``application/json`` (415), which browsers' cross-site form posts cannot do.
- **A client that leaves** (mid-stream, or while a whole answer is being generated) is noticed between tokens:
  its engine stream is closed, which stops the generation, and one line is logged. A client that only shut
  its sending side (``nc -N``) is still listening and gets its whole answer (see ``_Handler._client_gone``).
"""

from __future__ import annotations

import io
import math
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from autodeco.engines.base import Engine
from autodeco.serving.app import ROUTES, OpenAIApp, Reply
from autodeco.serving.openai_api import ApiError, check_api_key, check_content_type, error_body
from autodeco.serving.responses import to_json

MAX_BODY_BYTES = 32 * 1024 * 1024
"""Largest request body accepted (a larger one gets a 413)."""
DEFAULT_TIMEOUT = 30.0
"""Seconds a client has to send a whole request (or to come back on a kept-alive connection), and the longest
it may leave its answer unread."""
DEFAULT_BACKLOG = 128
"""Connections the kernel queues while the server is busy accepting (the standard library's 5 resets crowds)."""
DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)
"""What writing to (or reading from) a client that went away, or stopped reading, raises."""
LINGER_SECONDS = 2.0
"""How long a connection refused with its body unread (413, 411) still takes in what the client sends, before
closing: a client that writes its whole body before reading (http.client, requests) then reads the refusal
instead of failing on a broken pipe."""
OPEN_PATHS = ("/health",)
"""Paths answered without the API key (a load balancer's probe)."""
JSON_PATHS = tuple(path for path, method in ROUTES.items() if method == "POST")
"""Paths whose POST body is read: it must be declared ``application/json`` (others get their 404 or 405)."""
_HANGUP = select.POLLHUP | select.POLLERR | select.POLLNVAL
"""poll() events of a socket that can no longer deliver anything to the client."""


class OpenAIServer(ThreadingHTTPServer):
    """A threading HTTP server holding the app; ``log`` receives one line per request (None: silent).

    Args:
        address: ``(host, port)``; port 0 picks a free one, a host with ``:`` is IPv6.
        engine: the engine to serve; None binds the port only (no listening yet) until :meth:`start`
            gives the engine, so a busy port is reported before a model is loaded.
        log: receives one line per request and per client gone (None: silent).
        api_key: the key clients must send as ``Authorization: Bearer <key>`` (None: no key).
        timeout: seconds a client has to send a request or to read its answer (see the module docstring).
        backlog: connections the kernel queues before refusing more.

    Example:
        >>> server = OpenAIServer(("127.0.0.1", 0), engine)  # doctest: +SKIP
        >>> threading.Thread(target=server.serve_forever, daemon=True).start()  # doctest: +SKIP
        >>> server.url  # doctest: +SKIP
        'http://127.0.0.1:41873/v1'
    """

    daemon_threads = False  # request threads are joined by server_close(), so none is cut short when Python exits
    block_on_close = True

    def __init__(
        self, address: tuple[str, int], engine: Engine | None, *, log: Callable[[str], None] | None = None,
        api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT, backlog: int = DEFAULT_BACKLOG,
    ):
        _check_settings(api_key, timeout, backlog)
        self.app = OpenAIApp(engine) if engine is not None else None
        self.log = log
        self.api_key = api_key
        self.request_timeout = float(timeout)
        self.request_queue_size = backlog
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler, bind_and_activate=False)
        try:
            self.server_bind()
            if engine is not None:
                self.server_activate()
        except BaseException:
            self.server_close()
            raise

    def start(self, engine: Engine) -> None:
        """Serve ``engine`` and start listening (a server made with ``engine=None`` holds its port until now)."""
        self.app = OpenAIApp(engine)
        self.server_activate()

    def process_request(self, request, client_address):
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        """A client that reset or timed out is one log line; anything else is a bug, with its traceback."""
        error = sys.exc_info()[1]
        if not isinstance(error, DISCONNECTS):
            super().handle_error(request, client_address)
        elif self.log is not None:
            self.log(f"{client_address[0]} - connection ended: {type(error).__name__}: {error}")

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
        """The API's base URL (what the openai client takes as ``base_url``); a server on every interface is
        reached on this machine at its loopback address."""
        host, port = self.server_address[:2]
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"


def _check_settings(api_key: str | None, timeout: float, backlog: int) -> None:
    if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
        raise ValueError("api_key is empty; give the key clients must send, or None for no key")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be a number of seconds > 0, but is {timeout!r}")
    if isinstance(backlog, bool) or not isinstance(backlog, int) or backlog < 1:
        raise ValueError(f"backlog must be an integer >= 1, but is {backlog!r}")


def serve_in_thread(engine: Engine, host: str = "127.0.0.1", port: int = 0, **kwargs) -> OpenAIServer:
    """Start a server on ``host:port`` (0: a free port) in a daemon thread; stop it with ``server.shutdown()``.

    ``kwargs`` go to :class:`OpenAIServer` (``log``, ``api_key``, ``timeout``, ``backlog``).
    """
    server = OpenAIServer((host, port), engine, **kwargs)
    threading.Thread(target=server.serve_forever, name="autodeco-serve", daemon=True).start()
    return server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "autodeco"
    disable_nagle_algorithm = True  # each streamed token leaves at once
    server: OpenAIServer

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        self._reader = _RequestReader(self.connection, self.server.request_timeout)
        self.rfile = io.BufferedReader(self._reader)
        self._poller = select.poll()
        self._poller.register(self.connection, select.POLLIN)

    def handle_one_request(self) -> None:
        self._reader.start_request()
        self._probed = self._gone = self._answer_started = False
        super().handle_one_request()

    def send_response(self, code: int, message: str | None = None) -> None:
        self._answer_started = True  # from here on, writes show whether the client is there: no probe needed
        super().send_response(code, message)

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
            body = self._read_request(method)
        except _Refused as refusal:
            self._refuse(refusal)
            return
        self._reader.request_read()
        try:
            reply = self.server.app.handle(method, self.path, body, self._client_gone)
        except Exception as error:  # a bug or an engine failure: a 500 for this request, the server lives on
            self.log_error("internal error: %r", error)
            self._send_json(500, error_body(f"internal error: {error}", type="server_error"))
            return
        if self._gone:  # a whole answer whose client left while it was generated: its generation was stopped
            self.log_error("client went away while its answer was generated; the generation was stopped")
            self.close_connection = True
            return
        try:
            if reply.events is None:
                self._send_json(reply.status, reply.body, reply.headers)
            else:
                self._send_events(reply)
        except DISCONNECTS as error:
            self.log_error("client went away before its answer was sent (%s)", type(error).__name__)
            self.close_connection = True
        except Exception as error:  # the engine failed mid-stream: the status is sent already, so end the stream
            self.log_error("internal error while streaming: %r", error)
            self.close_connection = True

    # -------------------------------------------------------------------------------------------- reading

    def handle_expect_100(self) -> bool:
        """Refuse at once a client that waits for ``100 Continue`` before sending its body (curl does, for large
        bodies), so that no refused body is sent at all."""
        try:
            self._check_headers()
            self._body_size()
        except _Refused as refusal:
            refusal.drain = refusal.linger = False  # the client waits: it has sent no body
            self._refuse(refusal)
            return False
        return super().handle_expect_100()

    def _check_headers(self) -> None:
        """The API key (except on :data:`OPEN_PATHS`) and, for a body to read, its declared type.

        Raises:
            _Refused: a 401 or a 415.
        """
        path = urlsplit(self.path).path.rstrip("/") or "/"
        try:
            if path not in OPEN_PATHS:
                check_api_key(self.headers.get("Authorization"), self.server.api_key)
            if self.command == "POST" and path in JSON_PATHS:
                check_content_type(self.headers.get("Content-Type"))
        except ApiError as error:
            raise _Refused(error, drain=True) from None

    def _read_request(self, method: str) -> bytes:
        """The request body, once the key and the body's declared type and size are checked.

        Raises:
            _Refused: a 401, 415, 411, 413 or 408 to send instead of an answer.
        """
        self._check_headers()
        if method not in ("POST", "PUT"):
            return b""
        size = self._body_size()
        try:
            body = self.rfile.read(size)
        except TimeoutError:
            body = None
        if body is None or len(body) < size:
            raise _Refused(ApiError(f"the request body did not arrive within {self.server.request_timeout:g} s "
                                    f"(Content-Length: {size}); send it whole", status=408, code="timeout"),
                           linger=False)
        return body

    def _body_size(self) -> int:
        length = self.headers.get("Content-Length")
        if length is None:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                raise _Refused(ApiError("send the request body with a Content-Length (chunked requests are not read)",
                                        status=411, code="length_required"))
            return 0
        try:
            size = int(length)
        except ValueError:
            raise _Refused(ApiError(f"Content-Length must be a number of bytes, but is {length!r}")) from None
        if size < 0 or size > MAX_BODY_BYTES:
            raise _Refused(ApiError(f"the request body has {size} bytes; at most {MAX_BODY_BYTES} are accepted",
                                    status=413, code="payload_too_large"))
        return size

    def _refuse(self, refusal: "_Refused") -> None:
        """Answer a refused request; the connection lives on only if its unread body could be skipped."""
        closing = not (refusal.drain and self._skip_body())
        headers = {"WWW-Authenticate": "Bearer"} if refusal.error.status == 401 else {}
        if closing:
            headers["Connection"] = "close"  # send_header also sets close_connection
        try:
            self._send_json(refusal.error.status, refusal.error.body(), headers)
            if closing and refusal.linger:
                self._linger()
        except DISCONNECTS:
            self.close_connection = True

    def _linger(self) -> None:
        """Close the sending side, then drop what the client still sends for :data:`LINGER_SECONDS` at most."""
        self.connection.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            self.connection.settimeout(left)
            if not self.connection.recv(65536):
                return

    def _skip_body(self) -> bool:
        """Read and drop the body of a refused request (so the reply is not lost to a reset); False if it cannot be."""
        try:
            size = self._body_size()
            while size > 0:
                chunk = self.rfile.read(min(size, 65536))
                if not chunk:
                    return False
                size -= len(chunk)
        except (_Refused, OSError):
            return False
        return True

    # -------------------------------------------------------------------------------------------- writing

    def _send_json(self, status: int, body: dict, headers: dict | None = None) -> None:
        try:
            data = to_json(body)
        except ApiError as error:  # NaN or infinity in an answer: a clear 500, never invalid JSON
            self.log_error("%s", error.message)
            status, data, headers = error.status, to_json(error.body()), None
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_events(self, reply: Reply) -> None:
        events, sent = reply.events, 0
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
                sent += 1
            if self._gone:
                self.log_error("client went away mid-stream after %d events; its generation was stopped", sent)
                self.close_connection = True
                return
            self.wfile.write(b"0\r\n\r\n")
        finally:
            events.close()  # stops the generation when the client went away mid-stream

    # --------------------------------------------------------------------------------------- disconnects

    def _client_gone(self) -> bool:
        """Whether the client can no longer receive its answer (checked between tokens; consumes nothing).

        Gone means the socket hung up or failed (poll's POLLHUP or POLLERR: the client reset the connection).
        End of input is not enough: a client that shut only its sending side (``shutdown(SHUT_WR)``, ``nc -N``)
        still reads, and TCP shows it exactly as a client that closed its socket, until something is written:
        a closed socket answers with a reset. So at end of input, before the answer starts, the server writes one
        urgent (out-of-band) TCP byte, which the client's socket keeps apart from the data its reads return
        (``SO_OOBINLINE`` is off by default): a listening client never sees it, a closed one resets, and the next
        check sees the hang-up. Once the answer is being written (a stream), its own writes do that.
        """
        try:
            events = dict(self._poller.poll(0)).get(self.connection.fileno(), 0)
            if events & _HANGUP:
                self._gone = True
            elif events & select.POLLIN and not (self._probed or self._answer_started) and self._input_ended():
                self._probe()
        except (OSError, ValueError):
            self._gone = True
        return self._gone

    def _input_ended(self) -> bool:
        try:
            return self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False

    def _probe(self) -> None:
        self._probed = True
        self.connection.send(b"!", socket.MSG_OOB)

    def log_message(self, format: str, *args) -> None:
        if format.startswith("Request timed out") and not self._reader.received:
            return  # a kept-alive connection left idle, closed: no news
        if self.server.log is not None:
            self.server.log(f"{self.address_string()} - {format % args}")


class _RequestReader(io.RawIOBase):
    """The connection's reading side, with one deadline for a whole request.

    A per-read timeout alone lets a client that sends a byte every few seconds hold its thread for ever; so
    every read waits only for what is left of ``timeout`` since the request began. Once the request is read
    the socket keeps ``timeout`` per operation, which bounds how long a client may leave its answer unread.
    """

    def __init__(self, connection: socket.socket, timeout: float):
        self.connection = connection
        self.timeout = timeout
        self.deadline: float | None = None
        self.received = 0
        """Bytes read since the request began (0: the connection was idle)."""

    def readable(self) -> bool:
        return True

    def start_request(self) -> None:
        self.deadline = time.monotonic() + self.timeout
        self.received = 0

    def request_read(self) -> None:
        self.deadline = None
        self.connection.settimeout(self.timeout)

    def readinto(self, buffer) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no whole request within {self.timeout:g} s")
            self.connection.settimeout(left)
        count = self.connection.recv_into(buffer)
        self.received += count
        return count


class _Refused(Exception):
    """A request answered with an error before its body is read (``drain``: its body may be skipped and the
    connection kept; ``linger``: else the connection takes in the body for a moment before closing)."""

    def __init__(self, error: ApiError, drain: bool = False, linger: bool = True):
        super().__init__(error.message)
        self.error = error
        self.drain = drain
        self.linger = linger


def print_log(line: str) -> None:
    """Write a request log line to standard error."""
    print(line, file=sys.stderr, flush=True)
