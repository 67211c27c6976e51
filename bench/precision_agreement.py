"""``python -m bench.precision_agreement``: each precision of a model folder against FP32, on this CPU.

Which kernels a runtime picks depends on the ISA (AVX2 without VNNI,
AVX-512, AMX), so INT8 that agrees with FP32 on one machine can drift on
another. This embeds aligned LFW photos (and the model's canaries) with
each backend:precision asked for and reports the worst and mean cosine to
the weights run in FP32 (the FP16 file upcast, ONNX Runtime, when the folder
has no FP32 file)::

    python -m bench.precision_agreement --lfw ../shared/data/lfw-deepfunneled \\
        --runs openvino:int8,openvino:fp16,onnxruntime:int8 --json out.json

Run it on an AVX2-only CPU to decide whether INT8 may be chosen there.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from engine.files import printable


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
            if node.op_type == "Constant" and attr.t.data_type == TensorProto.FLOAT16:
                raise ValueError(f"{src}: FP16 Constant node {node.name}: not handled")
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT16:
                attr.i = TensorProto.FLOAT
    for value in list(graph.value_info) + list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    onnx.save(model, str(dst))


def aligned_lfw(lfw: Path, config, count: int = 64) -> np.ndarray:
    """``count`` aligned crops: the first photo of people spread over LFW's alphabet (faceless ones skipped)."""
    from engine.preprocess import NoFaceError, Preprocessor

    people = sorted(p for p in Path(lfw).iterdir() if p.is_dir())
    pre = Preprocessor(config, size=config.input_size)
    crops = []
    try:
        for person in people[::max(1, len(people) // (count + count // 4))]:
            try:
                crops.append(pre.load(sorted(person.glob("*.jpg"))[0]).image)
            except (NoFaceError, IndexError):
                continue
            if len(crops) == count:
                break
    finally:
        pre.close()
    if not crops:
        raise ValueError(f"{lfw}: no face found in any photo")
    return np.stack(crops)


def fp32_reference(folder: Path, images: np.ndarray) -> np.ndarray:
    """The folder's weights in FP32 arithmetic through ONNX Runtime."""
    import onnxruntime as ort

    from engine.contract import ModelConfig

    files = (ModelConfig.load(folder / "model.json").extra or {}).get("files", {})
    with tempfile.TemporaryDirectory() as tmp:
        path = folder / files["fp32"] if "fp32" in files else Path(tmp) / "model.fp32.onnx"
        if "fp32" not in files:
            upcast_fp16_onnx(folder / files["fp16"], path)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: images})[0]


def agreement(folder: Path, images: np.ndarray, runs: list[tuple[str | None, str | None]]) -> list[dict]:
    """One row per (backend, precision); None = the runtime's automatic choice."""
    from engine.backends import open_backend
    from engine.cpu import machine_identity
    from engine.verify import cosine

    ref = fp32_reference(folder, images)
    rows = []
    for backend, precision in runs:
        with open_backend(folder, backend or "auto", precision, device="cpu") as be:
            cos = cosine(be.embed(images), ref)
            rows.append({"backend": be.name, "precision": be.precision, "executed": be.executed_precision,
                         "asked": f"{backend or 'auto'}:{precision or 'auto'}", "images": int(len(images)),
                         "cos_min": float(cos.min()), "cos_mean": float(cos.mean()),
                         "canary_cos": float(be.canary_cosine) if hasattr(be, "canary_cosine") else None,
                         "cpu": machine_identity()})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.precision_agreement", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    p.add_argument("--lfw", required=True, help="LFW folder (one sub-folder of photos per person)")
    p.add_argument("--count", type=int, default=64, help="photos (default 64)")
    p.add_argument("--runs", default="auto:auto",
                   help="comma-separated backend:precision, auto for the runtime's choice (default auto:auto)")
    p.add_argument("--json", help="also write the rows as JSON to this file")
    args = p.parse_args(argv)
    from engine.backends import BackendError, resolve_model
    from engine.contract import ContractError

    try:
        runs = []
        for item in args.runs.split(","):
            backend, _, precision = item.partition(":")
            runs.append((None if backend in ("", "auto") else backend, None if precision in ("", "auto") else precision))
        if args.count < 1:
            raise ValueError(f"--count must be >= 1, got {args.count}")
        if not Path(args.lfw).is_dir():
            raise ValueError(f"{args.lfw}: not a folder")
        src = resolve_model(args.model)
        rows = agreement(src.path, aligned_lfw(Path(args.lfw), src.config, args.count), runs)
    except (ValueError, OSError, BackendError, ContractError) as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        return 2
    print(f"{rows[0]['cpu'][:100]}")
    for r in rows:
        canary = f"{r['canary_cos']:.4f}" if r["canary_cos"] is not None else "-"
        print(f"{r['asked']:22s} -> {r['backend']} {r['precision']} (runs {r['executed']}): worst cosine "
              f"{r['cos_min']:.4f}, mean {r['cos_mean']:.5f} on {r['images']} photos; canaries {canary}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
