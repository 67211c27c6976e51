"""A client for ``python -m engine.serve`` (tritonclient, HTTP or gRPC), and its metrics.

The server answers bad images in-band, row by row (see :mod:`engine.serve`);
this client turns each such row, and each request Triton refuses, into a
:class:`ServeError` with the server's one-line reason, so a caller never reads
a failure as a decision::

    with FaceClient("127.0.0.1:8000") as client:
        verdict = client.verify("a.jpg", "b.jpg")   # raises ServeError on any failure
        print(verdict.similarity, verdict.decision, verdict.looks_fake)
"""
from __future__ import annotations

import os
import time
import urllib.request
from dataclasses import dataclass
from typing import Sequence

import numpy as np


class ServeError(RuntimeError):
    """The server refused a request or could not answer it; the message says why."""


@dataclass
class Embedded:
    """``embed``'s answer: rows follow the request; NaN rows and an ``errors`` entry where an image failed."""

    embeddings: np.ndarray  # float32 (N, D)
    boxes: np.ndarray  # float32 (N, 4) x0, y0, x1, y1 in source pixels; NaN without alignment
    errors: list[str | None]

    @property
    def ok(self) -> np.ndarray:
        return np.array([e is None for e in self.errors], bool)


@dataclass
class Verdict:
    """``verify``'s answer for a pair that could be judged (failures raise instead)."""

    similarity: float
    decision: str  # "match" or "no_match"
    threshold: float
    looks_fake: bool  # a no_match where an image's realness coordinate says synthetic
    realness: tuple[float, float]  # +1 real ... -1 fake; NaN for a model without the coordinate

    @property
    def match(self) -> bool:
        return self.decision == "match"


def _encoded(image) -> bytes:
    """Bytes as given, or a file's bytes (read as the runtime reads files: size-checked, never a FIFO)."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        from engine.preprocess import read_file

        return read_file(image)
    raise TypeError(f"expected image bytes or a file path, got {type(image).__name__}")


def _bytes_array(values: Sequence[bytes]) -> np.ndarray:
    out = np.empty((len(values), 1), dtype=object)
    for k, v in enumerate(values):
        out[k, 0] = v
    return out


class FaceClient:
    """Calls ``embed`` and ``verify`` on one server; ``protocol`` "http" (port 8000) or "grpc" (8001)."""

    def __init__(self, url: str = "127.0.0.1:8000", *, protocol: str = "http", timeout_s: float = 60.0):
        if protocol == "http":
            import tritonclient.http as tc

            self._client = tc.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)
        elif protocol == "grpc":
            import tritonclient.grpc as tc

            self._client = tc.InferenceServerClient(url)
        else:
            raise ValueError(f"protocol must be http or grpc, got {protocol!r}")
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype

        self._tc, self._protocol, self._timeout_s, self.url = tc, protocol, timeout_s, url
        self._refused, self._dtype = InferenceServerException, np_to_triton_dtype

    def ready(self) -> bool:
        """Whether the server and both models are ready (False while starting or unreachable)."""
        try:
            return bool(self._client.is_server_ready() and self._client.is_model_ready("embed")
                        and self._client.is_model_ready("verify"))
        except Exception:  # connection refused, reset, timeout: not ready
            return False

    def wait_ready(self, timeout_s: float = 120.0, alive=None) -> None:
        """Poll until ready; ``alive()`` False (the server process died) or the timeout raises ServeError."""
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if alive is not None and not alive():
                raise ServeError(f"{self.url}: the server exited before it was ready")
            if time.monotonic() > deadline:
                raise ServeError(f"{self.url}: not ready after {timeout_s:g} s")
            time.sleep(0.2)

    def _infer(self, model: str, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        tc = self._tc
        request = []
        for name, array in inputs.items():
            item = tc.InferInput(name, list(array.shape), self._dtype(array.dtype))  # the server judges it
            if self._protocol == "http":
                item.set_data_from_numpy(array, binary_data=True)
            else:
                item.set_data_from_numpy(array)
            request.append(item)
        # Binary outputs: a failed row's NaN has no JSON spelling.
        wanted = [tc.InferRequestedOutput(o, binary_data=True) if self._protocol == "http" else
                  tc.InferRequestedOutput(o) for o in outputs]
        kwargs = {"client_timeout": self._timeout_s} if self._protocol == "grpc" else {}
        try:
            result = self._client.infer(model, request, outputs=wanted, **kwargs)
        except self._refused as exc:
            raise ServeError(f"{model}: {' '.join(str(exc.message() or exc).split())}") from None
        return {o: result.as_numpy(o) for o in outputs}

    def embed(self, images, *, strict: bool = True) -> Embedded:
        """Embed encoded images (bytes or paths) or a uint8 (N, H, W, 3) RGB array, in one request.

        ``strict`` (the default) raises :class:`ServeError` for the first image
        that failed; otherwise failures are left in ``errors``.
        """
        if isinstance(images, np.ndarray):
            if images.ndim == 3:
                images = images[None]
            inputs = {"pixels": np.ascontiguousarray(images)}
        else:
            inputs = {"image": _bytes_array([_encoded(im) for im in images])}
        out = self._infer("embed", inputs, ("embeddings", "box", "error"))
        errors = [e.decode() or None for e in out["error"].reshape(-1)]
        if strict:
            for e in errors:
                if e:
                    raise ServeError(e)
        return Embedded(out["embeddings"], out["box"], errors)

    def verify(self, image_a, image_b) -> Verdict:
        """Similarity and decision for two encoded images (bytes or paths); any failure raises ServeError."""
        out = self._infer("verify", {"image_a": _bytes_array([_encoded(image_a)]),
                                     "image_b": _bytes_array([_encoded(image_b)])},
                          ("similarity", "decision", "threshold", "looks_fake", "realness", "error"))
        decision = out["decision"].reshape(-1)[0].decode()
        error = out["error"].reshape(-1)[0].decode()
        if error or decision not in ("match", "no_match"):
            raise ServeError(error or f"verify: the server answered decision {decision!r}")
        rl = out["realness"].reshape(-1)
        return Verdict(float(out["similarity"].reshape(-1)[0]), decision, float(out["threshold"].reshape(-1)[0]),
                       bool(out["looks_fake"].reshape(-1)[0]), (float(rl[0]), float(rl[1])))

    def close(self) -> None:
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_metrics(url: str, timeout_s: float = 10.0) -> dict[str, dict[str, float]]:
    """Triton's Prometheus metrics (``http://HOST:8002/metrics``) as ``{name: {model: value}}``.

    Only per-model series are kept (those with a ``model`` label; other labels
    summed), e.g. ``nv_inference_count`` (images) and ``nv_inference_exec_count``
    (batches run): their ratio is the mean batch the dynamic batcher formed.
    """
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        text = response.read().decode()
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or "{" not in line:
            continue
        name, rest = line.split("{", 1)
        labels, _, value = rest.rpartition("}")
        fields = dict(part.split("=", 1) for part in labels.split(",") if "=" in part)
        model = fields.get("model", "").strip('"')
        if model:
            try:
                out.setdefault(name, {})[model] = out.get(name, {}).get(model, 0.0) + float(value.split()[0])
            except (ValueError, IndexError):
                continue
    return out
