"""A small cuda-python helper: pinned host buffers, device buffers, streams, events, graphs.

Used by the TensorRT backend and by the PyTorch backend on CUDA, so both go
through one host<->device path: copy the batch into pinned memory, async H2D on
our stream, compute on the same stream, async D2H, synchronise.

cuda-python's calls return ``(error, *values)`` tuples instead of raising;
:func:`check` turns a non-zero code into a :class:`CudaError` naming the call.
``cuda.bindings.runtime`` is imported lazily (it imports without a GPU; its
calls then return error 35, "insufficient driver"). Every class takes an
optional ``runtime`` so tests can substitute a fake module.

Memory is freed explicitly (``free()`` / ``close()`` or a ``with`` block),
never in ``__del__``: finalisers run at interpreter shutdown, after the CUDA
context may be gone.
"""
from __future__ import annotations

import ctypes
from typing import Callable

import numpy as np

# Codes that mean "no usable GPU here" rather than a bug in the caller.
NO_DEVICE_CODES = {35: "insufficient driver", 100: "no CUDA device", 999: "unknown CUDA error"}


class CudaError(RuntimeError):
    """A CUDA runtime call failed; ``call`` and ``code`` say which and how."""

    def __init__(self, call: str, code: int, name: str, message: str):
        super().__init__(f"{call} failed: {name} ({code}): {message}")
        self.call, self.code, self.name = call, code, name


class CudaUnavailable(RuntimeError):
    """cuda-python is not installed or no GPU is usable; the message says which."""


def load_runtime():
    """``cuda.bindings.runtime``, imported on first use."""
    try:
        from cuda.bindings import runtime
    except ImportError as exc:
        raise CudaUnavailable(f"cuda-python is not installed ({exc}); pip install 'cuda-python>=12.3'") from None
    return runtime


def _describe(err, runtime) -> tuple[str, str]:
    name = getattr(err, "name", None) or f"cudaError {int(err)}"
    message = "no description"
    try:
        res = runtime.cudaGetErrorString(err)
        text = res[1] if isinstance(res, tuple) else res
        message = text.decode() if isinstance(text, bytes) else str(text)
    except Exception:  # the description is a courtesy; never mask the real error
        pass
    return name, message


def check(result, call: str, runtime=None):
    """Raise :class:`CudaError` if a cuda-python result carries an error; return its values.

    ``result`` is what a ``cuda.bindings.runtime`` call returned: ``(err,)``,
    ``(err, value)`` or ``(err, v1, v2, ...)``. Returns ``None``, the value or
    a tuple of values respectively.
    """
    err, *values = result if isinstance(result, tuple) else (result,)
    code = int(err)
    if code != 0:
        name, message = _describe(err, runtime or load_runtime())
        raise CudaError(call, code, name, message)
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def device_count(runtime=None) -> tuple[int, str]:
    """Number of usable CUDA devices and, when 0, why (never raises).

    Call this before creating a TensorRT runtime: without a working device
    TensorRT crashes later instead of failing cleanly.
    """
    try:
        rt = runtime or load_runtime()
    except CudaUnavailable as exc:
        return 0, str(exc)
    res = rt.cudaGetDeviceCount()
    err, count = res[0], res[1]
    code = int(err)
    if code != 0:
        name, message = _describe(err, rt)
        return 0, f"cudaGetDeviceCount: {name} ({code}): {message}"
    if not count:
        return 0, "cudaGetDeviceCount returned 0 devices"
    return int(count), ""


def device_info(device: int = 0, runtime=None) -> dict:
    """Name and compute capability of a device, as recorded in a plan's sidecar."""
    rt = runtime or load_runtime()
    prop = check(rt.cudaGetDeviceProperties(device), "cudaGetDeviceProperties", rt)
    name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
    return {"gpu_name": name.rstrip("\x00").strip(), "compute_capability": f"{prop.major}.{prop.minor}"}


def select_device(device: int = 0, runtime=None) -> dict:
    """Make ``device`` the current GPU and return :func:`device_info` for it.

    Raises :class:`CudaUnavailable` saying why when no GPU is usable or
    ``device`` is not one of them; callers turn that into their own error with
    their own advice. Call it before creating any TensorRT object (see
    :func:`device_count`).
    """
    rt = runtime or load_runtime()
    count, why = device_count(rt)
    if count == 0:
        raise CudaUnavailable(f"no usable CUDA GPU ({why})")
    if device >= count:
        raise CudaUnavailable(f"GPU {device} asked for, {count} present")
    check(rt.cudaSetDevice(device), "cudaSetDevice", rt)
    return device_info(device, rt)


def _nbytes(shape, dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


class PinnedBuffer:
    """Page-locked host memory (``cudaMallocHost``) with a numpy view in ``.array``.

    Pinned memory is what lets ``cudaMemcpyAsync`` overlap with compute; pageable
    memory makes the copy synchronous.
    """

    def __init__(self, shape, dtype, runtime=None):
        self._rt = runtime or load_runtime()
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.nbytes = _nbytes(self.shape, self.dtype)
        self.ptr = int(check(self._rt.cudaMallocHost(self.nbytes), "cudaMallocHost", self._rt))
        ctype = np.ctypeslib.as_ctypes_type(self.dtype)
        flat = np.ctypeslib.as_array(ctypes.cast(self.ptr, ctypes.POINTER(ctype)), (int(np.prod(self.shape)),))
        self.array = flat.reshape(self.shape)

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr, self.array = self.ptr, 0, None
            check(self._rt.cudaFreeHost(ptr), "cudaFreeHost", self._rt)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.free()


class DeviceBuffer:
    """Device memory (``cudaMalloc``); exposes ``__cuda_array_interface__`` for PyTorch."""

    def __init__(self, shape, dtype, runtime=None):
        self._rt = runtime or load_runtime()
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.nbytes = _nbytes(self.shape, self.dtype)
        self.ptr = int(check(self._rt.cudaMalloc(self.nbytes), "cudaMalloc", self._rt))

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ptr, False), "version": 3,
                "strides": None}

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            check(self._rt.cudaFree(ptr), "cudaFree", self._rt)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.free()


class Stream:
    """A CUDA stream; ``handle`` is the integer that TensorRT and PyTorch accept."""

    def __init__(self, runtime=None):
        self._rt = runtime or load_runtime()
        self._stream = check(self._rt.cudaStreamCreate(), "cudaStreamCreate", self._rt)
        self.handle = int(self._stream)

    def copy_to_device(self, dst: DeviceBuffer, src: PinnedBuffer, nbytes: int) -> None:
        self._copy(dst.ptr, src.ptr, nbytes, "HostToDevice", dst.nbytes, src.nbytes)

    def copy_to_host(self, dst: PinnedBuffer, src: DeviceBuffer, nbytes: int) -> None:
        self._copy(dst.ptr, src.ptr, nbytes, "DeviceToHost", src.nbytes, dst.nbytes)

    def _copy(self, dst: int, src: int, nbytes: int, direction: str, cap_a: int, cap_b: int) -> None:
        if nbytes > min(cap_a, cap_b):
            raise ValueError(f"copy of {nbytes} bytes exceeds buffer size {min(cap_a, cap_b)}")
        kind = getattr(self._rt.cudaMemcpyKind, f"cudaMemcpy{direction}")
        check(self._rt.cudaMemcpyAsync(dst, src, nbytes, kind, self._stream), "cudaMemcpyAsync", self._rt)

    def synchronize(self) -> None:
        check(self._rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize", self._rt)

    def close(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            check(self._rt.cudaStreamDestroy(stream), "cudaStreamDestroy", self._rt)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Event:
    """A CUDA event for timing work on a stream (milliseconds between two events)."""

    def __init__(self, runtime=None):
        self._rt = runtime or load_runtime()
        self._event = check(self._rt.cudaEventCreate(), "cudaEventCreate", self._rt)

    def record(self, stream: Stream) -> None:
        check(self._rt.cudaEventRecord(self._event, stream._stream), "cudaEventRecord", self._rt)

    def elapsed_ms(self, end: "Event") -> float:
        """Time from this event to ``end``; waits for ``end`` to complete."""
        check(self._rt.cudaEventSynchronize(end._event), "cudaEventSynchronize", self._rt)
        return float(check(self._rt.cudaEventElapsedTime(self._event, end._event), "cudaEventElapsedTime", self._rt))

    def close(self) -> None:
        if self._event is not None:
            event, self._event = self._event, None
            check(self._rt.cudaEventDestroy(event), "cudaEventDestroy", self._rt)


class CudaGraph:
    """Work captured from a stream once and replayed with one launch (fewer CPU launch costs)."""

    def __init__(self, stream: Stream, work: Callable[[], None], runtime=None):
        self._rt = runtime or load_runtime()
        rt = self._rt
        # Thread-local, as trtexec captures: other threads (image decoders) may use CUDA meanwhile.
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        check(rt.cudaStreamBeginCapture(stream._stream, mode), "cudaStreamBeginCapture", rt)
        try:
            work()
        finally:
            # End the capture even if the work failed, or the stream stays unusable.
            graph = check(rt.cudaStreamEndCapture(stream._stream), "cudaStreamEndCapture", rt)
        self._graph = graph
        self._exec = check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate", rt)

    def launch(self, stream: Stream) -> None:
        check(self._rt.cudaGraphLaunch(self._exec, stream._stream), "cudaGraphLaunch", self._rt)

    def free(self) -> None:
        if self._exec is not None:
            check(self._rt.cudaGraphExecDestroy(self._exec), "cudaGraphExecDestroy", self._rt)
            check(self._rt.cudaGraphDestroy(self._graph), "cudaGraphDestroy", self._rt)
            self._exec = self._graph = None


class IOPipeline:
    """Pinned + device buffers for one input and one output, sized once for ``max_batch``.

    ``run(batch, compute)`` copies ``batch`` into pinned memory, copies it to
    the device on the stream, calls ``compute(n)`` (which enqueues the model on
    the same stream), copies the first ``n`` output rows back and synchronises.
    With ``timing=True`` CUDA events split the time into H2D, compute and D2H
    (``last_timings_ms``). Used by one thread at a time.
    """

    def __init__(self, input_shape, input_dtype, output_shape, output_dtype, timing: bool = False, runtime=None):
        self._rt = runtime or load_runtime()
        self.max_batch = int(input_shape[0])
        self._owned: list = []
        try:
            self.stream = self._own(Stream(self._rt))
            self.host_in = self._own(PinnedBuffer(input_shape, input_dtype, self._rt))
            self.device_in = self._own(DeviceBuffer(input_shape, input_dtype, self._rt))
            self.device_out = self._own(DeviceBuffer(output_shape, output_dtype, self._rt))
            self.host_out = self._own(PinnedBuffer(output_shape, output_dtype, self._rt))
            self._events = [self._own(Event(self._rt)) for _ in range(4)] if timing else []
        except Exception:
            self.close()
            raise
        self.last_timings_ms: dict[str, float] = {}

    def _own(self, obj):
        self._owned.append(obj)
        return obj

    def _mark(self, i: int) -> None:
        if self._events:
            self._events[i].record(self.stream)

    def run(self, batch: np.ndarray, compute: Callable[[int], None]) -> np.ndarray:
        n = len(batch)
        if not 0 < n <= self.max_batch:
            raise ValueError(f"batch of {n} does not fit buffers sized for {self.max_batch}")
        self.host_in.array[:n] = batch
        in_bytes = self.host_in.nbytes // self.max_batch * n
        out_bytes = self.host_out.nbytes // self.max_batch * n
        self._mark(0)
        self.stream.copy_to_device(self.device_in, self.host_in, in_bytes)
        self._mark(1)
        compute(n)
        self._mark(2)
        self.stream.copy_to_host(self.host_out, self.device_out, out_bytes)
        self._mark(3)
        self.stream.synchronize()
        if self._events:
            e = self._events
            self.last_timings_ms = {"h2d": e[0].elapsed_ms(e[1]), "compute": e[1].elapsed_ms(e[2]),
                                    "d2h": e[2].elapsed_ms(e[3])}
        return self.host_out.array[:n].copy()

    def close(self) -> None:
        """Free everything allocated, in reverse order; idempotent."""
        errors = []
        while self._owned:
            obj = self._owned.pop()
            try:
                obj.free() if hasattr(obj, "free") else obj.close()
            except CudaError as exc:  # keep freeing the rest, report the first failure
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
