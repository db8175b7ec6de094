"""A loopback HTTP server that speaks enough of the Anthropic Messages API for the real SDK.

Tests and benchmarks point `anthropic.Anthropic(base_url=server.url, ...)` at it, so the SDK's
own request building, retries, `retry-after` handling and timeouts are exercised for real.
What it answers is scripted: a queue of replies consumed one per request, then (optionally) a
callable that builds the reply from the request. Every request is recorded.

    with MessagesServer([Reply("Hypothesis: ..."), Fail(429, retry_after_ms=5)]) as server:
        client = anthropic.Anthropic(base_url=server.url, api_key="test-key", max_retries=2)
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Union

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass
class Reply:
    """A successful message. Token counts left as None are estimated (chars / 4) from the request,
    with prompt caching simulated: the system prefix up to the last cache_control block is
    written to the cache the first time it is seen and read from it afterwards."""

    text: str
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    delay: float = 0.0  # seconds before answering, on top of the server's latency
    stop_reason: str = "end_turn"


@dataclass
class Fail:
    """An error response in the API's error shape."""

    status: int
    message: str = "scripted failure"
    error_type: str | None = None  # default from the status
    retry_after: float | None = None  # seconds, sent as `retry-after`
    retry_after_ms: float | None = None  # sent as `retry-after-ms`
    delay: float = 0.0


Script = Union[Reply, Fail, str]


@dataclass
class Request:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: dict = field(default_factory=dict)

    @property
    def system_blocks(self) -> list[dict]:
        system = self.body.get("system", [])
        return [{"type": "text", "text": system}] if isinstance(system, str) else list(system)

    @property
    def user_text(self) -> str:
        """The text of the last user message."""
        content = self.body["messages"][-1]["content"]
        return content if isinstance(content, str) else "".join(b.get("text", "") for b in content)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default listen backlog of 5 drops bursts of concurrent clients


class MessagesServer:
    def __init__(
        self,
        script: list[Script] | None = None,
        handler: Callable[[Request], Script] | None = None,
        latency: float = 0.0,
    ):
        self._script: collections.deque[Script] = collections.deque(script or [])
        self.handler = handler
        self.latency = latency
        self.requests: list[Request] = []
        self.in_flight = 0
        self.max_in_flight = 0  # the most requests answered at once: proof that callers overlap
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._cached_prefixes: set[str] = set()
        self._ids = itertools.count(1)
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def push(self, *items: Script) -> None:
        with self._lock:
            self._script.extend(items)

    def __enter__(self) -> "MessagesServer":
        self._httpd = _Server(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopping.set()  # cuts short any scripted delay still sleeping
        assert self._httpd is not None and self._thread is not None
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    # -- answering -------------------------------------------------------------------------

    def _next(self, request: Request) -> Script:
        with self._lock:
            self.requests.append(request)
            if self._script:
                return self._script.popleft()
        if self.handler is not None:
            try:
                return self.handler(request)
            except Exception as e:  # a broken test handler should fail the test, not hang up
                return Fail(500, f"test handler raised {type(e).__name__}: {e}", error_type="api_error")
        return Fail(500, "the test server's script is exhausted", error_type="api_error")

    def _usage(self, request: Request, reply: Reply) -> dict:
        cached_text = ""
        blocks = request.system_blocks
        marked = [i for i, b in enumerate(blocks) if b.get("cache_control")]
        if marked:
            cached_text = "".join(b.get("text", "") for b in blocks[: marked[-1] + 1])
        all_text = json.dumps(request.body)
        cached = len(cached_text) // 4
        key = hashlib.sha256(cached_text.encode()).hexdigest()
        with self._lock:
            hit = bool(cached_text) and key in self._cached_prefixes
            if cached_text:
                self._cached_prefixes.add(key)

        def pick(given, estimate):
            return estimate if given is None else given

        return {
            "input_tokens": pick(reply.input_tokens, max(1, len(all_text) // 4 - cached)),
            "output_tokens": pick(reply.output_tokens, max(1, len(reply.text) // 4)),
            "cache_read_input_tokens": pick(reply.cache_read_input_tokens, cached if hit else 0),
            "cache_creation_input_tokens": pick(reply.cache_creation_input_tokens, 0 if hit else cached),
        }

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {}
                request = Request(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                if self.path.split("?")[0] != "/v1/messages":
                    return self._send(404, _error_body("not_found_error", f"no route {self.path}"))
                with server._lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._answer(request)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _answer(self, request: Request):
                body = request.body
                item = server._next(request)
                if isinstance(item, str):
                    item = Reply(item)
                if server._stopping.wait(server.latency + item.delay):
                    return
                if isinstance(item, Fail):
                    headers = {}
                    if item.retry_after is not None:
                        headers["retry-after"] = str(item.retry_after)
                    if item.retry_after_ms is not None:
                        headers["retry-after-ms"] = str(item.retry_after_ms)
                    error_type = item.error_type or _ERROR_TYPES.get(item.status, "api_error")
                    return self._send(item.status, _error_body(error_type, item.message), headers)
                message = {
                    "id": f"msg_test_{next(server._ids):06d}",
                    "type": "message",
                    "role": "assistant",
                    "model": body.get("model", "unknown"),
                    "content": [{"type": "text", "text": item.text}],
                    "stop_reason": item.stop_reason,
                    "stop_sequence": None,
                    "usage": server._usage(request, item),
                }
                self._send(200, message)

            def _send(self, status: int, payload: dict, headers: dict | None = None):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.send_header("request-id", f"req_test_{status}")
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout); nothing to tell it

        return Handler


def _error_body(error_type: str, message: str) -> dict:
    return {"type": "error", "error": {"type": error_type, "message": message}}
