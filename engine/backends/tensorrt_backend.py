"""TensorRT backend: runs ``model.<precision>.plan`` built by ``python -m convert --engine``.

Kept as thin as NVIDIA's samples: deserialise, one execution context, buffers
sized from the optimisation profile's maximum and allocated once (pinned host
+ device, via :mod:`engine.cuda`), then per batch ``set_input_shape`` -> H2D ->
``execute_async_v3`` -> D2H -> synchronise, with optional CUDA-graph replay per
batch size. Explicit free on ``close()``.

Engines are specific to the TensorRT version and GPU they were built with.
The plan's sidecar (``model.<precision>.plan.json``) records both, and
:func:`check_plan_sidecar` refuses a mismatch before TensorRT ever sees the
bytes. ``cudaGetDeviceCount()`` is checked before a TensorRT runtime is
created: without a working device TensorRT crashes later instead of failing.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engine.backends.base import Backend, BackendError
from engine.contract import INPUT_NAME, OUTPUT_NAME

# hardware_compatibility_level values (TensorRT's HardwareCompatibilityLevel) -> minimum compute capability.
HARDWARE_LEVELS = {"none": None, "ampere_plus": (8, 0), "same_compute_capability": "same"}


class PlanMismatch(BackendError):
    """The plan was built for another TensorRT version or GPU."""


def sidecar_path(plan: str | Path) -> Path:
    plan = Path(plan)
    return plan.with_name(plan.name + ".json")


def read_sidecar(plan: str | Path) -> dict:
    path = sidecar_path(plan)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BackendError(f"{plan}: no sidecar {path.name} next to it; rebuild the engine with "
                           f"`python -m convert ... --engine` (it writes both)") from None
    except json.JSONDecodeError as exc:
        raise BackendError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BackendError(f"{path}: expected a JSON object")
    return data


def _version_tuple(version) -> tuple[int, ...]:
    parts = []
    for piece in str(version).strip().split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _capability(value) -> tuple[int, int] | None:
    """"8.6", "sm_86", "86", [8, 6] or 8.6 -> (8, 6)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    text = str(value).lower().removeprefix("sm_").removeprefix("sm")
    if "." in text:
        major, minor = text.split(".", 1)
        return int(major), int(minor)
    if text.isdigit() and len(text) >= 2:
        return int(text[:-1]), int(text[-1])
    raise ValueError(f"unreadable compute capability {value!r}")


def _flag(sidecar: dict, key: str):
    """A build flag, at the top level or under ``build_flags``/``flags``."""
    for holder in (sidecar, sidecar.get("build_flags") or {}, sidecar.get("flags") or {}):
        if isinstance(holder, dict) and key in holder:
            return holder[key]
    return None


def check_plan_sidecar(sidecar: dict, running: dict, source: str = "model.plan.json") -> None:
    """Refuse a plan whose sidecar names another TensorRT version or GPU.

    ``running`` has ``tensorrt_version``, ``gpu_name`` and ``compute_capability``
    of this machine. Exact TensorRT major.minor.patch and the same GPU are
    required, except that a version-compatible plan runs on the same major
    version at or after the one that built it, and a hardware-compatible plan
    (``hardware_compatibility_level``) runs on any GPU its level admits.
    Raises :class:`PlanMismatch` listing every mismatch.
    """
    problems = []
    built_v, run_v = sidecar.get("tensorrt_version"), running.get("tensorrt_version")
    if built_v is None:
        problems.append("the sidecar does not record tensorrt_version")
    else:
        b, r = _version_tuple(built_v), _version_tuple(run_v)
        if _flag(sidecar, "version_compatible"):
            if b[:1] != r[:1] or r < b:
                problems.append(f"built with TensorRT {built_v} (version-compatible), running {run_v}: "
                                f"needs the same major version, {b[0]}.x at or after {built_v}")
        elif b[:3] != r[:3]:
            problems.append(f"built with TensorRT {built_v}, running TensorRT {run_v}")

    level = str(_flag(sidecar, "hardware_compatibility_level") or "none").lower().replace("-", "_")
    if level not in HARDWARE_LEVELS:
        problems.append(f"unknown hardware_compatibility_level {level!r}")
        level = "none"
    try:
        built_cc, run_cc = _capability(sidecar.get("compute_capability")), _capability(running.get("compute_capability"))
    except ValueError as exc:
        problems.append(str(exc))
        built_cc = run_cc = None
    built_gpu, run_gpu = sidecar.get("gpu_name"), running.get("gpu_name")
    need = HARDWARE_LEVELS[level]
    if isinstance(need, tuple):
        if run_cc is None or run_cc < need:
            problems.append(f"hardware-compatible plan ({level}) needs compute capability >= "
                            f"{need[0]}.{need[1]}, this GPU ({run_gpu}) has {running.get('compute_capability')}")
    else:
        if built_cc is None:
            problems.append("the sidecar does not record compute_capability")
        elif built_cc != run_cc:
            problems.append(f"built for compute capability {built_cc[0]}.{built_cc[1]} ({built_gpu}), "
                            f"this GPU ({run_gpu}) has {running.get('compute_capability')}")
        if need is None:
            norm = lambda name: " ".join(str(name or "").lower().split())  # noqa: E731
            if not built_gpu:
                problems.append("the sidecar does not record gpu_name")
            elif norm(built_gpu) != norm(run_gpu):
                problems.append(f"built on GPU {built_gpu!r}, running on {run_gpu!r}")
    if problems:
        raise PlanMismatch(f"{source}: refusing this TensorRT plan: " + "; ".join(problems)
                           + ". Rebuild it on this machine with `python -m convert ... --engine`, "
                             "or use --backend onnxruntime/openvino with the ONNX file")


def load_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise BackendError("TensorRT is not installed (the Python package `tensorrt` does not import); "
                           "use --backend onnxruntime or openvino, or install TensorRT for this GPU") from None
    return tensorrt


def _verified_plan(plan_path: Path, blob: bytes, sidecar: dict) -> str:
    """The plan's SHA-256, refused unless it is the sidecar's ``plan_sha256`` (engine.integrity's rule)."""
    import hashlib

    from engine.integrity import mismatch

    got = hashlib.sha256(blob).hexdigest()
    want = sidecar.get("plan_sha256")
    if want is not None and got != str(want).lower():
        raise mismatch(plan_path, got, str(want), sidecar_path(plan_path).name)
    return got


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, plan_path: str | Path, *, max_batch: int | None = None, cuda_graphs: bool = False,
                 timing: bool = False, device: int = 0, input_name: str = INPUT_NAME,
                 output_name: str = OUTPUT_NAME, trt=None, runtime=None):
        """``trt`` and ``runtime`` substitute the tensorrt module and cuda-python runtime (tests)."""
        from engine import cuda

        plan_path = Path(plan_path)
        sidecar = read_sidecar(plan_path)
        trt = trt or load_tensorrt()
        rt = runtime or cuda.load_runtime()
        try:
            gpu = cuda.select_device(device, rt)
        except cuda.CudaUnavailable as exc:
            raise BackendError(f"{exc}; TensorRT needs a CUDA GPU. Use --backend onnxruntime/openvino") from None
        running = {"tensorrt_version": trt.__version__, **gpu}
        check_plan_sidecar(sidecar, running, str(sidecar_path(plan_path)))

        self._rt, self._trt = rt, trt
        self._pipeline = self._context = self._engine = self._runtime = None
        self._graphs: dict[int, cuda.CudaGraph] = {}
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        blob = plan_path.read_bytes()
        self._digest = _verified_plan(plan_path, blob, sidecar)
        self._engine = self._runtime.deserialize_cuda_engine(blob)
        if self._engine is None:
            raise BackendError(f"{plan_path}: TensorRT could not deserialise the plan (see the log above)")
        self._input, self._output = input_name, output_name
        self._check_io(plan_path)
        in_shape = tuple(self._engine.get_tensor_shape(input_name))
        out_shape = tuple(self._engine.get_tensor_shape(output_name))
        low, _opt, high = (tuple(s) for s in self._engine.get_tensor_profile_shape(input_name, 0))
        self.min_batch, profile_max = int(low[0]), int(high[0])
        if max_batch is not None and max_batch > profile_max:
            raise BackendError(f"{plan_path}: batch size {max_batch} exceeds the plan's profile maximum {profile_max}")
        max_batch = max_batch or profile_max
        size, dim = int(in_shape[1]), int(out_shape[1])
        self._context = self._engine.create_execution_context()
        try:
            self._pipeline = cuda.IOPipeline((max(max_batch, self.min_batch), size, size, 3), np.uint8,
                                             (max(max_batch, self.min_batch), dim), np.float32,
                                             timing=timing, runtime=rt)
            for name, buf in ((input_name, self._pipeline.device_in), (output_name, self._pipeline.device_out)):
                if not self._context.set_tensor_address(name, buf.ptr):
                    raise BackendError(f"{plan_path}: set_tensor_address({name!r}) failed")
        except Exception:
            self.close()
            raise
        self.cuda_graphs = cuda_graphs
        self.sidecar = sidecar
        super().__init__(precision=str(sidecar.get("precision", "unknown")), max_batch=max_batch,
                         input_size=size, embedding_dim=dim, model_path=plan_path, device=f"cuda:{device}",
                         digest=self._digest)

    def _check_io(self, plan_path: Path) -> None:
        trt, engine = self._trt, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        if sorted(names) != sorted([self._input, self._output]):
            raise BackendError(f"{plan_path}: engine tensors are {names}, expected "
                               f"[{self._input!r}, {self._output!r}]")
        if engine.get_tensor_mode(self._input) != trt.TensorIOMode.INPUT:
            raise BackendError(f"{plan_path}: {self._input!r} is not an input tensor")
        for name, want in ((self._input, np.uint8), (self._output, np.float32)):
            got = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            if got != want:
                raise BackendError(f"{plan_path}: tensor {name!r} is {got}, the contract says {np.dtype(want)}")

    @property
    def last_timings_ms(self) -> dict:
        return self._pipeline.last_timings_ms

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(self._pipeline.stream.handle):
            raise BackendError(f"{self.model_path}: execute_async_v3 failed (see the TensorRT log)")

    def _compute(self, n: int) -> None:
        from engine.cuda import CudaGraph

        rows = max(n, self.min_batch)  # padding rows hold stale data; only n rows are read back
        s = self.input_size
        if not self._context.set_input_shape(self._input, (rows, s, s, 3)):
            raise BackendError(f"{self.model_path}: set_input_shape({rows}) rejected by the profile")
        if not self.cuda_graphs:
            self._enqueue()
            return
        graph = self._graphs.get(rows)
        if graph is None:
            # One plain enqueue after a shape change first, as TensorRT requires before capture.
            self._enqueue()
            graph = self._graphs[rows] = CudaGraph(self._pipeline.stream, self._enqueue, self._rt)
        graph.launch(self._pipeline.stream)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self._pipeline.run(batch, self._compute)

    def describe(self) -> dict:
        info = {**super().describe(), "cuda_graphs": self.cuda_graphs}
        for key in ("tensorrt_version", "gpu_name", "compute_capability"):
            info[f"plan_{key}"] = self.sidecar.get(key)
        return info

    def close(self) -> None:
        """Free in reverse order of creation: graphs, context, engine, runtime, then buffers and stream."""
        if self._pipeline is not None:
            self._pipeline.stream.synchronize()
        for graph in self._graphs.values():
            graph.free()
        self._graphs = {}
        self._context = self._engine = self._runtime = None
        if self._pipeline is not None:
            self._pipeline.close()
            self._pipeline = None
        super().close()
