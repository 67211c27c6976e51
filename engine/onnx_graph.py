"""What the runtime reads from an ONNX file (inputs, outputs, opset, op types), without the ``onnx`` package.

An ONNX file is one protobuf ``ModelProto``. The runtime needs only its
interface, to check it against the contract before opening a backend, and
``import onnx`` is slow on a first call (1.4 s in a fresh venv on the 2-core
EPYC, most of it its ``ml_dtypes`` dependency) and 17 MB more to install. So
the few fields are read here straight from the protobuf wire format, from a
memory map: weights (``raw_data``) are skipped by length, never read. Field
numbers are those of ``onnx/onnx.proto``. :func:`from_proto` gives the same
summary for an in-memory ``onnx.ModelProto`` (what ``convert/`` holds).
"""
from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path

# TensorProto.DataType values used by the contract
FLOAT, UINT8, FLOAT16 = 1, 2, 10
DTYPE_NAMES = {0: "UNDEFINED", 1: "FLOAT", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64",
               8: "STRING", 9: "BOOL", 10: "FLOAT16", 11: "DOUBLE", 12: "UINT32", 13: "UINT64", 16: "BFLOAT16"}


@dataclass
class Value:
    """A graph input or output: name, element type and dims (an int, a symbolic name, or "?" for unknown)."""

    name: str
    elem_type: int = 0
    dims: list = field(default_factory=list)


@dataclass
class GraphInfo:
    inputs: list[Value] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    initializers: set[str] = field(default_factory=set)
    initializer_types: set[int] = field(default_factory=set)
    op_types: set[str] = field(default_factory=set)
    opset: int = 0  # the default ("" / ai.onnx) domain's version


class ProtobufError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ProtobufError(f"truncated or overlong varint at byte {pos}")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf, start: int, end: int):
    """(field number, value) of each field in ``buf[start:end]``: an int for varints, a (start, end) span for
    length-delimited fields; fixed-width fields are skipped."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtobufError(f"field number 0 at byte {pos}")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, value
        elif wire == 2:
            size, pos = _varint(buf, pos, end)
            if pos + size > end:
                raise ProtobufError(f"a field of {size} bytes runs past its message at byte {pos}")
            yield number, (pos, pos + size)
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > end:
                raise ProtobufError("a fixed-width field runs past its message")
        else:
            raise ProtobufError(f"unsupported wire type {wire} at byte {pos}")


def _text(buf, span) -> str:
    return bytes(buf[span[0]:span[1]]).decode("utf-8", "replace")


def _value(buf, span) -> Value:
    """ValueInfoProto: name 1, type 2 -> TypeProto.tensor_type 1 -> elem_type 1, shape 2 -> dim 1 ->
    dim_value 1 / dim_param 2."""
    out = Value("")
    for n, v in _fields(buf, *span):
        if n == 1 and isinstance(v, tuple):
            out.name = _text(buf, v)
        elif n == 2 and isinstance(v, tuple):
            for tn, tv in _fields(buf, *v):
                if tn != 1 or not isinstance(tv, tuple):
                    continue
                for en, ev in _fields(buf, *tv):
                    if en == 1 and isinstance(ev, int):
                        out.elem_type = ev
                    elif en == 2 and isinstance(ev, tuple):
                        for sn, sv in _fields(buf, *ev):
                            if sn == 1 and isinstance(sv, tuple):
                                out.dims.append(_dim(buf, sv))
    return out


def _dim(buf, span):
    dim = "?"
    for n, v in _fields(buf, *span):
        if n == 1 and isinstance(v, int):
            dim = v - (1 << 64) if v >= 1 << 63 else v
        elif n == 2 and isinstance(v, tuple):
            dim = _text(buf, v) or dim
    return dim


def _graph(buf, span, info: GraphInfo) -> None:
    """GraphProto: node 1 (op_type 4), initializer 5 (data_type 2, name 8), input 11, output 12."""
    for n, v in _fields(buf, *span):
        if not isinstance(v, tuple):
            continue
        if n == 1:
            for nn, nv in _fields(buf, *v):
                if nn == 4 and isinstance(nv, tuple):
                    info.op_types.add(_text(buf, nv))
        elif n == 5:
            for tn, tv in _fields(buf, *v):
                if tn == 2 and isinstance(tv, int):
                    info.initializer_types.add(tv)
                elif tn == 8 and isinstance(tv, tuple):
                    info.initializers.add(_text(buf, tv))
        elif n == 11:
            info.inputs.append(_value(buf, v))
        elif n == 12:
            info.outputs.append(_value(buf, v))


def parse(buf) -> GraphInfo:
    """Summarise a serialised ModelProto (bytes, or a memory map): graph 7, opset_import 8 (domain 1, version 2)."""
    info = GraphInfo()
    graphs = 0
    for n, v in _fields(buf, 0, len(buf)):
        if n == 7 and isinstance(v, tuple):
            _graph(buf, v, info)
            graphs += 1
        elif n == 8 and isinstance(v, tuple):
            domain, version = "", 0
            for on, ov in _fields(buf, *v):
                if on == 1 and isinstance(ov, tuple):
                    domain = _text(buf, ov)
                elif on == 2 and isinstance(ov, int):
                    version = ov
            if domain in ("", "ai.onnx"):
                info.opset = max(info.opset, version)
    if not graphs:
        raise ProtobufError("no graph in the file")
    return info


def read(path: str | Path) -> GraphInfo:
    """:func:`parse` of the file at ``path`` (memory-mapped: only the bytes of the fields read are touched)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise ProtobufError("empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return parse(mm)


def from_proto(model) -> GraphInfo:
    """The same summary of an ``onnx.ModelProto`` held in memory."""
    graph = model.graph

    def value(vi) -> Value:
        dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?")
                for d in vi.type.tensor_type.shape.dim]
        return Value(vi.name, vi.type.tensor_type.elem_type, dims)

    return GraphInfo(inputs=[value(i) for i in graph.input], outputs=[value(o) for o in graph.output],
                     initializers={i.name for i in graph.initializer},
                     initializer_types={i.data_type for i in graph.initializer},
                     op_types={node.op_type for node in graph.node},
                     opset=max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0))
