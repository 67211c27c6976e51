"""The bundled model's default precision on *this* CPU agrees with FP32 arithmetic.

Which kernels a runtime picks depends on the ISA (AVX2 without VNNI,
AVX-512, AMX), and an INT8 file drifted by up to 0.66 in similarity on an
AVX2-only CPU. The suite runs on whatever CPU a session or CI gets, so this
test is the per-machine check: 64 aligned LFW photos and the canaries, the
automatic backend and precision against the shipped weights in FP32
(``bench.precision_agreement``; ``python -m bench.precision_agreement`` reports
any other precision the same way).
"""
from __future__ import annotations

import numpy as np
import pytest

from bench.precision_agreement import agreement, aligned_lfw, main, upcast_fp16_onnx

MIN_COSINE = 0.98


def test_default_precision_agrees_with_fp32_on_lfw_and_canaries(face_data, record_property):
    from engine.backends import resolve_model

    lfw = face_data / "lfw-deepfunneled"
    if not lfw.is_dir():
        pytest.skip(f"LFW not found at {lfw}")
    src = resolve_model(None)
    images = aligned_lfw(lfw, src.config, 64)
    [row] = agreement(src.path, images, [(None, None)])
    for key in ("backend", "precision", "executed", "cos_min", "canary_cos"):
        record_property(key, row[key])
    record_property("cpu", row["cpu"][:80])
    assert len(images) == 64
    what = f"{row['backend']} {row['precision']} (runs {row['executed']}) on this CPU ({row['cpu'][:60]})"
    assert row["canary_cos"] >= MIN_COSINE, f"{what}: canary cosine {row['canary_cos']:.4f}"
    assert row["cos_min"] >= MIN_COSINE, f"{what}: worst LFW image cosine {row['cos_min']:.4f} to FP32"


def test_upcast_is_the_fp16_weights_in_fp32(tmp_path):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto

    from engine.backends import resolve_model
    from engine.canary import canary_images

    src = resolve_model(None)
    fp16 = src.path / src.config.extra["files"]["fp16"]
    upcast_fp16_onnx(fp16, tmp_path / "up.onnx")
    up = onnx.load(str(tmp_path / "up.onnx"))
    assert not [i.name for i in up.graph.initializer if i.data_type == TensorProto.FLOAT16]
    x = canary_images(src.config.input_size, 4)
    run = {p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp16, tmp_path / "up.onnx")}
    a, b = (s.run(None, {"images": x})[0] for s in run.values())
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.999  # FP16 arithmetic vs FP32 on the same weights


def test_cli_refuses_bad_input(tmp_path, capsys):
    assert main(["--lfw", str(tmp_path / "nope")]) == 2
    assert "nope: not a folder" in capsys.readouterr().err
    assert main(["--lfw", str(tmp_path), "--count", "0"]) == 2
    assert "--count must be >= 1" in capsys.readouterr().err
