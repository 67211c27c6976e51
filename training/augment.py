"""Training augmentation with OpenCV/numpy on preprocessed uint8 RGB images.

Works on the output of :func:`engine.preprocess.load_image` (square uint8
HWC), keeps its size and dtype, and draws every random number from the
``numpy.random.Generator`` it is given, so a batch's augmentation is a pure
function of the sampler's seeds (which makes ``--resume`` exact and workers
irrelevant). Evaluation never calls this module.
"""
from __future__ import annotations

import cv2
import numpy as np

from training.config import AugmentConfig


def flip(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img[:, ::-1])


def affine(img: np.ndarray, rng: np.random.Generator, rotate_deg: float, scale: float, shift: float) -> np.ndarray:
    """Small rotation, zoom and shift about the centre; borders reflect (no black corners)."""
    size = img.shape[0]
    angle = rng.uniform(-rotate_deg, rotate_deg)
    zoom = rng.uniform(1.0 - scale, 1.0 + scale)
    tx, ty = rng.uniform(-shift, shift, 2) * size
    m = cv2.getRotationMatrix2D((size / 2.0, size / 2.0), angle, zoom)
    m[:, 2] += (tx, ty)
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def colour_jitter(img: np.ndarray, rng: np.random.Generator, brightness: float, contrast: float,
                  saturation: float) -> np.ndarray:
    """Brightness, contrast and saturation factors, applied in a random order."""
    x = img.astype(np.float32)
    ops = rng.permutation(3)
    factors = (rng.uniform(1 - brightness, 1 + brightness), rng.uniform(1 - contrast, 1 + contrast),
               rng.uniform(1 - saturation, 1 + saturation))
    for op in ops:
        f = factors[op]
        if op == 0:
            x = x * f
        elif op == 1:
            x = (x - x.mean()) * f + x.mean()
        else:
            grey = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            x = (x - grey[..., None]) * f + grey[..., None]
        x = np.clip(x, 0, 255)
    return np.rint(x).astype(np.uint8)


def grayscale(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """Re-encode and decode as JPEG (the artefacts real uploads carry)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 RGB
        return img
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(img, (0, 0), sigmaX=max(sigma, 1e-3))


def augment(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """One random augmentation of ``img`` (uint8 RGB SxSx3); same shape and dtype out.

    Geometry first, then photometric changes, then the compression/blur a
    real capture pipeline adds last. Each step draws its coin even when its
    probability is 0, so changing one probability does not reshuffle the
    random numbers of the others.
    """
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"augment expects uint8 HxWx3, got {img.dtype} {img.shape}")
    coins = rng.random(6)
    out = img
    if coins[0] < cfg.flip_p:
        out = flip(out)
    if coins[1] < cfg.affine_p:
        out = affine(out, rng, cfg.rotate_deg, cfg.scale, cfg.shift)
    if coins[2] < cfg.color_p:
        out = colour_jitter(out, rng, cfg.brightness, cfg.contrast, cfg.saturation)
    if coins[3] < cfg.grayscale_p:
        out = grayscale(out)
    if coins[4] < cfg.jpeg_p:
        out = jpeg(out, rng.integers(cfg.jpeg_quality_min, cfg.jpeg_quality_max + 1))
    if coins[5] < cfg.blur_p:
        # sigma is in pixels of a 112 px image: the same relative blur at any size (the teacher's 150 px view)
        out = blur(out, rng.uniform(0.1, max(cfg.blur_sigma_max, 0.1)) * out.shape[0] / 112)
    return np.ascontiguousarray(out)


def no_augment() -> AugmentConfig:
    """A config with every probability 0: :func:`augment` returns the input unchanged."""
    return AugmentConfig(flip_p=0.0, affine_p=0.0, color_p=0.0, grayscale_p=0.0, jpeg_p=0.0, blur_p=0.0)
