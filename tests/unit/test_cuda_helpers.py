"""The CUDA helper and the TensorRT backend's logic, without a GPU.

A fake cuda-python runtime backs "device" memory with host memory (copies are
real memmoves, errors are real codes) and a fake TensorRT engine runs the tiny
ONNX model with ONNX Runtime on whatever its input address holds. So buffer
sizing, copies, shape setting, batch splitting, graph capture/replay, freeing
and every refusal path run for real here; only the GPU itself is simulated.
The same code runs on a real GPU in tests/gpu.
"""
from __future__ import annotations

import ctypes
import enum
import json
import types

import numpy as np
import pytest

from engine import cuda
from engine.backends import BackendError, open_backend
from engine.backends.tensorrt_backend import PlanMismatch, TensorRTBackend, check_plan_sidecar, sidecar_path
from tiny_model import TINY, tiny_model_folder

S, D = TINY["input_size"], TINY["embedding_dim"]


class Err(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorStreamCaptureInvalidated = 901


OK = Err.cudaSuccess


class FakeHandle:
    def __init__(self, n):
        self.n = n

    def __int__(self):
        return self.n


class FakeRuntime:
    """The subset of ``cuda.bindings.runtime`` that engine.cuda uses, on host memory."""

    cudaMemcpyKind = enum.IntEnum("cudaMemcpyKind", {"cudaMemcpyHostToDevice": 1, "cudaMemcpyDeviceToHost": 2})
    cudaStreamCaptureMode = enum.IntEnum("cudaStreamCaptureMode", {"cudaStreamCaptureModeThreadLocal": 1})

    def __init__(self, devices=1, fail=None, gpu=b"NVIDIA H100 80GB HBM3", cc=(9, 0)):
        self.devices, self.fail, self.gpu, self.cc = devices, dict(fail or {}), gpu, cc
        self.host, self.device = {}, {}
        self.calls: list[str] = []
        self.capturing = None
        self.graphs_instantiated = self.graph_launches = 0
        self._next = 100

    def _result(self, name, *values):
        self.calls.append(name)
        if name in self.fail:
            err = self.fail[name]
            if isinstance(err, list):  # fail only the n-th call: [None, Err.x] fails the second
                err = err.pop(0) if err else None
                if err is None:
                    return (OK, *values)
            return (err,) + (None,) * len(values)
        return (OK, *values)

    def cudaGetErrorString(self, err):
        return OK, f"fake description of {Err(int(err)).name}".encode()

    def cudaGetDeviceCount(self):
        if self.devices == 0:
            return Err.cudaErrorInsufficientDriver, None
        return self._result("cudaGetDeviceCount", self.devices)

    def cudaSetDevice(self, d):
        return self._result("cudaSetDevice")

    def cudaGetDeviceProperties(self, d):
        return self._result("cudaGetDeviceProperties",
                            types.SimpleNamespace(name=self.gpu, major=self.cc[0], minor=self.cc[1]))

    def _alloc(self, table, name, n):
        res = self._result(name, 0)
        if res[0] != OK:
            return res
        buf = ctypes.create_string_buffer(n)
        table[ctypes.addressof(buf)] = buf
        return OK, ctypes.addressof(buf)

    def _free(self, table, name, ptr):
        if ptr not in table:
            return (Err.cudaErrorInvalidValue,)
        del table[ptr]
        return self._result(name)

    def cudaMallocHost(self, n):
        return self._alloc(self.host, "cudaMallocHost", n)

    def cudaMalloc(self, n):
        return self._alloc(self.device, "cudaMalloc", n)

    def cudaFreeHost(self, ptr):
        return self._free(self.host, "cudaFreeHost", ptr)

    def cudaFree(self, ptr):
        return self._free(self.device, "cudaFree", ptr)

    def cudaStreamCreate(self):
        self._next += 1
        return self._result("cudaStreamCreate", FakeHandle(self._next))

    def cudaStreamDestroy(self, s):
        return self._result("cudaStreamDestroy")

    def cudaStreamSynchronize(self, s):
        return self._result("cudaStreamSynchronize")

    def enqueue(self, op):
        """Run now, or record while a stream capture is open."""
        if self.capturing is not None:
            self.capturing.append(op)
        else:
            op()

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        self.enqueue(lambda: ctypes.memmove(dst, src, n))
        return self._result("cudaMemcpyAsync")

    def cudaEventCreate(self):
        self._next += 1
        return self._result("cudaEventCreate", FakeHandle(self._next))

    def cudaEventRecord(self, e, s):
        return self._result("cudaEventRecord")

    def cudaEventSynchronize(self, e):
        return self._result("cudaEventSynchronize")

    def cudaEventElapsedTime(self, a, b):
        return self._result("cudaEventElapsedTime", 0.25)

    def cudaEventDestroy(self, e):
        return self._result("cudaEventDestroy")

    def cudaStreamBeginCapture(self, s, mode):
        self.capturing = []
        return self._result("cudaStreamBeginCapture")

    def cudaStreamEndCapture(self, s):
        ops, self.capturing = self.capturing, None
        return self._result("cudaStreamEndCapture", ops)

    def cudaGraphInstantiate(self, graph, flags):
        self.graphs_instantiated += 1
        return self._result("cudaGraphInstantiate", list(graph))

    def cudaGraphLaunch(self, graph_exec, s):
        self.graph_launches += 1
        for op in graph_exec:
            op()
        return self._result("cudaGraphLaunch")

    def cudaGraphExecDestroy(self, g):
        return self._result("cudaGraphExecDestroy")

    def cudaGraphDestroy(self, g):
        return self._result("cudaGraphDestroy")


def _view(ptr, shape, dtype):
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer((ctypes.c_char * n).from_address(ptr), dtype=dtype).reshape(shape)


class FakeTensorRT:
    """A ``tensorrt`` module whose engine runs a function (the ORT tiny model) on 'device' memory."""

    __version__ = "10.7.0.23"
    TensorIOMode = enum.Enum("TensorIOMode", "INPUT OUTPUT")
    DataType = enum.Enum("DataType", "UINT8 FLOAT")

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    def __init__(self, runtime: FakeRuntime, infer, profile=(1, 4, 8), plan_bytes=b"FAKEPLAN", size=S, dim=D,
                 output="embeddings"):
        self.rt, self.infer, self.profile, self.plan_bytes = runtime, infer, profile, plan_bytes
        self.size, self.dim, self.output = size, dim, output
        self.deserialised = 0
        self.contexts = []
        fake = self

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                fake.deserialised += 1
                return FakeEngine(fake) if data == fake.plan_bytes else None

        self.Runtime = Runtime

    @staticmethod
    def nptype(dtype):
        return {"UINT8": np.uint8, "FLOAT": np.float32}[dtype.name]


class FakeEngine:
    def __init__(self, trt: FakeTensorRT):
        self.trt = trt
        self.num_io_tensors = 2

    def get_tensor_name(self, i):
        return ["images", self.trt.output][i]

    def get_tensor_mode(self, name):
        return self.trt.TensorIOMode.INPUT if name == "images" else self.trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return self.trt.DataType.UINT8 if name == "images" else self.trt.DataType.FLOAT

    def get_tensor_shape(self, name):
        return (-1, self.trt.size, self.trt.size, 3) if name == "images" else (-1, self.trt.dim)

    def get_tensor_profile_shape(self, name, profile):
        return [(b, self.trt.size, self.trt.size, 3) for b in self.trt.profile]

    def create_execution_context(self):
        ctx = FakeContext(self.trt)
        self.trt.contexts.append(ctx)
        return ctx


class FakeContext:
    def __init__(self, trt: FakeTensorRT):
        self.trt, self.shape, self.addresses, self.runs = trt, None, {}, []

    def set_input_shape(self, name, shape):
        low, _, high = self.trt.profile
        if not low <= shape[0] <= high:
            return False
        self.shape = tuple(shape)
        return True

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream_handle):
        t = self.trt
        n, src, dst = self.shape[0], self.addresses["images"], self.addresses[t.output]

        def op():
            self.runs.append(n)
            _view(dst, (n, t.dim), np.float32)[:] = t.infer(_view(src, (n, t.size, t.size, 3), np.uint8).copy())

        self.trt.rt.enqueue(op)
        return True


# ----------------------------------------------------------------------------- error mapping


def test_check_returns_values_and_names_the_failing_call():
    rt = FakeRuntime()
    assert cuda.check((OK,), "cudaFree", rt) is None
    assert cuda.check((OK, 42), "cudaMalloc", rt) == 42
    assert cuda.check((OK, 1, 2), "x", rt) == (1, 2)
    with pytest.raises(cuda.CudaError) as err:
        cuda.check((Err.cudaErrorMemoryAllocation, None), "cudaMallocHost", rt)
    e = err.value
    assert (e.call, e.code, e.name) == ("cudaMallocHost", 2, "cudaErrorMemoryAllocation")
    assert str(e) == ("cudaMallocHost failed: cudaErrorMemoryAllocation (2): "
                      "fake description of cudaErrorMemoryAllocation")


def test_real_runtime_without_gpu_reports_no_device():
    rt = pytest.importorskip("cuda.bindings.runtime")
    count, why = cuda.device_count(rt)
    if count:
        pytest.skip("this machine has a GPU; tests/gpu covers it")
    assert "cudaGetDeviceCount" in why
    with pytest.raises(cuda.CudaError, match=r"^cudaMalloc failed: cudaError\w+ \(\d+\): "):
        cuda.DeviceBuffer((4,), np.uint8, rt)


def test_device_count_never_raises():
    assert cuda.device_count(FakeRuntime(devices=0)) == (
        0, "cudaGetDeviceCount: cudaErrorInsufficientDriver (35): fake description of cudaErrorInsufficientDriver")
    assert cuda.device_count(FakeRuntime(devices=2)) == (2, "")
    assert cuda.device_info(0, FakeRuntime()) == {"gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def test_select_device_sets_the_device_or_says_why_not():
    rt = FakeRuntime(devices=2, gpu=b"NVIDIA L4", cc=(8, 9))
    assert cuda.select_device(1, rt) == {"gpu_name": "NVIDIA L4", "compute_capability": "8.9"}
    assert "cudaSetDevice" in rt.calls
    with pytest.raises(cuda.CudaUnavailable, match=r"^GPU 2 asked for, 2 present$"):
        cuda.select_device(2, rt)
    with pytest.raises(cuda.CudaUnavailable, match=r"^no usable CUDA GPU \(cudaGetDeviceCount: .*InsufficientDriver"):
        cuda.select_device(0, FakeRuntime(devices=0))
    with pytest.raises(cuda.CudaError, match="cudaSetDevice failed"):
        cuda.select_device(0, FakeRuntime(fail={"cudaSetDevice": Err.cudaErrorInvalidValue}))


# ----------------------------------------------------------------------------- buffers, streams, pipeline


def test_pinned_and_device_buffers_round_trip_and_free_once():
    rt = FakeRuntime()
    host = cuda.PinnedBuffer((2, 3), np.float32, rt)
    dev = cuda.DeviceBuffer((2, 3), np.float32, rt)
    back = cuda.PinnedBuffer((2, 3), np.float32, rt)
    assert host.nbytes == dev.nbytes == 24 and host.array.shape == (2, 3)
    host.array[:] = np.arange(6).reshape(2, 3)
    with cuda.Stream(rt) as stream:
        stream.copy_to_device(dev, host, host.nbytes)
        stream.copy_to_host(back, dev, 12)  # only the first row
        stream.synchronize()
    np.testing.assert_array_equal(back.array[0], [0, 1, 2])
    assert not back.array[1].any()
    assert dev.__cuda_array_interface__ == {"shape": (2, 3), "typestr": "<f4", "data": (dev.ptr, False),
                                            "version": 3, "strides": None}
    with pytest.raises(ValueError, match="exceeds buffer size"):
        cuda.Stream(rt).copy_to_device(dev, host, 25)
    for buf in (host, dev, back):
        buf.free()
        buf.free()  # idempotent
    assert rt.host == {} and rt.device == {}


def test_freeing_a_bad_pointer_raises_naming_the_call():
    rt = FakeRuntime()
    buf = cuda.PinnedBuffer((4,), np.uint8, rt)
    rt.host.clear()  # pretend something else freed it
    with pytest.raises(cuda.CudaError, match="cudaFreeHost failed: cudaErrorInvalidValue"):
        buf.free()


def test_pipeline_copies_computes_and_times_on_one_stream():
    rt = FakeRuntime()
    pipe = cuda.IOPipeline((4, 2), np.uint8, (4, 2), np.float32, timing=True, runtime=rt)

    def compute(n):  # the 'kernel': out = 2 * in, only on the rows that were sent
        def op():
            _view(pipe.device_out.ptr, (n, 2), np.float32)[:] = 2.0 * _view(pipe.device_in.ptr, (n, 2), np.uint8)
        rt.enqueue(op)

    out = pipe.run(np.array([[1, 2], [3, 4], [5, 6]], np.uint8), compute)
    np.testing.assert_array_equal(out, [[2, 4], [6, 8], [10, 12]])
    assert pipe.last_timings_ms == {"h2d": 0.25, "compute": 0.25, "d2h": 0.25}
    out[:] = -1  # the result is a copy, not the pinned buffer
    assert (pipe.host_out.array[:3] >= 0).all()
    with pytest.raises(ValueError, match="does not fit"):
        pipe.run(np.zeros((5, 2), np.uint8), compute)
    calls = [c for c in rt.calls if c in ("cudaMemcpyAsync", "cudaStreamSynchronize")]
    assert calls == ["cudaMemcpyAsync", "cudaMemcpyAsync", "cudaStreamSynchronize"]
    pipe.close()
    pipe.close()
    assert rt.host == {} and rt.device == {}


def test_pipeline_frees_what_it_allocated_when_an_allocation_fails():
    rt = FakeRuntime(fail={"cudaMalloc": [None, Err.cudaErrorMemoryAllocation]})  # second cudaMalloc fails
    with pytest.raises(cuda.CudaError, match="cudaMalloc failed: cudaErrorMemoryAllocation"):
        cuda.IOPipeline((4, 2), np.uint8, (4, 2), np.float32, runtime=rt)
    assert rt.host == {} and rt.device == {}
    assert "cudaStreamDestroy" in rt.calls


def test_graph_capture_records_then_replays():
    rt = FakeRuntime()
    stream = cuda.Stream(rt)
    hits = []
    graph = cuda.CudaGraph(stream, lambda: rt.enqueue(lambda: hits.append(1)), rt)
    assert hits == []  # captured, not run
    graph.launch(stream)
    graph.launch(stream)
    assert hits == [1, 1]
    graph.free()

    def failing():
        raise RuntimeError("enqueue failed")

    with pytest.raises(RuntimeError, match="enqueue failed"):
        cuda.CudaGraph(stream, failing, rt)
    assert rt.capturing is None and rt.calls[-1] == "cudaStreamEndCapture"  # capture closed anyway


# ----------------------------------------------------------------------------- plan sidecar


RUNNING = {"tensorrt_version": "10.7.0.23", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def sidecar(**over):
    base = {"tensorrt_version": "10.7.0", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
            "precision": "fp16", "profile": {"min": 1, "opt": 4, "max": 8}}
    base.update(over)
    return base


def test_matching_sidecar_passes():
    check_plan_sidecar(sidecar(), RUNNING)
    check_plan_sidecar(sidecar(compute_capability=[9, 0], gpu_name="nvidia  h100 80gb hbm3"), RUNNING)


@pytest.mark.parametrize("over, message", [
    ({"tensorrt_version": "10.3.0"}, "built with TensorRT 10.3.0, running TensorRT 10.7.0.23"),
    ({"tensorrt_version": "11.0.0"}, "built with TensorRT 11.0.0"),
    ({"gpu_name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"},
     "built for compute capability 8.0 (NVIDIA A100-SXM4-80GB), this GPU (NVIDIA H100 80GB HBM3) has 9.0"),
    ({"gpu_name": "NVIDIA H100 PCIe"}, "built on GPU 'NVIDIA H100 PCIe', running on 'NVIDIA H100 80GB HBM3'"),
    ({"tensorrt_version": None}, "does not record tensorrt_version"),
    ({"gpu_name": None}, "does not record gpu_name"),
])
def test_mismatched_sidecar_is_refused_with_the_reason(over, message):
    with pytest.raises(PlanMismatch) as err:
        check_plan_sidecar(sidecar(**over), RUNNING, "m/model.fp16.plan.json")
    text = str(err.value)
    assert text.startswith("m/model.fp16.plan.json: refusing this TensorRT plan: ")
    assert message in text and "python -m convert" in text


def test_version_and_hardware_compatible_plans():
    vc = sidecar(tensorrt_version="10.3.0", build_flags={"version_compatible": True})
    check_plan_sidecar(vc, RUNNING)  # same major, newer runtime
    with pytest.raises(PlanMismatch, match="needs the same major version"):
        check_plan_sidecar(sidecar(tensorrt_version="10.9.0", version_compatible=True), RUNNING)
    hc = sidecar(gpu_name="NVIDIA A100", compute_capability="8.0", hardware_compatibility_level="ampere_plus")
    check_plan_sidecar(hc, RUNNING)
    with pytest.raises(PlanMismatch, match="needs compute capability >= 8.0"):
        check_plan_sidecar(hc, {**RUNNING, "gpu_name": "Tesla T4", "compute_capability": "7.5"})
    same_cc = sidecar(gpu_name="NVIDIA H100 PCIe", hardware_compatibility_level="same_compute_capability")
    check_plan_sidecar(same_cc, RUNNING)


# ----------------------------------------------------------------------------- TensorRT backend on fakes


@pytest.fixture(scope="module")
def ort_infer():
    from engine.backends.onnxruntime_backend import OnnxRuntimeBackend

    be = OnnxRuntimeBackend(tiny_model_folder() / "model.fp32.onnx", input_size=S, embedding_dim=D, max_batch=64)
    return be.embed


@pytest.fixture
def plan(tmp_path):
    path = tmp_path / "model.fp16.plan"
    path.write_bytes(b"FAKEPLAN")
    sidecar_path(path).write_text(json.dumps(sidecar()))
    return path


def make(plan, ort_infer, profile=(1, 4, 8), **kw):
    rt = FakeRuntime(**kw)
    trt = FakeTensorRT(rt, ort_infer, profile)
    return rt, trt


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).integers(0, 256, (11, S, S, 3), dtype=np.uint8)


@pytest.mark.parametrize("graphs", [False, True])
def test_tensorrt_backend_matches_onnxruntime_and_splits_batches(plan, ort_infer, images, graphs):
    rt, trt = make(plan, ort_infer)
    be = TensorRTBackend(plan, trt=trt, runtime=rt, cuda_graphs=graphs)
    assert (be.max_batch, be.input_size, be.embedding_dim, be.precision) == (8, S, D, "fp16")
    # buffers sized once from the profile maximum
    assert sorted(b.nbytes for b in (be._pipeline.device_in, be._pipeline.device_out)) == sorted([8 * S * S * 3, 8 * D * 4])
    expected = ort_infer(images)
    for n in (1, 8, 9, 11):  # 9 = max + 1 -> 8 + 1
        np.testing.assert_array_equal(be.embed(images[:n]), expected[:n])
    ctx = trt_ctx(trt)
    assert ctx.addresses == {"images": be._pipeline.device_in.ptr, "embeddings": be._pipeline.device_out.ptr}
    if graphs:
        assert rt.graphs_instantiated == 3  # one graph per batch size seen: 1, 8, 3
        assert rt.graph_launches == 6  # batches: [1] [8] [8, 1] [8, 3]
    else:
        assert rt.graphs_instantiated == 0 and ctx.runs == [1, 8, 8, 1, 8, 3]
    be.close()
    assert rt.host == {} and rt.device == {}  # explicit free of every buffer
    with pytest.raises(BackendError, match="closed"):
        be.embed(images[:1])


def trt_ctx(trt):
    (ctx,) = trt.contexts  # the backend creates exactly one execution context
    return ctx


def test_tensorrt_backend_pads_batches_below_the_profile_minimum(plan, ort_infer, images):
    rt, trt = make(plan, ort_infer, profile=(2, 4, 4))
    with TensorRTBackend(plan, trt=trt, runtime=rt) as be:
        out = be.embed(images[:1])
        assert trt_ctx(trt).runs == [2]
    np.testing.assert_array_equal(out, ort_infer(images[:1]))


def test_tensorrt_backend_refuses_a_plan_for_another_gpu_before_deserialising(plan, ort_infer):
    rt, trt = make(plan, ort_infer, gpu=b"NVIDIA GeForce RTX 4090", cc=(8, 9))
    with pytest.raises(PlanMismatch, match="RTX 4090"):
        TensorRTBackend(plan, trt=trt, runtime=rt)
    assert trt.deserialised == 0 and rt.host == {} and rt.device == {}


def test_tensorrt_backend_without_gpu_never_creates_a_runtime(plan, ort_infer):
    rt, trt = make(plan, ort_infer, devices=0)
    with pytest.raises(BackendError, match="no usable CUDA GPU .*cudaErrorInsufficientDriver"):
        TensorRTBackend(plan, trt=trt, runtime=rt)
    assert trt.deserialised == 0
    rt, trt = make(plan, ort_infer, devices=1)
    with pytest.raises(BackendError, match="GPU 1 asked for, 1 present"):
        TensorRTBackend(plan, trt=trt, runtime=rt, device=1)
    assert trt.deserialised == 0 and "cudaSetDevice" not in rt.calls


def test_tensorrt_backend_other_failures(plan, ort_infer, tmp_path):
    rt, trt = make(plan, ort_infer)
    with pytest.raises(BackendError, match="exceeds the plan's profile maximum 8"):
        TensorRTBackend(plan, trt=trt, runtime=rt, max_batch=9)
    assert rt.host == {} and rt.device == {}
    plan.write_bytes(b"corrupt")
    with pytest.raises(BackendError, match="could not deserialise"):
        TensorRTBackend(plan, trt=trt, runtime=rt)
    lone = tmp_path / "lone.plan"
    lone.write_bytes(b"FAKEPLAN")
    with pytest.raises(BackendError, match="no sidecar lone.plan.json"):
        TensorRTBackend(lone, trt=trt, runtime=rt)


def test_tensorrt_not_installed_is_a_clear_error(plan):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    with pytest.raises(BackendError, match="TensorRT is not installed"):
        open_backend(plan, backend="tensorrt")


@pytest.mark.data
def test_face_detector_runs_on_the_tensorrt_backend_as_on_onnx_runtime(face_data, tmp_path):
    """The shipped detector behind TensorRTBackend (its plan's I/O: uint8 images -> flat detections)
    finds the same faces as on ONNX Runtime; the real engine runs in tests/gpu."""
    from engine.backends.onnxruntime_backend import OnnxRuntimeBackend
    from engine.detect import FaceDetector, _io_shape, detector_path, open_detector
    from engine.preprocess import load_image

    onnx_path = detector_path("blazeface_full_range")
    size, dim = _io_shape(onnx_path)
    ort = OnnxRuntimeBackend(onnx_path, input_size=size, embedding_dim=dim, max_batch=8, input_name="images",
                             output_name="detections")
    plan = tmp_path / "blazeface_full_range.plan"
    plan.write_bytes(b"FAKEPLAN")
    sidecar_path(plan).write_text(json.dumps(sidecar(precision="fp32")))
    rt = FakeRuntime()
    trt = FakeTensorRT(rt, ort.embed, size=size, dim=dim, output="detections")
    on_trt = FaceDetector(TensorRTBackend(plan, trt=trt, runtime=rt, input_name="images", output_name="detections"))
    on_ort = open_detector()
    photos = [load_image(p, 250) for p in sorted((face_data / "lfw-deepfunneled").rglob("*.jpg"))[:5]]
    for a, b in zip(on_trt.detect_batch(photos), on_ort.detect_batch(photos)):
        assert len(a) == len(b) >= 1
        np.testing.assert_allclose(a[0].keypoints, b[0].keypoints, atol=1e-3)
    on_trt.close()
    on_ort.close()
    ort.close()
