"""Fake synthesis on roughly aligned face crops (numpy/OpenCV only).

No deepfake data is available, so fakes are synthesised the way published
training-data methods do, on crops where the face sits in the centre
(LFW deep-funneled 250x250: the inner face is about the central ellipse
with semi-axes 0.2 x 0.26 of the side):

- ``face-swap``: the inner face of A, colour-matched, blended onto B's photo
  with a soft elliptical mask (Face X-ray, Li et al. 2020). A fake of A.
- ``morph``: an alpha blend of A and B (morphing attack). A fake of A.
- ``self-blend``: an image blended with a slightly transformed copy of
  itself inside a soft mask (self-blended images, Shiohara & Yamasaki
  2022): generic blending artefacts, a fake of the same identity.

Every function takes uint8 RGB HxWx3 arrays and a ``numpy.random.Generator``
and is deterministic given the generator's state.
"""
from __future__ import annotations

import cv2
import numpy as np

FACE_SWAP = "face-swap"
MORPH = "morph"
SELF_BLEND = "self-blend"
ATTACKS = (FACE_SWAP, MORPH, SELF_BLEND)
# Attacks that need a second identity's image.
NEEDS_OTHER = (FACE_SWAP, MORPH)

# Inner-face ellipse on an aligned crop, as fractions of width/height.
FACE_CENTRE = (0.5, 0.52)
FACE_AXES = (0.20, 0.26)


def _check(img: np.ndarray, name: str) -> None:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{name}: expected uint8 HxWx3 RGB, got "
                         f"{getattr(img, 'dtype', type(img).__name__)} {getattr(img, 'shape', '')}")
    if min(img.shape[:2]) < 16:
        raise ValueError(f"{name}: image {img.shape[1]}x{img.shape[0]} too small for face synthesis")


def _like(img: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``img`` resized to ``shape`` (both are aligned crops, so a plain resize aligns them)."""
    if img.shape[:2] == shape[:2]:
        return img
    return cv2.resize(img, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)


def elliptical_mask(shape: tuple[int, ...], rng: np.random.Generator, scale: float = 1.0,
                    feather: tuple[float, float] = (0.03, 0.08)) -> np.ndarray:
    """Soft float32 mask in [0, 1] (HxW): a jittered face ellipse with a blurred edge.

    Centre, axes, rotation and the feather width are drawn from ``rng``, so
    the blending boundary (what a detector should learn) varies per fake.
    """
    h, w = shape[:2]
    cx = w * (FACE_CENTRE[0] + rng.uniform(-0.02, 0.02))
    cy = h * (FACE_CENTRE[1] + rng.uniform(-0.02, 0.02))
    ax = w * FACE_AXES[0] * scale * rng.uniform(0.85, 1.15)
    ay = h * FACE_AXES[1] * scale * rng.uniform(0.85, 1.15)
    angle = rng.uniform(-10, 10)
    mask = np.zeros((h, w), np.float32)
    cv2.ellipse(mask, (int(round(cx)), int(round(cy))), (max(1, int(ax)), max(1, int(ay))),
                angle, 0, 360, 1.0, -1, lineType=cv2.LINE_AA)
    sigma = max(1.0, min(h, w) * rng.uniform(*feather))
    mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=sigma, sigmaY=sigma)
    # Keep the centre fully opaque after blurring, so the inner face is A's.
    peak = float(mask.max())
    if peak > 0:
        mask = np.clip(mask / peak, 0.0, 1.0)
    return mask


def colour_match(src: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``src`` with its LAB mean/std inside ``mask`` moved to ``ref``'s (Reinhard transfer)."""
    weights = mask.astype(np.float64)
    total = weights.sum()
    if total < 1:
        return src
    src_lab = cv2.cvtColor(src, cv2.COLOR_RGB2LAB).astype(np.float32)
    ref_lab = cv2.cvtColor(ref, cv2.COLOR_RGB2LAB).astype(np.float32)
    out = np.empty_like(src_lab)
    for c in range(3):
        s, r = src_lab[..., c], ref_lab[..., c]
        s_mean = float((s * weights).sum() / total)
        r_mean = float((r * weights).sum() / total)
        s_std = float(np.sqrt(((s - s_mean) ** 2 * weights).sum() / total)) + 1e-3
        r_std = float(np.sqrt(((r - r_mean) ** 2 * weights).sum() / total)) + 1e-3
        out[..., c] = (s - s_mean) * (r_std / s_std) + r_mean
    out = np.clip(np.round(out), 0, 255).astype(np.uint8)
    return cv2.cvtColor(out, cv2.COLOR_LAB2RGB)


def _blend(fg: np.ndarray, bg: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None]
    out = fg.astype(np.float32) * m + bg.astype(np.float32) * (1.0 - m)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def face_swap(target: np.ndarray, host: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The inner face of ``target`` (A) on ``host`` (B)'s photo: a fake of A.

    The result has the host's size; A is resized to it, nudged by a few
    pixels (real swaps never align perfectly), colour-matched to B inside
    the mask, then blended in with a soft jittered ellipse.
    """
    _check(target, "target")
    _check(host, "host")
    face = _like(target, host.shape)
    h, w = host.shape[:2]
    shift = np.float32([[1, 0, rng.uniform(-0.015, 0.015) * w], [0, 1, rng.uniform(-0.015, 0.015) * h]])
    face = cv2.warpAffine(face, shift, (w, h), borderMode=cv2.BORDER_REFLECT101)
    mask = elliptical_mask(host.shape, rng, scale=rng.uniform(0.9, 1.1))
    face = colour_match(face, host, mask)
    return _blend(face, host, mask)


def morph(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Alpha blend of two aligned crops, A weighted 0.4-0.6: a fake of A (morphing attack)."""
    _check(a, "a")
    _check(b, "b")
    alpha = rng.uniform(0.4, 0.6)
    b = _like(b, a.shape)
    out = a.astype(np.float32) * alpha + b.astype(np.float32) * (1.0 - alpha)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def self_blend(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``img`` blended with a slightly scaled/shifted/recoloured/blurred copy of itself.

    The source copy is transformed as in self-blended images: small scale and
    translation, colour and brightness jitter, optional blur; it is pasted
    back inside a soft face ellipse at a random opacity, leaving only
    blending artefacts, so the identity is unchanged.
    """
    _check(img, "img")
    h, w = img.shape[:2]
    scale = rng.uniform(0.95, 1.05)
    tx, ty = rng.uniform(-0.03, 0.03) * w, rng.uniform(-0.03, 0.03) * h
    mat = cv2.getRotationMatrix2D((w / 2, h / 2), 0.0, scale)
    mat[:, 2] += (tx, ty)
    src = cv2.warpAffine(img, mat, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    hsv = cv2.cvtColor(src, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-6, 6)) % 180
    hsv[..., 1] *= rng.uniform(0.85, 1.15)
    hsv[..., 2] = hsv[..., 2] * rng.uniform(0.9, 1.1) + rng.uniform(-12, 12)
    src = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB)
    if rng.random() < 0.5:
        sigma = rng.uniform(0.5, 1.5)
        src = cv2.GaussianBlur(src, (0, 0), sigmaX=sigma, sigmaY=sigma)
    mask = elliptical_mask(img.shape, rng, scale=rng.uniform(0.9, 1.25)) * rng.uniform(0.6, 1.0)
    return _blend(src, img, mask)


def synthesize(attack: str, target: np.ndarray, other: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """One fake showing ``target``'s identity by ``attack``; ``other`` is the second
    identity's image for face-swap (the host photo) and morph (the partner)."""
    if attack == FACE_SWAP:
        return face_swap(target, _need(other, attack), rng)
    if attack == MORPH:
        return morph(target, _need(other, attack), rng)
    if attack == SELF_BLEND:
        return self_blend(target, rng)
    raise ValueError(f"unknown attack {attack!r}; expected one of {', '.join(ATTACKS)}")


def _need(other, attack):
    if other is None:
        raise ValueError(f"{attack} needs a second image")
    return other
