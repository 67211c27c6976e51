"""engine/http_front.py: the HTTP port clients reach in front of Triton (issue 27, class 9: a bad body is 4xx)."""
from __future__ import annotations

import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engine.http_front import HttpFront, request_problem
from engine.serve import free_port


class _Upstream(BaseHTTPRequestHandler):
    """Stands in for Triton: echoes what reached it."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        out = json.dumps({"path": self.path, "bytes": len(body), "connection": self.headers.get("Connection")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST


@pytest.fixture
def front():
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = free_port("127.0.0.1")
    f = HttpFront("127.0.0.1", port, upstream.server_address[1], max_body=1000).start()
    yield port
    f.stop()
    upstream.shutdown()
    upstream.server_close()


def ask(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read() or b"{}")
    finally:
        conn.close()


def test_bad_bodies_are_the_clients_errors_and_good_ones_pass_unchanged(front):
    infer = "/v2/models/verify/infer"
    status, out = ask(front, "POST", infer, b"{not json")
    assert status == 400 and out["error"].startswith("the request's JSON does not parse")
    assert ask(front, "POST", infer, b'{"inputs": 5}') == (400, {"error": "'inputs' must be a list of objects"})
    assert ask(front, "POST", infer, b"x" * 1001)[0] == 413
    assert ask(front, "POST", infer, b"{}", {"Transfer-Encoding": "chunked"})[0] == 411
    good = json.dumps({"inputs": [{"name": "image_a", "shape": [1, 1], "datatype": "BYTES", "data": ["a"]}]})
    status, out = ask(front, "POST", infer, good.encode())
    assert status == 200 and out == {"path": infer, "bytes": len(good), "connection": "close"}
    binary = b'{"inputs": []}' + b"\x00\x01binary tensor"
    status, out = ask(front, "POST", infer, binary, {"Inference-Header-Content-Length": "14"})
    assert status == 200 and out["bytes"] == len(binary)
    assert ask(front, "POST", infer, b"{nope" + b"\x00", {"Inference-Header-Content-Length": "5"})[0] == 400
    assert ask(front, "GET", "/v2/health/ready")[0] == 200


def test_a_stopped_upstream_is_503_not_a_hang():
    port = free_port("127.0.0.1")
    f = HttpFront("127.0.0.1", port, free_port("127.0.0.1"), max_body=1000).start()
    try:
        status, out = ask(port, "GET", "/v2/health/ready")
        assert status == 503 and "not answering" in out["error"]
    finally:
        f.stop()


@pytest.mark.parametrize("request_, problem", [
    ([], "the request must be a JSON object"),
    ({"inputs": [{"shape": [1]}]}, "every entry of 'inputs' needs a string 'name'"),
    ({"inputs": [{"name": "a", "shape": [True], "datatype": "BYTES"}]}, "'shape' must be a list of integers"),
    ({"inputs": [{"name": "a", "shape": [1]}]}, "'datatype' must be a string"),
    ({"outputs": [{"name": 3}]}, "every entry of 'outputs' needs a string 'name'"),
    ({"parameters": []}, "'parameters' must be an object"),
    ({"inputs": [{"name": "a", "shape": [1, 2], "datatype": "UINT8"}]}, None),
])
def test_request_shapes(request_, problem):
    got = request_problem(request_)
    assert got == problem if problem is None else problem in got
