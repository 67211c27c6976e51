"""The model's input/output contract, defined once.

A model takes uint8 RGB NHWC images of a fixed square size and a dynamic batch
and returns L2-normalised float32 embeddings (B, D). Normalisation happens
inside the model (PyTorch module and exported ONNX graph alike), so the only
host-side work is :mod:`engine.preprocess`. ``model.json`` carries this
contract from training through conversion to the runtime.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from engine.files import FileRefused, read_regular, write_atomic

# model.json with its canary embeddings is ~65 kB; the limit keeps a hostile one from filling memory.
MAX_CONFIG_BYTES = 16 * 1024 * 1024
_DETECTOR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
# (x - MEAN) / STD per channel, on 0..255 pixels: maps uint8 to [-1, 1].
PIXEL_MEAN = (127.5, 127.5, 127.5)
PIXEL_STD = (127.5, 127.5, 127.5)


class ModelError(Exception):
    """A model that cannot be used here (the Python API's one type for it): :class:`ContractError` for its files,
    ``engine.backends.BackendError`` for the backend that would run it."""


class ContractError(ModelError, ValueError):
    """A model file or config that breaks the contract; the message names it."""


# Bounds on what model.json may ask of the runtime: past these, buffers or the
# alignment stop making sense (a 1024 px input is 9x the largest model here; a
# margin of 4 shows 5x the face's side, leaving it a few pixels wide).
MAX_INPUT_SIZE = 1024
MAX_EMBEDDING_DIM = 65536
MAX_MARGIN = 4.0


def _short(value) -> str:
    """repr(value), shortened for a one-line message."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digit limit for str()
        return "<a huge number>"
    return text if len(text) <= 60 else text[:57] + "..."


def _show(value) -> str:
    """A value for a one-line error message: shortened repr and type."""
    return f"{_short(value)} ({type(value).__name__})"


def _is_bool(value) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy's bool is no number either


def _number(name: str, value, low: float | None = None, high: float | None = None) -> float:
    """A finite real number (not a bool, not a string) within [low, high], as a float."""
    where = (f" in [{low:g}, {high:g}]" if low is not None and high is not None else
             f" >= {low:g}" if low is not None else f" <= {high:g}" if high is not None else "")
    try:
        number = None if _is_bool(value) or not isinstance(value, numbers.Real) else float(value)
    except OverflowError:  # an integer beyond any float
        number = None
    if number is None or not math.isfinite(number):
        raise ContractError(f"{name} must be a finite number{where}, got {_show(value)}")
    if (low is not None and number < low) or (high is not None and number > high):
        raise ContractError(f"{name} must be{where}, got {_short(value)}")
    return number


def _integer(name: str, value, low: int, high: int) -> int:
    if _is_bool(value) or not isinstance(value, numbers.Integral):
        raise ContractError(f"{name} must be an integer, got {_show(value)}")
    if not low <= value <= high:
        raise ContractError(f"{name} must be in [{low}, {high}], got {_short(value)}")
    return int(value)


def _text(name: str, value) -> str:
    if not isinstance(value, str) or not value:
        raise ContractError(f"{name} must be a non-empty string, got {_show(value)}")
    return value


def _triple(name: str, value) -> tuple[float, float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ContractError(f"{name} must be 3 numbers (R, G, B), got {_show(value)}")
    return tuple(_number(f"{name}[{k}]", v) for k, v in enumerate(value))


def _template(value):
    """A template name, or 4 (x, y) points of finite numbers (checked further by engine.align)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, (list, tuple)) or len(value) != 4 or \
            not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
        raise ContractError(f"template must be a name or 4 (x, y) points, got {_show(value)}")
    return [[_number(f"template[{k}][{j}]", v) for j, v in enumerate(p)] for k, p in enumerate(value)]


@dataclass
class ModelConfig:
    """What ``model.json`` holds: enough to rebuild, feed and judge a model."""

    arch: str = "resnet34"
    input_size: int = 112
    # Share of the image's short side kept by the centre crop (engine.preprocess),
    # used when align is "none".
    crop_fraction: float = 1.0
    # How a photo becomes the model's input (engine.preprocess.Preprocessor):
    # "face" = detect the face (detector, a file in engine/models/detector/) and
    # warp its eyes, nose and mouth onto template (a name in engine.align.TEMPLATES
    # or 4 (x, y) points at 112 px), widened by margin; "none" = centre crop
    # (already aligned crops, and models made before detection existed).
    align: str = "none"
    detector: str = "blazeface_full_range"
    template: str | list = "arcface"
    margin: float = 0.0
    # Faces whose eye-to-mouth span is below this many source pixels get a
    # warning that the decision is unreliable (measured in docs/data.md).
    min_face: float = 16.0
    embedding_dim: int = 512
    # Weight of the realness coordinate: > 0 means the last of the embedding_dim
    # outputs is realness_weight * tanh(realness_scale * (logit + realness_bias))
    # for the model's real-vs-fake logit (then the whole vector is
    # L2-normalised), so a fake scores low against a real photo of the same
    # person even when the identity part matches. 0 = identity only. Scale
    # and bias are calibrated on validation pairs (training.realness).
    realness_weight: float = 0.0
    realness_scale: float = 0.5
    realness_bias: float = 0.0
    pixel_mean: tuple[float, float, float] = PIXEL_MEAN
    pixel_std: tuple[float, float, float] = PIXEL_STD
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    layout: str = "NHWC"
    dtype: str = "uint8"
    colour: str = "RGB"
    # Cosine-similarity decision threshold, calibrated on validation pairs.
    threshold: float | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        # Every value the runtime reads is checked here, so a hand-edited model.json fails
        # when it is loaded, naming the key, instead of deep inside a run (a threshold
        # "0.5" compared with a float, NaN deciding nothing, a bool taken for 1).
        self.arch = _text("arch", self.arch)
        # Any square size a network was made for (dlib's is 150); no multiple-of-16 rule.
        self.input_size = _integer("input_size", self.input_size, 32, MAX_INPUT_SIZE)
        self.crop_fraction = _number("crop_fraction", self.crop_fraction)
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ContractError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")
        if self.align not in ("none", "face"):
            raise ContractError(f"align must be 'none' or 'face', got {_show(self.align)}")
        self.detector = _text("detector", self.detector)
        if not _DETECTOR_NAME.fullmatch(self.detector):  # a path here would load any .onnx on the disk
            raise ContractError(f"detector must be the name of a shipped detector (a file in engine/models/detector/, "
                                f"letters, digits, '_', '-', '.'), got {_show(self.detector)}")
        self.template = _template(self.template)
        self.margin = _number("margin", self.margin, 0.0, MAX_MARGIN)
        if not isinstance(self.template, str):  # point templates are checked even where align is none
            from engine.align import check_template

            try:
                check_template(self.template)
            except ValueError as exc:
                raise ContractError(f"template: {exc}") from None
        from engine.align import template_points  # align none too: the runtime's second look aligns a crop's face

        try:
            template_points(self.template, self.input_size, self.margin)
        except (ValueError, TypeError) as exc:
            raise ContractError(f"template/margin: {exc}") from None
        self.min_face = _number("min_face", self.min_face, 0.0)
        self.embedding_dim = _integer("embedding_dim", self.embedding_dim, 1, MAX_EMBEDDING_DIM)
        self.realness_weight = _number("realness_weight", self.realness_weight, 0.0)
        if self.realness_weight > 0 and self.embedding_dim < 2:
            raise ContractError(f"realness_weight must be >= 0 (and > 0 needs embedding_dim >= 2), "
                                f"got {self.realness_weight} with embedding_dim {self.embedding_dim}")
        self.realness_scale = _number("realness_scale", self.realness_scale)
        if not self.realness_scale > 0:
            raise ContractError(f"realness_scale must be > 0, got {self.realness_scale}")
        self.realness_bias = _number("realness_bias", self.realness_bias)
        self.pixel_mean = _triple("pixel_mean", self.pixel_mean)
        self.pixel_std = _triple("pixel_std", self.pixel_std)
        if min(self.pixel_std) <= 0:
            raise ContractError(f"pixel_std must be > 0, got {list(self.pixel_std)}")
        self.input_name = _text("input_name", self.input_name)
        self.output_name = _text("output_name", self.output_name)
        for name, fixed in (("layout", "NHWC"), ("dtype", "uint8"), ("colour", "RGB")):
            if getattr(self, name) != fixed:  # what every backend feeds; anything else is another contract
                raise ContractError(f"{name} must be {fixed!r}, got {_show(getattr(self, name))}")
        if self.threshold is not None:
            self.threshold = _number("threshold", self.threshold, -1.0, 1.0)
        if not isinstance(self.extra, dict):
            raise ContractError(f"extra must be a JSON object, got {_show(self.extra)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "model.json") -> "ModelConfig":
        if not isinstance(data, dict):
            raise ContractError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ContractError(f"{source}: unknown keys {unknown}")
        try:
            return cls(**data)
        except (TypeError, ContractError) as exc:
            raise ContractError(f"{source}: {exc}") from None

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ModelConfig":
        path = Path(path)
        try:
            data = json.loads(read_regular(path, MAX_CONFIG_BYTES, "a model.json").decode("utf-8"))
        except FileRefused as exc:
            raise ContractError(str(exc)) from None
        except UnicodeDecodeError as exc:
            raise ContractError(f"{path}: not UTF-8 text ({exc.reason})") from None
        except ValueError as exc:  # JSONDecodeError, and ints past Python's digit limit
            raise ContractError(f"{path}: not valid JSON ({exc})") from None
        except RecursionError:
            raise ContractError(f"{path}: JSON nested too deeply") from None
        except OSError as exc:
            raise ContractError(f"{path}: cannot read ({exc.strerror or exc})") from None
        return cls.from_dict(data, str(path))


def write_json_atomic(path: str | os.PathLike, data) -> None:
    """Write JSON via a temporary file and rename, so readers never see half a file."""
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


def read_onnx(path) -> "onnx_graph.GraphInfo":
    """The interface of the ONNX file at ``path``; :class:`ContractError` naming it when it is not one."""
    from engine import onnx_graph

    try:
        return onnx_graph.read(path)
    except (OSError, ValueError) as exc:
        raise ContractError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None


def check_onnx(model, config: ModelConfig | None = None, source: str = "model.onnx") -> dict:
    """Check an ONNX model (path, ModelProto or :class:`engine.onnx_graph.GraphInfo`) against the contract.

    Returns ``{"input_size", "embedding_dim", "opset"}`` read from the graph;
    raises :class:`ContractError` naming ``source`` on any mismatch: input/
    output names and count, uint8 NHWC input with 3 channels and a square size,
    a dynamic batch dimension, float32 (B, D) output.
    """
    from engine import onnx_graph

    if isinstance(model, (str, os.PathLike)):
        source = str(model)
        info = read_onnx(model)
    elif isinstance(model, onnx_graph.GraphInfo):
        info = model
    else:  # an onnx.ModelProto in memory
        info = onnx_graph.from_proto(model)
    inputs = [i for i in info.inputs if i.name not in info.initializers]
    if len(inputs) != 1:
        raise ContractError(f"{source}: expected 1 input, found {[i.name for i in inputs]}")
    if len(info.outputs) != 1:
        raise ContractError(f"{source}: expected 1 output, found {[o.name for o in info.outputs]}")
    inp, out = inputs[0], info.outputs[0]
    want_in = config.input_name if config else INPUT_NAME
    want_out = config.output_name if config else OUTPUT_NAME
    if inp.name != want_in:
        raise ContractError(f"{source}: input is named {inp.name!r}, expected {want_in!r}")
    if out.name != want_out:
        raise ContractError(f"{source}: output is named {out.name!r}, expected {want_out!r}")

    def dtype(code: int) -> str:
        return onnx_graph.DTYPE_NAMES.get(code, str(code))

    if inp.elem_type != onnx_graph.UINT8:
        raise ContractError(f"{source}: input dtype is {dtype(inp.elem_type)}, expected UINT8")
    shape = inp.dims
    if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2] or not isinstance(shape[1], int):
        raise ContractError(f"{source}: input shape {shape}, expected [batch, S, S, 3] (NHWC, square)")
    if isinstance(shape[0], int):
        raise ContractError(f"{source}: batch dimension is fixed to {shape[0]}, expected dynamic")
    if out.elem_type != onnx_graph.FLOAT:
        raise ContractError(f"{source}: output dtype is {dtype(out.elem_type)}, expected FLOAT")
    oshape = out.dims
    if len(oshape) != 2 or not isinstance(oshape[1], int):
        raise ContractError(f"{source}: output shape {oshape}, expected [batch, D]")
    size, dim = shape[1], oshape[1]
    if config is not None:
        if size != config.input_size:
            raise ContractError(f"{source}: input size {size}, model.json says {config.input_size}")
        if dim != config.embedding_dim:
            raise ContractError(f"{source}: embedding dim {dim}, model.json says {config.embedding_dim}")
    return {"input_size": size, "embedding_dim": dim, "opset": info.opset}
