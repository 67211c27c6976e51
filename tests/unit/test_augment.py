"""Augmentation (OpenCV/numpy) and the datasets that apply it only at training."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import synthetic_face, write_jpeg
from engine.datasets import Pair, Sample
from engine.preprocess import load_image
from training.augment import augment, colour_jitter, no_augment
from training.config import AugmentConfig
from training.data import ImageCache, PairSet, TrainDataset, collate, label_space, sample_key, subset_pairs


@pytest.fixture
def face():
    return synthetic_face(3, size=64)


def only(**kw) -> AugmentConfig:
    return dataclasses.replace(no_augment(), **kw)


def test_shape_dtype_and_determinism(face):
    cfg = AugmentConfig(flip_p=0.5, affine_p=1.0, color_p=1.0, grayscale_p=0.2, jpeg_p=1.0, blur_p=1.0)
    outs = [augment(face, np.random.default_rng(seed), cfg) for seed in range(6)]
    for out in outs:
        assert out.shape == face.shape and out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(augment(face, np.random.default_rng(4), cfg), outs[4])
    assert len({o.tobytes() for o in outs}) == len(outs)
    assert not np.array_equal(outs[0], face)


def test_all_off_is_identity(face):
    for seed in range(5):
        np.testing.assert_array_equal(augment(face, np.random.default_rng(seed), no_augment()), face)


def test_flip_is_a_mirror(face):
    out = augment(face, np.random.default_rng(0), only(flip_p=1.0))
    np.testing.assert_array_equal(out, face[:, ::-1])


def test_affine_reflects_borders_instead_of_black_corners():
    flat = np.full((48, 48, 3), 120, np.uint8)
    cfg = only(affine_p=1.0, rotate_deg=30.0, scale=0.2, shift=0.1)
    for seed in range(5):
        np.testing.assert_array_equal(augment(flat, np.random.default_rng(seed), cfg), flat)
    moved = augment(synthetic_face(1, 48), np.random.default_rng(0), cfg)
    assert not np.array_equal(moved, synthetic_face(1, 48))


def test_colour_jitter_with_zero_range_is_identity_and_otherwise_changes(face):
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(colour_jitter(face, rng, 0.0, 0.0, 0.0), face)
    changed = augment(face, np.random.default_rng(1), only(color_p=1.0, brightness=0.5))
    assert np.abs(changed.astype(int) - face).mean() > 1.0


def test_jpeg_and_blur_change_pixels_mildly(face):
    for cfg in (only(jpeg_p=1.0, jpeg_quality_min=30, jpeg_quality_max=30), only(blur_p=1.0, blur_sigma_max=1.0)):
        out = augment(face, np.random.default_rng(0), cfg)
        diff = np.abs(out.astype(int) - face)
        assert 0 < diff.mean() < 20


def test_grayscale_has_equal_channels(face):
    out = augment(face, np.random.default_rng(0), only(grayscale_p=1.0))
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


def test_rejects_non_uint8(face):
    with pytest.raises(ValueError, match="uint8"):
        augment(face.astype(np.float32), np.random.default_rng(0), AugmentConfig())


# ----------------------------------------------------------------------------- datasets


@pytest.fixture
def samples(tmp_path):
    out = []
    for ident in range(3):
        for k in range(3):
            fake = k == 2
            path = write_jpeg(tmp_path / "images" / f"{ident:05d}" / f"{k}.jpg", synthetic_face(ident * 10 + k, 60))
            out.append(Sample(path, f"{ident:05d}", fake, "morph" if fake else ""))
    return out


def test_label_space_gives_fakes_their_own_class(samples):
    labels = label_space(samples)
    assert labels.names == ["00000", "00001", "00002"]
    assert labels.identity.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert labels.is_fake.tolist() == [False, False, True] * 3
    assert labels.num_classes == 6
    assert labels.class_id[0] == labels.class_id[1] != labels.class_id[2]
    assert len(set(labels.class_id[[2, 5, 8]].tolist())) == 3


def test_sample_key_matches_meta_json(samples, tmp_path):
    assert sample_key(samples[4], tmp_path / "images") == "00001/1.jpg"
    assert sample_key(samples[4]) == "00001/1.jpg"


@pytest.mark.parametrize("cache", [True, False])
def test_training_items_without_augment_are_the_preprocessed_image(samples, cache):
    data = TrainDataset(samples, 32, None, cache=cache, teacher_index=np.arange(9))
    item = data[(4, 123)]
    np.testing.assert_array_equal(item["image"].numpy(), load_image(samples[4].path, 32))
    assert item["identity"] == 1 and item["is_fake"] is False and item["teacher"] == 4
    assert data[(5, 0)]["teacher"] == -1  # fakes never get distillation targets
    batch = collate([data[(i, 0)] for i in range(4)])
    assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == torch.uint8
    assert batch["is_fake"].tolist() == [False, False, True, False]


def test_training_items_are_augmented_per_seed(samples):
    data = TrainDataset(samples, 32, AugmentConfig(affine_p=1.0, color_p=1.0))
    a, b, again = data[(0, 1)]["image"], data[(0, 2)]["image"], data[(0, 1)]["image"]
    assert torch.equal(a, again) and not torch.equal(a, b)
    assert not torch.equal(a, torch.from_numpy(load_image(samples[0].path, 32)))


def test_validation_pairs_are_never_augmented(samples):
    pairs = [Pair("00000000", samples[0].path, samples[1].path, 1, "genuine"),
             Pair("00000001", samples[0].path, samples[2].path, 0, "fake-of-same", "morph")]
    pairset = PairSet(pairs, 32)
    assert len(pairset.images) == 3  # each distinct image embedded once
    images = torch.cat(list(pairset.batches(2)))
    for path, row in pairset.index.items():
        np.testing.assert_array_equal(images[row].numpy(), load_image(path, 32))
    assert pairset.labels.tolist() == [1, 0] and pairset.attacks == ["", "morph"]
    assert pairset.a.tolist() == [pairset.index[str(samples[0].path)]] * 2


def test_val_subset_keeps_type_shares_and_is_fixed():
    pairs = [Pair(f"{i:08d}", "a.jpg", "b.jpg", int(t == "genuine"), t)
             for i, t in enumerate(["genuine"] * 40 + ["impostor"] * 40 + ["fake-of-same"] * 20)]
    sub = subset_pairs(pairs, 10, seed=0)
    assert [p.type for p in sub].count("genuine") == 4 and [p.type for p in sub].count("fake-of-same") == 2
    assert sub == subset_pairs(pairs, 10, seed=0) != subset_pairs(pairs, 10, seed=1)
    assert [p.pair_id for p in sub] == sorted(p.pair_id for p in sub)
    assert subset_pairs(pairs, 0) == pairs and subset_pairs(pairs, 500) == pairs


def test_image_cache_fill_decodes_everything_once(samples):
    cache = ImageCache([s.path for s in samples], 32)
    cache.fill()
    assert cache._filled.all()
    for i, s in enumerate(samples):
        np.testing.assert_array_equal(cache[i], load_image(s.path, 32))
    off = ImageCache([samples[0].path], 32, enabled=False)
    off.fill()
    np.testing.assert_array_equal(off[0], load_image(samples[0].path, 32))
