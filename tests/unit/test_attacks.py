"""training.attacks: deterministic fakes that change the face region and keep the rest."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import synthetic_face
from training.attacks import (ATTACKS, FACE_SWAP, MORPH, SELF_BLEND, elliptical_mask, face_swap, morph,
                              self_blend, synthesize)

SIZE = 96


@pytest.fixture
def faces():
    return synthetic_face(1, SIZE), synthetic_face(2, SIZE)


def _face_region(shape):
    h, w = shape[:2]
    return (slice(int(h * 0.40), int(h * 0.62)), slice(int(w * 0.40), int(w * 0.60)))


def _corners(img, k=8):
    return np.concatenate([img[:k, :k].ravel(), img[:k, -k:].ravel(), img[-k:, :k].ravel(), img[-k:, -k:].ravel()])


def _textured_face(seed: int, size: int) -> np.ndarray:
    """Eyes and mouth drawn hard on a skin ellipse, with pixel noise: structure inside the face region that a
    correlation can trace back to this image (conftest's soft drawing is nearly flat there)."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), rng.integers(30, 220, 3), dtype=np.uint8)
    c = size // 2
    skin = tuple(int(v) for v in rng.integers(90, 255, 3))
    cv2.ellipse(img, (c, c), (int(size * rng.uniform(0.25, 0.35)), int(size * rng.uniform(0.35, 0.45))),
                0, 0, 360, skin, -1)
    eye = tuple(int(v) for v in rng.integers(0, 80, 3))
    dx, dy = int(size * rng.uniform(0.1, 0.16)), int(size * 0.1)
    for sx in (-1, 1):
        cv2.circle(img, (c + sx * dx, c - dy), max(2, size // 24), eye, -1)
    cv2.ellipse(img, (c, c + int(size * 0.2)), (int(size * rng.uniform(0.08, 0.15)), size // 30), 0, 0, 360,
                (int(rng.integers(100, 200)), 30, 40), -1)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def test_names():
    assert ATTACKS == ("face-swap", "morph", "self-blend")


@pytest.mark.parametrize("attack", ATTACKS)
def test_deterministic_for_a_seed(faces, attack):
    a, b = faces
    one = synthesize(attack, a, b, np.random.default_rng(7))
    two = synthesize(attack, a, b, np.random.default_rng(7))
    other_seed = synthesize(attack, a, b, np.random.default_rng(8))
    assert one.dtype == np.uint8 and one.shape == a.shape
    assert np.array_equal(one, two)
    assert not np.array_equal(one, other_seed)


def test_face_swap_puts_a_inside_and_keeps_b_outside(faces):
    a = _textured_face(1, faces[0].shape[0])
    # A textured host whose structure is unrelated to A's, so correlations tell them apart.
    b = cv2.GaussianBlur(np.random.default_rng(9).integers(0, 256, a.shape, dtype=np.uint8), (0, 0), 2)
    fake = face_swap(a, b, np.random.default_rng(0))
    assert fake.shape == b.shape
    # Outside the soft ellipse the host photo is untouched.
    assert np.array_equal(_corners(fake), _corners(b))
    # Inside, the picture is A's face (colour-matched to B), not B's: the
    # structure (zero-mean pattern) correlates with A far more than with B.
    region = _face_region(a.shape)
    f, fa, fb = (x[region].astype(np.float64).mean(axis=2) for x in (fake, a, b))
    f, fa, fb = f - f.mean(), fa - fa.mean(), fb - fb.mean()
    corr_a = (f * fa).sum() / np.sqrt((f * f).sum() * (fa * fa).sum())
    corr_b = (f * fb).sum() / np.sqrt((f * f).sum() * (fb * fb).sum())
    assert corr_a > 0.8 and corr_a > corr_b + 0.3


def test_face_swap_resizes_target_to_host():
    a, host = synthetic_face(1, 64), synthetic_face(2, 128)
    assert face_swap(a, host, np.random.default_rng(0)).shape == host.shape


def test_morph_is_a_blend_weighted_04_to_06(faces):
    a, b = faces
    fake = morph(a, b, np.random.default_rng(3)).astype(np.float64)
    af, bf = a.astype(np.float64), b.astype(np.float64)
    differ = np.abs(af - bf) > 20
    alpha = ((fake - bf)[differ] / (af - bf)[differ])
    assert 0.38 <= np.median(alpha) <= 0.62
    assert np.all(fake >= np.minimum(af, bf) - 1) and np.all(fake <= np.maximum(af, bf) + 1)


def test_self_blend_changes_only_the_face(faces):
    img = faces[0]
    fake = self_blend(img, np.random.default_rng(5))
    assert fake.shape == img.shape and fake.dtype == np.uint8
    assert np.array_equal(_corners(fake, 6), _corners(img, 6))
    region = _face_region(img.shape)
    assert np.abs(fake[region].astype(int) - img[region].astype(int)).mean() > 1.0


def test_elliptical_mask_range_and_centre():
    mask = elliptical_mask((100, 100, 3), np.random.default_rng(0))
    assert mask.dtype == np.float32 and mask.shape == (100, 100)
    assert mask.min() >= 0 and mask.max() <= 1
    assert mask[52, 50] > 0.99 and mask[0, 0] < 0.01


def test_bad_inputs():
    rng = np.random.default_rng(0)
    a = synthetic_face(1, SIZE)
    with pytest.raises(ValueError, match="unknown attack"):
        synthesize("deepfake", a, a, rng)
    with pytest.raises(ValueError, match="needs a second image"):
        synthesize(FACE_SWAP, a, None, rng)
    with pytest.raises(ValueError, match="needs a second image"):
        synthesize(MORPH, a, None, rng)
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        self_blend(a.astype(np.float32), rng)
    with pytest.raises(ValueError, match="too small"):
        synthesize(SELF_BLEND, a[:8, :8], None, rng)
