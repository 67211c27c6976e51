"""A randomly initialised model folder made by the project's own pipeline, for benchmarks.

Speed does not depend on the weights' values, so until a trained model exists
the benchmarks measure a seeded random one, made exactly as a trained one
would be: ``nets.checkpoint.save_model`` -> :func:`convert.convert_checkpoint`
(export, simplify, ModelOpt FP16 and INT8 Q/DQ, accuracy gates). Calibration
uses generated images (INT8 scales of a random model are arbitrary anyway).
The PyTorch weights are copied into the folder so the torch backends run too.

    python -m bench.random_model --out /tmp/r34            # ResNet-34 at 112, 512-d
    python -m bench --model /tmp/r34 --backends torch:fp32,openvino:int8
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from engine.files import printable


def generated_image(seed: int, size: int = 128) -> np.ndarray:
    """A deterministic drawing of a face (engine.canary's): decodes and resizes like a photo, and passes the
    runtime's face-quality gate as a real face does (noise would be refused before the model)."""
    from engine.canary import canary_images

    return canary_images(size, 1, seed)[0]


def write_images(folder: Path, count: int, size: int = 128, seed: int = 0) -> list[Path]:
    """``count`` JPEGs of generated images under ``folder``."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:04d}.jpg"
        ok, buf = cv2.imencode(".jpg", generated_image(seed + i, size)[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
        if not ok:
            raise RuntimeError(f"{path}: OpenCV could not encode a JPEG")
        path.write_bytes(buf.tobytes())
        paths.append(path)
    return paths


def make_random_model(out, *, arch: str = "resnet34", input_size: int = 112, embedding_dim: int = 512,
                      precision: str = "fp32,fp16,int8", calib_images: int = 64, seed: int = 0,
                      force: bool = False, quiet: bool = True) -> Path:
    """Seeded random model -> run folder -> ``python -m convert``'s model folder at ``out`` (+ weights)."""
    import torch

    from convert import convert_checkpoint
    from convert.calibration import CalibrationImage, write_manifest
    from engine.contract import ModelConfig
    from nets.checkpoint import save_model
    from nets.model import get_model

    out = Path(out)
    config = ModelConfig(arch=arch, input_size=input_size, embedding_dim=embedding_dim)
    torch.manual_seed(seed)
    model = get_model(config).eval()
    with tempfile.TemporaryDirectory(prefix="random-model-") as tmp:
        tmp = Path(tmp)
        save_model(model, tmp / "run", config)
        paths = write_images(tmp / "calib", calib_images, seed=seed)
        write_manifest([CalibrationImage(p.name, str(i), False) for i, p in enumerate(paths)], tmp / "calib.csv")
        convert_checkpoint(tmp / "run", out, precision=precision, calib_manifest=tmp / "calib.csv",
                           calib_root=tmp / "calib", gate_images=calib_images, force=force, quiet=quiet)
        shutil.copy(tmp / "run" / "model.safetensors", out / "model.safetensors")  # for the torch backends
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.random_model",
                                description="Make a seeded random model folder through the convert pipeline "
                                            "(for benchmarks until a trained model exists).")
    p.add_argument("--out", required=True, help="model folder to write (model.json, model.<precision>.onnx, weights)")
    p.add_argument("--arch", default="resnet34", help="backbone: resnet18, resnet34, resnet50 (default: resnet34)")
    p.add_argument("--input-size", type=int, default=112, help="input side in pixels (default: 112)")
    p.add_argument("--embedding-dim", type=int, default=512, help="embedding size (default: 512)")
    p.add_argument("--precision", default="fp32,fp16,int8", help="ONNX variants to write (default: fp32,fp16,int8)")
    p.add_argument("--calib-images", type=int, default=64, help="generated calibration images (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the images (default: 0)")
    p.add_argument("--force", action="store_true", help="replace an existing, non-empty --out folder")
    args = p.parse_args(argv)
    try:
        out = make_random_model(args.out, arch=args.arch, input_size=args.input_size,
                                embedding_dim=args.embedding_dim, precision=args.precision,
                                calib_images=args.calib_images, seed=args.seed, force=args.force, quiet=False)
    except (ValueError, RuntimeError) as exc:  # ContractError, ConversionError, GateError ...
        print(f"python -m bench.random_model: error: {printable(exc)}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
