"""OpenVINO backend: reads our ONNX files directly; the fastest CPU path on x86 with AMX/VNNI.

On CPUs with AMX, OpenVINO's default inference precision is bf16, so FP32 is
asked for explicitly (``INFERENCE_PRECISION_HINT=f32``) when the FP32 (or
FP16) file is run: no silent precision downgrade. ``precision="bf16"`` runs
the FP32 file with the bf16 hint. The INT8 Q/DQ file is run as quantised
(OpenVINO maps Q/DQ convolutions to int8 kernels, AMX where present) and
the non-quantised remainder in f32: convert keeps the layers INT8 hurts most
in FP32 (``--int8-fp32-layers``), and the plugin's default (bf16 where the
CPU has it) undid that on the worst image. Measured on a random ResNet-34 at
112x112, batch 32, 2 loaded AMD EPYC cores: INT8 with the bf16 remainder 231
img/s, with the f32 remainder 180 img/s; FP32 44 img/s, bf16 hint 70 img/s.

Known OpenVINO 2026.4 quirk: with the bf16 hint, a 32x32 test model (1x1 last
feature map) gave batch-1 embeddings at cosine ~0.8 to FP32 while batch 4 was
exact; the 112x112 model is unaffected (cosine 0.99996 at batch 1 and 32).

Compiled models are cached (OpenVINO's ``CACHE_DIR``) in
``$FAKEAWARE_CACHE_DIR`` (default ``~/.cache/fakeaware-faceverify``)
``/openvino``: a later process imports the blob instead of compiling again
(from the file's path, without reading the ONNX graph). Blobs sit in one
sub-folder per SHA-256 of the model file (``engine.integrity``), since
OpenVINO keys a path-compiled blob on the path: a file with other bytes
compiles afresh, whatever its size and mtime. ``FAKEAWARE_CACHE_DIR=off``
disables it.
"""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np

from engine.backends.base import Backend, BackendError
from engine.backends.onnxruntime_backend import cpu_cores
from engine.contract import INPUT_NAME, OUTPUT_NAME

# Inference precision hint per precision name. INT8 runs what Q/DQ leaves unquantized in f32:
# with the plugin's default (bf16 on AMX) the layers convert kept in FP32 for accuracy ran
# in bf16, and the worst validation image fell from cosine 0.983 to 0.977 (under the gate's 0.98).
PRECISION_HINTS = {"fp32": "f32", "fp16": "f32", "bf16": "bf16", "int8": "f32"}


def import_openvino():
    """``import openvino``, without its model converter.

    The package's ``__init__`` tries ``from openvino.tools.ovc import
    convert_model``, which imports the converter's CLI, ``urllib``/``http``
    and telemetry: 0.09 s of a 0.93 s warm two-image call on the 2-core
    EPYC (``python -X importtime``). The runtime never converts a model, so
    that import is skipped; ``openvino.convert_model`` stays available and
    imports the converter when first called.
    """
    if "openvino" in sys.modules:
        return sys.modules["openvino"]
    skip = "openvino.tools.ovc" not in sys.modules
    if skip:
        sys.modules["openvino.tools.ovc"] = None  # makes that one import fail with ImportError, which openvino catches
    try:
        import openvino
    finally:
        if skip and sys.modules.get("openvino.tools.ovc", 0) is None:
            del sys.modules["openvino.tools.ovc"]
    if not hasattr(openvino, "convert_model"):
        def convert_model(*args, **kwargs):
            from openvino.tools.ovc import convert_model as convert

            return convert(*args, **kwargs)

        openvino.convert_model = convert_model
    return openvino


def default_cache_dir() -> Path | None:
    """Where compiled OpenVINO models are kept; None when caching is off or the folder cannot be made."""
    from engine.cachedir import cache_dir

    return cache_dir("openvino")


class OpenVinoBackend(Backend):
    name = "openvino"

    def __init__(self, onnx_path: str | Path, *, input_size: int, embedding_dim: int, precision: str = "fp32",
                 device: str | None = None, max_batch: int = 32, threads: int | None = None,
                 performance_hint: str = "LATENCY", input_name: str = INPUT_NAME, output_name: str = OUTPUT_NAME,
                 cache_dir: str | Path | None = "default", digest: str | None = None):
        try:
            ov = import_openvino()
        except ImportError:
            raise BackendError("openvino is not installed: pip install 'openvino>=2024.4' "
                               "(or use --backend onnxruntime)") from None
        if precision not in PRECISION_HINTS:
            raise BackendError(f"openvino: unknown precision {precision!r}; use one of {sorted(PRECISION_HINTS)}")
        ov_device = (device or "CPU").upper()
        config = {"PERFORMANCE_HINT": performance_hint}
        if ov_device == "CPU":
            config["INFERENCE_NUM_THREADS"] = int(threads or cpu_cores())
        config["INFERENCE_PRECISION_HINT"] = PRECISION_HINTS[precision]
        self.cache_dir = default_cache_dir() if cache_dir == "default" else (Path(cache_dir) if cache_dir else None)
        try:
            from engine.integrity import file_digest

            digest = digest or file_digest(onnx_path)
        except OSError:  # unreadable: OpenVINO's own error below names it
            digest, self.cache_dir = None, None
        if self.cache_dir is not None:
            # Compiling from a path, OpenVINO keys the blob on the path, not the content: one
            # sub-folder per content digest so a replaced model file is compiled afresh.
            config["CACHE_DIR"] = str(self.cache_dir / digest[:32])
        core = ov.Core()
        try:
            # With the cache on, compile from the path: a cached blob is then imported without
            # reading and converting the ONNX graph at all (0.12 s of a warm two-image call).
            model = str(onnx_path) if self.cache_dir is not None else core.read_model(str(onnx_path))
            self._compiled = core.compile_model(model, ov_device, config)
        except Exception as exc:
            raise BackendError(f"{onnx_path}: openvino cannot compile it for {ov_device} "
                               f"({type(exc).__name__}: {exc})") from None
        self._request = self._compiled.create_infer_request()
        self._input, self._output = input_name, self._compiled.output(output_name)
        hint = self._compiled.get_property("INFERENCE_PRECISION_HINT")
        self.inference_precision = hint.to_string() if hasattr(hint, "to_string") else str(hint)  # "f32", "bf16"
        super().__init__(precision=precision, max_batch=max_batch, input_size=input_size,
                         embedding_dim=embedding_dim, model_path=onnx_path, device=ov_device.lower(), digest=digest)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        result = self._request.infer({self._input: batch})
        # The output tensor is the request's own memory, overwritten by the next call: copy.
        return np.array(result[self._output], dtype=np.float32, copy=True)

    def kernels(self) -> dict[str, int]:
        """How many executed layers use each kernel (e.g. ``brgconv_avx512_amx_I8``); needs one run first."""
        counts: Counter = Counter()
        for op in self._compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            if "primitiveType" in info:
                counts[info["primitiveType"].astype(str)] += 1
        return dict(counts.most_common())

    @property
    def executed_precision(self) -> str:
        """From the compiled model: e.g. ``fp32`` when bf16 was asked for on a CPU without it,
        ``int8+fp32`` for the Q/DQ file (its unquantized layers in f32)."""
        run = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(self.inference_precision, self.inference_precision)
        return f"int8+{run}" if self.precision == "int8" else run

    def describe(self) -> dict:
        return {**super().describe(), "inference_precision": self.inference_precision,
                "cache_dir": str(self.cache_dir) if self.cache_dir else None}

    def close(self) -> None:
        self._request = self._compiled = None
        super().close()
