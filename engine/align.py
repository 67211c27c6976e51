"""Face alignment: one similarity warp from detected keypoints to a canonical template.

A template is four points (the eye on the image's left, the other eye, nose
tip, mouth centre) in the coordinates of a 112x112 crop, the field's
reference size; it is scaled to the model's input size, and ``margin``
widens the crop around its centre (margin 1.0 shows twice the side, with
the face at half the size). The transform is the least-squares similarity
(rotation, uniform scale, translation: Umeyama 1991, closed form), so a
tilted or rotated face comes out upright, and one ``cv2.warpAffine`` makes
the crop.
"""
from __future__ import annotations

import cv2
import numpy as np

REFERENCE_SIZE = 112
# ArcFace's 5-point template at 112x112 (eyes, nose, mouth corners), with the
# mouth corners averaged to the mouth centre that BlazeFace reports.
ARCFACE = ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (56.1396, 92.2848))
# Mean BlazeFace keypoints of 999 LFW deep-funneled photos (1,000 sampled,
# seed 0) in the frame of their centre crop (half the 250 px side) resized to
# 112: the view the first bundled models were trained on (crop_fraction 0.5).
# Measured by ``python -m training.template`` (its docstring has the command).
LFW_CENTRE = ((37.8, 46.1), (75.6, 45.7), (57.2, 68.6), (57.5, 88.1))
# Where dlib's face chip (``get_face_chip(size=150, padding=0.25)``, the input of
# its recognizer) puts BlazeFace's keypoints, scaled to 112: the mean over 395
# LFW photos of the keypoints detected on dlib's chips, measured by
# ``python -m training.teachers.chip_template``. The distillation teacher's view.
DLIB_CHIP = ((34.4, 34.4), (76.0, 34.3), (55.3, 59.6), (55.4, 80.1))
TEMPLATES = {"arcface": ARCFACE, "lfw-centre": LFW_CENTRE, "dlib-chip": DLIB_CHIP}


def check_template(pts) -> None:
    """Refuse 4 points that do not describe an upright face in the 112 px frame.

    A template of identical, collinear or tiny points warps every photo to the
    same few pixels, and then every pair "matches" (measured: 0.997). The
    rules, in reference pixels: inside the frame; the first eye left of the
    second, 11 to 101 px apart, the eye line tilted at most 1:2; the nose
    below the eyes and the mouth below the nose, the mouth at least 11 px
    below the eyes, both between the eyes horizontally. The shipped templates
    pass with room to spare (eyes 35-42 px apart, mouth 40-46 px below them).
    The C++ runner applies the same rules (cpp/src/config.cpp).
    """
    pts = np.asarray(pts, np.float64)
    if pts.shape != (4, 2):
        raise ValueError(f"a template is 4 (x, y) points, got shape {pts.shape}")
    (lx, ly), (rx, ry), (nx, ny), (mx, my) = pts
    ref = float(REFERENCE_SIZE)
    eyes_y = (ly + ry) / 2
    problems = [
        (not ((pts >= 0) & (pts <= ref)).all(), f"points must lie inside the {REFERENCE_SIZE} px frame"),
        (not lx < rx, "the first eye must be left of the second"),
        (not 0.1 * ref <= np.hypot(rx - lx, ry - ly) <= 0.9 * ref,
         f"the eyes must be {0.1 * ref:g} to {0.9 * ref:g} px apart"),
        (abs(ry - ly) > 0.5 * abs(rx - lx), "the eye line must be within 1:2 of horizontal"),
        (not eyes_y < ny < my, "the nose must be below the eyes and the mouth below the nose"),
        (my - eyes_y < 0.1 * ref, f"the mouth must be at least {0.1 * ref:g} px below the eyes"),
        (not (lx <= nx <= rx and lx <= mx <= rx), "the nose and mouth must lie between the eyes horizontally"),
    ]
    for bad, why in problems:
        if bad:
            raise ValueError(f"not a face template: {why}")


def template_points(template, size: int, margin: float = 0.0) -> np.ndarray:
    """(4, 2) float64 template for a ``size`` px crop, widened by ``margin`` around the centre."""
    if isinstance(template, str) and template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; known: {', '.join(TEMPLATES)}")
    pts = np.asarray(TEMPLATES[template] if isinstance(template, str) else template, np.float64)
    check_template(pts)
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    centre = REFERENCE_SIZE / 2
    return ((pts - centre) / (1.0 + margin) + centre) * (size / REFERENCE_SIZE)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 matrix of the similarity that maps ``src`` points onto ``dst`` in least squares.

    Umeyama's closed form, reflections excluded; exact when the points are a
    similarity image of each other.
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need matching (N>=2, 2) point sets, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s ** 2).sum() / len(src)
    if var_s < 1e-12:
        raise ValueError("source points coincide: no transform")
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1] = -1
    rot = u @ np.diag(sign) @ vt
    scale = (sig * sign).sum() / var_s
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def warp(rgb: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` x ``size`` crop seen through ``matrix`` (source -> crop); outside is black."""
    # Bilinear sampling aliases when it shrinks by more than 2x (a face in a
    # large photo): shrink the photo first with INTER_AREA and fold that into
    # the matrix (an area pixel i covers source [i*f, (i+1)*f), centre (i+0.5)*f-0.5).
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    factor = int(0.5 / scale) if scale > 0 else 1
    if factor >= 2:
        h, w = rgb.shape[:2]
        rgb = cv2.resize(rgb, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)
        fx, fy = w / rgb.shape[1], h / rgb.shape[0]
        a = matrix[:, :2]
        matrix = np.concatenate([a @ np.diag([fx, fy]), (a @ [0.5 * fx - 0.5, 0.5 * fy - 0.5] + matrix[:, 2])[:, None]], 1)
    return cv2.warpAffine(rgb, matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def align_face(rgb: np.ndarray, keypoints: np.ndarray, size: int, template="arcface", margin: float = 0.0) -> np.ndarray:
    """Crop of ``size`` px with the face's four keypoints on the template."""
    m = similarity_transform(np.asarray(keypoints)[:4], template_points(template, size, margin))
    return warp(rgb, m, size)
