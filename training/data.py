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
    """Preprocessed uint8 images by index, decoded on first use and kept in RAM.

    With ``teacher_size`` each image also has a teacher's view: the same
    detected keypoints warped onto ``teacher_template`` at that size (from
    the original photo, not resampled from the student's crop), so a
    distillation teacher sees the face the student sees, at its own framing.
    """

    def __init__(self, paths: Sequence[str | Path], size: int, enabled: bool = True, crop_fraction: float = 1.0,
                 preprocessor: Preprocessor | None = None, teacher_size: int = 0, teacher_template: str = "dlib-chip"):
        self.paths = [Path(p) for p in paths]
        self.size = size
        self.preprocessor = preprocessor or Preprocessor(ModelConfig(input_size=size, crop_fraction=crop_fraction))
        self.enabled = enabled
        self.teacher_size, self.teacher_template = teacher_size, teacher_template
        config = self.preprocessor.config
        # A student with the teacher's framing (dlib_resnet29 on dlib chips) sees the teacher's view itself.
        self.same_view = bool(teacher_size) and config.align == "face" and config.input_size == teacher_size \
            and config.template == teacher_template and config.margin == 0.0
        if self.same_view:
            teacher_size = 0
        self._images = np.zeros((len(self.paths), size, size, 3), np.uint8) if enabled else None
        self._teacher = (np.zeros((len(self.paths), teacher_size, teacher_size, 3), np.uint8)
                         if enabled and teacher_size else None)
        self._filled = np.zeros(len(self.paths), bool)

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        if self.same_view:
            image = self.preprocessor.load(self.paths[i]).image
            return image, image
        if not self.teacher_size:
            return self.preprocessor.load(self.paths[i]).image, None
        from engine.align import align_face
        from engine.preprocess import decode, read_file

        source = str(self.paths[i])
        rgb = decode(read_file(source), source)
        prepared = self.preprocessor.prepare(rgb, source)
        return prepared.image, align_face(rgb, prepared.face.keypoints, self.teacher_size, self.teacher_template)

    def views(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(student image, teacher view or None)."""
        if not self.enabled:
            return self._load(i)
        if not self._filled[i]:
            image, teacher = self._load(i)
            self._images[i] = image
            if self._teacher is not None:
                self._teacher[i] = teacher
            self._filled[i] = True
        if self.same_view:
            return self._images[i], self._images[i]
        return self._images[i], (self._teacher[i] if self._teacher is not None else None)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.views(i)[0]

    def fill(self, progress: bool = False, desc: str = "decode", skip_faceless: bool = False) -> dict[int, str]:
        """Decode everything now (before forking loader workers, so they share it).

        With ``skip_faceless`` an image in which no face is found does not stop
        the fill; returns ``{index: reason}`` for those (drop them with :meth:`subset`).
        """
        if not self.enabled:
            return {}
        import os
        from concurrent.futures import ThreadPoolExecutor

        from tqdm import tqdm

        from engine.preprocess import NoFaceError

        def one(i):
            try:
                self.views(i)
            except NoFaceError as exc:
                if not skip_faceless:
                    raise
                return i, str(exc)
            return i, None

        todo = [int(i) for i in np.flatnonzero(~self._filled)]
        failed = {}
        # OpenCV and the detector release the GIL, so threads use every core.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            for i, error in tqdm(pool.map(one, todo), total=len(todo), desc=desc, disable=not progress,
                                 leave=False):
                if error is not None:
                    failed[i] = error
        return failed

    def subset(self, keep: Sequence[int]) -> "ImageCache":
        """The cache of the images ``keep`` (decoded ones stay decoded)."""
        keep = np.asarray(keep, np.int64)
        out = ImageCache([self.paths[i] for i in keep], self.size, self.enabled, preprocessor=self.preprocessor,
                         teacher_size=self.teacher_size, teacher_template=self.teacher_template)
        if self.enabled:
            out._images, out._filled = self._images[keep], self._filled[keep]
            if self._teacher is not None:
                out._teacher = self._teacher[keep]
        return out


class TrainDataset(Dataset):
    """Items are ``(index, seed)`` from :class:`training.sampler.PKSampler`.

    Indices past the labelled samples are unlabelled ``extra`` photos
    (identity and class -1: feature distillation and, as real faces, the
    realness loss use them), then the ``realness`` samples (real and fake
    faces without identity labels, e.g. DFDC: realness loss, and
    distillation for the real ones). With
    ``teacher_size`` every item also carries ``teacher_image``, the teacher's
    view given the same augmentation (same seed, so the same flip, affine
    and colour draws).
    """

    def __init__(self, samples: Sequence[Sample], input_size: int, augment_config: AugmentConfig | None,
                 cache: bool = True, teacher_index: np.ndarray | None = None, crop_fraction: float = 1.0,
                 preprocessor: Preprocessor | None = None, teacher_size: int = 0,
                 extra: Sequence[str | Path] = (), progress: bool = False, realness: Sequence[Sample] = ()):
        self.samples = list(samples)
        self.images = ImageCache([s.path for s in self.samples], input_size, cache, crop_fraction, preprocessor,
                                 teacher_size)
        self.teacher_index = (np.full(len(self.samples), -1, np.int64) if teacher_index is None
                              else np.asarray(teacher_index, np.int64))
        # With alignment, a training image in which no face is found is left out
        # (listed in ``faceless``) rather than fed as a misaligned crop.
        self.faceless: dict[str, str] = {}
        if cache and self.images.preprocessor.config.align == "face":
            failed = self.images.fill(progress, "detect + align train images", skip_faceless=True)
            if failed:
                keep = [i for i in range(len(self.samples)) if i not in failed]
                self.faceless = {str(self.samples[i].path): why for i, why in sorted(failed.items())}
                self.samples = [self.samples[i] for i in keep]
                self.images = self.images.subset(keep)
                self.teacher_index = self.teacher_index[keep]
        self.labels = label_space(self.samples)
        self.extra = ImageCache(list(extra), input_size, cache, crop_fraction, preprocessor, teacher_size)
        # Unlabelled photos are optional extra data: those without a face are skipped the same way.
        self.extra_faceless: dict[str, str] = {}
        if cache and len(self.extra) and self.extra.preprocessor.config.align == "face":
            failed = self.extra.fill(progress, "detect + align extra images", skip_faceless=True)
            if failed:
                self.extra_faceless = {str(self.extra.paths[i]): why for i, why in sorted(failed.items())}
                self.extra = self.extra.subset([i for i in range(len(self.extra)) if i not in failed])
        self.realness = list(realness)
        self.realness_images = ImageCache([s.path for s in self.realness], input_size, cache, crop_fraction,
                                          preprocessor, teacher_size)
        self.realness_faceless: dict[str, str] = {}
        if cache and self.realness and self.realness_images.preprocessor.config.align == "face":
            failed = self.realness_images.fill(progress, "detect + align realness images", skip_faceless=True)
            if failed:
                self.realness_faceless = {str(self.realness[i].path): why for i, why in sorted(failed.items())}
                keep = [i for i in range(len(self.realness)) if i not in failed]
                self.realness = [self.realness[i] for i in keep]
                self.realness_images = self.realness_images.subset(keep)
        self.teacher_size = teacher_size
        self.augment_config = augment_config

    def __len__(self) -> int:
        return len(self.samples) + len(self.extra) + len(self.realness)

    @property
    def realness_start(self) -> int:
        return len(self.samples) + len(self.extra)

    def fill(self, progress: bool = False) -> None:
        self.images.fill(progress, "decode train images")
        self.extra.fill(progress, "decode extra images")
        self.realness_images.fill(progress, "decode realness images")

    def __getitem__(self, item: tuple[int, int]) -> dict:
        index, seed = item
        labelled = index < len(self.samples)
        fake = bool(self.labels.is_fake[index]) if labelled else False
        if labelled:
            image, teacher = self.images.views(index)
        elif index < self.realness_start:
            image, teacher = self.extra.views(index - len(self.samples))
        else:
            fake = self.realness[index - self.realness_start].is_fake
            image, teacher = self.realness_images.views(index - self.realness_start)
        if self.augment_config is not None:
            same = teacher is image
            image = augment(image, np.random.default_rng(seed), self.augment_config)
            if teacher is not None:
                teacher = image if same else augment(teacher, np.random.default_rng(seed), self.augment_config)
        out = {
            "image": torch.from_numpy(np.array(image, copy=True)),
            "identity": int(self.labels.identity[index]) if labelled else -1,
            "is_fake": fake,
            "class_id": int(self.labels.class_id[index]) if labelled else -1,
            # Distillation targets are for real images only.
            "teacher": int(self.teacher_index[index]) if labelled and not self.labels.is_fake[index] else -1,
        }
        if teacher is not None:
            out["teacher_image"] = torch.from_numpy(np.array(teacher, copy=True))
        return out


def collate(items: list[dict]) -> dict:
    return {
        "image": torch.stack([it["image"] for it in items]),
        "identity": torch.tensor([it["identity"] for it in items], dtype=torch.long),
        "is_fake": torch.tensor([it["is_fake"] for it in items], dtype=torch.bool),
        "class_id": torch.tensor([it["class_id"] for it in items], dtype=torch.long),
        "teacher": torch.tensor([it["teacher"] for it in items], dtype=torch.long),
        **({"teacher_image": torch.stack([it["teacher_image"] for it in items])} if "teacher_image" in items[0] else {}),
    }


def train_loader(dataset: TrainDataset, sampler, workers: int = 0, pin_memory: bool = False) -> DataLoader:
    if workers > 0:
        dataset.fill(progress=True)
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
        self.images = ImageCache(paths, input_size, cache, crop_fraction, preprocessor)
        # Pairs with an image in which no face is found are left out of
        # validation (counted in ``dropped``; the runtime scores them as failures).
        self.dropped = 0
        if cache and self.images.preprocessor.config.align == "face":
            failed = {paths[i] for i in self.images.fill(skip_faceless=True)}
            if failed:
                keep = [i for i, p in enumerate(paths) if p not in failed]
                self.images = self.images.subset(keep)
                paths = [paths[i] for i in keep]
                kept = [p for p in self.pairs if str(p.path_a) not in failed and str(p.path_b) not in failed]
                self.dropped = len(self.pairs) - len(kept)
                self.pairs = kept
        self.index = {p: i for i, p in enumerate(paths)}
        self.a = np.array([self.index[str(p.path_a)] for p in self.pairs], np.int64)
        self.b = np.array([self.index[str(p.path_b)] for p in self.pairs], np.int64)
        self.labels = np.array([p.label for p in self.pairs], np.int64)
        self.types = [p.type for p in self.pairs]
        self.attacks = [p.attack for p in self.pairs]

    def batches(self, batch_size: int):
        for start in range(0, len(self.images), batch_size):
            stop = min(start + batch_size, len(self.images))
            yield torch.from_numpy(np.stack([self.images[i] for i in range(start, stop)]))
