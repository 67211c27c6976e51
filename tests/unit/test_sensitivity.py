"""convert.sensitivity: one layer at a time back in FP32, on the tiny INT8 Q/DQ model."""
from __future__ import annotations

import numpy as np
import onnx

from conftest import synthetic_face
from convert.sensitivity import _embed, dequantize_layers, layer_sensitivity, main, quantized_layers
from engine.verify import cosine
from tiny_model import TINY, quantize_int8, tiny_model_folder


def faces(n: int) -> np.ndarray:
    return np.stack([synthetic_face(i, TINY["input_size"]) for i in range(n)])


def test_every_layer_back_in_fp32_gives_the_fp32_model(tmp_path):
    folder = tiny_model_folder()
    # Only Conv/Gemm quantized (as ModelOpt does): with all of them back in FP32 nothing quantized is left.
    path = quantize_int8(folder / "model.fp32.onnx", tmp_path / "conv.int8.onnx", TINY["input_size"],
                         op_types=("Conv", "Gemm"))
    int8 = onnx.load(str(path))
    names = quantized_layers(int8)
    assert len(names) >= 5 and all(n for n in names)
    x = faces(6)
    ref = _embed(folder / "model.fp32.onnx", x, "images")
    back = _embed(dequantize_layers(int8, names), x, "images")
    assert cosine(back, ref).min() > 0.9995  # what is left: the weights' INT8 rounding (measured 0.99984)
    assert cosine(_embed(int8, x, "images"), ref).min() < cosine(back, ref).min()
    assert quantized_layers(dequantize_layers(int8, names)) == []


def test_report_ranks_every_quantized_layer():
    folder = tiny_model_folder()
    report = layer_sensitivity(folder / "model.fp32.onnx", folder / "model.int8.onnx", faces(12), worst=4,
                               tops=(1, 2, 100), progress=False)
    assert report["quantized_layers"] == len(report["layers"]) == len(quantized_layers(
        onnx.load(str(folder / "model.int8.onnx"))))
    mins = [r["cos_min"] for r in report["layers"]]
    assert mins == sorted(mins, reverse=True) and all(-1 <= m <= 1 for m in mins)
    assert [t["fp32_layers"] for t in report["top"]] == [1, 2]  # 100 > the layer count: not tried


def test_cli_refuses_a_folder_without_int8(tmp_path, capsys):
    (tmp_path / "model.json").write_text("{}")
    code = main(["--model", str(tmp_path), "--calib-manifest", "m.csv", "--calib-root", str(tmp_path)])
    assert code == 2 and "model.fp32.onnx: not found (convert with --precision fp32,int8)" in capsys.readouterr().err
