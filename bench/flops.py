"""FLOPs counted from an ONNX graph: the work a backend must do per image.

Only convolutions and matrix products are counted (each multiply-accumulate
= 2 FLOPs, the convention of trtexec, fvcore and papers' "GFLOPs" x2);
element-wise ops, pooling and normalisation are < 1% of a ResNet and memory-
rather than compute-bound, so they do not belong in a compute-peak ratio.

Quantised graphs count the same way: a Q/DQ ``Conv`` reads its weight shape
through the ``DequantizeLinear`` in front of it, and the integer operators
(``QLinearConv``, ``ConvInteger``, ``QLinearMatMul``, ``MatMulInteger``) are
read from their own input positions. So the FP32, FP16 and INT8 files of one
model report the same count, and achieved ops/s compare across precisions.
"""
from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field

# op type -> (index of the data input, index of the weight input)
_CONV_OPS = {"Conv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3)}
_MATMUL_OPS = {"MatMul": (0, 1), "Gemm": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3)}


class FlopCountError(ValueError):
    """The graph cannot be counted (missing shapes, unreadable file); the message names it."""


@dataclass
class FlopCount:
    """Multiply-accumulates and FLOPs for ``batch`` images, with a per-op-type breakdown."""

    batch: int
    macs: int
    by_op: dict[str, int] = field(default_factory=dict)  # op type -> MACs
    nodes: int = 0  # counted nodes

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def flops_per_image(self) -> float:
        return self.flops / self.batch

    def to_dict(self) -> dict:
        return {"batch": self.batch, "macs": self.macs, "flops": self.flops,
                "gflops_per_image": self.flops_per_image / 1e9, "counted_nodes": self.nodes,
                "macs_by_op": dict(self.by_op)}


def _load(model, source: str):
    import onnx

    if isinstance(model, (str, os.PathLike)):
        source = str(model)
        try:
            # Shapes only: the weights' values are never needed, so external data stays on disk.
            model = onnx.load(source, load_external_data=False)
        except Exception as exc:
            raise FlopCountError(f"{source}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    return model, source


def _fix_batch(model, batch: int):
    """A copy of ``model`` whose graph inputs have a concrete batch (dim 0)."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].ClearField("dim_param")
            dims[0].dim_value = batch
    return model


def _shapes(model) -> dict[str, list]:
    """Every tensor's shape as far as ONNX shape inference gets (ints, or None where unknown)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # inference is best effort: fall back to what the file declares
        inferred = model
    shapes: dict[str, list] = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                               for d in vi.type.tensor_type.shape.dim]
    for init in g.initializer:
        shapes[init.name] = list(init.dims)
    # A Q/DQ weight is DequantizeLinear(initializer): same shape as the initializer.
    for node in g.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in shapes and node.output[0] not in shapes:
            shapes[node.output[0]] = shapes[node.input[0]]
    return shapes


def _known(shape) -> bool:
    return shape is not None and all(isinstance(d, int) and d > 0 for d in shape)


def _attr(node, name, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _conv_output_spatial(node, in_shape, w_shape) -> list[int]:
    """Output spatial size from the attributes, for graphs where inference left it unknown."""
    kernel = list(w_shape[2:])
    nd = len(kernel)
    strides = _attr(node, "strides") or [1] * nd
    dilations = _attr(node, "dilations") or [1] * nd
    pads = _attr(node, "pads") or [0] * (2 * nd)
    auto_pad = _attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    out = []
    for i in range(nd):
        size = in_shape[2 + i]
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out.append(math.ceil(size / strides[i]))
            continue
        eff = dilations[i] * (kernel[i] - 1) + 1
        out.append((size + pads[i] + pads[i + nd] - eff) // strides[i] + 1)
    return out


def _conv_macs(node, shapes, source) -> int:
    data_idx, w_idx = _CONV_OPS[node.op_type]
    x, w = shapes.get(node.input[data_idx]), shapes.get(node.input[w_idx])
    if not _known(w) or not _known(x):
        raise FlopCountError(f"{source}: cannot count {node.op_type} node {node.name!r}: "
                             f"input shape {x}, weight shape {w} not known")
    out = shapes.get(node.output[0])
    spatial = out[2:] if _known(out) else _conv_output_spatial(node, x, w)
    # MACs = N * C_out * prod(out spatial) * (C_in / groups) * prod(kernel); w is (C_out, C_in/groups, k...)
    return x[0] * math.prod(spatial) * math.prod(w)


def _matmul_macs(node, shapes, source) -> int:
    a_idx, b_idx = _MATMUL_OPS[node.op_type]
    a, b = shapes.get(node.input[a_idx]), shapes.get(node.input[b_idx])
    if not _known(a) or not _known(b):
        raise FlopCountError(f"{source}: cannot count {node.op_type} node {node.name!r}: "
                             f"shapes {a} x {b} not known")
    if node.op_type == "Gemm":
        m, k = (a[1], a[0]) if _attr(node, "transA", 0) else (a[0], a[1])
        n = b[0] if _attr(node, "transB", 0) else b[1]
        return m * n * k
    # MatMul broadcasts leading dims; 1-D operands are promoted as numpy does.
    a2 = [1] + a if len(a) == 1 else a
    b2 = b + [1] if len(b) == 1 else b
    lead_a, lead_b = a2[:-2], b2[:-2]
    width = max(len(lead_a), len(lead_b))
    lead_a = [1] * (width - len(lead_a)) + lead_a
    lead_b = [1] * (width - len(lead_b)) + lead_b
    batch = math.prod(max(p, q) for p, q in zip(lead_a, lead_b))
    return batch * a2[-2] * a2[-1] * b2[-1]


def count_flops(model, batch: int = 1, source: str = "model.onnx") -> FlopCount:
    """Count conv/matmul MACs of an ONNX model (path or ``ModelProto``) at ``batch`` images.

    The graph's dynamic batch dimension is fixed to ``batch`` before shape
    inference; raises :class:`FlopCountError` naming the file when a counted
    node's shapes stay unknown (a silent zero would make every GFLOP/s wrong).
    Nodes inside subgraphs (If/Loop) are not counted.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    model, source = _load(model, source)
    model = _fix_batch(model, batch)
    shapes = _shapes(model)
    by_op: Counter = Counter()
    nodes = 0
    for node in model.graph.node:
        if node.op_type in _CONV_OPS:
            by_op[node.op_type] += _conv_macs(node, shapes, source)
        elif node.op_type in _MATMUL_OPS:
            by_op[node.op_type] += _matmul_macs(node, shapes, source)
        else:
            continue
        nodes += 1
    return FlopCount(batch=batch, macs=int(sum(by_op.values())), by_op=dict(by_op), nodes=nodes)


def torch_model_flops(config, batch: int = 1) -> FlopCount:
    """FLOPs of the project's PyTorch model for ``config`` (a ``ModelConfig``), via a temporary ONNX export.

    For the torch backend when no ONNX file is at hand: the same counting
    rules as for the files, so the numbers agree.
    """
    import io

    import onnx
    import torch

    from nets.model import get_model

    model = get_model(config).eval()
    x = torch.zeros((1, config.input_size, config.input_size, 3), dtype=torch.uint8)
    buf = io.BytesIO()
    torch.onnx.export(model, (x,), buf, input_names=[config.input_name], output_names=[config.output_name],
                      dynamic_axes={config.input_name: {0: "batch"}}, opset_version=17, dynamo=False)
    return count_flops(onnx.load_from_string(buf.getvalue()), batch=batch, source=f"{config.arch} (torch)")
