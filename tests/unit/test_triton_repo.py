"""``python -m convert.triton``: a Triton model repository whose configs Triton's own protobuf definitions accept."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from convert.triton import RepositoryError, main, preferred_batch_sizes, write_repository
from engine.backends import default_model_dir
from engine.contract import ModelConfig

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tritonclient[grpc] is not installed (pip install '.[serve]')")
text_format = pytest.importorskip("google.protobuf.text_format")


def parse(path: Path):
    """config.pbtxt -> ModelConfig message; unknown fields or bad syntax raise (text_format is strict)."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_bundled_model_repository(tmp_path):
    repo = tmp_path / "repo"
    written = write_repository(None, repo)
    assert set(written) == {"embedder", "detector"}  # no plan shipped: no tensorrt_plan model
    config = ModelConfig.load(default_model_dir() / "model.json")
    cfg = parse(repo / "embedder" / "config.pbtxt")
    types = model_config_pb2.DataType
    assert cfg.name == "embedder" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 64
    (inp,), (out,) = cfg.input, cfg.output
    size = config.input_size  # the bundled model's (150 for dlib_resnet29)
    assert (inp.name, inp.data_type, list(inp.dims)) == (config.input_name, types.TYPE_UINT8, [size, size, 3])
    assert (out.name, out.data_type, list(out.dims)) == (config.output_name, types.TYPE_FP32, [config.embedding_dim])
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8, 16, 32, 64]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 2000
    (group,) = cfg.instance_group
    assert group.count == 2 and group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert float(params["threshold"]) == config.threshold
    contract = json.loads(params["contract"])
    assert contract["input_size"] == size and contract["align"] == "face" and contract["template"] == config.template
    assert params["precision"] == "fp16"  # ONNX Runtime's preference among the shipped files
    assert params["source_sha256"] == sha256(repo / "embedder" / "1" / "model.onnx") == \
        sha256(default_model_dir() / "model.fp16.onnx")

    det = parse(repo / "detector" / "config.pbtxt")
    assert det.platform == "onnxruntime_onnx" and list(det.input[0].dims) == [192, 192, 3]
    assert det.output[0].name == "detections" and list(det.output[0].dims) == [2304 * 17]
    assert (repo / "detector" / "1" / "model.onnx").stat().st_size > 1_000_000
    assert sorted(p.name for p in repo.iterdir()) == ["detector", "embedder"]  # nothing else Triton would trip on


def test_plan_takes_its_profile_maximum_and_cpu_kind(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.json").write_text((default_model_dir() / "model.json").read_text())
    os.symlink(default_model_dir() / "model.fp16.onnx", folder / "model.fp16.onnx")
    (folder / "model.fp16.plan").write_bytes(b"not a real engine")
    sidecar = {"precision": "fp16", "tensorrt_version": "10.13.0", "gpu_name": "NVIDIA H100",
               "compute_capability": "9.0", "profile": {"input": "images", "min": [1, 112, 112, 3],
                                                        "opt": [8, 112, 112, 3], "max": [48, 112, 112, 3]}}
    (folder / "model.fp16.plan.json").write_text(json.dumps(sidecar))
    repo = tmp_path / "repo"
    written = write_repository(folder, repo, instances=1, queue_delay_us=500, detector=False)
    assert set(written) == {"embedder", "embedder_trt"}
    trt = parse(repo / "embedder_trt" / "config.pbtxt")
    assert trt.platform == "tensorrt_plan" and trt.max_batch_size == 48
    assert list(trt.dynamic_batching.preferred_batch_size) == [4, 8, 16, 32, 48]
    params = {k: v.string_value for k, v in trt.parameters.items()}
    assert params["tensorrt_version"] == "10.13.0" and params["precision"] == "fp16"
    assert (repo / "embedder_trt" / "1" / "model.plan").read_bytes() == b"not a real engine"
    assert parse(repo / "embedder" / "config.pbtxt").instance_group[0].count == 1
    with pytest.raises(RepositoryError, match="over the profile maximum"):
        write_repository(folder, tmp_path / "r2", max_batch=100)
    with pytest.raises(RepositoryError, match="GPU only"):
        write_repository(folder, tmp_path / "r3", kind="cpu")
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no half-built folder left


def test_refusals_are_one_line_and_leave_nothing(tmp_path, capsys):
    repo = tmp_path / "repo"
    assert main(["--out", str(repo)]) == 0
    before = sorted(str(p) for p in repo.rglob("*"))
    assert main(["--out", str(repo)]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "other"), "--precision", "fp32"]) == 2
    assert "no fp32 ONNX file" in capsys.readouterr().err and not (tmp_path / "other").exists()
    assert main(["--out", str(repo), "--force", "--no-detector", "--max-batch", "16"]) == 0
    assert sorted(p.name for p in repo.iterdir()) == ["embedder"] and before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert main(["--out", str(mine), "--force"]) == 2  # --force replaces only a repository it wrote
    assert "was not written by this tool" in capsys.readouterr().err and (mine / "notes.txt").exists()
    assert parse(repo / "embedder" / "config.pbtxt").max_batch_size == 16
    assert preferred_batch_sizes(1) == [1] and preferred_batch_sizes(100) == [4, 8, 16, 32, 64, 100]


def test_tritonserver_reads_every_config(tmp_path):
    """PyTriton's tritonserver has only the Python backend: every model must fail on that, not on its config."""
    pytriton = pytest.importorskip("pytriton", reason="PyTriton (with its tritonserver binary) is not installed")
    root = Path(pytriton.__file__).parent
    binary = root / "tritonserver" / "bin" / "tritonserver"
    if not binary.is_file():
        pytest.skip(f"no tritonserver binary in {root}")
    repo = tmp_path / "repo"
    write_repository(None, repo)
    env = {**os.environ, "LD_LIBRARY_PATH": str(root.parent / "nvidia_pytriton.libs")}
    run = subprocess.run([str(binary), f"--model-repository={repo}", f"--backend-directory={root / 'tritonserver' / 'backends'}",
                          "--strict-model-config=true", "--allow-http=false", "--allow-grpc=false",
                          "--allow-metrics=false", "--exit-timeout-secs=1"],
                         capture_output=True, text=True, timeout=120, env=env)
    log = run.stdout + run.stderr
    assert run.returncode != 0  # it cannot run the models without their backends ...
    for name in ("embedder", "detector"):  # ... and says exactly that, after reading each config
        assert f"failed to load '{name}' version 1: Invalid argument: unable to find backend library for " \
               f"backend 'onnxruntime'" in log, log[-3000:]
