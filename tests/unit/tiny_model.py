"""A tiny random face model as a model folder (model.json, weights, FP32 and INT8 ONNX), built once per run,
and the helpers that make random models for the export/conversion tests.

ResNet-18 trunk at 32x32 with 16-d embeddings: exports in seconds and runs in
milliseconds, yet has every op of the real model (uint8 NHWC in, normalise,
convs, BN, GDC head, L2-normalise out).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from engine.contract import ModelConfig

TINY = dict(arch="resnet18", input_size=32, embedding_dim=16)
_BUILT: dict[str, Path] = {}


def randomise_bn(model, seed: int = 0) -> None:
    """Non-trivial BN statistics/affines, so the random model is not near-identity (zero-init last BNs)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) * 0.8 + 0.4
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean = torch.randn(n, generator=g) * 0.1
            m.running_var = torch.rand(n, generator=g) + 0.5


def random_model(config: ModelConfig, seed: int = 0):
    """An eval-mode ``get_model(config)`` seeded with ``seed`` and given non-trivial BN (see randomise_bn)."""
    import torch

    from nets.model import get_model

    torch.manual_seed(seed)
    model = get_model(config).eval()
    randomise_bn(model, seed)
    return model


def export_onnx(model, path: Path, size: int) -> Path:
    import torch

    x = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    torch.onnx.export(model, (x,), str(path), input_names=["images"], output_names=["embeddings"],
                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},), opset_version=18,
                      dynamo=True, external_data=False, verbose=False)
    return path


def quantize_int8(fp32: Path, out: Path, size: int, seed: int = 0, op_types: tuple[str, ...] = ()) -> Path:
    """INT8 Q/DQ ONNX by ONNX Runtime static quantisation (stand-in for ModelOpt's output).

    Run in a fresh interpreter: once ModelOpt has quantised a model in this
    process (convert tests), its patches to ONNX Runtime's quantisation
    internals make ``quantize_static`` fail ("Quantization parameters are
    not specified"), so the tiny model must not depend on test order.
    ``op_types``: quantize only these ops (default: all ONNX Runtime can).
    """
    import subprocess
    import sys

    code = f"""
import numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
class Reader(CalibrationDataReader):
    def __init__(self):
        rng = np.random.default_rng({seed})
        self.batches = iter([{{"images": rng.integers(0, 256, (4, {size}, {size}, 3), dtype=np.uint8)}}
                             for _ in range(4)])
    def get_next(self):
        return next(self.batches, None)
quantize_static({str(fp32)!r}, {str(out)!r}, Reader(), quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                op_types_to_quantize={list(op_types) or None!r})
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"ONNX Runtime quantisation of {fp32} failed:\n{done.stderr[-3000:]}")
    return out


def tiny_model_folder() -> Path:
    """Build (once per process) and return a model folder like `python -m convert` writes."""
    if "folder" in _BUILT:
        return _BUILT["folder"]
    import atexit

    from nets.checkpoint import save_model

    config = ModelConfig(**TINY, threshold=0.5)
    model = random_model(config)
    folder = Path(tempfile.mkdtemp(prefix="tiny-model-"))
    atexit.register(shutil.rmtree, folder, True)
    save_model(model, folder, config)
    export_onnx(model, folder / "model.fp32.onnx", config.input_size)
    quantize_int8(folder / "model.fp32.onnx", folder / "model.int8.onnx", config.input_size)
    _BUILT["folder"] = folder
    return folder


def copy_model(dst: Path, files=("model.json", "model.fp32.onnx")) -> Path:
    """A model folder holding only ``files`` of the tiny model (to test what a folder lacks)."""
    src = tiny_model_folder()
    dst.mkdir(parents=True, exist_ok=True)
    for name in files:
        shutil.copy(src / name, dst / name)
    return dst
