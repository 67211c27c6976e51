"""The bundled model's default precision on *this* CPU agrees with FP32 arithmetic.

Which kernels a runtime picks depends on the ISA (AVX2 without VNNI,
AVX-512, AMX), and an INT8 file drifted by up to 0.66 in similarity on an
AVX2-only CPU. The suite runs on whatever CPU a session or CI gets, so this
test is the per-machine check: 64 aligned LFW photos and the canaries,
the automatic backend and precision against the shipped weights computed
in FP32 (the FP16 file upcast, run by ONNX Runtime).
"""
from __future__ import annotations

import numpy as np
import pytest

MIN_COSINE = 0.98


def upcast_fp16_onnx(src, dst) -> None:
    """Write the FP16 ONNX file ``src`` as FP32 (weights upcast exactly, casts to half turned into casts to float)."""
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    for i, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT16:
            graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32),
                                                                  init.name))
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT16:
                attr.i = TensorProto.FLOAT
        assert node.op_type != "Constant" or all(a.t.data_type != TensorProto.FLOAT16 for a in node.attribute)
    for value in list(graph.value_info) + list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    onnx.save(model, str(dst))


def test_default_precision_agrees_with_fp32_on_lfw_and_canaries(face_data, tmp_path, record_property):
    import onnxruntime as ort

    from engine.backends import open_backend
    from engine.canary import machine_identity
    from engine.preprocess import NoFaceError, Preprocessor

    lfw = face_data / "lfw-deepfunneled"
    if not lfw.is_dir():
        pytest.skip(f"LFW not found at {lfw}")
    people = sorted(p for p in lfw.iterdir() if p.is_dir())
    with open_backend(None, device="cpu") as default:
        pre = Preprocessor(default.config, size=default.input_size)
        crops = []
        try:
            for person in people[::max(1, len(people) // 80)]:  # spread over the alphabet; a few have no face found
                try:
                    crops.append(pre.load(sorted(person.glob("*.jpg"))[0]).image)
                except NoFaceError:
                    continue
                if len(crops) == 64:
                    break
        finally:
            pre.close()
        images = np.stack(crops)
        got = default.embed(images)
        name, precision, executed, canary = default.name, default.precision, default.executed_precision, \
            default.canary_cosine
        fp16 = default.source.path / default.config.extra["files"]["fp16"]
    upcast_fp16_onnx(fp16, tmp_path / "model.fp32.onnx")
    session = ort.InferenceSession(str(tmp_path / "model.fp32.onnx"), providers=["CPUExecutionProvider"])
    ref = session.run(None, {session.get_inputs()[0].name: images})[0]
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    for key, value in {"backend": name, "precision": precision, "executed": executed, "cpu": machine_identity()[:80],
                       "lfw_cos_min": round(float(cos.min()), 5), "canary_cos": round(float(canary), 5)}.items():
        record_property(key, value)
    assert len(images) == 64
    assert canary >= MIN_COSINE, f"{name} {precision} (runs {executed}): canary cosine {canary:.4f} on this CPU"
    assert cos.min() >= MIN_COSINE, (f"{name} {precision} (runs {executed}): worst LFW image cosine {cos.min():.4f} "
                                     f"to FP32 on this CPU ({machine_identity()[:60]})")
