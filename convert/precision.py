"""Reduced-precision variants of the FP32 ONNX file, made with NVIDIA ModelOpt.

TensorRT 11 builds strongly typed networks only: the precision of each layer
is whatever the ONNX file says. So the FP16 variant is a graph whose weights
and activations are float16 (ModelOpt AutoCast; the uint8 input and float32
output are kept), and the INT8 variant is a graph with QuantizeLinear /
DequantizeLinear pairs whose scales come from calibration
(``modelopt.onnx.quantization.quantize``).

Both run on the CPU: ModelOpt is told to use ONNX Runtime's CPU execution
provider (``providers=["cpu"]`` / ``calibration_eps=["cpu"]``), so no CUDA,
cupy or onnxruntime-gpu is needed. Calibration images are fed exactly as the
model sees them in deployment: uint8 RGB NHWC straight from
:func:`engine.preprocess.load_image`, normalised inside the graph, so the
quantiser of the first convolution sees the real input range.
"""
from __future__ import annotations

import collections
import contextlib
import io
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from engine.contract import ModelConfig, check_onnx

PRECISIONS = ("fp32", "fp16", "int8")
# What modelopt.onnx.quantization offers for INT8 (percentile is not among them).
CALIB_METHODS = ("entropy", "max")
HIGH_PRECISION_TYPES = ("fp32", "fp16")
DEFAULT_CALIB_BATCH = 32
CPU_PROVIDERS = ["cpu"]  # ModelOpt's spelling of ONNX Runtime's CPUExecutionProvider


class PrecisionError(RuntimeError):
    """A variant could not be made; the message names the step and the cause."""


@contextlib.contextmanager
def _modelopt_quiet(step: str, verbose: bool = False):
    """Capture ModelOpt's and ONNX Runtime's chatter; put its tail into any error."""
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("modelopt.onnx", "modelopt.onnx.autocast")]
    levels = [lg.level for lg in loggers]
    if not verbose:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
    try:
        if verbose:
            yield buf
        else:
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                yield buf
    except PrecisionError:
        raise
    except (Exception, SystemExit, AssertionError) as exc:
        tail = "\n".join(buf.getvalue().strip().splitlines()[-12:])
        raise PrecisionError(f"{step} failed: {type(exc).__name__}: {exc}"
                             + (f"\nModelOpt output:\n{tail}" if tail else "")) from exc
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _import_modelopt(what: str):
    try:
        if what == "autocast":
            from modelopt.onnx.autocast import convert_to_mixed_precision

            return convert_to_mixed_precision
        from modelopt.onnx.quantization import quantize

        return quantize
    except ImportError as exc:
        raise PrecisionError(
            f"NVIDIA ModelOpt's ONNX tools do not import ({str(exc).splitlines()[0]}). Install the CPU set: "
            "pip install -e '.[convert]' (nvidia-modelopt with onnxscript, onnx-graphsurgeon, "
            "onnxconverter-common, polygraphy, lief, pydantic, rich, regex, omegaconf, pulp; "
            "not the GPU-only [onnx] extra)") from None


def _check_calibration(images: np.ndarray, config: ModelConfig, step: str) -> np.ndarray:
    images = np.asarray(images)
    size = config.input_size
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise PrecisionError(f"{step}: calibration images must be uint8 (N, {size}, {size}, 3), "
                             f"got {images.dtype} {images.shape}")
    if len(images) == 0:
        raise PrecisionError(f"{step}: no calibration images")
    return np.ascontiguousarray(images)


def convert_fp16(src: str | os.PathLike, dst: str | os.PathLike, calibration: np.ndarray, *,
                 config: ModelConfig, max_images: int = 64, verbose: bool = False) -> dict:
    """FP16 variant with ModelOpt AutoCast, uint8 input and float32 output kept.

    AutoCast runs the FP32 model on ``calibration`` images (CPU) and keeps in
    FP32 any node whose values would overflow FP16 (``data_max``), so real
    images matter here too; ``max_images`` bounds that reference run.
    """
    from convert.export import save_onnx

    check_onnx(src, config)  # a corrupt or off-contract input: ContractError naming it
    convert_to_mixed_precision = _import_modelopt("autocast")
    calibration = _check_calibration(calibration, config, "FP16 conversion")[:max_images]
    with tempfile.TemporaryDirectory(prefix="fp16-") as work:
        work = Path(work)
        model_in = work / "model.onnx"
        shutil.copyfile(src, model_in)
        data = work / "inputs.npz"
        np.savez(data, **{config.input_name: calibration})
        with _modelopt_quiet("FP16 conversion (ModelOpt AutoCast)", verbose):
            proto = convert_to_mixed_precision(
                onnx_path=str(model_in), low_precision_type="fp16", keep_io_types=True,
                calibration_data=str(data), providers=list(CPU_PROVIDERS))
    check_onnx(proto, config, source=f"{dst} (after AutoCast)")
    save_onnx(proto, dst)
    return {"tool": "modelopt.onnx.autocast", "low_precision_type": "fp16", "keep_io_types": True,
            "providers": list(CPU_PROVIDERS), "reference_images": int(len(calibration)),
            **describe_types(proto)}


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike, calibration: np.ndarray, *,
                  config: ModelConfig, method: str = "entropy", high_precision: str = "fp32",
                  calib_batch: int = DEFAULT_CALIB_BATCH, fp32_layers=(), verbose: bool = False) -> dict:
    """INT8 Q/DQ variant with ModelOpt post-training quantization, calibrated on the CPU.

    ``method``: ``entropy`` (KL divergence, ModelOpt's default) or ``max``.
    ``high_precision``: type of the layers left unquantized; ``fp32`` runs
    everywhere (ONNX Runtime and OpenVINO fuse DQ-Conv-Q into int8 kernels),
    ``fp16`` is what a TensorRT-only deployment would pick.
    ``fp32_layers``: node names of ``src`` to leave unquantized (the most
    sensitive ones, from ``python -m convert.sensitivity``).
    """
    import onnx

    from convert.export import save_onnx

    if method not in CALIB_METHODS:
        raise PrecisionError(f"calibration method {method!r} is not offered by ModelOpt for INT8; "
                             f"choose one of {', '.join(CALIB_METHODS)}")
    if high_precision not in HIGH_PRECISION_TYPES:
        raise PrecisionError(f"high precision type {high_precision!r}: choose one of "
                             f"{', '.join(HIGH_PRECISION_TYPES)}")
    check_onnx(src, config)
    quantize = _import_modelopt("quantize")
    calibration = _check_calibration(calibration, config, "INT8 quantization")
    batch = max(1, min(int(calib_batch), len(calibration)))
    size = config.input_size
    # The realness head (BN + a 1792->1 linear) costs nothing in FP32, and its one
    # output decides real vs fake: kept out of INT8, where OpenVINO's fused kernels
    # flipped the coordinate of 15 of 256 test images.
    nodes = onnx.load(str(src), load_external_data=False).graph.node
    keep = [re.escape(n.name) for n in nodes if any(i.startswith("realness.") for i in n.input)]
    unknown = sorted(set(fp32_layers) - {n.name for n in nodes})
    if unknown:
        raise PrecisionError(f"{src}: no node named {', '.join(unknown)} to keep in FP32 "
                             f"(names as python -m convert.sensitivity prints them)")
    keep += [re.escape(name) for name in fp32_layers]
    with tempfile.TemporaryDirectory(prefix="int8-") as work:
        work = Path(work)
        model_in, model_out = work / "model.onnx", work / "model.int8.onnx"
        shutil.copyfile(src, model_in)
        with _modelopt_quiet("INT8 quantization (ModelOpt)", verbose):
            quantize(
                onnx_path=str(model_in), quantize_mode="int8",
                calibration_data={config.input_name: calibration}, calibration_method=method,
                calibration_shapes=f"{config.input_name}:{batch}x{size}x{size}x3",
                calibration_eps=list(CPU_PROVIDERS), output_path=str(model_out), nodes_to_exclude=keep or None,
                high_precision_dtype=high_precision, direct_io_types=False,
                # Weights stored as INT8 initializers behind a DequantizeLinear (4x smaller
                # file, same arithmetic) instead of FP32 weights behind a Q/DQ pair.
                dq_only=True,
                log_level="INFO" if verbose else "ERROR")
        if not model_out.is_file():
            raise PrecisionError(f"INT8 quantization wrote no model (expected {model_out})")
        proto = onnx.load(str(model_out))
    halved = half_float_weights(proto) if fp32_layers else 0
    check_onnx(proto, config, source=f"{dst} (after quantization)")
    types = describe_types(proto)
    if not types["ops"].get("QuantizeLinear") or not types["ops"].get("DequantizeLinear"):
        raise PrecisionError(f"{dst}: ModelOpt produced no Q/DQ nodes; nothing was quantized")
    save_onnx(proto, dst)
    return {"tool": "modelopt.onnx.quantization", "calibration_method": method,
            "high_precision": high_precision, "fp32_layers": list(fp32_layers),
            "fp32_layer_weights_stored_as_fp16": halved,
            "calibration_images": int(len(calibration)),
            "calibration_batch": batch, "weights": "int8 initializers + DequantizeLinear",
            "providers": list(CPU_PROVIDERS), **types}


def half_float_weights(proto, min_elements: int = 4096) -> int:
    """Store the FP32 weights of Conv/Gemm layers left unquantized as FP16 + a Cast to float.

    The arithmetic stays FP32 (runtimes fold the Cast when they load the
    graph); the file loses half of those weights' bytes: the layers
    ``--int8-fp32-layers`` keeps would otherwise add ~16 MB to a 22 MB INT8
    file. Returns how many weights were stored so.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    readers = collections.Counter(name for n in graph.node for name in n.input)
    casts, done = [], 0
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2:
            continue
        init = inits.get(node.input[1])
        if init is None or init.data_type != TensorProto.FLOAT or readers[init.name] != 1:
            continue
        weight = numpy_helper.to_array(init)
        if weight.size < min_elements:
            continue
        half = numpy_helper.from_array(weight.astype(np.float16), f"{init.name}.fp16")
        init.CopyFrom(half)
        casts.append(helper.make_node("Cast", [half.name], [f"{half.name}.float"], to=TensorProto.FLOAT,
                                      name=f"{node.name}.weight_cast"))
        node.input[1] = f"{half.name}.float"
        done += 1
    # The casts read only initializers: placing them first keeps the graph topologically sorted.
    for cast in reversed(casts):
        graph.node.insert(0, cast)
    return done


def describe_types(proto) -> dict:
    """Op counts and initializer element types: what makes a variant FP16 or INT8."""
    import onnx

    ops = collections.Counter(n.op_type for n in proto.graph.node)
    inits = collections.Counter(onnx.TensorProto.DataType.Name(i.data_type) for i in proto.graph.initializer)
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return {"opset": opset, "nodes": len(proto.graph.node), "ops": dict(sorted(ops.items())),
            "initializer_types": dict(sorted(inits.items()))}


def modelopt_version() -> str:
    try:
        from importlib.metadata import version

        return version("nvidia-modelopt")
    except Exception:
        return ""
