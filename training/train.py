"""Train a face embedder with the fake-aware triplet loss.

    python -m training.train --config configs/lfw_resnet34.yaml [key=value ...] [--resume]
    torchrun --nproc-per-node 2 -m training.train --config configs/tiny.yaml

The run directory (``output_dir``, default ``runs/<config name>``) holds:

- ``model.safetensors`` + ``model.json``: the best checkpoint by validation
  EER, with the EER threshold in ``model.json`` (what ``convert`` reads);
- ``last.pt``: full training state for ``--resume`` (model, optimizer,
  schedule position, sampler position, RNG states; ``weights_only`` loadable);
- ``config.yaml`` (the resolved config), ``log.csv`` and ``log.jsonl`` (one
  row per epoch; epoch 0 is the untrained model's validation).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import io
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.contract import ContractError, ModelConfig
from nets.checkpoint import save_model
from training.config import ConfigError, TrainConfig, config_from_dict, load_config, save_config
from training.losses import MarginSoftmaxHead, triplet_loss
from nets.model import FaceEmbedder, get_model, load_torchvision_backbone
from engine.files import printable

LAST = "last.pt"
# Keys that may change on --resume without changing the result.
RESUMABLE_CHANGES = ("threads", "workers", "cache_images", "val_batch", "checkpoint_every", "output_dir")


class TrainError(RuntimeError):
    """A run that cannot start or continue; the message says why and what to do."""


# ----------------------------------------------------------------------------- setup

@dataclass
class Runtime:
    """Where and how this process computes (resolved from the config and torchrun's env)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype | None = None  # autocast dtype, None = fp32
    distributed: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


def cpu_has_amx() -> bool:
    """bf16 autocast pays on CPUs with AMX tiles. With AVX512-BF16 alone (e.g. AMD EPYC)
    a ResNet-34 train step measured no faster than fp32, so ``auto`` keeps fp32 there."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_runtime(config: TrainConfig) -> Runtime:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    want_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise TrainError("device=cuda but no CUDA device is available (use device=cpu or auto)")
    device = torch.device("cuda", local_rank) if want_cuda else torch.device("cpu")
    precision = config.precision
    if precision == "fp16" and device.type != "cuda":
        raise TrainError("precision=fp16 needs CUDA; use bf16 or fp32 on the CPU")
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if cpu_has_amx() else "fp32"
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    threads = config.threads or max(1, (os.cpu_count() or 1) // max(1, local_world))
    torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    rt = Runtime(rank, world, local_rank, device, dtype, world > 1)
    if rt.distributed and not torch.distributed.is_initialized():
        # Generous timeout: the other ranks wait at a barrier while rank 0 validates.
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                             timeout=datetime.timedelta(hours=2))
    return rt


def check_inputs(config: TrainConfig, run_dir: Path, resume: bool) -> None:
    """Fail on missing files before any data is read or model built; then clear a killed run's temporaries."""
    data = Path(config.data_dir)
    train_meta = data / "train" / "meta.json"
    if not train_meta.is_file():
        raise TrainError(f"{train_meta}: no such file (data_dir must hold train/meta.json; "
                         f"make it with python -m training.prepare)")
    if config.validate and not (data / "val" / "pairs.csv").is_file():
        hint = (f"; make labelled pairs from the organisers' val.csv with python -m engine.datasets "
                f"kryptonite-val {data / 'val.csv'} --root {data} --out {data / 'val'}"
                if (data / "val.csv").is_file() else "")
        raise TrainError(f"{data / 'val' / 'pairs.csv'}: no such file (set validate=false to train without "
                         f"validation{hint})")
    # The first existing folder on the way down to run_dir must be a folder, or mkdir fails mid-run.
    for folder in (run_dir, *run_dir.parents):
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                raise TrainError(f"output_dir: {folder} exists and is not a folder"
                                 + ("" if folder == run_dir else f" (needed for {run_dir})"))
            break
    if config.realness_data and not (Path(config.realness_data) / "faces.csv").is_file():
        raise TrainError(f"realness_data: {config.realness_data}: no faces.csv there (a DFDC face-crop folder)")
    if config.teacher and not Path(config.teacher).is_file():
        raise TrainError(f"teacher: {config.teacher}: no such file")
    if config.init == "dlib":
        from training.teachers.dlib_resnet import default_weights

        try:
            if not default_weights().is_file():
                raise RuntimeError(f"{default_weights()}: no such file")
        except RuntimeError as exc:
            raise TrainError(f"init: dlib: {exc}") from None
    elif config.init and not (Path(config.init).is_file() or (Path(config.init) / "model.safetensors").is_file()):
        raise TrainError(f"init: {config.init}: neither a weights file nor a run directory with model.safetensors")
    if resume and not (run_dir / LAST).is_file():
        raise TrainError(f"{run_dir / LAST}: no such file; nothing to resume (start without --resume)")
    if not resume and (run_dir / LAST).is_file():
        raise TrainError(f"{run_dir} already holds a run ({LAST}); pass --resume to continue it or set "
                         f"output_dir/name to start a new one")
    if int(os.environ.get("RANK", "0")) == 0:
        remove_orphans(run_dir)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Global RNG states as tensors/lists only, so ``weights_only=True`` loads them."""
    version, state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out = {"python": [version, list(state), gauss],
           "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
           "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    version, values, gauss = state["python"]
    random.setstate((version, tuple(values), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def lr_at(step: int, total: int, warmup: int, base: float, min_ratio: float) -> float:
    """Linear warm-up to ``base`` over ``warmup`` steps, then cosine decay to ``base * min_ratio``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


class Trainee(nn.Module):
    """The embedder plus the optional auxiliary head, as one module for DDP.

    Returns ``(embedding, identity part, realness logit or None, aux loss or None,
    identity projected for feature distillation or None)`` (all inside forward, so DDP syncs every gradient).
    """

    def __init__(self, embedder: FaceEmbedder, head: MarginSoftmaxHead | None = None, projection=None):
        super().__init__()
        self.embedder = embedder
        self.head = head
        self.projection = projection  # training.distill.FeatureProjection (feature distillation) or None

    def forward(self, images: torch.Tensor, class_id: torch.Tensor | None = None):
        """``class_id`` -1 marks unlabelled rows, which the auxiliary head skips."""
        identity, logit = self.embedder.parts(images)
        emb = self.embedder.combine(identity, logit)
        projected = self.projection(identity) if self.projection is not None else None
        if self.head is None:
            return emb, identity, logit, None, projected
        labelled = class_id >= 0
        with torch.autocast(device_type=images.device.type, enabled=False):
            return emb, identity, logit, self.head.loss(emb[labelled].float(), class_id[labelled]), projected


def build_optimizer(config: TrainConfig, module: nn.Module) -> torch.optim.Optimizer:
    """AdamW/SGD over four groups: (trunk + identity head | the rest) x (decayed | not).

    No weight decay on BN/bias vectors: decaying them only fights the
    normalisation. The trunk and identity head run at ``lr * trunk_lr_scale``
    (``lr_scale`` in the group), so a pretrained network moves slowly while
    new heads learn at the full rate.
    """
    embedder = getattr(module, "embedder", module)
    trunk = {id(p) for part in (getattr(embedder, "backbone", None), getattr(embedder, "head", None))
             if part is not None for p in part.parameters()}
    groups = []
    for is_trunk, scale in ((True, config.trunk_lr_scale), (False, 1.0)):
        params = [p for p in module.parameters() if (id(p) in trunk) == is_trunk]
        groups += [{"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay, "lr_scale": scale},
                   {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "lr_scale": scale}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr)


def load_init(model: FaceEmbedder, path: str, sample_images=None) -> dict:
    """Initialise from a run (fine-tuning), an exported ONNX, or a torchvision-format backbone.

    A run directory or its ``model.safetensors`` loads every tensor whose
    name and shape match; the rest (say, a head resized for the realness
    coordinate) keeps its fresh initialisation and is listed as missing.
    An FP32/FP16 ``.onnx`` from ``python -m convert`` (a shipped model) has its
    BatchNorms folded: :mod:`training.onnx_init` un-folds them with
    statistics measured on ``sample_images()`` (a uint8 NHWC batch).
    ``dlib`` loads dlib's recognizer (arch ``dlib_resnet29``) and centres its
    descriptor on the mean of ``sample_images()`` (the identity head's bias).
    """
    if path == "dlib":
        return load_dlib_init(model, sample_images())
    if path.endswith(".onnx"):
        from training.onnx_init import OnnxInitError, load_onnx_weights

        try:
            return load_onnx_weights(model, path, sample_images())
        except OnnxInitError as exc:
            raise TrainError(f"init: {exc}") from None
    if Path(path).is_dir():
        path = str(Path(path) / "model.safetensors")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainError(f"init: {path}: not a readable state dict ({type(exc).__name__}: {exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if isinstance(state, dict) and any(k.startswith("backbone.") for k in state):
        own = model.state_dict()
        fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(fits, strict=False)
        return {"missing": sorted(set(own) - set(fits)), "unexpected": sorted(set(state) - set(fits))}
    try:
        return load_torchvision_backbone(model, state)
    except (ValueError, RuntimeError) as exc:
        raise TrainError(f"init: {path}: {exc}") from None


@torch.no_grad()
def load_dlib_init(model: FaceEmbedder, images: torch.Tensor) -> dict:
    """dlib's CC0 weights into a ``dlib_resnet29`` embedder; the head's bias = -mean descriptor of ``images``."""
    from training.teachers.dlib_resnet import read_dat, default_weights

    if model.config.arch != "dlib_resnet29":
        raise TrainError(f"init: dlib needs arch dlib_resnet29, not {model.config.arch}")
    if model.head.fc.out_features != 128:
        raise TrainError(f"init: dlib's descriptor is 128-d; this model's identity part is {model.head.fc.out_features}")
    try:
        params = read_dat(default_weights())
        model.backbone.load_dlib(params, model.head.fc)
    except (RuntimeError, ValueError) as exc:
        raise TrainError(f"init: dlib: {exc}") from None
    mean = [float(v) for v in params["mean"]]
    if max(abs(a - b) for a, b in zip(mean, model.config.pixel_mean)) > 1e-3:
        raise TrainError(f"init: dlib's weights subtract the pixel mean {mean}, the model's config "
                         f"{list(model.config.pixel_mean)}")
    model.head.fc.bias.zero_()
    was_training = model.training
    model.eval()
    raw = torch.cat([model.head(model.backbone.stages(model.normalise(images[i:i + 64]))[-1])
                     for i in range(0, len(images), 64)])
    model.head.fc.bias.copy_(-raw.mean(0))
    model.train(was_training)
    loaded = {k for k in model.state_dict() if k.startswith(("backbone.", "head."))}
    return {"missing": sorted(set(model.state_dict()) - loaded), "unexpected": []}


def _teacher_mean(teacher: nn.Module, dataset, rt: Runtime, seed: int, n: int = 512) -> torch.Tensor:
    """The teacher's mean descriptor over up to ``n`` un-augmented real training views (a fixed draw)."""
    real = np.flatnonzero(~dataset.labels.is_fake)
    pick = np.sort(np.random.default_rng(seed).choice(real, min(n, len(real)), replace=False))
    total = torch.zeros(128)
    for start in range(0, len(pick), 64):
        views = torch.from_numpy(np.stack([dataset.images.views(int(i))[1] for i in pick[start:start + 64]]))
        with torch.no_grad():
            total += teacher(views.to(rt.device)).float().sum(0).cpu()
    return total / len(pick)


def _real_images(dataset, n: int, seed: int) -> torch.Tensor:
    """Up to ``n`` un-augmented real training images (uint8 NHWC), a fixed random draw."""
    real = np.flatnonzero(~dataset.labels.is_fake)
    pick = np.random.default_rng(seed).choice(real, min(n, len(real)), replace=False)
    return torch.from_numpy(np.stack([dataset.images[int(i)] for i in np.sort(pick)]))


# ----------------------------------------------------------------------------- validation

@torch.no_grad()
def validate_pairs(model: FaceEmbedder, pairset, rt: Runtime, batch_size: int, progress: bool = False) -> dict:
    """Embed each distinct val image once (eval mode), score pairs by cosine, run the shared metrics."""
    from tqdm import tqdm

    from engine.metrics import evaluate

    was_training = model.training
    model.eval()
    chunks = []
    for images in tqdm(pairset.batches(batch_size), total=math.ceil(len(pairset.images) / batch_size),
                       desc="validate", disable=not progress, leave=False, file=sys.stderr):
        with rt.autocast():
            chunks.append(model(images.to(rt.device)).float().cpu())
    model.train(was_training)
    emb = torch.cat(chunks).numpy()
    scores = (emb[pairset.a] * emb[pairset.b]).sum(1)
    result = evaluate(pairset.labels, scores, pairset.types, pairset.attacks, bootstrap=0)
    return {"val_eer": result["eer"], "val_eer_real": result["eer_real"], "val_eer_fake": result["eer_fake"],
            "val_threshold": result["eer_threshold"], "val_roc_auc": result["roc_auc"],
            "val_eer_by_type": result.get("eer_by_type"),
            "val_eer_by_attack": {k: v["eer"] for k, v in (result.get("eer_by_attack") or {}).items()}}


# ----------------------------------------------------------------------------- files

class RealnessSet:
    """Validation faces without identity labels (DFDC's held-out source videos): realness logits only."""

    def __init__(self, samples, input_size: int, cache: bool, preprocessor):
        from training.data import ImageCache

        images = ImageCache([s.path for s in samples], input_size, cache, preprocessor=preprocessor)
        failed = images.fill(skip_faceless=True) if cache else {}
        keep = [i for i in range(len(samples)) if i not in failed]
        self.images = images.subset(keep) if failed else images
        self.is_fake = np.array([samples[i].is_fake for i in keep], bool)
        self.dropped = len(failed)

    def batches(self, batch_size: int):
        for start in range(0, len(self.images), batch_size):
            yield torch.from_numpy(np.stack([self.images[i] for i in range(start, min(start + batch_size,
                                                                                       len(self.images)))]))


@torch.no_grad()
def validate_all(model: FaceEmbedder, pairset, realness_set, rt: Runtime, batch_size: int,
                 progress: bool = False) -> dict:
    """Pair metrics and, with a realness set, its image-level real-vs-fake AUC.

    ``val_score`` is what checkpoints are selected on: the pair EER alone, or
    with real deepfakes the mean of the pair EER and the realness EER on
    them (synthesised fakes alone do not predict real ones).
    """
    from engine.metrics import equal_error_rate, roc_auc

    metrics = validate_pairs(model, pairset, rt, batch_size, progress)
    metrics["val_score"] = metrics["val_eer"]
    if realness_set is None or model.realness is None:
        return metrics
    was_training = model.training
    model.eval()
    logits = []
    for images in realness_set.batches(batch_size):
        with rt.autocast():
            logits.append(model.parts(images.to(rt.device))[1].float().cpu())
    model.train(was_training)
    z = torch.cat(logits).numpy()
    real = (~realness_set.is_fake).astype(int)
    metrics["val_realness_auc"] = roc_auc(real, z)
    metrics["val_realness_eer"] = equal_error_rate(real, z)[0]
    metrics["val_score"] = (metrics["val_eer"] + metrics["val_realness_eer"]) / 2
    return metrics


def _realness_groups(dataset) -> list[tuple[list[int], list[int]]]:
    """(real indices, fake indices) per source video of the dataset's realness rows."""
    groups: dict[str, tuple[list[int], list[int]]] = {}
    for i, sample in enumerate(dataset.realness):
        groups.setdefault(sample.identity, ([], []))[sample.is_fake].append(dataset.realness_start + i)
    return [groups[k] for k in sorted(groups)]


def atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# What a run killed mid-write leaves in its run dir: the hidden temporaries of
# atomic_torch_save, _atomic_text, save_model, save_config and ModelConfig.save.
ORPHANS = tuple(f".{name}.tmp" for name in (LAST, "log.jsonl", "log.csv", "model.safetensors", "model.json",
                                                  "config.yaml"))


def remove_orphans(run_dir: Path) -> list[Path]:
    """Remove a killed run's temporaries (exactly the names in ORPHANS) from ``run_dir``."""
    import re

    from engine.datasets import remove_orphans as remove_matching

    return remove_matching(run_dir, re.compile("|".join(re.escape(name) for name in ORPHANS)))


LAST_KEYS = ("model", "optimizer", "scaler", "sampler", "progress", "rng", "config")


def load_last(path: Path) -> dict:
    """``last.pt`` for ``--resume``, or a one-line TrainError naming the file.

    Loaded with ``weights_only=True`` (tensors and plain data only, never
    arbitrary objects). A truncated, damaged or foreign file, or one holding
    other objects, is refused as it is; torch's own message would suggest
    ``weights_only=False``, which would run whatever code the file holds.
    """
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": not for the user
            saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the file is what is wrong, whatever torch/pickle raised
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        if isinstance(exc, pickle.UnpicklingError):
            # Keep the reason ("Unsupported operand 193", "unsupported GLOBAL posix.system ..."),
            # drop the advice to load it unsafely.
            lines = [line for line in lines if not any(w in line.lower() for w in ("weights_only", "weights only",
                                                                                "torch.load", "file an issue"))]
            lines = lines or ["it holds objects other than tensors and plain data"]
        empty = path.is_file() and path.stat().st_size == 0
        detail = lines[0].split(". ")[0].rstrip(".")[:160] if lines else ("empty file" if empty else type(exc).__name__)
        raise TrainError(f"{path}: not a loadable training checkpoint ({detail}); it is damaged or not from "
                         f"training.train: delete it (or restore a good copy) and start again") from None
    missing = [k for k in LAST_KEYS if not isinstance(saved, dict) or k not in saved]
    if missing or not isinstance(saved["config"], dict):
        raise TrainError(f"{path}: not a training checkpoint of training.train (missing or bad "
                         f"{', '.join(missing) or 'config'}); delete it (or restore a good copy) and start again")
    try:
        config_from_dict(saved["config"])
    except ConfigError as exc:
        raise TrainError(f"{path}: its saved config is not valid ({exc})") from None
    return saved


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_logs(run_dir: Path, rows: list[dict]) -> None:
    """Rewrite log.jsonl and log.csv from all rows (CSV holds the scalar columns)."""
    _atomic_text(run_dir / "log.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    columns: list[str] = []
    for row in rows:
        columns += [k for k, v in row.items() if k not in columns and not isinstance(v, (dict, list))]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    _atomic_text(run_dir / "log.csv", buf.getvalue())


def read_log(run_dir: Path, up_to_epoch: int) -> list[dict]:
    path = run_dir / "log.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["epoch"] <= up_to_epoch]


def _round(value):
    return round(value, 6) if isinstance(value, float) else value


# ----------------------------------------------------------------------------- training

def train(config: TrainConfig, resume: bool = False, stop_after_steps: int = 0, progress: bool = True) -> dict:
    """Train (or continue) the run described by ``config``; returns a summary dict.

    ``stop_after_steps`` > 0 stops after that many optimizer steps in total,
    leaving a resumable ``last.pt`` (for pre-emptible jobs, and to test resume).
    """
    from engine.datasets import read_kryptonite_train, read_pair_folder
    from training.data import PairSet, TrainDataset, sample_key, subset_pairs, train_loader
    from training.distill import FeatureProjection, TeacherError, load_teacher, open_feature_teacher, relational_loss
    from training.sampler import PKSampler

    run_dir = config.run_dir()
    check_inputs(config, run_dir, resume)
    saved = None
    if resume:
        saved = load_last(run_dir / LAST)
        config = _resumed_config(config, saved["config"], run_dir)

    rt = resolve_runtime(config)
    seed_everything(config.seed)
    if rt.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")

    # Data
    train_root = Path(config.data_dir) / "train"
    samples = read_kryptonite_train(train_root)
    teacher_emb = teacher_index = None
    if config.teacher and config.distill_weight > 0:
        keys = [sample_key(s, train_root / "images") for s in samples]
        emb, teacher_index = load_teacher(config.teacher, keys, center=config.teacher_center)
        teacher_emb = torch.from_numpy(emb).to(rt.device)
    from engine.preprocess import Preprocessor

    preprocessor = Preprocessor(config.model_config())  # the model's contract: what convert and the runtime use
    feature_teacher = None
    extra: list = []
    if config.feature_teacher and config.feature_weight > 0:
        try:
            feature_teacher = open_feature_teacher(config.feature_teacher, rt.device)
        except TeacherError as exc:
            raise TrainError(str(exc)) from None
        if config.extra_per_batch:
            from engine.datasets import DataError, list_images

            try:
                extra = [p for f in config.extra_images.split(",") if f.strip() for p in list_images(f.strip())]
            except DataError as exc:
                raise TrainError(f"extra_images: {exc}") from None
    teacher_size = feature_teacher.chip_size if feature_teacher is not None else 0
    realness_train, realness_val = [], []
    if config.realness_data:
        from engine.datasets import DataError, read_dfdc_faces, split_by_identity

        try:
            realness_train, realness_val = split_by_identity(read_dfdc_faces(config.realness_data),
                                                             config.realness_val_share, seed=0)
        except DataError as exc:
            raise TrainError(f"realness_data: {exc}") from None
    dataset = TrainDataset(samples, config.input_size, config.augment, config.cache_images, teacher_index,
                           config.crop_fraction, preprocessor, teacher_size, extra, progress and rt.main,
                           realness_train if config.realness_per_batch else ())
    if dataset.realness_faceless and rt.main:
        print(f"realness images: {len(dataset.realness)} with a face, {len(dataset.realness_faceless)} skipped",
              file=sys.stderr)
    if extra and rt.main:
        skipped = dataset.extra_faceless
        print(f"extra images: {len(dataset.extra)} with a face, {len(skipped)} skipped"
              + (f" (e.g. {next(iter(skipped.values()))})" if skipped else ""), file=sys.stderr)
    if extra and not len(dataset.extra):
        raise TrainError(f"extra_images: no usable face photo in {config.extra_images}")
    if dataset.faceless and rt.main:
        first = next(iter(dataset.faceless.values()))
        print(f"left out {len(dataset.faceless)} training image(s) with no face found (e.g. {first})",
              file=sys.stderr)
    sampler = PKSampler(dataset.labels.identity, dataset.labels.is_fake, config.p, config.k, config.fake_share,
                        config.seed, rt.rank, rt.world_size, config.steps_per_epoch, len(dataset.extra),
                        config.extra_per_batch, _realness_groups(dataset), config.realness_per_batch)
    if config.loader == "device":  # the GPU path: images live on the device, augmented there
        from training.device_data import DeviceBatches

        on_device = DeviceBatches(dataset, rt.device, config.augment, progress and rt.main)
        loader = None
    else:
        on_device = None
        loader = train_loader(dataset, sampler, config.workers, pin_memory=rt.device.type == "cuda")
    pairset = None
    if config.validate and rt.main:
        pairs = subset_pairs(read_pair_folder(Path(config.data_dir) / "val"), config.val_max_pairs, config.seed)
        pairset = PairSet(pairs, config.input_size, config.cache_images, config.crop_fraction, preprocessor)
        if pairset.dropped:
            print(f"left out {pairset.dropped} validation pair(s) with an image where no face is found",
                  file=sys.stderr)
    realness_set = None
    if config.validate and rt.main and realness_val and config.realness_weight > 0:
        realness_set = RealnessSet(realness_val, config.input_size, config.cache_images, preprocessor)

    # Model (same init on every rank; DDP also broadcasts rank 0's weights)
    embedder = get_model(config.model_config(), dropout=config.dropout)
    if config.init and not resume:
        report = load_init(embedder, config.init, lambda: _real_images(dataset, 256, config.seed))
        if rt.main:
            print(f"init: loaded {config.init} (missing {len(report['missing'])}, "
                  f"unexpected {len(report['unexpected'])} keys)", file=sys.stderr)
    head = None
    if config.aux_head != "none":
        head = MarginSoftmaxHead(config.embedding_dim, dataset.labels.num_classes, config.aux_head,
                                 config.aux_scale, config.aux_margin)
    projection = None
    if feature_teacher is not None:
        projection = FeatureProjection(config.embedding_dim - int(config.realness_weight > 0),
                                       linear=config.feature_projection)
        if saved is None and not config.feature_projection:  # the centring the student's head starts with
            projection.teacher_mean.copy_(-embedder.head.fc.bias.detach())
        elif saved is None:  # the teacher's mean descriptor over a fixed draw of clean real training views
            projection.teacher_mean.copy_(_teacher_mean(feature_teacher, dataset, rt, config.seed))
    net = Trainee(embedder, head, projection).to(rt.device)
    if config.channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(config, net)
    scaler = torch.amp.GradScaler("cuda", enabled=rt.dtype == torch.float16)
    steps_per_epoch = sampler.steps_per_epoch
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
    if rt.main:
        precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[rt.dtype]
        print(f"{config.name}: {len(dataset.samples)} train images ({int(dataset.labels.is_fake.sum())} fakes), "
              f"{len(sampler.identities)} identities; {rt.world_size} process(es) on {rt.device}, {precision}, "
              f"{torch.get_num_threads()} threads; {steps_per_epoch} steps/epoch of "
              f"{config.p}x{config.k}x{rt.world_size} images; {len(pairset.pairs) if pairset else 0} val pairs",
              file=sys.stderr)

    progress_state = {"epoch": 1, "step": 0, "global_step": 0, "best_eer": None, "best_epoch": None,
                      "sums": {}}
    rows: list[dict] = []
    if saved is not None:
        net.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scaler.load_state_dict(saved["scaler"])
        sampler.load_state_dict(saved["sampler"])
        progress_state = saved["progress"]
        if len(saved["rng"]) != rt.world_size:
            raise TrainError(f"{run_dir / LAST} was saved by {len(saved['rng'])} process(es); "
                             f"resume with the same number (now {rt.world_size})")
        set_rng_state(saved["rng"][rt.rank])
        if rt.main:
            rows = read_log(run_dir, progress_state["epoch"] - 1)
    else:
        torch.manual_seed(config.seed + rt.rank)  # per-rank dropout streams

    model = net
    if rt.distributed:
        model = nn.parallel.DistributedDataParallel(net, device_ids=[rt.device.index] if rt.device.type == "cuda"
                                                    else None)

    def save_best(epoch: int, metrics: dict) -> None:
        extra = {"run": config.name, "epoch": epoch,
                 **{k: metrics[k] for k in ("val_eer", "val_eer_real", "val_eer_fake", "val_realness_auc")
                    if k in metrics}}
        if config.init == "dlib":  # what the weights started from, and under which licence
            extra["initial_weights"] = ("dlib_face_recognition_resnet_model_v1 (face_recognition_models on PyPI, "
                                        "CC0 1.0, Davis King)")
        threshold = metrics.get("val_threshold")
        if threshold is not None:  # rounding can put an EER threshold of cosines past 1; the contract wants [-1, 1]
            threshold = min(1.0, max(-1.0, float(threshold)))
        mc = ModelConfig(**{**config.model_config().to_dict(), "threshold": threshold, "extra": extra})
        save_model(embedder, run_dir, mc)

    def save_last() -> None:
        states = [rng_state()]
        if rt.distributed:
            states = [None] * rt.world_size
            torch.distributed.all_gather_object(states, rng_state())
        if not rt.main:
            return
        atomic_torch_save({"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                           "scaler": scaler.state_dict(), "sampler": sampler.state_dict(),
                           "scheduler": {"step": progress_state["global_step"], "total": total_steps,
                                         "warmup": warmup_steps},
                           "progress": progress_state, "rng": states, "config": config.to_dict()},
                          run_dir / LAST)

    if saved is None:
        row = {"epoch": 0, "step": 0}
        if pairset is not None:
            metrics = validate_all(embedder, pairset, realness_set, rt, config.val_batch, progress)
            row.update(metrics)
            progress_state["best_eer"], progress_state["best_epoch"] = metrics["val_score"], 0
            print(f"epoch 0 (untrained): {_eer_text(metrics)}", file=sys.stderr)
        if rt.main:
            rows.append({k: _round(v) for k, v in row.items()})
            write_logs(run_dir, rows)
            if pairset is not None:
                save_best(0, metrics)
        _barrier(rt)

    from tqdm import tqdm

    stopped = bool(stop_after_steps) and progress_state["global_step"] >= stop_after_steps
    net.train()
    for epoch in range(progress_state["epoch"], config.epochs + 1):
        if stopped:
            break
        sampler.set_epoch(epoch, progress_state["step"])
        sums = progress_state["sums"] or {"loss": 0.0, "triplet": 0.0, "aux": 0.0, "distill": 0.0,
                                          "realness": 0.0, "active": 0.0, "d_ap": 0.0, "d_an": 0.0, "steps": 0, "images": 0,
                                          "seconds": 0.0}
        sums.setdefault("realness", 0.0)  # mid-epoch checkpoints from before the realness loss
        sums.setdefault("feature", 0.0)
        bar = tqdm(total=steps_per_epoch, initial=progress_state["step"], desc=f"epoch {epoch}/{config.epochs}",
                   disable=not (progress and rt.main), leave=False, file=sys.stderr)
        tick = time.perf_counter()
        for batch in (map(on_device, sampler) if on_device is not None else loader):
            lr = lr_at(progress_state["global_step"], total_steps, warmup_steps, config.lr, config.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            images = batch["image"].to(rt.device, non_blocking=True)
            identity = batch["identity"].to(rt.device)
            is_fake = batch["is_fake"].to(rt.device)
            labelled = identity >= 0  # the rest are unlabelled extra photos (feature distillation only)
            with rt.autocast():
                emb, id_part, logit, aux, projected = model(images, batch["class_id"].to(rt.device) if head is not None
                                                 else None)
            trip, stats = triplet_loss(emb[labelled], identity[labelled], is_fake[labelled], config.mining,
                                       config.margin, config.fake_fake)
            loss = config.triplet_weight * trip
            if aux is not None:
                loss = loss + config.aux_weight * aux
            distill = realness = feature = None
            if teacher_emb is not None:
                # On the identity part only: the teacher knows people, not fakes.
                t_idx = batch["teacher"].to(rt.device)
                has = t_idx >= 0
                distill = relational_loss(id_part[has], teacher_emb[t_idx[has]])
                loss = loss + config.distill_weight * distill
            if feature_teacher is not None:
                real = ~is_fake  # the teacher knows people, not fakes
                with torch.no_grad(), rt.autocast():
                    descriptors = feature_teacher(batch["teacher_image"].to(rt.device)[real]).float()
                feature = net.projection.loss(projected[real], descriptors)
                loss = loss + config.feature_weight * feature
            if logit is not None:
                # Every row's realness is known: labelled and realness rows say it, unlabelled photos are real.
                realness = nn.functional.binary_cross_entropy_with_logits(logit.float(), 1.0 - is_fake.float())
                loss = loss + config.realness_loss * realness
            if not torch.isfinite(loss):
                raise TrainError(f"epoch {epoch} step {progress_state['step']}: loss is {loss.item()} "
                                 f"(lower lr, or use precision=fp32)")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()

            now = time.perf_counter()
            sums["seconds"] += now - tick
            tick = now
            sums["loss"] += loss.item()
            sums["triplet"] += trip.item()
            sums["aux"] += aux.item() if aux is not None else 0.0
            sums["distill"] += distill.item() if distill is not None else 0.0
            sums["realness"] += realness.item() if realness is not None else 0.0
            sums["feature"] += feature.item() if feature is not None else 0.0
            for key in ("active", "d_ap", "d_an"):
                sums[key] += stats[key]
            sums["steps"] += 1
            sums["images"] += len(images) * rt.world_size
            progress_state["step"] += 1
            progress_state["global_step"] += 1
            progress_state["sums"] = sums
            bar.update(1)
            bar.set_postfix(loss=f"{sums['loss'] / sums['steps']:.4f}",
                            img_s=f"{sums['images'] / max(sums['seconds'], 1e-9):.1f}", lr=f"{lr:.2e}")
            done = progress_state["global_step"]
            at_end = progress_state["step"] == steps_per_epoch
            if stop_after_steps and done >= stop_after_steps and not at_end:
                save_last()
                stopped = True
                break
            if config.checkpoint_every and done % config.checkpoint_every == 0 and not at_end:
                save_last()
                tick = time.perf_counter()
        bar.close()
        if stopped:
            break

        row = _epoch_row(epoch, progress_state, sums, optimizer, rt)
        if pairset is not None:
            metrics = validate_all(embedder, pairset, realness_set, rt, config.val_batch, progress)
            row.update(metrics)
            best = progress_state["best_eer"]
            if best is None or metrics["val_score"] < best:
                progress_state["best_eer"], progress_state["best_epoch"] = metrics["val_score"], epoch
                save_best(epoch, metrics)
        elif rt.main:
            progress_state["best_epoch"] = epoch
            save_best(epoch, {})
        row["best_epoch"] = progress_state["best_epoch"]
        progress_state.update(epoch=epoch + 1, step=0, sums={})
        if rt.main:
            rows.append({k: _round(v) for k, v in row.items()})
            write_logs(run_dir, rows)
            print(_summary_line(row), file=sys.stderr)
        save_last()
        _barrier(rt)
        if stop_after_steps and progress_state["global_step"] >= stop_after_steps and epoch < config.epochs:
            stopped = True
            break

    if rt.distributed:
        torch.distributed.destroy_process_group()
    return {"run_dir": str(run_dir), "stopped": stopped, "global_step": progress_state["global_step"],
            "best_eer": progress_state["best_eer"], "best_epoch": progress_state["best_epoch"], "log": rows}


def _barrier(rt: Runtime) -> None:
    if rt.distributed:
        torch.distributed.barrier()


def _epoch_row(epoch: int, state: dict, sums: dict, optimizer, rt: Runtime) -> dict:
    keys = ("loss", "triplet", "aux", "distill", "feature", "realness", "active", "d_ap", "d_an")
    totals = torch.tensor([sums[k] for k in keys] + [sums["steps"]], dtype=torch.float64)
    if rt.distributed:  # mean over ranks (each saw its own batches)
        torch.distributed.all_reduce(totals)
        totals[:-1] /= rt.world_size
        totals[-1] /= rt.world_size
    steps = max(1.0, float(totals[-1]))
    row = {"epoch": epoch, "step": state["global_step"]}
    row.update({k: float(totals[i]) / steps for i, k in enumerate(keys)})
    row["lr"] = optimizer.param_groups[0]["lr"]
    row["img_s"] = sums["images"] / max(sums["seconds"], 1e-9)
    row["train_s"] = sums["seconds"]
    return row


def _summary_line(row: dict) -> str:
    parts = [f"epoch {row['epoch']}", f"loss {row['loss']:.4f}", f"{row['img_s']:.1f} img/s"]
    if row.get("val_eer") is not None:
        parts.append(_eer_text(row))
    parts.append(f"best epoch {row.get('best_epoch')}")
    return ", ".join(parts)


def _eer_text(metrics: dict) -> str:
    def f(value):
        return "n/a" if value is None else f"{value:.4f}"
    text = (f"val EER {f(metrics.get('val_eer'))} (real {f(metrics.get('val_eer_real'))}, "
            f"fake {f(metrics.get('val_eer_fake'))})")
    if metrics.get("val_realness_auc") is not None:
        text += f", realness AUC {f(metrics['val_realness_auc'])} (held-out real deepfakes)"
    return text


def _resumed_config(config: TrainConfig, saved: dict, run_dir: Path) -> TrainConfig:
    """The saved config, with only the keys that cannot change the result taken from ``config``."""
    resumed = config_from_dict(saved)
    new, old = config.to_dict(), resumed.to_dict()
    differ = sorted(k for k in new if k not in RESUMABLE_CHANGES and new[k] != old[k])
    if differ:
        detail = ", ".join(f"{k}: saved {old[k]!r}, now {new[k]!r}" for k in differ[:4])
        raise TrainError(f"{run_dir / LAST}: --resume needs the run's own config; changed: {detail}")
    for key in RESUMABLE_CHANGES:
        setattr(resumed, key, getattr(config, key))
    return resumed


# ----------------------------------------------------------------------------- CLI

def _keys_help() -> str:
    import textwrap

    def items(obj, prefix=""):
        for key, value in obj.__dict__.items():
            if hasattr(value, "__dataclass_fields__"):
                yield from items(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}={value!r}" if isinstance(value, str) else f"{prefix}{key}={value}"

    return "\n" + textwrap.fill(" ".join(items(TrainConfig())), 100, initial_indent="  ", subsequent_indent="  ")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train a fake-aware face embedder. Config = defaults <- --config YAML <- key=value overrides "
                    "(nested keys with dots, e.g. augment.jpeg_p=0.5). Writes into output_dir (default "
                    "runs/<config name>). Temporaries a killed run left there (.last.pt.tmp and the like) "
                    "are removed when the next run starts.",
        epilog="config keys (defaults; meanings in training/config.py): " + _keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config file (keys of training.config.TrainConfig)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, applied last")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in output_dir from last.pt exactly (same config; only "
                             f"{', '.join(RESUMABLE_CHANGES)} may change)")
    parser.add_argument("--stop-after-steps", type=int, default=0, metavar="N",
                        help="stop after N optimizer steps in total, leaving a resumable last.pt (0 = train to the end)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = parser.parse_intermixed_args(argv)
    if args.stop_after_steps < 0:
        parser.error("--stop-after-steps must be >= 0")
    try:
        config = load_config(args.config, args.overrides)
        summary = train(config, resume=args.resume, stop_after_steps=args.stop_after_steps, progress=args.progress)
    except (ConfigError, TrainError, ContractError, ValueError) as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in summary.items() if k != "log"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
