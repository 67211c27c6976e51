"""``python -m convert.sensitivity``: which layers of an INT8 Q/DQ model cost the most accuracy.

The conversion gate bounds the worst image (cosine to FP32 >= 0.98), and a
mean hides where PTQ loses it. This takes a converted folder
(``model.fp32.onnx`` + ``model.int8.onnx``), finds the images INT8 gets
most wrong, and for every quantized Conv/Gemm removes that one layer's Q/DQ
(its activations left unquantized, its weights dequantized to FP32 with
their per-channel INT8 rounding kept): the worst cosine that results is the
layer's sensitivity. It then runs the whole set
with the top 1, 2, 4, ... layers in FP32, the candidates for a mixed-precision
variant. Run on calibration images, not on the gate's validation pairs, so the
choice is not tuned on the data that judges it::

    python -m convert.sensitivity --model /tmp/int8 --calib-manifest calib_data/manifest.csv \\
        --calib-root /work/data/lfw-fakeaware
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from engine.files import printable

QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")


def _producers(graph) -> dict:
    return {out: node for node in graph.node for out in node.output}


def quantized_layers(model) -> list[str]:
    """Names of the Conv/Gemm/MatMul nodes that read a DequantizeLinear output."""
    made_by = _producers(model.graph)
    return [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS
            and any(getattr(made_by.get(i), "op_type", None) == "DequantizeLinear" for i in n.input)]


def dequantize_layers(model, names) -> object:
    """A copy of ``model`` where the nodes ``names`` read FP32: dequantized weights, unquantized activations."""
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto.FromString(model.SerializeToString())
    made_by = _producers(out.graph)
    inits = {i.name: i for i in out.graph.initializer}
    names = set(names)
    for node in out.graph.node:
        if node.name not in names:
            continue
        for k, name in enumerate(node.input):
            dq = made_by.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            src = dq.input[0]
            if src in inits:  # a weight: (w - zero point) * scale, per channel along ``axis``
                w = numpy_helper.to_array(inits[src]).astype(np.float32)
                scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
                zero = (numpy_helper.to_array(inits[dq.input[2]]).astype(np.float32)
                        if len(dq.input) > 2 and dq.input[2] else np.float32(0))
                shape = [1] * w.ndim
                if scale.ndim:  # a 1-D tensor (an int32 bias) scales element by element
                    shape[0 if w.ndim == 1 else next((a.i for a in dq.attribute if a.name == "axis"), 1)] = -1
                weight = (w - zero.reshape(shape)) * scale.reshape(shape)
                fp32_name = f"{src}.fp32.{node.name}"
                out.graph.initializer.append(numpy_helper.from_array(weight.astype(np.float32), fp32_name))
                node.input[k] = fp32_name
            elif getattr(made_by.get(src), "op_type", None) == "QuantizeLinear":  # an activation: skip Q -> DQ
                node.input[k] = made_by[src].input[0]
    return out


def _embed(model, images: np.ndarray, input_name: str, batch: int = 64) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    data = model if isinstance(model, (str, Path)) else model.SerializeToString()
    session = ort.InferenceSession(str(data) if isinstance(data, Path) else data, options,
                                   providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {input_name: images[i:i + batch]})[0]
                           for i in range(0, len(images), batch)])


def layer_sensitivity(fp32_path, int8_path, images: np.ndarray, *, input_name: str = "images", worst: int = 48,
                      tops=(1, 2, 4, 8, 12), progress: bool = True) -> dict:
    """Worst/mean cosine to FP32: INT8 as is, with each layer in FP32 (on the ``worst`` images), and with the
    most sensitive ``tops`` layers in FP32 (on all images)."""
    import onnx

    from engine.verify import cosine

    ref = _embed(Path(fp32_path), images, input_name)
    int8 = onnx.load(str(int8_path))
    base = cosine(_embed(int8, images, input_name), ref)
    hard = np.argsort(base)[:worst]
    layers = []
    names = quantized_layers(int8)
    it = names
    if progress:
        from tqdm import tqdm

        it = tqdm(names, desc="layers", unit="layer", leave=False)
    for name in it:
        cos = cosine(_embed(dequantize_layers(int8, [name]), images[hard], input_name), ref[hard])
        layers.append({"layer": name, "cos_min": float(cos.min()), "cos_mean": float(cos.mean())})
    layers.sort(key=lambda r: -r["cos_min"])
    top = []
    for k in tops:
        if k > len(layers):
            break
        cos = cosine(_embed(dequantize_layers(int8, [r["layer"] for r in layers[:k]]), images, input_name), ref)
        top.append({"fp32_layers": k, "cos_min": float(cos.min()), "cos_mean": float(cos.mean())})
    return {"images": int(len(images)), "worst_images": int(len(hard)), "quantized_layers": len(names),
            "int8": {"cos_min": float(base.min()), "cos_mean": float(base.mean())}, "layers": layers, "top": top}


def format_report(report: dict, show: int = 10) -> str:
    lines = [f"INT8 on {report['images']} images: worst cosine to FP32 {report['int8']['cos_min']:.4f}, "
             f"mean {report['int8']['cos_mean']:.5f} ({report['quantized_layers']} quantized layers)",
             f"most sensitive (worst cosine on the {report['worst_images']} hardest images with that layer in FP32):"]
    lines += [f"  {r['layer']:28s} {r['cos_min']:.4f}" for r in report["layers"][:show]]
    lines += [f"top {r['fp32_layers']:2d} in FP32: worst {r['cos_min']:.4f}, mean {r['cos_mean']:.5f}"
              for r in report["top"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m convert.sensitivity", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", required=True, help="folder with model.json, model.fp32.onnx and model.int8.onnx")
    p.add_argument("--calib-manifest", required=True, help="calibration manifest CSV (python -m convert.calibration)")
    p.add_argument("--calib-root", required=True, help="folder the manifest's paths are relative to")
    p.add_argument("--worst", type=int, default=48, help="hardest images each layer is tried on (default 48)")
    p.add_argument("--json", help="also write the report as JSON to this file")
    args = p.parse_args(argv)
    from convert.calibration import CalibrationError, load_calibration_images, read_manifest
    from engine.contract import ContractError, ModelConfig

    folder = Path(args.model)
    try:
        for name in ("model.json", "model.fp32.onnx", "model.int8.onnx"):
            if not (folder / name).is_file():
                raise ValueError(f"{folder / name}: not found (convert with --precision fp32,int8)")
        if args.worst < 1:
            raise ValueError(f"--worst must be >= 1, got {args.worst}")
        config = ModelConfig.load(folder / "model.json")
        images = load_calibration_images(read_manifest(args.calib_manifest), args.calib_root, config.input_size,
                                         config=config)
    except (ValueError, OSError, ContractError, CalibrationError) as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        return 2
    report = layer_sensitivity(folder / "model.fp32.onnx", folder / "model.int8.onnx", images,
                               input_name=config.input_name, worst=min(args.worst, len(images)))
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
