"""ONNX Runtime backend: the portable path (any CPU, ARM included), GPU providers when installed."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from engine.backends.base import Backend, BackendError
from engine.contract import INPUT_NAME, OUTPUT_NAME


def cpu_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def pick_providers(device: str | None, available: list[str]) -> list[str]:
    """Execution providers for ``device`` ("cpu", "cuda", "tensorrt" or None = best offered).

    None takes CUDA when the installed onnxruntime offers it, else the CPU;
    asking for a provider that is not installed is an error, not a silent fallback.
    """
    wanted = {"cpu": [], "cuda": ["CUDAExecutionProvider"],
              "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"]}
    if device is None or device == "auto":
        chosen = ["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []
    elif device in wanted:
        chosen = wanted[device]
        missing = [p for p in chosen if p not in available]
        if missing:
            raise BackendError(f"onnxruntime: device {device!r} needs {missing}, installed providers are "
                               f"{available} (install onnxruntime-gpu for CUDA)")
    else:
        raise BackendError(f"onnxruntime: unknown device {device!r}; use cpu, cuda or tensorrt")
    return chosen + ["CPUExecutionProvider"]


def optimized_path(digest: str, version: str) -> Path | None:
    """Where the CPU-optimised graph of ``onnx_path`` is cached; None when caching is off.

    ONNX Runtime's graph optimisation is most of a session's opening: for the
    bundled model on the 2-core EPYC 0.29 s, against 0.13 s for a saved
    optimised graph. The saved graph holds kernels for this CPU (NCHWc
    layouts), so the key has the file's SHA-256 (``engine.integrity``), the
    ORT version and the CPU's name and ISA flags; other bytes or another
    machine optimise afresh.
    """
    import hashlib

    from engine.cachedir import cache_dir
    from engine.cpu import machine_identity

    folder = cache_dir("onnxruntime")
    if folder is None:
        return None
    return folder / f"{hashlib.sha256(f'{digest}|{version}|{machine_identity()}'.encode()).hexdigest()}.onnx"


def _cached_session(ort, cached: Path, opts, providers):
    """A session from the cached optimised graph, or None (absent or unreadable: it is rebuilt)."""
    if not cached.is_file():
        return None
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # optimised already
    try:
        return ort.InferenceSession(str(cached), sess_options=opts, providers=providers)
    except Exception:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            cached.unlink()
        except OSError:
            pass
        return None


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, onnx_path: str | Path, *, input_size: int, embedding_dim: int, precision: str = "fp32",
                 device: str | None = None, max_batch: int = 32, threads: int | None = None,
                 input_name: str = INPUT_NAME, output_name: str = OUTPUT_NAME, digest: str | None = None):
        import onnxruntime as ort

        from engine.integrity import file_digest

        providers = pick_providers(device, ort.get_available_providers())
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or cpu_cores()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            digest = digest or file_digest(onnx_path)
        except OSError:  # unreadable: ONNX Runtime's own error below names it
            digest = None
        cached = optimized_path(digest, ort.__version__) if digest and providers == ["CPUExecutionProvider"] else None
        self._session = _cached_session(ort, cached, opts, providers) if cached is not None else None
        if self._session is None:
            if cached is not None:  # written under a temporary name, renamed when whole
                from engine.files import scratch_file

                tmp = scratch_file(cached)  # not .ort: ONNX Runtime writes the ONNX format for other names
                opts.optimized_model_filepath = str(tmp)
                opts.log_severity_level = 3  # its warning that the saved graph is for this CPU: the key says so
            try:
                self._session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=providers)
            except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
                if cached is not None:
                    tmp.unlink(missing_ok=True)
                raise BackendError(f"{onnx_path}: onnxruntime cannot load it ({type(exc).__name__}: {exc})") from None
            if cached is not None:
                try:
                    os.replace(tmp, cached)
                except OSError:
                    tmp.unlink(missing_ok=True)
        self._input, self._output = input_name, output_name
        used = self._session.get_providers()[0]
        super().__init__(precision=precision, max_batch=max_batch, input_size=input_size,
                         embedding_dim=embedding_dim, model_path=onnx_path, digest=digest,
                         device="cpu" if used == "CPUExecutionProvider" else used.removesuffix("ExecutionProvider"))
        self.providers = self._session.get_providers()

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run([self._output], {self._input: batch})[0].astype(np.float32, copy=False)

    def describe(self) -> dict:
        return {**super().describe(), "providers": self.providers}

    def close(self) -> None:
        self._session = None
        super().close()
