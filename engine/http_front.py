"""The HTTP port clients reach: each request is checked, then passed to Triton's own HTTP port on loopback.

Triton's HTTP front end answers an unparsable JSON body with 500 ("failed to
parse the request JSON buffer", Triton 2.51) and reads a body of any size
into memory before a model sees it. This front answers those as the client's
errors instead: a body over ``max_body`` bytes is 413, a chunked body 411, an
inference request whose JSON (or the JSON header of a binary request) does
not parse or is not shaped as one (:func:`request_problem`) is 400, each
with Triton's ``{"error": ...}`` shape; everything
else is forwarded unchanged and Triton's answer relayed. Upstream
connections close after each request, so a stopping Triton never waits on
an idle one of ours. Costs one loopback hop per request.
"""
from __future__ import annotations

import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DRAIN_BYTES = 64 * 1024 * 1024  # an over-limit body up to this size is read and dropped before the 413
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
              "host", "content-length"}


def request_problem(request) -> str | None:
    """What is wrong with an inference request's JSON shape (KServe v2), or None; Triton answers these with 500."""
    if not isinstance(request, dict):
        return "the request must be a JSON object"
    for key in ("inputs", "outputs"):
        items = request.get(key, [])
        if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
            return f"'{key}' must be a list of objects"
        for item in items:
            if not isinstance(item.get("name"), str):
                return f"every entry of '{key}' needs a string 'name'"
            if key == "inputs":
                shape = item.get("shape")
                if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool)
                                                          for d in shape):
                    return f"input {item['name']!r}: 'shape' must be a list of integers"
                if not isinstance(item.get("datatype"), str):
                    return f"input {item['name']!r}: 'datatype' must be a string"
    if not isinstance(request.get("parameters", {}), dict):
        return "'parameters' must be an object"
    return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "engine.serve"

    def log_message(self, *args) -> None:  # Triton logs requests; this front is quiet
        pass

    def _answer(self, code: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def _relay(self) -> None:
        front: HttpFront = self.server.front  # type: ignore[attr-defined]
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._answer(411, "a chunked request body is not accepted: send Content-Length")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return self._answer(400, "Content-Length is not a number")
        if length < 0 or length > front.max_body:
            # Read what a client is still sending (in 64 KiB pieces, none kept) so it sees the 413 rather than a
            # broken pipe; a body far past the limit is cut off instead.
            left = length if 0 < length <= max(DRAIN_BYTES, 4 * front.max_body) else 0
            while left > 0:
                piece = self.rfile.read(min(left, 1 << 16))
                if not piece:
                    break
                left -= len(piece)
            return self._answer(413, f"request body of {length:,} bytes, over the server's limit of "
                                     f"{front.max_body:,} bytes")
        body = self.rfile.read(length) if length else b""
        if self.command == "POST" and self.path.rstrip("/").endswith("/infer"):
            header = body
            if self.headers.get("Inference-Header-Content-Length") is not None:
                try:
                    header = body[:int(self.headers["Inference-Header-Content-Length"])]
                except ValueError:
                    return self._answer(400, "Inference-Header-Content-Length is not a number")
            try:
                problem = request_problem(json.loads(header or b"{}"))
            except ValueError as exc:
                problem = f"the request's JSON does not parse: {exc}"
            if problem:
                return self._answer(400, problem)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Connection"] = "close"
        try:
            upstream = http.client.HTTPConnection(front.upstream_host, front.upstream_port, timeout=front.timeout)
            try:
                upstream.request(self.command, self.path, body=body if length else None, headers=headers)
                reply = upstream.getresponse()
                data = reply.read()
            finally:
                upstream.close()
        except OSError as exc:
            return self._answer(503, f"the inference server is not answering ({exc.__class__.__name__}): "
                                     f"starting or stopping")
        self.send_response(reply.status, reply.reason)
        for key, value in reply.getheaders():
            if key.lower() not in HOP_BY_HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _relay


class HttpFront:
    """Serve ``host:port`` in threads, forwarding checked requests to ``upstream_host:upstream_port``."""

    def __init__(self, host: str, port: int, upstream_port: int, max_body: int, upstream_host: str = "127.0.0.1",
                 timeout: float = 300.0):
        self.max_body, self.timeout = max_body, timeout
        self.upstream_host, self.upstream_port = upstream_host, upstream_port
        server_class = ThreadingHTTPServer
        if ":" in host:
            import socket

            server_class = type("ThreadingHTTPServer6", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
        self._server = server_class((host, port), _Handler)
        self._server.daemon_threads = True
        self._server.front = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="http-front", daemon=True)

    def start(self) -> "HttpFront":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
