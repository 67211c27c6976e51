"""Face detection: BlazeFace (MediaPipe, full range) through the project's own backends.

The detector is an ONNX file in ``engine/models/detector/`` (made once by
``python -m convert.detector``) whose graph already decodes anchors: it maps
a letterboxed uint8 square ``(B, S, S, 3)`` to ``(B, N*17)`` values (box,
six keypoints, score per anchor, all in ``[0, 1]`` of the square). Host-side
work is only the letterbox, a score threshold and weighted NMS (MediaPipe's
blending: overlapping detections are averaged by score, which steadies the
keypoints the alignment depends on).

Any detector that returns :class:`Face` objects can replace it: the
alignment only needs the four points eyes, nose tip and mouth centre.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

DETECTOR_DIR = Path(__file__).resolve().parent / "models" / "detector"
DEFAULT_DETECTOR = "blazeface_full_range"
VALUES = 17
# MediaPipe's order: eye on the image's left, other eye, nose tip, mouth centre, two ear tragions.
KEYPOINTS = ("left_eye", "right_eye", "nose", "mouth", "left_ear", "right_ear")
ALIGN_POINTS = (0, 1, 2, 3)  # the points with a place in the face template


@dataclass(frozen=True)
class Face:
    """One detected face in source-image pixels."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    score: float
    keypoints: np.ndarray  # (6, 2) x, y in the order of KEYPOINTS

    @property
    def size(self) -> float:
        """Eye-to-mouth span in pixels: how much face the embedding model gets to see."""
        eyes = (self.keypoints[0] + self.keypoints[1]) / 2
        return float(np.linalg.norm(self.keypoints[3] - eyes))

    @property
    def upright(self) -> bool:
        """Whether the mouth sits below the eyes' midpoint, within half the eye distance along the eye line,
        and the face is tilted at most :data:`MAX_TILT` degrees from the image's vertical.

        BlazeFace expects roughly upright faces; on a face turned 90 or 180
        degrees it can still fire, with keypoints that break this. Measured
        by ``python -m bench.upright`` (LFW, UTKFace crops; bench/results/upright.json):
        1 of 1,000 upright LFW detections fails it (the eye-line rule; the
        largest tilt was 29 degrees) and none of 600 UTKFace crops; of
        detections on LFW photos turned 90 degrees clockwise 274 of 278 fail
        it, anticlockwise 206 of 234 (eye-line rule alone: 251 and 88).
        Upside down it refuses only 32 of 151: there BlazeFace places
        upright-looking keypoints on the wrong features.
        """
        return self.eye_line_ok and self.tilt <= MAX_TILT

    @property
    def eye_line_ok(self) -> bool:
        """The mouth below the eyes' midpoint, within half the eye distance along the eye line."""
        e0, e1, _, mouth = self.keypoints[:4].astype(np.float64)
        span = float(np.linalg.norm(e1 - e0))
        if span < 1e-6:
            return False
        u = (e1 - e0) / span
        rel = mouth - (e0 + e1) / 2
        return abs(rel @ u) <= 0.5 * span and rel @ np.array([-u[1], u[0]]) > 0

    @property
    def tilt(self) -> float:
        """Degrees between the mouth-to-eyes direction and the image's up (0 = eyes straight above the mouth)."""
        e0, e1, _, mouth = self.keypoints[:4].astype(np.float64)
        up = (e0 + e1) / 2 - mouth
        return abs(math.degrees(math.atan2(up[0], -up[1])))

    def to_dict(self) -> dict:
        return {"box": [round(float(v), 1) for v in self.box], "score": round(float(self.score), 4),
                "size": round(self.size, 1),
                "keypoints": {k: [round(float(x), 1), round(float(y), 1)] for k, (x, y) in zip(KEYPOINTS, self.keypoints)}}


MAX_TILT = 45.0  # degrees between the eyes-above-mouth direction and the image's vertical (Face.upright)
RETRY_ZOOM = 2  # a photo with no face found is looked at again in a square this many times its longer side
# Tiles are at least this many detector inputs wide: a finer tile only upsamples.
TILE_MIN_INPUTS = 3
# A face whose box is under this share of the photo's longer side is small in the
# detector's view, where BlazeFace's keypoints stray (10-40 px in a 3000 px photo);
# it is looked at again in a square REFINE_FRAMING times its box (LFW's framing).
REFINE_BELOW = 0.25
REFINE_FRAMING = 2.5


def tile_origins(length: int, side: int) -> list[int]:
    """Starts of ``side``-long tiles covering ``[0, length)``, neighbours overlapping by at least a quarter tile."""
    if length <= side:
        return [0]
    n = math.ceil((length - side) / (0.75 * side)) + 1
    return [round(i * (length - side) / (n - 1)) for i in range(n)]


def letterbox(rgb: np.ndarray, size: int, zoom: int = 1) -> tuple[np.ndarray, float, float, float]:
    """Pad to a centred square (``zoom`` x the longer side) with black, resize to ``size``;
    returns (square, scale, pad_x, pad_y).

    A source pixel (x, y) lands at ((x + pad_x) * scale, (y + pad_y) * scale).
    """
    h, w = rgb.shape[:2]
    side = max(h, w) * zoom
    pad_x, pad_y = (side - w) / 2, (side - h) / 2
    scale = size / side
    m = np.array([[scale, 0, pad_x * scale], [0, scale, pad_y * scale]], np.float32)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    square = cv2.warpAffine(rgb, m, (size, size), flags=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return square, scale, pad_x, pad_y


def _shifted(face: Face, x: int, y: int) -> Face:
    """A face found in a tile at (x, y), in the whole image's pixels (float32 sums, as the C++ runner)."""
    box = np.asarray(face.box, np.float32) + np.float32([x, y, x, y])
    return Face(tuple(float(v) for v in box), face.score, face.keypoints + np.float32([x, y]))


def _refine_region(box, w: int, h: int) -> tuple[int, int, int, int] | None:
    """The square :data:`REFINE_FRAMING` times ``box`` around its centre, clipped to the image; None if under 8 px."""
    x0, y0, x1, y1 = (float(v) for v in box)
    half = REFINE_FRAMING * max(x1 - x0, y1 - y0) / 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    region = (max(0, round(cx - half)), max(0, round(cy - half)), min(w, round(cx + half)), min(h, round(cy + half)))
    return region if min(region[2] - region[0], region[3] - region[1]) >= 8 else None


def _whole_in_tile(box, x: int, y: int, side: int, w: int, h: int, margin: float = 2.0) -> bool:
    """Whether ``box`` (tile pixels) keeps clear of every tile edge that is not the image's edge."""
    x0, y0, x1, y1 = box
    return ((x == 0 or x0 > margin) and (y == 0 or y0 > margin)
            and (x + side >= w or x1 < side - margin) and (y + side >= h or y1 < side - margin))


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def weighted_nms(rows: np.ndarray, iou_threshold: float) -> list[np.ndarray]:
    """rows (K, 17) in anchor-decode form; returns blended detections, best first."""
    order = np.argsort(-rows[:, 16])
    rows = rows[order]
    corners = np.stack([rows[:, 0] - rows[:, 2] / 2, rows[:, 1] - rows[:, 3] / 2,
                        rows[:, 0] + rows[:, 2] / 2, rows[:, 1] + rows[:, 3] / 2], axis=1)
    left = np.ones(len(rows), bool)
    out = []
    for i in range(len(rows)):
        if not left[i]:
            continue
        group = left & (_iou(corners[i], corners) >= iou_threshold)
        group[i] = True
        w = rows[group, 16:17]
        blended = (rows[group, :16] * w).sum(0) / w.sum()
        out.append(np.concatenate([blended, rows[i, 16:17]]))
        left &= ~group
    return out


class FaceDetector:
    """BlazeFace over an embedding-style backend (ONNX Runtime, OpenVINO or TensorRT).

    ``detect`` is safe to call from several decode threads: the backend is
    used under a lock (a backend serves one thread at a time), and the
    letterbox and NMS run outside it.
    """

    def __init__(self, backend, *, score_threshold: float = 0.5, iou_threshold: float = 0.3, name: str = DEFAULT_DETECTOR):
        self.backend = backend
        self.size = backend.input_size
        self.anchors = backend.embedding_dim // VALUES
        if self.anchors * VALUES != backend.embedding_dim:
            raise ValueError(f"{backend.model_path}: detector output {backend.embedding_dim} is not N x {VALUES}")
        self.score_threshold, self.iou_threshold, self.name = score_threshold, iou_threshold, name
        self._lock = threading.Lock()

    def _faces(self, raw: np.ndarray, scale: float, pad_x: float, pad_y: float) -> list[Face]:
        rows = raw.reshape(self.anchors, VALUES)
        rows = rows[rows[:, 16] >= self.score_threshold]
        faces = []
        for r in weighted_nms(rows, self.iou_threshold) if len(rows) else []:
            px = self.size / scale  # [0, 1] of the square -> source pixels
            cx, cy, w, h = r[0] * px - pad_x, r[1] * px - pad_y, r[2] * px, r[3] * px
            kps = r[4:16].reshape(6, 2) * px - (pad_x, pad_y)
            faces.append(Face((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), float(r[16]), kps.astype(np.float32)))
        return faces

    def _pass(self, images: list[np.ndarray], zoom: int) -> list[list[Face]]:
        boxed = [letterbox(img, self.size, zoom) for img in images]
        batch = np.stack([b[0] for b in boxed])
        with self._lock:
            raw = self.backend.embed(batch)
        return [self._faces(r, *b[1:]) for r, b in zip(raw, boxed)]

    def detect_batch(self, images: list[np.ndarray]) -> list[list[Face]]:
        """Faces in each uint8 RGB image, best score first (one backend call per pass).

        Images where nothing is found get a second pass, centred in a black
        square :data:`RETRY_ZOOM` times their size: BlazeFace misses a face
        that fills the frame (a tight crop; 32 of 300 UTKFace crops found
        at 1x, 300 at 2x), and the retry costs nothing where the first pass
        finds a face. A large photo still without one is searched in tiles
        (:meth:`_tiled`: a small face in a 12 MP photo). Small faces are then
        detected again at a better scale (:meth:`_refined`), for keypoints
        the alignment can trust.
        """
        if not images:
            return []
        found = self._pass(images, 1)
        missed = [i for i, faces in enumerate(found) if not faces]
        if missed:
            for i, faces in zip(missed, self._pass([images[i] for i in missed], RETRY_ZOOM)):
                found[i] = faces
        for i in [i for i in missed if not found[i]]:
            found[i] = self._tiled(images[i])
        return self._refined(images, found)

    def _refined(self, images: list[np.ndarray], found: list[list[Face]]) -> list[list[Face]]:
        """Small faces (:data:`REFINE_BELOW`) replaced by the detection in a square around each
        (one backend call for all), when one there overlaps the first; else kept as they were."""
        jobs = []
        for i, faces in enumerate(found):
            h, w = images[i].shape[:2]
            for j, face in enumerate(faces):
                region = _refine_region(face.box, w, h)
                if region is not None and max(face.box[2] - face.box[0], face.box[3] - face.box[1]) < REFINE_BELOW * max(h, w):
                    jobs.append((i, j, region))
        if not jobs:
            return found
        again = self._pass([images[i][y0:y1, x0:x1] for i, _, (x0, y0, x1, y1) in jobs], 1)
        out = [list(faces) for faces in found]
        for (i, j, (x0, y0, _, _)), faces in zip(jobs, again):
            if not faces:
                continue
            shifted = [_shifted(f, x0, y0) for f in faces]
            overlap = _iou(np.array(found[i][j].box, np.float64), np.array([f.box for f in shifted], np.float64))
            if overlap.max() >= self.iou_threshold:
                out[i][j] = shifted[int(overlap.argmax())]
        return out

    def _tiled(self, rgb: np.ndarray) -> list[Face]:
        """Faces too small for the whole frame, looked for in overlapping tiles of half, then a
        quarter ... of the longer side (down to :data:`TILE_MIN_INPUTS` detector inputs), one
        backend call per level, stopping at the first level that finds one.

        The whole frame is scaled to the detector's 192 px, where BlazeFace
        needs an eye-to-mouth span of about 6 px: in a 4000 px photo, a face
        under ~120 px. A face larger than a quarter tile was found a level
        before, so the overlap holds it whole in some tile; detections cut by
        a tile's inner edge are dropped and the rest merged by IoU.
        """
        h, w = rgb.shape[:2]
        side = max(h, w) // 2
        while side >= TILE_MIN_INPUTS * self.size:
            tiles = [(x, y) for y in tile_origins(h, side) for x in tile_origins(w, side)]
            found = self._pass([rgb[y:y + side, x:x + side] for x, y in tiles], 1)
            faces = [_shifted(f, x, y) for (x, y), fs in zip(tiles, found)
                     for f in fs if _whole_in_tile(f.box, x, y, side, w, h)]
            if faces:
                faces.sort(key=lambda f: -f.score)
                kept: list[Face] = []
                for f in faces:
                    if not kept or _iou(np.array(f.box), np.array([k.box for k in kept])).max() < self.iou_threshold:
                        kept.append(f)
                return kept
            side //= 2
        return []

    def detect(self, rgb: np.ndarray) -> list[Face]:
        return self.detect_batch([rgb])[0]

    def close(self) -> None:
        self.backend.close()


def detector_path(name: str = DEFAULT_DETECTOR) -> Path:
    """The shipped file for ``name``; only a plain name (ModelConfig checks it), never a path elsewhere."""
    path = DETECTOR_DIR / f"{name}.onnx"
    if path.parent != DETECTOR_DIR or name.startswith("."):
        raise ValueError(f"detector {name!r}: not the name of a shipped detector")
    return path


def open_detector(name: str = DEFAULT_DETECTOR, backend: str = "auto", threads: int | None = None,
                  max_batch: int = 32, plan: str | Path | None = None, **kwargs) -> FaceDetector:
    """Open a shipped detector: ONNX Runtime on the CPU (``auto``), OpenVINO, or TensorRT.

    ``auto`` takes ONNX Runtime on the CPU: measured on the 2-core EPYC,
    it opens in 0.07 s against OpenVINO's 0.95 s compile, at the same speed
    (2.5 vs 2.9 ms/img, one thread), and a two-image call pays the opening.

    ``backend="tensorrt"`` runs ``plan`` (default ``<name>.plan`` beside the
    ONNX file; + its sidecar), built on the target GPU with
    ``python -m convert.tensorrt_build --onnx engine/models/detector/<name>.onnx``.
    """
    from engine.backends import BackendError

    path = detector_path(name)
    if not path.is_file():
        raise BackendError(f"{path}: detector {name!r} not found (shipped: "
                           f"{', '.join(sorted(p.stem for p in DETECTOR_DIR.glob('*.onnx'))) or 'none'})")
    from engine.integrity import verified_detector

    digest = verified_detector(path, name)  # a changed detector would crop anything as a "face"
    size, dim = _io_shape(path, digest)
    if backend == "auto":
        backend = "onnxruntime"
    if backend == "tensorrt":
        from engine.backends.tensorrt_backend import TensorRTBackend

        runner = TensorRTBackend(plan or path.with_suffix(".plan"), max_batch=max_batch,
                                 input_name="images", output_name="detections")
    elif backend == "openvino":
        from engine.backends.openvino_backend import OpenVinoBackend

        runner = OpenVinoBackend(path, input_size=size, embedding_dim=dim, precision="fp32", max_batch=max_batch,
                                 threads=threads, input_name="images", output_name="detections", digest=digest)
    elif backend == "onnxruntime":
        from engine.backends.onnxruntime_backend import OnnxRuntimeBackend

        runner = OnnxRuntimeBackend(path, input_size=size, embedding_dim=dim, precision="fp32", device="cpu",
                                    max_batch=max_batch, threads=threads, input_name="images", output_name="detections",
                                    digest=digest)
    else:
        raise BackendError(f"detector backend {backend!r}: use auto, openvino, onnxruntime or tensorrt")
    return FaceDetector(runner, name=name, **kwargs)


def _io_shape(path: Path, digest: str | None = None) -> tuple[int, int]:
    """(input size, flat output width) read from the ONNX graph (remembered across processes)."""
    from engine.cachedir import remembered

    def read() -> dict:
        from engine import onnx_graph

        g = onnx_graph.read(path)
        return {"size": g.inputs[0].dims[1], "dim": g.outputs[0].dims[1]}

    from engine.integrity import file_digest

    info = remembered("onnx-shapes", digest or file_digest(path), None, read, ("size", "dim"))
    return int(info["size"]), int(info["dim"])
