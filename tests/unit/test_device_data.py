"""training.device_data: batched tensor augmentation (the GPU path), run here on the CPU."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from conftest import synthetic_face
from training.augment import no_augment
from training.config import AugmentConfig
from training.device_data import augment_batch, draw_params


def _faces(n=4, size=64):
    return torch.from_numpy(np.stack([synthetic_face(i, size) for i in range(n)]))


def test_no_augmentation_returns_the_input_exactly():
    x = _faces()
    assert torch.equal(augment_batch(x, draw_params([1, 2, 3, 4], no_augment())), x)


def test_flip_alone_mirrors_exactly():
    x = _faces()
    cfg = AugmentConfig(**{**no_augment().__dict__, "flip_p": 1.0})
    assert torch.equal(augment_batch(x, draw_params([5, 6, 7, 8], cfg)), x.flip(2))


def test_same_parameters_give_the_same_geometry_at_any_size():
    """The teacher's larger view gets the student's transform: resized, the two agree."""
    cfg = AugmentConfig(**{**no_augment().__dict__, "affine_p": 1.0, "flip_p": 0.5, "rotate_deg": 15.0,
                           "scale": 0.1, "shift": 0.08})
    big = _faces(4, 150)
    small = torch.from_numpy(np.stack([cv2.resize(im, (75, 75), interpolation=cv2.INTER_AREA) for im in big.numpy()]))
    p = draw_params([11, 12, 13, 14], cfg)
    a = augment_batch(big, p).numpy()
    b = augment_batch(small, p).numpy()
    down = np.stack([cv2.resize(im, (75, 75), interpolation=cv2.INTER_AREA) for im in a])
    assert np.abs(down.astype(int) - b.astype(int)).mean() < 4
    assert np.abs(b.astype(int) - small.numpy().astype(int)).mean() > 10  # it did move


def test_photometric_changes_stay_in_range_and_are_seeded():
    cfg = AugmentConfig(color_p=1.0, grayscale_p=0.5, blur_p=1.0, jpeg_p=0.0)
    x = _faces()
    a = augment_batch(x, draw_params([1, 2, 3, 4], cfg))
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, augment_batch(x, draw_params([1, 2, 3, 4], cfg)))
    assert not torch.equal(a, augment_batch(x, draw_params([9, 2, 3, 4], cfg)))
