"""Training and validation data: label space, image cache, torch Dataset/loader.

Every image goes through :func:`engine.preprocess.load_image` (the one
preprocessing contract) and, for training only, :func:`training.augment.augment`.
Decoded images can be kept in RAM as uint8 (LFW at 112 px is ~0.5 GB), which
removes JPEG decoding from every epoch after the first.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from engine.datasets import Pair, Sample
from engine.contract import ModelConfig
from engine.preprocess import Preprocessor
from training.augment import augment
from training.config import AugmentConfig


@dataclass
class LabelSpace:
    """Per-sample integer labels for the losses and the sampler.

    ``identity[i]`` indexes ``names`` (the person the image shows, fake or
    not); ``class_id[i]`` numbers the (identity, is_fake) groups, so a
    person's fakes form a class of their own for the auxiliary softmax head.
    """

    names: list[str]
    identity: np.ndarray
    is_fake: np.ndarray
    class_id: np.ndarray
    num_classes: int


def label_space(samples: Sequence[Sample]) -> LabelSpace:
    names = sorted({s.identity for s in samples})
    index = {n: i for i, n in enumerate(names)}
    identity = np.array([index[s.identity] for s in samples], dtype=np.int64)
    is_fake = np.array([s.is_fake for s in samples], dtype=bool)
    groups = sorted(set(zip(identity.tolist(), is_fake.tolist())))
    group_index = {g: i for i, g in enumerate(groups)}
    class_id = np.array([group_index[g] for g in zip(identity.tolist(), is_fake.tolist())], dtype=np.int64)
    return LabelSpace(names, identity, is_fake, class_id, len(groups))


def sample_key(sample: Sample, images_root: str | Path | None = None) -> str:
    """The sample's relative path as written in meta.json (``<identity>/<file>``)."""
    if images_root is not None:
        try:
            return Path(sample.path).relative_to(images_root).as_posix()
        except ValueError:
            pass
    return f"{sample.identity}/{Path(sample.path).name}"


class ImageCache:
    """Preprocessed uint8 images by index, decoded on first use and kept in RAM."""

    def __init__(self, paths: Sequence[str | Path], size: int, enabled: bool = True, crop_fraction: float = 1.0,
                 preprocessor: Preprocessor | None = None):
        self.paths = [Path(p) for p in paths]
        self.size = size
        self.preprocessor = preprocessor or Preprocessor(ModelConfig(input_size=size, crop_fraction=crop_fraction))
        self.enabled = enabled
        self._images = np.zeros((len(self.paths), size, size, 3), np.uint8) if enabled else None
        self._filled = np.zeros(len(self.paths), bool)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        if not self.enabled:
            return self.preprocessor.load(self.paths[i]).image
        if not self._filled[i]:
            self._images[i] = self.preprocessor.load(self.paths[i]).image
            self._filled[i] = True
        return self._images[i]

    def fill(self, progress: bool = False, desc: str = "decode") -> None:
        """Decode everything now (before forking loader workers, so they share it)."""
        if not self.enabled:
            return
        import os
        from concurrent.futures import ThreadPoolExecutor

        from tqdm import tqdm

        todo = [int(i) for i in np.flatnonzero(~self._filled)]
        # OpenCV releases the GIL while decoding, so threads use every core.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            for _ in tqdm(pool.map(self.__getitem__, todo), total=len(todo), desc=desc, disable=not progress,
                          leave=False):
                pass


class TrainDataset(Dataset):
    """Items are ``(index, seed)`` from :class:`training.sampler.PKSampler`."""

    def __init__(self, samples: Sequence[Sample], input_size: int, augment_config: AugmentConfig | None,
                 cache: bool = True, teacher_index: np.ndarray | None = None, crop_fraction: float = 1.0,
                 preprocessor: Preprocessor | None = None):
        self.samples = list(samples)
        self.labels = label_space(self.samples)
        self.images = ImageCache([s.path for s in self.samples], input_size, cache, crop_fraction, preprocessor)
        self.augment_config = augment_config
        self.teacher_index = (np.full(len(self.samples), -1, np.int64) if teacher_index is None
                              else np.asarray(teacher_index, np.int64))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: tuple[int, int]) -> dict:
        index, seed = item
        image = self.images[index]
        if self.augment_config is not None:
            image = augment(image, np.random.default_rng(seed), self.augment_config)
        return {
            "image": torch.from_numpy(np.array(image, copy=True)),
            "identity": int(self.labels.identity[index]),
            "is_fake": bool(self.labels.is_fake[index]),
            "class_id": int(self.labels.class_id[index]),
            # Distillation targets are for real images only.
            "teacher": -1 if self.labels.is_fake[index] else int(self.teacher_index[index]),
        }


def collate(items: list[dict]) -> dict:
    return {
        "image": torch.stack([it["image"] for it in items]),
        "identity": torch.tensor([it["identity"] for it in items], dtype=torch.long),
        "is_fake": torch.tensor([it["is_fake"] for it in items], dtype=torch.bool),
        "class_id": torch.tensor([it["class_id"] for it in items], dtype=torch.long),
        "teacher": torch.tensor([it["teacher"] for it in items], dtype=torch.long),
    }


def train_loader(dataset: TrainDataset, sampler, workers: int = 0, pin_memory: bool = False) -> DataLoader:
    if workers > 0:
        dataset.images.fill(progress=True, desc="decode train images")
    # Its own generator: creating an iterator must not advance the global torch RNG
    # (dropout's), or a resumed run would diverge from an uninterrupted one.
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                      pin_memory=pin_memory, persistent_workers=workers > 0, generator=torch.Generator())


def subset_pairs(pairs: Sequence[Pair], n: int, seed: int = 0) -> list[Pair]:
    """A fixed random subset of about ``n`` pairs with each pair type's share kept (0 or n >= len: all)."""
    if n <= 0 or n >= len(pairs):
        return list(pairs)
    rng = np.random.default_rng(seed)
    by_type: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        by_type.setdefault(p.type, []).append(i)
    keep: list[int] = []
    for members in by_type.values():
        take = max(1, round(n * len(members) / len(pairs)))
        keep += rng.choice(members, min(take, len(members)), replace=False).tolist()
    return [pairs[i] for i in sorted(keep)]


class PairSet:
    """Validation pairs with each distinct image decoded once (no augmentation)."""

    def __init__(self, pairs: Sequence[Pair], input_size: int, cache: bool = True, crop_fraction: float = 1.0,
                 preprocessor: Preprocessor | None = None):
        self.pairs = list(pairs)
        paths = sorted({str(p.path_a) for p in self.pairs} | {str(p.path_b) for p in self.pairs})
        self.index = {p: i for i, p in enumerate(paths)}
        self.images = ImageCache(paths, input_size, cache, crop_fraction, preprocessor)
        self.a = np.array([self.index[str(p.path_a)] for p in self.pairs], np.int64)
        self.b = np.array([self.index[str(p.path_b)] for p in self.pairs], np.int64)
        self.labels = np.array([p.label for p in self.pairs], np.int64)
        self.types = [p.type for p in self.pairs]
        self.attacks = [p.attack for p in self.pairs]

    def batches(self, batch_size: int):
        for start in range(0, len(self.images), batch_size):
            stop = min(start + batch_size, len(self.images))
            yield torch.from_numpy(np.stack([self.images[i] for i in range(start, stop)]))
