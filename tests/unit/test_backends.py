"""Backends agree with each other, split batches exactly, resolve models and choose automatically."""
from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from engine.backends import (BackendError, Choice, ModelNotFound, ModelSource, auto_backend, choose,
                             default_precision, open_backend, resolve_model)
from engine.backends.onnxruntime_backend import OnnxRuntimeBackend, pick_providers
from engine.contract import ContractError, ModelConfig
from tiny_model import TINY, copy_model, tiny_model_folder

S, D = TINY["input_size"], TINY["embedding_dim"]
FP32_BACKENDS = ["onnxruntime", "openvino", "torch"]


@pytest.fixture(scope="module")
def model_dir():
    return tiny_model_folder()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(7).integers(0, 256, (9, S, S, 3), dtype=np.uint8)


def cos_rows(a, b):
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def torch_reference(model_dir, images):
    with open_backend(model_dir, backend="torch") as be:
        return be.embed(images)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_fp32_backends_agree_with_pytorch(model_dir, images, torch_reference, backend):
    with open_backend(model_dir, backend=backend, precision="fp32") as be:
        out = be.embed(images)
    assert out.dtype == np.float32 and out.shape == (len(images), D)
    assert cos_rows(out, torch_reference).min() > 0.9999
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # The embeddings are not all the same vector (a broken model would still "agree").
    assert cos_rows(out[:-1], out[1:]).min() < 0.9999


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_int8_qdq_file_runs_close_to_fp32(model_dir, images, torch_reference, backend):
    with open_backend(model_dir, backend=backend, precision="int8") as be:
        assert be.precision == "int8" and be.model_path.name == "model.int8.onnx"
        out = be.embed(images)
    assert cos_rows(out, torch_reference).min() > 0.99


@pytest.mark.parametrize("backend", FP32_BACKENDS)
def test_batch_sizes_give_the_same_embeddings_as_one_at_a_time(model_dir, images, backend):
    max_batch = 4
    with open_backend(model_dir, backend=backend, precision="fp32", max_batch=max_batch) as be:
        assert be.max_batch == max_batch
        single = np.concatenate([be.embed(images[i:i + 1]) for i in range(len(images))])
        for n in (1, max_batch, max_batch + 1, len(images)):  # max+1 and 9 are split by the backend
            batched = be.embed(images[:n])
            # float32 rounding level: kernels may block work differently per batch size
            np.testing.assert_allclose(batched, single[:n], rtol=0, atol=1e-6)


def _openvino_cpu_has_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def test_openvino_asks_for_f32_explicitly(model_dir):
    with open_backend(model_dir, backend="openvino", precision="fp32") as be:
        assert be.inference_precision == "f32"
        assert be.describe()["inference_precision"] == "f32" and be.executed_precision == "fp32"


def test_openvino_bf16_on_request_where_the_cpu_has_it(model_dir):
    pytest.importorskip("openvino")
    with open_backend(model_dir, backend="openvino", precision="bf16") as be:
        assert be.model_path.name == "model.fp32.onnx"  # bf16 = the FP32 file under the bf16 hint
        if not _openvino_cpu_has_bf16():
            # AVX2-only CPUs: OpenVINO runs f32, and the backend must say so, not "bf16".
            assert be.inference_precision == "f32" and be.executed_precision == "fp32"
            pytest.skip("this CPU has no bf16 (OpenVINO OPTIMIZATION_CAPABILITIES lacks BF16); checked it reports f32")
        assert be.inference_precision == "bf16" and be.executed_precision == "bf16"


def test_openvino_caches_compiled_models_and_recompiles_a_changed_file(tmp_path, images):
    pytest.importorskip("openvino")
    from engine.backends.openvino_backend import OpenVinoBackend

    folder = copy_model(tmp_path / "m")
    onnx_path, cache = folder / "model.fp32.onnx", tmp_path / "cache"
    opts = dict(input_size=TINY["input_size"], embedding_dim=TINY["embedding_dim"], cache_dir=cache)

    def blobs():
        return sorted(p.name for p in cache.rglob("*.blob"))

    with OpenVinoBackend(onnx_path, **opts) as be:
        first = be.embed(images[:2])
        assert be.describe()["cache_dir"] == str(cache)
    assert len(blobs()) == 1
    with OpenVinoBackend(onnx_path, **opts) as be:  # the same file: the blob is reused, nothing new
        np.testing.assert_allclose(be.embed(images[:2]), first, atol=1e-6)
    assert len(blobs()) == 1
    model = onnx.load(str(onnx_path))
    for init in model.graph.initializer:  # change the weights: another model, another blob
        if init.data_type == TensorProto.FLOAT and len(init.dims) == 4:
            arr = onnx.numpy_helper.to_array(init) * 1.5
            init.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), init.name))
            break
    onnx.save(model, str(onnx_path))
    with OpenVinoBackend(onnx_path, **opts) as be:
        changed = be.embed(images[:2])
    assert len(blobs()) == 2
    with OnnxRuntimeBackend(onnx_path, input_size=TINY["input_size"], embedding_dim=TINY["embedding_dim"]) as ref:
        np.testing.assert_allclose(changed, ref.embed(images[:2]), atol=1e-4)


def test_onnxruntime_caches_the_optimised_graph_and_rebuilds_a_changed_or_damaged_one(monkeypatch, tmp_path, images):
    monkeypatch.setenv("FAKEAWARE_CACHE_DIR", str(tmp_path / "cache"))
    folder = copy_model(tmp_path / "m")
    onnx_path = folder / "model.fp32.onnx"
    opts = dict(input_size=TINY["input_size"], embedding_dim=TINY["embedding_dim"], device="cpu")

    def graphs():
        return sorted((tmp_path / "cache" / "onnxruntime").glob("*"))

    with OnnxRuntimeBackend(onnx_path, **opts) as be:
        first = be.embed(images[:3])
    assert [p.suffix for p in graphs()] == [".onnx"]  # one whole file, no temporary left behind
    with OnnxRuntimeBackend(onnx_path, **opts) as be:  # opened from the cached graph: the same numbers
        np.testing.assert_allclose(be.embed(images[:3]), first, atol=1e-6)
    graphs()[0].write_bytes(b"torn")  # a damaged entry is replaced, not an error
    with OnnxRuntimeBackend(onnx_path, **opts) as be:
        np.testing.assert_allclose(be.embed(images[:3]), first, atol=1e-6)
    assert len(graphs()) == 1 and graphs()[0].stat().st_size > 100
    model = onnx.load(str(onnx_path))
    for init in model.graph.initializer:  # another model under the same name: another entry, its own numbers
        if init.data_type == TensorProto.FLOAT and len(init.dims) == 4:
            init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init) * 1.5, init.name))
            break
    onnx.save(model, str(onnx_path))
    with OnnxRuntimeBackend(onnx_path, **opts) as be:
        changed = be.embed(images[:3])
    assert len(graphs()) == 2 and not np.allclose(changed, first, atol=1e-3)
    monkeypatch.setenv("FAKEAWARE_CACHE_DIR", "off")
    with OnnxRuntimeBackend(onnx_path, **opts) as be:  # no cache: the file itself, the same numbers
        np.testing.assert_allclose(be.embed(images[:3]), changed, atol=1e-6)


def test_openvino_cache_can_be_turned_off(monkeypatch, tmp_path):
    from engine.backends.openvino_backend import default_cache_dir

    monkeypatch.setenv("FAKEAWARE_CACHE_DIR", "off")
    assert default_cache_dir() is None
    monkeypatch.setenv("FAKEAWARE_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c" / "openvino" and (tmp_path / "c" / "openvino").is_dir()


def test_openvino_is_imported_without_its_converter_which_still_works_on_demand(tmp_path):
    """The runtime skips openvino.tools.ovc at import (0.09 s); convert_model still imports it when called."""
    pytest.importorskip("openvino")
    import subprocess
    import sys

    onnx.save(helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])]),
        opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "relu.onnx")
    code = ("import sys\n"
            "from engine.backends.openvino_backend import import_openvino\n"
            "ov = import_openvino()\n"
            "print('ovc' in ' '.join(m for m in sys.modules if m.startswith('openvino.tools')))\n"
            "print(type(ov.convert_model(sys.argv[1])).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "relu.onnx")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "Model"]


def test_openvino_reports_kernels_after_a_run(model_dir, images):
    with open_backend(model_dir, backend="openvino", precision="fp32") as be:
        be.embed(images[:2])
        kernels = be.kernels()
    assert kernels and all(isinstance(k, str) and n > 0 for k, n in kernels.items())
    assert any("conv" in k.lower() or "jit" in k.lower() or "brg" in k.lower() for k in kernels)


def test_embed_validates_input_and_handles_empty_batch(model_dir):
    with open_backend(model_dir, backend="onnxruntime") as be:
        assert be.embed(np.zeros((0, S, S, 3), np.uint8)).shape == (0, D)
        with pytest.raises(ValueError, match="expected uint8"):
            be.embed(np.zeros((1, S, S, 3), np.float32))
        with pytest.raises(ValueError, match="expected uint8"):
            be.embed(np.zeros((1, S + 16, S + 16, 3), np.uint8))
        # Non-contiguous input (a strided view) is accepted and gives the same result.
        x = np.random.default_rng(1).integers(0, 256, (4, S, S, 3), dtype=np.uint8)
        np.testing.assert_array_equal(be.embed(x[::2]), be.embed(np.ascontiguousarray(x[::2])))
    with pytest.raises(BackendError, match="closed"):
        be.embed(x)


def test_open_backend_carries_config_threshold_and_choice(model_dir):
    with open_backend(model_dir, backend="onnxruntime") as be:
        assert be.config.threshold == 0.5
        assert be.choice == Choice("onnxruntime", "fp32", "asked for")
        assert be.source.path == model_dir


# ----------------------------------------------------------------------------- model resolution


def test_resolve_folder_lists_every_artifact(model_dir):
    src = resolve_model(model_dir)
    assert set(src.onnx) == {"fp32", "int8"} and src.plans == {}
    assert src.weights_dir == model_dir
    assert src.config.input_size == S and src.config.threshold == 0.5


def test_single_onnx_file_with_and_without_model_json(model_dir, tmp_path):
    src = resolve_model(model_dir / "model.fp32.onnx")
    assert src.onnx == {"fp32": model_dir / "model.fp32.onnx"} and src.config.threshold == 0.5
    # A bare file elsewhere: the contract comes from the graph, precision from its Q/DQ nodes.
    bare = shutil.copy(model_dir / "model.int8.onnx", tmp_path / "face.onnx")
    src = resolve_model(bare)
    assert list(src.onnx) == ["int8"]
    assert (src.config.input_size, src.config.embedding_dim, src.config.threshold) == (S, D, None)
    with open_backend(bare) as be:
        assert be.precision == "int8" and be.config.threshold is None


def test_missing_and_unusable_models_are_clear_errors(tmp_path):
    with pytest.raises(ModelNotFound, match="no such file or folder"):
        resolve_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFound, match="no model.json"):
        resolve_model(tmp_path / "empty")
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    with pytest.raises(ContractError, match="not a readable ONNX model"):
        resolve_model(garbage)
    text = tmp_path / "weights.bin"
    text.write_text("hello")
    with pytest.raises(ContractError, match="not an ONNX file"):
        resolve_model(text)
    plan = tmp_path / "model.fp16.plan"
    plan.write_bytes(b"\x00" * 16)
    with pytest.raises(BackendError, match="no sidecar model.fp16.plan.json"):
        resolve_model(plan)


def test_folder_with_only_config_is_refused(tmp_path):
    ModelConfig(**TINY).save(tmp_path / "model.json")
    with pytest.raises(ModelNotFound, match="no model.<precision>.onnx"):
        resolve_model(tmp_path)


def test_onnx_breaking_the_contract_is_refused(tmp_path):
    # float32 NCHW input instead of uint8 NHWC
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 32, 32])
    y = helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", 3])
    graph = helper.make_graph([helper.make_node("ReduceMean", ["images"], ["embeddings"], axes=[2, 3],
                                                keepdims=0)], "g", [x], [y])
    path = tmp_path / "wrong.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ContractError, match="input dtype is FLOAT, expected UINT8"):
        open_backend(path, backend="onnxruntime")


def test_folder_onnx_must_match_model_json(model_dir, tmp_path):
    folder = copy_model(tmp_path / "m")
    ModelConfig(arch="resnet18", input_size=48, embedding_dim=D).save(folder / "model.json")
    with pytest.raises(ContractError, match="input size 32, model.json says 48"):
        open_backend(folder, backend="onnxruntime")


def test_no_default_model_says_how_to_make_one(monkeypatch, tmp_path):
    monkeypatch.setattr("engine.backends.default_model_dir", lambda: tmp_path / "models")
    with pytest.raises(ModelNotFound) as err:
        open_backend(None)
    assert "python -m convert" in str(err.value) and "--model" in str(err.value)


def test_default_model_folder_is_used_when_present(monkeypatch, tmp_path):
    folder = copy_model(tmp_path / "models")
    monkeypatch.setattr("engine.backends.default_model_dir", lambda: folder)
    with open_backend(None, backend="onnxruntime") as be:
        assert be.source.path == folder and be.precision == "fp32"


# ----------------------------------------------------------------------------- automatic choice


@pytest.mark.parametrize("plan, trt, gpus, ov, expected", [
    (True, True, 1, True, "tensorrt"),
    (True, True, 0, True, "openvino"),  # no GPU
    (True, False, 1, True, "openvino"),  # no TensorRT package
    (False, True, 1, True, "openvino"),  # no plan
    (False, False, 0, False, "onnxruntime"),  # ARM / Jetson CPU: no OpenVINO
    (True, True, 2, False, "tensorrt"),
])
def test_auto_backend_table(plan, trt, gpus, ov, expected):
    name, reason = auto_backend(plan, trt, gpus, ov)
    assert name == expected and reason
    if name != "tensorrt":
        assert "TensorRT" in reason


def test_openvino_skips_int8_on_a_cpu_without_an_int8_dot_product(tmp_path, monkeypatch):
    import engine.backends as backends
    from engine.cpu import has_int8_dot

    assert has_int8_dot({"avx2", "fma"}) is False and has_int8_dot({"avx2", "avx512_vnni"}) is True
    assert has_int8_dot({"avx2", "avx_vnni"}) is True and has_int8_dot({"neon", "asimd"}) is None
    src = resolve_model(copy_model(tmp_path / "m", files=("model.json", "model.fp32.onnx", "model.int8.onnx")))
    monkeypatch.setattr(backends, "has_int8_dot", lambda: False)  # an AVX2-only EPYC
    choice = choose(src, backend="openvino")
    assert choice.precision == "fp32" and "no int8 dot-product instruction (VNNI/AMX)" in choice.reason
    assert choose(src, backend="openvino", precision="int8").precision == "int8"  # asked for: allowed
    monkeypatch.setattr(backends, "has_int8_dot", lambda: True)
    assert choose(src, backend="openvino").precision == "int8"
    monkeypatch.setattr(backends, "has_int8_dot", lambda: None)  # not x86: no rule
    assert choose(src, backend="openvino").precision == "int8"
    monkeypatch.setattr(backends, "has_int8_dot", lambda: False)
    only_int8 = resolve_model(copy_model(tmp_path / "i8", files=("model.json", "model.int8.onnx")))
    assert choose(only_int8, backend="openvino").precision == "int8"  # nothing else to run instead


def test_default_precision_prefers_int8_where_present():
    assert default_precision("openvino", ["fp32", "fp16", "int8"]) == "int8"
    assert default_precision("onnxruntime", ["fp16", "fp32"]) == "fp32"
    assert default_precision("tensorrt", ["fp32", "fp16"]) == "fp16"
    assert default_precision("onnxruntime", []) is None


def _src(tmp_path, onnx=(), plans=(), weights=False):
    return ModelSource(tmp_path, ModelConfig(**TINY), onnx={p: tmp_path / f"model.{p}.onnx" for p in onnx},
                       plans={p: tmp_path / f"model.{p}.plan" for p in plans},
                       weights_dir=tmp_path if weights else None)


def test_choose_uses_plan_only_with_tensorrt_and_gpu(tmp_path, monkeypatch):
    import engine.backends as backends

    monkeypatch.setattr(backends, "has_int8_dot", lambda: True)  # a VNNI CPU, whatever runs the test
    src = _src(tmp_path, onnx=["fp32", "int8"], plans=["fp16"])
    gpu = {"tensorrt": True, "gpus": 1, "openvino": True}
    cpu = {"tensorrt": False, "gpus": 0, "openvino": True}
    c = choose(src, env=gpu)
    assert (c.backend, c.precision) == ("tensorrt", "fp16")
    c = choose(src, env=cpu)
    assert (c.backend, c.precision) == ("openvino", "int8")
    # Asking for a precision that has no plan falls back to the CPU file of that precision.
    c = choose(src, precision="fp32", env=gpu)
    assert (c.backend, c.precision) == ("openvino", "fp32")
    c = choose(src, env={"tensorrt": False, "gpus": 0, "openvino": False})
    assert (c.backend, c.precision) == ("onnxruntime", "fp32")


def test_choose_refuses_what_is_not_there(tmp_path):
    src = _src(tmp_path, onnx=["fp32"])
    with pytest.raises(BackendError, match="no int8 ONNX file for the onnxruntime backend"):
        choose(src, backend="onnxruntime", precision="int8")
    with pytest.raises(BackendError, match="no plan for the tensorrt backend"):
        choose(src, backend="tensorrt")
    with pytest.raises(BackendError, match="needs model.safetensors"):
        choose(src, backend="torch")
    with pytest.raises(BackendError, match="unknown backend"):
        choose(src, backend="tflite")
    with pytest.raises(BackendError, match="unknown precision"):
        choose(src, precision="int4")
    with pytest.raises(BackendError, match="no bf16"):
        choose(src, backend="onnxruntime", precision="bf16")  # bf16 hint is OpenVINO's


def test_choose_takes_torch_when_folder_has_only_weights(tmp_path):
    c = choose(_src(tmp_path, weights=True))
    assert (c.backend, c.precision) == ("torch", "fp32")


def test_onnxruntime_providers_never_fall_back_silently():
    assert pick_providers("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert pick_providers(None, ["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == "CUDAExecutionProvider"
    assert pick_providers(None, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(BackendError, match="onnxruntime-gpu"):
        pick_providers("cuda", ["CPUExecutionProvider"])


def test_onnxruntime_backend_reports_unloadable_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x01garbage")
    with pytest.raises(BackendError, match="onnxruntime cannot load it"):
        OnnxRuntimeBackend(bad, input_size=S, embedding_dim=D)


def test_torch_backend_refuses_unknown_device_and_fp16_on_cpu(model_dir):
    from engine.backends.torch_backend import TorchBackend

    with pytest.raises(BackendError, match="unknown device"):
        TorchBackend(model_dir, device="tpu")
    with pytest.raises(BackendError, match="fp16 is for CUDA"):
        TorchBackend(model_dir, precision="fp16")


def _with_canary(folder, tamper: float = 1.0):
    """Store the FP32 canary embeddings (ONNX Runtime) in the folder's model.json, times ``tamper``."""
    import json

    from engine.canary import canary_images, canary_record

    with OnnxRuntimeBackend(folder / "model.fp32.onnx", input_size=TINY["input_size"],
                            embedding_dim=TINY["embedding_dim"]) as ref:
        emb = ref.embed(canary_images(TINY["input_size"]))
    cfg = json.loads((folder / "model.json").read_text())
    cfg.setdefault("extra", {})["canary"] = canary_record(emb * tamper)
    (folder / "model.json").write_text(json.dumps(cfg))
    return folder


def test_canaries_confirm_the_precision_and_refuse_an_explicit_one_that_disagrees(tmp_path):
    good = _with_canary(copy_model(tmp_path / "good"))
    with open_backend(good, backend="onnxruntime", precision="fp32") as be:
        assert be.canary_cosine > 0.9999
    bad = _with_canary(copy_model(tmp_path / "bad"), tamper=-1.0)
    with pytest.raises(BackendError, match=r"fp32 disagrees with FP32 on this machine \(canary cosine -1\.0000 < 0\.98\)"
                                           r"; choose another --precision"):
        open_backend(bad, backend="onnxruntime", precision="fp32")
    with pytest.raises(BackendError, match="no other precision to fall back to"):
        open_backend(bad, backend="onnxruntime")


def test_an_automatic_precision_that_disagrees_falls_back(tmp_path, monkeypatch, caplog):
    pytest.importorskip("openvino")
    import engine.backends as backends
    import engine.canary as canary

    monkeypatch.setattr(backends, "has_int8_dot", lambda: True)  # INT8 is OpenVINO's first choice
    folder = _with_canary(copy_model(tmp_path / "m", files=("model.json", "model.fp32.onnx", "model.int8.onnx")))
    real = canary.canary_cosine
    monkeypatch.setattr(canary, "canary_cosine",
                        lambda be, record, size: 0.5 if be.precision == "int8" else real(be, record, size))
    with caplog.at_level("WARNING"):
        with open_backend(folder, backend="onnxruntime", precision=None) as be:
            first = be.precision
    assert first == "fp32"  # ONNX Runtime prefers fp32 anyway: no fallback needed
    with caplog.at_level("WARNING"):
        with open_backend(folder, backend="openvino") as be:  # OpenVINO prefers int8: falls back to fp32
            assert be.precision == "fp32" and be.canary_cosine > 0.999
    assert "openvino int8 disagrees with FP32 on this machine (canary cosine 0.5000 < 0.98); using fp32" in caplog.text


def test_a_passed_canary_check_is_remembered_per_file_and_machine(tmp_path, monkeypatch):
    import os

    import engine.canary as canary

    monkeypatch.setenv("FAKEAWARE_CACHE_DIR", str(tmp_path / "cache"))
    folder = _with_canary(copy_model(tmp_path / "m"))
    runs = []
    real = canary.canary_cosine
    monkeypatch.setattr(canary, "canary_cosine", lambda *a: runs.append(1) or real(*a))

    def opened() -> float:
        with open_backend(folder, backend="onnxruntime", precision="fp32") as be:
            return be.canary_cosine

    assert opened() > 0.9999 and opened() > 0.9999 and len(runs) == 1  # the second open reuses the answer
    monkeypatch.setattr(canary, "machine_identity", lambda: "another CPU | avx2")
    assert opened() > 0.9999 and len(runs) == 2                          # another CPU: run again
    os.utime(folder / "model.fp32.onnx", ns=(1, 10**18))
    assert opened() > 0.9999 and len(runs) == 2                          # touched, same bytes: remembered
    import onnx

    model = onnx.load(folder / "model.fp32.onnx")
    model.producer_name = "another producer"                             # other bytes, same network
    stat = (folder / "model.fp32.onnx").stat()
    onnx.save(model, folder / "model.fp32.onnx")
    os.utime(folder / "model.fp32.onnx", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert opened() > 0.9999 and len(runs) == 3                          # other bytes, old mtime: run again
    _with_canary(folder, tamper=-1.0)                                     # new references in model.json
    with pytest.raises(BackendError, match="canary cosine -1.0000"):
        opened()
    assert len(runs) == 4


def test_remembered_answers_follow_the_content_and_survive_damage(tmp_path, monkeypatch):
    import os

    from engine.cachedir import remembered
    from engine.integrity import file_digest

    monkeypatch.setenv("FAKEAWARE_CACHE_DIR", str(tmp_path / "cache"))
    f = tmp_path / "m.onnx"
    f.write_bytes(b"one")
    calls = []

    def compute():
        calls.append(1)
        return {"n": len(calls)}

    assert remembered("t", file_digest(f), None, compute, ("n",)) == {"n": 1}
    assert remembered("t", file_digest(f), None, compute, ("n",)) == {"n": 1} and len(calls) == 1  # remembered
    assert remembered("t", file_digest(f), "other contract", compute, ("n",)) == {"n": 2}  # the key has extra
    stat = f.stat()
    f.write_bytes(b"two")                                          # same size, mtime put back
    os.utime(f, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert remembered("t", file_digest(f), None, compute, ("n",)) == {"n": 3}   # other bytes: again
    for entry in (tmp_path / "cache" / "t").glob("*.json"):
        entry.write_text("{broken")
    assert remembered("t", file_digest(f), None, compute, ("n",)) == {"n": 4}   # damaged: recomputed
    monkeypatch.setenv("FAKEAWARE_CACHE_DIR", "off")
    assert remembered("t", file_digest(f), None, compute, ("n",)) == {"n": 5}   # off: always computed
