"""``python -m engine.serve``: the project's runtime behind Triton Inference Server, with dynamic batching.

PyTriton (``pip install '.[serve]'``) starts a real ``tritonserver`` (HTTP,
gRPC, Prometheus metrics) whose Python backend hands each dynamic batch to
this process. Two models run over the same backend (:func:`engine.backends.open_backend`)
and the same preprocessing (:class:`engine.preprocess.Preprocessor`, detection
and alignment included) as ``python -m engine.verify``:

* ``embed``: ``image`` (BYTES, one encoded image per row) or ``pixels``
  (UINT8 ``(H, W, 3)`` RGB per row) -> ``embeddings`` (FP32 ``(D,)``),
  ``box`` (FP32 ``x0, y0, x1, y1`` of the face used; NaN without alignment)
  and ``error`` (BYTES, empty when the row is fine).
* ``verify``: ``image_a``, ``image_b`` (BYTES) -> ``similarity`` (FP32),
  ``decision`` (``match`` | ``no_match`` | ``error``), ``threshold``,
  ``looks_fake`` (BOOL: a ``no_match`` where an image's realness coordinate
  says synthetic), ``realness`` (FP32 ``(2,)``, +1 real ... -1 fake; NaN for a
  model without the coordinate) and ``error``.

Errors travel in-band, per row: Triton batches requests from different
clients into one call, and an exception would fail all of them. A failed row
has NaN numbers, ``decision`` ``error`` and a one-line ``error``: a failure is
never an accept and never reads as a "different people". Requests Triton can
judge alone (wrong dtype or rank, more rows than the max batch) are refused
by Triton before they reach this process; an image over ``--max-image-bytes``
or whose header states more than :data:`engine.preprocess.MAX_PIXELS` is
refused before it is decoded.

Shutdown: SIGTERM or SIGINT stops Triton, which finishes the requests it has
accepted (up to ``--exit-timeout``) before it exits; then the backends close.
Triton 2.51 (PyTriton 0.7) also waits for idle keep-alive HTTP connections to
close: a client pool that keeps them open makes a shutdown take the whole
``--exit-timeout``, after which Triton unloads the models abruptly.

HTTP clients reach a checking front (``engine/http_front.py``), Triton's own
HTTP port stays on loopback: a body over ``--max-request-bytes`` is 413, a
chunked one 411, an inference request whose JSON does not parse 400 (Triton
itself answers 500), before Triton reads it; the rest passes unchanged.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import queue
import shutil
import signal
import socket
import sys
import sysconfig
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.files import printable

DEFAULT_MAX_BATCH = 32  # the CPU backends' batch (engine.backends.CPU_MAX_BATCH): throughput flattens past it
DEFAULT_QUEUE_DELAY_US = 2000  # ~5 % of one CPU batch-32 call: a few more requests join at little latency
DEFAULT_MAX_IMAGE_BYTES = 16 * 1024 * 1024
# A request body (engine/http_front.py): a full batch of 32 photos of ~1.5 MB, base64-encoded in JSON.
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024  # a 50 Mpx JPEG is ~25 MB; a face photo for verification is far less
DEFAULT_EXIT_TIMEOUT_S = 10  # a CPU batch takes < 1 s; idle keep-alive clients hold a shutdown this long
# PyTriton kills tritonserver 30 s after asking it to stop: a longer wait would be cut there.
MAX_EXIT_TIMEOUT_S = 25


class UsageError(ValueError):
    """Flags that do not make sense together."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@dataclass
class Row:
    """One image of a request, as it goes through the service: a model input or the reason it has none."""

    crop: np.ndarray | None = None
    box: tuple[float, float, float, float] | None = None
    error: str | None = None


class FaceService:
    """The two models' inference callables over a pool of backends and one set of decode threads.

    Each Triton instance calls from its own thread and takes a backend from
    the pool for its batch (a backend serves one thread at a time);
    decoding, detection and alignment run in ``workers`` threads, each with
    its own detector (the Preprocessor's rule), as in the Embedder.
    """

    def __init__(self, backends: list, *, workers: int, max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
                 threshold: float | None = None):
        from engine.preprocess import Preprocessor

        first = backends[0]
        self.config = first.config
        self.size, self.dim = first.input_size, first.embedding_dim
        self.threshold = threshold if threshold is not None else self.config.threshold
        self.max_image_bytes = max_image_bytes
        self.preprocessor = Preprocessor(self.config, size=self.size, refuse_non_faces=True)  # as the Embedder
        self.workers = workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="decode")
        self._backends: queue.Queue = queue.Queue()
        for be in backends:
            self._backends.put(be)
        self._all = list(backends)

    # ---------------------------------------------------------------- images -> rows -> embeddings

    def _prepare(self, item, source: str) -> Row:
        """Bytes or an RGB array -> a model input, checked before any decoding (engine.api.to_rgb); never raises."""
        from engine.api import to_rgb
        from engine.preprocess import ImageError

        try:
            rgb = to_rgb(item, source, self.max_image_bytes, "the server's limit")
            prepared = self.preprocessor.prepare(rgb, source)
            box = tuple(float(v) for v in prepared.face.box) if prepared.face is not None else None
            return Row(prepared.image, box)
        except ImageError as exc:
            return Row(error=_one_line(exc))
        except Exception as exc:  # one bad image must never take its batch down
            return Row(error=_one_line(f"{source}: unexpected {type(exc).__name__}: {exc}"))

    def _rows(self, items: list[tuple[object, str]]) -> list[Row]:
        return list(self._pool.map(lambda it: self._prepare(*it), items))

    def _embed(self, rows: list[Row]) -> np.ndarray:
        """Embeddings of every row with a crop, in one backend call; NaN rows for the others."""
        out = np.full((len(rows), self.dim), np.nan, np.float32)
        todo = [k for k, r in enumerate(rows) if r.crop is not None]
        if not todo:
            return out
        batch = np.stack([rows[k].crop for k in todo])
        backend = self._backends.get()
        try:
            emb = backend.embed(batch)
        except Exception as exc:  # a backend failure is every row's error, not a crash
            message = _one_line(f"backend {backend.name} failed: {type(exc).__name__}: {exc}")
            for k in todo:
                rows[k].error = message
            return out
        finally:
            self._backends.put(backend)
        bad = ~np.isfinite(emb).all(axis=1) | ~(np.linalg.norm(emb, axis=1) > 0)
        for k, row, broken in zip(todo, emb, bad):
            if broken:
                rows[k].error = "the model returned a zero or non-finite embedding"
            else:
                out[k] = row
        return out

    # ---------------------------------------------------------------- the two models

    def embed(self, requests: list) -> list[dict]:
        """Triton callable of ``embed``: one response per request, one row per image."""
        jobs = [self._embed_job(getattr(req, "data", req)) for req in requests]
        rows = iter(self._rows([it for job in jobs if isinstance(job, list) for it in job]))
        per_request = [[next(rows) for _ in job] if isinstance(job, list) else [Row(error=job[1])] * job[0]
                       for job in jobs]
        emb = self._embed([r for rs in per_request for r in rs])
        out, k = [], 0
        for rs in per_request:  # a failed row's embedding stays NaN (_embed writes only good rows)
            n = len(rs)
            boxes = np.array([r.box if r.box is not None and r.error is None else (np.nan,) * 4 for r in rs],
                             np.float32).reshape(n, 4)
            out.append({"embeddings": emb[k:k + n], "box": boxes, "error": _bytes_column([r.error or "" for r in rs])})
            k += n
        return out

    @staticmethod
    def _embed_job(data: dict) -> list[tuple[object, str]] | tuple[int, str]:
        """A request's images with their names, or (rows, why the request is refused)."""
        images, pixels = data.get("image"), data.get("pixels")
        if images is not None and pixels is None:
            return [(row.reshape(-1)[0], f"image {k}") for k, row in enumerate(images)]
        if pixels is not None and images is None:
            return [(row, f"pixels {k}") for k, row in enumerate(pixels)]
        n = len(images) if images is not None else 1
        return n, "give exactly one of the inputs image (encoded bytes) or pixels (uint8 H x W x 3 RGB)"

    def verify(self, requests: list) -> list[dict]:
        """Triton callable of ``verify``: one decision per pair, as ``engine.verify`` decides it."""
        from engine.api import decide, realness
        from engine.verify import cosine

        pairs = []
        for req in requests:
            data = getattr(req, "data", req)
            a, b = data["image_a"], data["image_b"]
            if len(a) != len(b):
                pairs.append((len(a), None))
                continue
            pairs.append((len(a), [(x.reshape(-1)[0], y.reshape(-1)[0]) for x, y in zip(a, b)]))
        items = [(img, name) for _, ps in pairs if ps for pa, pb in ps
                 for img, name in ((pa, "image_a"), (pb, "image_b"))]
        rows = self._rows(items)
        emb = self._embed(rows)
        weight = self.config.realness_weight
        real = realness(emb, weight) if len(emb) else np.zeros(0)
        out, k = [], 0
        for n, ps in pairs:
            sim = np.full(n, np.nan, np.float32)
            decision, errors = ["error"] * n, ["image_a and image_b have different row counts"] * n
            fake = np.zeros(n, bool)
            rl = np.full((n, 2), np.nan, np.float32)
            for i in range(n if ps else 0):
                ra, rb = rows[k], rows[k + 1]
                errors[i] = "; ".join(r.error for r in (ra, rb) if r.error)
                if not errors[i]:
                    s = float(cosine(emb[k:k + 1], emb[k + 1:k + 2])[0])
                    rl[i] = real[k:k + 2]
                    if not math.isfinite(s):
                        errors[i] = f"similarity is {s}: the model returned a zero or non-finite embedding"
                    elif self.threshold is None:
                        errors[i] = "no decision threshold: the model's model.json has none; start with --threshold"
                        sim[i] = s
                    else:  # the decision rule of the Python API and the CLI (engine.api.decide)
                        verdict = decide(emb[k:k + 2], self.threshold, weight)
                        sim[i] = verdict.similarity
                        decision[i] = "match" if verdict.match else "no_match"
                        fake[i] = verdict.looks_fake
                k += 2
            thr = np.full((n, 1), np.nan if self.threshold is None else self.threshold, np.float32)
            out.append({"similarity": sim.reshape(n, 1), "decision": _bytes_column(decision), "threshold": thr,
                        "looks_fake": fake.reshape(n, 1), "realness": rl, "error": _bytes_column(errors)})
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.preprocessor.close()
        for be in self._all:
            be.close()


def _bytes_column(values: list[str]) -> np.ndarray:
    return np.array([[v.encode()] for v in values], dtype=object).reshape(len(values), 1)


# -------------------------------------------------------------------- the server


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS picks it), for ``--*-port 0``."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def use_running_libpython() -> None:
    """Make Triton's Python-backend stub load this interpreter's libpython, not the system's.

    The stub links ``libpython3.X.so`` by name; where a system copy of the
    same version also exists (pyenv, conda, venvs over a distro Python), the
    loader finds the system one first and the stub dies with
    "'_thread.RLock' object has no attribute '_recursion_count'". PyTriton
    passes this process's environment to ``tritonserver``, so putting the
    running interpreter's LIBDIR first here is enough (no shell set-up).
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    if not libdir or not os.path.isdir(libdir):
        return
    current = os.environ.get("LD_LIBRARY_PATH", "")
    if current.split(":")[0] != libdir:
        os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{current}" if current else libdir


def check_environment() -> None:
    """Refuse, with the fix, an environment where PyTriton's Python-backend stub cannot exchange tensors.

    PyTriton 0.7's ``triton_python_backend_stub`` is built against NumPy 1.x
    (and its package says ``numpy<2``); under NumPy 2 every tensor it hands
    Triton arrives empty. Checked from PyTriton's own declared requirement, so
    a release that supports NumPy 2 passes.
    """
    from importlib.metadata import PackageNotFoundError, requires

    try:
        import pytriton  # noqa: F401
    except ImportError:
        raise ImportError("PyTriton is not installed: pip install '.[serve]' (nvidia-pytriton)") from None
    try:
        wanted = [r for r in requires("nvidia-pytriton") or [] if r.replace(" ", "").startswith("numpy")]
    except PackageNotFoundError:
        return
    major = int(np.__version__.split(".")[0])
    if major >= 2 and any("<2" in r for r in wanted):
        raise RuntimeError(f"PyTriton's Triton Python-backend stub needs NumPy 1.x ({wanted[0]}) and this "
                           f"environment has NumPy {np.__version__}: serve from an environment with numpy<2 "
                           f"(pip install '.[serve]' in its own venv)")


def default_instances(backend_name: str) -> int:
    """Two on a GPU (one copies while the other computes); one on the CPU, where a batch already uses every core."""
    return 2 if backend_name == "tensorrt" else 1


def _triton_models(service: FaceService, n: int, max_batch: int, queue_delay_us: int):
    """PyTriton bindings (name, callables, inputs, outputs, config) of ``embed`` and ``verify``."""
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    def config(batch):
        return ModelConfig(max_batch_size=batch, batcher=DynamicBatcher(max_queue_delay_microseconds=queue_delay_us))

    embed_in = [Tensor(name="image", dtype=bytes, shape=(1,), optional=True),
                Tensor(name="pixels", dtype=np.uint8, shape=(-1, -1, 3), optional=True)]
    embed_out = [Tensor(name="embeddings", dtype=np.float32, shape=(service.dim,)),
                 Tensor(name="box", dtype=np.float32, shape=(4,)),
                 Tensor(name="error", dtype=bytes, shape=(1,))]
    verify_in = [Tensor(name="image_a", dtype=bytes, shape=(1,)), Tensor(name="image_b", dtype=bytes, shape=(1,))]
    verify_out = [Tensor(name="similarity", dtype=np.float32, shape=(1,)),
                  Tensor(name="decision", dtype=bytes, shape=(1,)),
                  Tensor(name="threshold", dtype=np.float32, shape=(1,)),
                  Tensor(name="looks_fake", dtype=np.bool_, shape=(1,)),
                  Tensor(name="realness", dtype=np.float32, shape=(2,)),
                  Tensor(name="error", dtype=bytes, shape=(1,))]
    # A verify batch of max_batch // 2 pairs is one backend batch of max_batch images.
    return [("embed", [service.embed] * n, embed_in, embed_out, config(max_batch)),
            ("verify", [service.verify] * n, verify_in, verify_out, config(max(1, max_batch // 2)))]


def open_backends(model, backend: str, precision: str | None, device: str | None, max_batch: int,
                  instances: int | None) -> list:
    """One backend per instance (``instances`` None: :func:`default_instances` for the backend chosen)."""
    from engine.backends import open_backend

    opened = []
    try:
        while not opened or len(opened) < (instances or default_instances(opened[0].name)):
            be = open_backend(model, backend=backend, precision=precision, device=device, max_batch=max_batch)
            opened.append(be)
            if max_batch > be.max_batch:  # a TensorRT plan's profile caps the batch
                raise UsageError(f"--max-batch {max_batch} is more than the {be.name} backend takes "
                                 f"({be.max_batch}, {be.source.path})")
    except BaseException:
        for be in opened:
            be.close()
        raise
    return opened


def serve(model=None, *, backend: str = "auto", precision: str | None = None, device: str | None = None,
          host: str = "127.0.0.1", http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002,
          max_batch: int = DEFAULT_MAX_BATCH, queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
          instances: int | None = None, workers: int | None = None, threshold: float | None = None,
          max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES, exit_timeout: int = DEFAULT_EXIT_TIMEOUT_S,
          verbose: bool = False, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> int:
    """Serve ``embed`` and ``verify`` until SIGTERM/SIGINT; returns the exit code (0, or 2 with one error line)."""
    try:
        return _serve(model, backend, precision, device, host, http_port, grpc_port, metrics_port, max_batch,
                      queue_delay_us, instances, workers, threshold, max_image_bytes, exit_timeout, verbose,
                      max_request_bytes)
    except KeyboardInterrupt:
        return 130
    except (ValueError, OSError, RuntimeError, TimeoutError, ImportError) as exc:
        print(f"engine.serve: error: {printable(_one_line(exc)) or type(exc).__name__}", file=sys.stderr)
        return 2


def _check(max_batch, queue_delay_us, instances, workers, threshold, max_image_bytes, exit_timeout, ports,
           max_request_bytes=DEFAULT_MAX_REQUEST_BYTES):
    if not 0 <= exit_timeout <= MAX_EXIT_TIMEOUT_S:
        raise UsageError(f"--exit-timeout must be 0-{MAX_EXIT_TIMEOUT_S} s (PyTriton stops waiting for the server "
                         f"after 30 s), got {exit_timeout}")
    for flag, value, low in (("--max-batch", max_batch, 1), ("--queue-delay-us", queue_delay_us, 0),
                             ("--instances", instances, 1), ("--workers", workers, 1),
                             ("--max-image-bytes", max_image_bytes, 1), ("--max-request-bytes", max_request_bytes, 1)):
        if value is not None and value < low:
            raise UsageError(f"{flag} must be >= {low}, got {value}")
    if threshold is not None and not (math.isfinite(threshold) and -1.0 <= threshold <= 1.0):
        raise UsageError(f"--threshold must be a number in [-1, 1], got {threshold}")
    for flag, port in ports.items():
        if not 0 <= port <= 65535:
            raise UsageError(f"{flag} must be a port number 0-65535 (0 = a free one), got {port}")
    given = [p for p in ports.values() if p]
    if len(given) != len(set(given)):
        raise UsageError(f"the HTTP, gRPC and metrics ports must differ, got {sorted(given)}")


def _serve(model, backend, precision, device, host, http_port, grpc_port, metrics_port, max_batch, queue_delay_us,
           instances, workers, threshold, max_image_bytes, exit_timeout, verbose,
           max_request_bytes=DEFAULT_MAX_REQUEST_BYTES) -> int:
    _check(max_batch, queue_delay_us, instances, workers, threshold, max_image_bytes, exit_timeout,
           {"--http-port": http_port, "--grpc-port": grpc_port, "--metrics-port": metrics_port}, max_request_bytes)
    check_environment()
    from pytriton.triton import Triton, TritonConfig
    from engine.embedder import default_workers

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        backends = open_backends(model, backend, precision, device, max_batch, instances)
        be, n = backends[0], len(backends)
        service = FaceService(backends, workers=workers or default_workers(), max_image_bytes=max_image_bytes,
                              threshold=threshold)
        try:
            ports = {name: port or free_port(host) for name, port in
                     (("http", http_port), ("grpc", grpc_port), ("metrics", metrics_port))}
            use_running_libpython()
            logs = None if verbose else Path(tempfile.mkdtemp(prefix="engine-serve-")) / "tritonserver.log"
            # Triton's HTTP port stays on loopback; clients reach the checking front (engine/http_front.py).
            from engine.http_front import HttpFront

            inner = free_port("127.0.0.1")
            front = HttpFront(host, ports["http"], inner, max_request_bytes)
            config = TritonConfig(http_address="127.0.0.1", http_port=inner, grpc_address=host,
                                  grpc_port=ports["grpc"], metrics_address=host, metrics_port=ports["metrics"],
                                  exit_timeout_secs=exit_timeout, log_verbose=1 if verbose else 0, log_file=logs)
            with _Server(Triton(config=config), logs, front) as triton:
                for name, fns, inputs, outputs, cfg in _triton_models(service, n, max_batch, queue_delay_us):
                    triton.bind(model_name=name, infer_func=fns, inputs=inputs, outputs=outputs, config=cfg,
                                strict=True)
                if stop.is_set():
                    return 0
                try:
                    triton.run()
                except Exception as exc:  # PyTriton's own types: say what Triton said
                    raise RuntimeError(f"Triton Inference Server did not start: {type(exc).__name__}: "
                                       f"{exc}{_last_error(logs)}") from None
                front.start()
                url = f"http://{_url_host(host)}:{ports['http']}"
                print(f"engine.serve: serving {url} (models embed, verify; gRPC {_url_host(host)}:{ports['grpc']}, "
                      f"metrics {_url_host(host)}:{ports['metrics']}/metrics)", flush=True)
                print(f"engine.serve: backend {be.choice.backend} ({be.choice.precision}, {be.device}): "
                      f"{be.choice.reason}; model {be.source.path}; max batch {max_batch}, queue delay "
                      f"{queue_delay_us} us, {n} instance(s), {service.workers} decode thread(s), "
                      f"threshold {service.threshold}", flush=True)
                while not stop.wait(0.5):
                    if not triton.is_alive():
                        raise RuntimeError(f"Triton Inference Server stopped unexpectedly{_last_error(logs)}")
                print("engine.serve: stopping: finishing accepted requests", file=sys.stderr, flush=True)
        finally:
            service.close()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("engine.serve: stopped", file=sys.stderr, flush=True)
    return 0


class _Server:
    """``Triton`` as a context that always stops it (server process, proxy threads, workspace), then the HTTP
    front (after Triton has answered what it accepted), and removes its log."""

    def __init__(self, triton, logs: Path | None, front=None):
        self.triton, self.logs, self.front = triton, logs, front

    def __enter__(self):
        return self.triton

    def __exit__(self, exc_type, exc, tb):
        try:
            self.triton.stop()
        finally:
            if self.front is not None:
                self.front.stop()
            if self.logs is not None:
                shutil.rmtree(self.logs.parent, ignore_errors=True)


def _last_error(logs: Path | None) -> str:
    """The last error line of Triton's log, as ``": ..."``, or ``""``."""
    try:
        lines = logs.read_text(errors="replace").splitlines() if logs is not None else []
    except OSError:
        return ""
    errors = [line for line in lines if line[:1] == "E"]
    return f" (tritonserver: {_one_line(errors[-1])})" if errors else ""


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def build_parser() -> argparse.ArgumentParser:
    from engine.backends import BACKENDS, PRECISIONS

    p = _Parser(prog="python -m engine.serve",
                description="Serve face embedding and verification over Triton Inference Server (HTTP, gRPC, "
                            "Prometheus metrics) with dynamic batching, through the same backend and "
                            "preprocessing as engine.verify. Models: embed, verify.",
                epilog="Stops on SIGTERM or Ctrl-C after finishing the requests it has accepted. Exit codes: "
                       "0 stopped, 2 error.")
    p.add_argument("--model", metavar="PATH", help="model folder, .onnx or .plan (default: the bundled model)")
    p.add_argument("--backend", default="auto", choices=("auto", *BACKENDS),
                   help="inference backend, chosen as engine.verify does (default: %(default)s)")
    p.add_argument("--precision", choices=PRECISIONS, help="model variant (default: the backend's preferred one)")
    p.add_argument("--device", help="backend device, as in engine.verify --device")
    p.add_argument("--host", default="127.0.0.1", help="address every endpoint binds to; 0.0.0.0 exposes the "
                   "server to the network (default: %(default)s)")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP/REST port, 0 = a free one (default: %(default)s)")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port, 0 = a free one (default: %(default)s)")
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port (/metrics), 0 = a free "
                   "one (default: %(default)s)")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="largest batch of images the dynamic "
                   "batcher forms, and the most images one embed request may carry; verify takes half as many "
                   "pairs (default: %(default)s)")
    p.add_argument("--queue-delay-us", type=int, default=DEFAULT_QUEUE_DELAY_US, help="how long, in microseconds, "
                   "a request may wait for others to join its batch (default: %(default)s)")
    p.add_argument("--instances", type=int, help="model instances, each with its own backend, running batches in "
                   "parallel (default: 2 on TensorRT, 1 on CPU backends, which use every core per batch)")
    p.add_argument("--workers", type=int, help="decode + face detection threads shared by the instances "
                   "(default: up to 4, one per core)")
    p.add_argument("--threshold", type=float, help="decision threshold on cosine similarity (default: the one "
                   "calibrated in the model's model.json)")
    p.add_argument("--max-image-bytes", type=int, default=DEFAULT_MAX_IMAGE_BYTES, help="an encoded image larger "
                   "than this is refused before decoding (default: %(default)s)")
    p.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES, help="an HTTP request body "
                   "larger than this is answered 413 before Triton reads it (default: %(default)s)")
    p.add_argument("--exit-timeout", type=int, default=DEFAULT_EXIT_TIMEOUT_S, help="seconds a shutdown waits for "
                   f"accepted requests to finish, at most {MAX_EXIT_TIMEOUT_S} (default: %(default)s)")
    p.add_argument("--verbose", action="store_true", help="show Triton's and PyTriton's logs")
    return p


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see --help)")


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        print(f"engine.serve: error: {printable(exc)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    if not args.verbose:  # PyTriton logs each model's endpoints at INFO and warns on every in-band error row
        logging.getLogger("pytriton").setLevel(logging.ERROR)
    return serve(**vars(args))


if __name__ == "__main__":
    sys.exit(main())
