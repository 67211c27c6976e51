"""``python -m convert``: checkpoint -> gated ONNX variants (-> TensorRT engines).

Flags mirror :func:`convert.convert_checkpoint`'s keyword arguments.
"""
from __future__ import annotations

import argparse
import sys

from engine.files import printable


def build_parser() -> argparse.ArgumentParser:
    from convert import DEFAULT_GATE_IMAGES, DEFAULT_PRECISIONS, gate
    from convert.gate import DEFAULT_TOLERANCE
    from convert.precision import CALIB_METHODS, HIGH_PRECISION_TYPES
    from convert.simplify import SIMPLIFIERS
    from convert.tensorrt_build import add_engine_arguments

    p = argparse.ArgumentParser(
        prog="python -m convert",
        description="Convert a training run (model.safetensors + model.json) into the model folder the "
                    "runtime loads: ONNX at each precision (preprocessing inside the graph), accuracy "
                    "gates against the PyTorch model, report, and optionally TensorRT engines. The folder "
                    "is written atomically: on any error nothing is left behind, and the build folder of a killed run "
                    "(.OUT.tmp-<pid>-*, its process gone) is removed by the next run.")
    p.add_argument("--checkpoint", required=True, help="run folder holding model.safetensors + model.json")
    p.add_argument("--out", required=True, help="output model folder, e.g. models/NAME")
    p.add_argument("--precision", default=",".join(DEFAULT_PRECISIONS),
                   help="comma-separated variants to write: fp32, fp16, int8 "
                        f"(default {','.join(DEFAULT_PRECISIONS)}; int8 needs --calib-manifest)")
    p.add_argument("--engine", action="store_true",
                   help="also build model.<precision>.plan + sidecar with TensorRT (needs TensorRT and a GPU; "
                        "fails up front, before any work, when either is missing)")
    p.add_argument("--simplifier", choices=SIMPLIFIERS, default="onnxslim",
                   help="graph simplifier (default onnxslim; onnxsim needs `pip install onnxsim`)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset of the export (default 18; variants need 19)")
    g = p.add_argument_group("INT8 calibration")
    g.add_argument("--calib-manifest", default=None,
                   help="calibration manifest CSV (path,identity,is_fake), e.g. calib_data/manifest.csv")
    g.add_argument("--calib-root", default=None, help="data root the manifest's paths are relative to")
    g.add_argument("--calib-method", choices=CALIB_METHODS, default="entropy",
                   help="INT8 calibration method offered by ModelOpt (default entropy)")
    g.add_argument("--calib-count", type=int, default=None, help="use N manifest images, evenly spaced (default: all)")
    g.add_argument("--calib-batch", type=int, default=32, help="images per calibration step (default 32)")
    g.add_argument("--int8-high-precision", choices=HIGH_PRECISION_TYPES, default="fp32",
                   help="type of the layers INT8 leaves unquantized (default fp32: fast on CPU runtimes too; "
                        "fp16 for TensorRT-only deployment)")
    g.add_argument("--int8-fp32-layers", default="",
                   help="comma-separated node names INT8 leaves in FP32 (the most sensitive layers, as "
                        "python -m convert.sensitivity ranks them)")
    g = p.add_argument_group("accuracy gates")
    g.add_argument("--val-pairs", default=None,
                   help="labelled pair folder (images/<pair_id>/{0,1}.jpg + pairs.csv) for the EER gate "
                        "and the decision threshold")
    g.add_argument("--val-limit", type=int, default=None, help="use only the first N validation pairs")
    g.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help=f"largest allowed absolute EER drift from the PyTorch model (default {DEFAULT_TOLERANCE})")
    g.add_argument("--min-cosine", type=float, default=gate.DEFAULT_MIN_COSINE,
                   help="fail a variant whose worst image's cosine to the PyTorch embedding is below this, through "
                        f"ONNX Runtime or OpenVINO (default {gate.DEFAULT_MIN_COSINE}; 0 = off)")
    g.add_argument("--min-realness-agree", type=float, default=gate.DEFAULT_MIN_REALNESS_AGREEMENT,
                   help="fail a variant whose realness coordinate keeps its sign on fewer images than this share "
                        f"(default {gate.DEFAULT_MIN_REALNESS_AGREEMENT}; 0 = off)")
    g.add_argument("--gate-images", type=int, default=DEFAULT_GATE_IMAGES,
                   help=f"images for the export parity check when no validation pairs are given "
                        f"(default {DEFAULT_GATE_IMAGES})")
    add_engine_arguments(p)
    p.add_argument("--force", action="store_true", help="replace an existing, non-empty --out folder")
    p.add_argument("--quiet", action="store_true", help="no progress, only the final table")
    p.add_argument("--verbose", action="store_true", help="show ModelOpt's and TensorRT's own logs")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from convert import ConversionError, convert_checkpoint
    from convert.calibration import CalibrationError
    from convert.export import ExportError
    from convert.gate import GateError, format_table
    from convert.precision import PrecisionError
    from convert.simplify import SimplifyError
    from convert.tensorrt_build import EngineBuildError, TensorRTUnavailable, engine_kwargs
    from engine.contract import ContractError
    from engine.datasets import DataError
    from engine.preprocess import ImageError

    try:
        report = convert_checkpoint(
            args.checkpoint, args.out, precision=args.precision, engine=args.engine,
            simplifier=args.simplifier, opset=args.opset, calib_manifest=args.calib_manifest,
            calib_root=args.calib_root, calib_method=args.calib_method, calib_count=args.calib_count,
            calib_batch=args.calib_batch, int8_high_precision=args.int8_high_precision,
            int8_fp32_layers=tuple(n for n in args.int8_fp32_layers.split(",") if n),
            val_pairs=args.val_pairs, val_limit=args.val_limit, tolerance=args.tolerance,
            min_cosine=args.min_cosine or None, min_realness_agree=args.min_realness_agree or None, gate_images=args.gate_images, engine_options=engine_kwargs(args),
            force=args.force, quiet=args.quiet, verbose=args.verbose)
    except GateError as exc:
        print(f"error: {printable(exc, newlines=True)}\nnothing was written to {printable(args.out)}", file=sys.stderr)
        return 3
    except (ConversionError, ContractError, DataError, ImageError, CalibrationError, ExportError, SimplifyError,
            PrecisionError, TensorRTUnavailable, EngineBuildError, ValueError) as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        return 2
    print(format_table(report))
    if report.get("threshold") is not None:
        print(f"\nthreshold {report['threshold']:.6f} ({report['threshold_source']})")
    print(f"wrote {args.out}: " + ", ".join(sorted(
        [f"model.{p}.onnx" for p in report["precisions"]] + [e["plan"] for e in report["engines"].values()]
        + ["model.json", "report.json", "report.md"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
