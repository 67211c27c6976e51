"""``python -m engine.serve`` behind a real tritonserver: answers as engine.verify's, bad input, batching, shutdown.

The server runs as a child process on loopback ports picked free, under
``$SERVE_PYTHON`` (default: this interpreter). PyTriton 0.7's backend stub
needs NumPy 1.x: where this environment has NumPy 2 (or no PyTriton: the
dev install has only the client), the tests make an overlay venv over it
(system site-packages + PyTriton, NumPy 1.26 and the protobuf / ml_dtypes
that go with it, from the package index) and serve from there;
they skip with the reason when that cannot be built. The client side runs here.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import REPO, face_data_dir

tritonclient_http = pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (pip install '.[serve]')")

from engine.client import FaceClient, ServeError, read_metrics  # noqa: E402
from engine.api import realness  # noqa: E402
from engine.serve import build_parser, free_port, main  # noqa: E402

# PyTriton (its tritonserver binary) with the NumPy 1.x its stub needs, over this environment's packages.
OVERLAY = ("nvidia-pytriton>=0.7", "numpy==1.26.4", "ml_dtypes==0.5.4", "protobuf>=6.30,<7")


def _can_serve(python) -> tuple[bool, str]:
    check = subprocess.run([str(python), "-c", "from engine.serve import check_environment; check_environment()"],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = check.stderr.strip().splitlines()
    return check.returncode == 0, (lines[-1] if lines else "error")


@pytest.fixture(scope="module")
def serve_python(tmp_path_factory):
    """An interpreter PyTriton's server runs under: $SERVE_PYTHON, this one, or a NumPy-1 overlay venv."""
    if "SERVE_PYTHON" in os.environ:
        return os.environ["SERVE_PYTHON"]
    ok, why = _can_serve(sys.executable)
    if ok:
        return sys.executable
    import site
    import sysconfig
    import venv

    env = tmp_path_factory.mktemp("serve-venv")
    venv.create(env, with_pip=True)
    py = env / "bin" / "python"
    # Over *this* interpreter's packages, whichever it is (a user's venv, conda, CI's system Python):
    # system_site_packages would expose the base interpreter's instead. addsitedir appends them after
    # the overlay's own site-packages (its NumPy 1 wins) and runs their .pth files (editable installs).
    parents = [*site.getsitepackages(), site.getusersitepackages(), sysconfig.get_paths()["purelib"]]
    overlay = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    (overlay / "zz_parent_env.pth").write_text("".join(
        f"import site; site.addsitedir({p!r})\n" for p in dict.fromkeys(parents) if Path(p).is_dir()))
    done = subprocess.run([str(py), "-m", "pip", "install", "-q", *OVERLAY], capture_output=True, text=True,
                          timeout=900)
    if done.returncode != 0:
        pytest.skip(f"cannot serve from {sys.executable} ({why}) and no NumPy-1 overlay venv: "
                    f"{done.stderr.strip().splitlines()[-1:]}")
    return py
MAX_BATCH = 8
MAX_IMAGE_BYTES = 1_000_000
MAX_REQUEST_BYTES = 2_500_000  # an oversize image (MAX_IMAGE_BYTES + 10) still reaches the model to be refused in-band


# ----------------------------------------------------------------------------- without a server


def test_help_explains_every_flag():
    parser = build_parser()
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(flags) >= 15
    for action in flags:
        assert action.help and len(action.help) > 15, action.option_strings
    text = parser.format_help()
    assert "127.0.0.1" in text and "SIGTERM" in text


@pytest.mark.parametrize("argv, message", [
    (["--max-batch", "0"], "--max-batch must be >= 1"),
    (["--exit-timeout", "99"], "--exit-timeout must be 0-25"),
    (["--threshold", "nan"], "--threshold must be a number in [-1, 1]"),
    (["--http-port", "9000", "--grpc-port", "9000"], "ports must differ"),
    (["--http-port", "70000"], "port number"),
    (["--max-batch", "x"], "invalid int value"),
])
def test_bad_flags_are_one_line_errors_before_anything_starts(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_realness_recovers_the_coordinate_from_the_embedding():
    rng = np.random.default_rng(0)
    identity = rng.normal(size=(6, 511))
    identity /= np.linalg.norm(identity, axis=1, keepdims=True)
    t = np.array([-1.0, -0.6, -0.1, 0.0, 0.4, 1.0])
    for weight in (0.5, 2.0):
        emb = np.concatenate([identity, weight * t[:, None]], axis=1)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        np.testing.assert_allclose(realness(emb.astype(np.float32), weight), t, atol=1e-5)
    assert np.isnan(realness(emb, 0.0)).all()  # a model without the coordinate says nothing about fakes


# ----------------------------------------------------------------------------- a real server


def _descendants(pid: int) -> dict[int, str]:
    """pid -> command line of every process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            try:
                out[child] = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            todo.append(child)
    return out


def _running(pid: int, cmdline: str) -> bool:
    """Is ``pid`` still the process it was (not gone, not a zombie, not reused)?"""
    proc = Path("/proc") / str(pid)
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        now = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return state != "Z" and now == cmdline


def _lfw() -> Path:
    root = face_data_dir()
    lfw = root / "lfw-deepfunneled" if (root / "lfw-deepfunneled").is_dir() else root
    if not any(lfw.glob("*/*.jpg")):
        pytest.skip(f"LFW images not found under {root} (set FACE_DATA)")
    return lfw


def _backend_choice() -> list[str]:
    """The backend/precision engine.verify picks here, given to both sides so they run the same model file."""
    from engine.backends import choose, resolve_model

    choice = choose(resolve_model(None))
    return ["--backend", choice.backend, "--precision", choice.precision]


@pytest.fixture(scope="module")
def server(serve_python):
    ok, why = _can_serve(serve_python)
    if not ok:
        pytest.skip(f"cannot serve from {serve_python}: {why}")
    ports = [free_port() for _ in range(3)]
    argv = [str(serve_python), "-m", "engine.serve", "--http-port", str(ports[0]), "--grpc-port", str(ports[1]),
            "--metrics-port", str(ports[2]), "--max-batch", str(MAX_BATCH), "--queue-delay-us", "20000",
            "--max-image-bytes", str(MAX_IMAGE_BYTES), "--max-request-bytes", str(MAX_REQUEST_BYTES),
            "--exit-timeout", "10", *_backend_choice()]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    info = {"proc": proc, "http": f"127.0.0.1:{ports[0]}", "metrics": f"http://127.0.0.1:{ports[2]}/metrics"}
    try:
        with FaceClient(info["http"]) as client:
            client.wait_ready(timeout_s=120, alive=lambda: proc.poll() is None)
        info["tree"] = _descendants(proc.pid)
        yield info
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # only our own child, by its id
            proc.kill()
            proc.communicate()


@pytest.fixture(scope="module")
def pairs():
    """Three LFW pairs (two of one person, one of two people) and engine.verify's similarity for each."""
    lfw = _lfw()
    people = sorted(p for p in lfw.iterdir() if len(list(p.glob("*.jpg"))) >= 2)[:3]
    chosen = [tuple(sorted(people[0].glob("*.jpg"))[:2]), tuple(sorted(people[1].glob("*.jpg"))[:2]),
              (sorted(people[0].glob("*.jpg"))[0], sorted(people[2].glob("*.jpg"))[0])]
    from engine.verify import main as verify_main

    out = []
    for a, b in chosen:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
            verify_main([str(a), str(b), "--json", "--no-progress", *_backend_choice()])
        out.append((a, b, json.loads(buf.getvalue())))
    return out


def _png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height``: a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(1000))) + chunk(b"IEND", b""))


def _jpeg(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def _in_threads(jobs) -> list:
    """Run callables at once, one thread each; each result or the exception it raised."""
    results: list = [None] * len(jobs)

    def run(k):
        try:
            results[k] = jobs[k]()
        except Exception as exc:
            results[k] = exc

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a request did not return"
    return results


def test_health_and_metrics_endpoints(server):
    with urllib.request.urlopen(f"http://{server['http']}/v2/health/ready", timeout=10) as r:
        assert r.status == 200
    metrics = read_metrics(server["metrics"])
    assert "embed" in metrics["nv_inference_request_success"] and "verify" in metrics["nv_inference_request_success"]
    assert any("tritonserver" in cmd for cmd in server["tree"].values())


def test_unparsable_and_oversized_bodies_are_4xx_not_500(server):
    """Triton's own HTTP front end answers a body that is not JSON with 500; the server's front answers 400
    (413 for a body over --max-request-bytes), and the server keeps serving."""
    import urllib.error

    url = f"http://{server['http']}/v2/models/verify/infer"
    for body, code in ((b"{not json", 400), (b'{"inputs": 5}', 400), (b"x" * (3 * MAX_IMAGE_BYTES), 413)):
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=30)
        assert err.value.code == code and "error" in json.loads(err.value.read())
    with urllib.request.urlopen(f"http://{server['http']}/v2/health/ready", timeout=10) as r:
        assert r.status == 200


def test_concurrent_good_and_bad_requests(server, pairs):
    gradient = np.tile(np.linspace(0, 255, 160, dtype=np.uint8)[None, :, None], (160, 1, 3))
    a0, b0, _ = pairs[0]
    bad = {
        "not an image": (lambda c: c.verify(a0, b"this is text, not an image"), "not a decodable image"),
        "empty": (lambda c: c.embed([b""]), "empty file"),
        "decompression bomb": (lambda c: c.embed([_png_bomb(10_000, 8_000)]), "over the 50,000,000 pixel limit"),
        "oversize": (lambda c: c.embed([b"\xff\xd8\xff" + bytes(MAX_IMAGE_BYTES + 10)]),
                     f"over the server's limit of {MAX_IMAGE_BYTES:,} bytes"),
        "no face": (lambda c: c.verify(a0, _jpeg(gradient)), "image_b: no face found"),
        "wrong dtype": (lambda c: c.embed(np.zeros((1, 64, 64, 3), np.float32)), "expects 'UINT8'"),
        "wrong shape": (lambda c: c.embed(np.zeros((1, 64, 64, 4), np.uint8)), "unexpected shape"),
        "too many images": (lambda c: c.embed([a0] * (MAX_BATCH + 1)), f"must be <= {MAX_BATCH}"),
    }

    def verify(a, b):
        with FaceClient(server["http"]) as c:
            return c.verify(a, b)

    def attempt(fn):
        with FaceClient(server["http"]) as c:
            return fn(c)

    good = [lambda a=a, b=b: verify(a, b) for a, b, _ in pairs] * 3
    with FaceClient(server["http"]) as c:
        embed_before = read_metrics(server["metrics"])
        jobs = good + [lambda fn=fn: attempt(fn) for fn, _ in bad.values()]
        results = _in_threads(jobs)
        after = read_metrics(server["metrics"])
        mixed = c.embed([a0, b"junk", b0], strict=False)  # one bad row leaves the others in its request alone
        pixels = c.embed(cv2.cvtColor(cv2.imread(str(a0)), cv2.COLOR_BGR2RGB))
    for k, verdict in enumerate(results[:len(good)]):
        a, b, reference = pairs[k % len(pairs)]
        assert not isinstance(verdict, Exception), f"{a.name}, {b.name}: {verdict}"
        assert abs(verdict.similarity - reference["similarity"]) < 1e-5
        assert verdict.match == reference["match"] and abs(verdict.threshold - reference["threshold"]) < 1e-6
        assert verdict.decision in ("match", "no_match") and -1 <= min(verdict.realness) <= 1
    for (name, (_, message)), outcome in zip(bad.items(), results[len(good):]):
        assert isinstance(outcome, ServeError), f"{name}: {outcome!r}"
        assert message in str(outcome) and "\n" not in str(outcome), f"{name}: {outcome}"
    assert mixed.errors[0] is None and mixed.errors[2] is None and "not a decodable image" in mixed.errors[1]
    assert np.isnan(mixed.embeddings[1]).all() and np.isfinite(mixed.embeddings[[0, 2]]).all()
    assert np.isfinite(mixed.boxes[0]).all() and (mixed.boxes[0][2:] > mixed.boxes[0][:2]).all()
    # pixels and bytes of the same photo: the same embedding (both are decoded to the same RGB)
    assert float(pixels.embeddings[0] @ mixed.embeddings[0]) > 1 - 1e-5
    # verify's similarity is the cosine of embed's embeddings
    emb_sim = float(mixed.embeddings[0] @ mixed.embeddings[2])
    assert abs(emb_sim - pairs[0][2]["similarity"]) < 1e-5
    # dynamic batching: under 9 concurrent verify calls Triton ran fewer batches than requests
    runs = after["nv_inference_exec_count"]["verify"] - embed_before["nv_inference_exec_count"].get("verify", 0)
    count = after["nv_inference_count"]["verify"] - embed_before["nv_inference_count"].get("verify", 0)
    assert count >= len(good) and runs < count, (runs, count)


def test_sigterm_finishes_accepted_requests_and_leaves_nothing_running(server, pairs):
    proc, tree = server["proc"], server["tree"]
    images = [a for a, _, _ in pairs] + [b for _, b, _ in pairs]
    done_at: list[float] = []

    def embed():
        with FaceClient(server["http"]) as c:
            out = c.embed((images * 3)[:MAX_BATCH])
            done_at.append(time.monotonic())
            return out

    threads_results: list = []
    runner = threading.Thread(target=lambda: threads_results.extend(_in_threads([embed] * 6)))
    runner.start()
    deadline = time.monotonic() + 60
    while not done_at and time.monotonic() < deadline:
        time.sleep(0.005)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    runner.join(timeout=90)
    _, err = proc.communicate(timeout=60)
    stopped = time.monotonic() - signalled
    assert proc.returncode == 0, err[-2000:]
    assert len(threads_results) == 6
    for r in threads_results:
        assert not isinstance(r, Exception), r
        assert np.isfinite(r.embeddings).all()
    assert sum(t > signalled for t in done_at) >= 1, "no request was still in flight at SIGTERM"
    assert stopped < 10, f"shutdown took {stopped:.1f} s: Triton waited out --exit-timeout"
    assert "engine.serve: stopped" in err
    left = [f"{pid} {cmd}" for pid, cmd in tree.items() if _running(pid, cmd)]
    assert not left, left
    assert not any(_running(pid, cmd) for pid, cmd in _descendants(proc.pid).items())
