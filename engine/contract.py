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
import os
from dataclasses import dataclass, field
from pathlib import Path

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
# (x - MEAN) / STD per channel, on 0..255 pixels: maps uint8 to [-1, 1].
PIXEL_MEAN = (127.5, 127.5, 127.5)
PIXEL_STD = (127.5, 127.5, 127.5)


class ContractError(ValueError):
    """A model file or config that breaks the contract; the message names it."""


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
    # warning that the decision is unreliable (measured in the README).
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
        self.pixel_mean = tuple(float(v) for v in self.pixel_mean)
        self.pixel_std = tuple(float(v) for v in self.pixel_std)
        if self.input_size < 32 or self.input_size % 16:
            raise ContractError(f"input_size must be >= 32 and a multiple of 16, got {self.input_size}")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ContractError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")
        if self.align not in ("none", "face"):
            raise ContractError(f"align must be 'none' or 'face', got {self.align!r}")
        if self.align == "face":
            from engine.align import template_points

            try:
                template_points(self.template, self.input_size, self.margin)
            except (ValueError, TypeError) as exc:
                raise ContractError(f"template/margin: {exc}") from None
        if not (isinstance(self.min_face, (int, float)) and self.min_face >= 0):
            raise ContractError(f"min_face must be a number >= 0, got {self.min_face!r}")
        if self.embedding_dim < 1:
            raise ContractError(f"embedding_dim must be positive, got {self.embedding_dim}")
        if self.realness_weight < 0 or (self.realness_weight > 0 and self.embedding_dim < 2):
            raise ContractError(f"realness_weight must be >= 0 (and > 0 needs embedding_dim >= 2), "
                                f"got {self.realness_weight} with embedding_dim {self.embedding_dim}")
        if not self.realness_scale > 0:
            raise ContractError(f"realness_scale must be > 0, got {self.realness_scale}")

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
        except TypeError as exc:
            raise ContractError(f"{source}: {exc}") from None

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ModelConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ContractError(f"{path}: no such file") from None
        except json.JSONDecodeError as exc:
            raise ContractError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(data, str(path))


def write_json_atomic(path: str | os.PathLike, data) -> None:
    """Write JSON via a temporary file and rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def check_onnx(model, config: ModelConfig | None = None, source: str = "model.onnx") -> dict:
    """Check an ONNX model (path or ModelProto) against the contract.

    Returns ``{"input_size", "embedding_dim", "opset"}`` read from the graph;
    raises :class:`ContractError` naming ``source`` on any mismatch: input/
    output names and count, uint8 NHWC input with 3 channels and a square size,
    a dynamic batch dimension, float32 (B, D) output.
    """
    import onnx

    if isinstance(model, (str, os.PathLike)):
        source = str(model)
        try:
            model = onnx.load(str(model), load_external_data=False)
        except Exception as exc:  # protobuf raises several types for garbage
            raise ContractError(f"{source}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ContractError(f"{source}: expected 1 input, found {[i.name for i in inputs]}")
    if len(graph.output) != 1:
        raise ContractError(f"{source}: expected 1 output, found {[o.name for o in graph.output]}")
    inp, out = inputs[0], graph.output[0]
    want_in = config.input_name if config else INPUT_NAME
    want_out = config.output_name if config else OUTPUT_NAME
    if inp.name != want_in:
        raise ContractError(f"{source}: input is named {inp.name!r}, expected {want_in!r}")
    if out.name != want_out:
        raise ContractError(f"{source}: output is named {out.name!r}, expected {want_out!r}")

    def dims(value_info):
        return [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?")
                for d in value_info.type.tensor_type.shape.dim]

    in_type = inp.type.tensor_type.elem_type
    if in_type != onnx.TensorProto.UINT8:
        raise ContractError(f"{source}: input dtype is {onnx.TensorProto.DataType.Name(in_type)}, expected UINT8")
    shape = dims(inp)
    if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2] or not isinstance(shape[1], int):
        raise ContractError(f"{source}: input shape {shape}, expected [batch, S, S, 3] (NHWC, square)")
    if isinstance(shape[0], int):
        raise ContractError(f"{source}: batch dimension is fixed to {shape[0]}, expected dynamic")
    out_type = out.type.tensor_type.elem_type
    if out_type != onnx.TensorProto.FLOAT:
        raise ContractError(f"{source}: output dtype is {onnx.TensorProto.DataType.Name(out_type)}, expected FLOAT")
    oshape = dims(out)
    if len(oshape) != 2 or not isinstance(oshape[1], int):
        raise ContractError(f"{source}: output shape {oshape}, expected [batch, D]")
    size, dim = shape[1], oshape[1]
    if config is not None:
        if size != config.input_size:
            raise ContractError(f"{source}: input size {size}, model.json says {config.input_size}")
        if dim != config.embedding_dim:
            raise ContractError(f"{source}: embedding dim {dim}, model.json says {config.embedding_dim}")
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return {"input_size": size, "embedding_dim": dim, "opset": opset}
