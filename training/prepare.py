"""Build a deepfake-aware dataset from real face photos (LFW or any identity folders).

    python -m training.prepare --source ../shared/data/lfw-deepfunneled --out data/lfw-fakeaware

Output (``OUT``):

- ``train/``: the Kryptonite training layout. ``meta.json``
  ``{"<identity>/<k>.jpg": 0|1}`` and ``images/<identity>/<k>.jpg`` with
  zero-padded numeric identity folders; each identity holds its real photos
  plus ``fakes_per_identity`` fakes showing it (1 in meta.json).
  ``fakes.json`` ``{"<identity>/<k>.jpg": {"attack", "source", "inputs"}}``
  says how each fake was made (``source``: the other identity whose pixels
  were used, the identity itself for self-blend); ``identities.json`` maps
  the numbers back to source folder names.
- ``val/`` and ``test/``: the Kryptonite ``test_public`` layout,
  ``images/<pair_id>/0.jpg,1.jpg`` (8-digit ids), with ``pairs.csv``
  (``pair_id,label,type,attack``) and ``sources.csv`` (which source images
  each pair came from, for debugging).
- ``summary.json``: the counts, also printed.

Splits are identity-disjoint and deterministic for a seed; fakes in val/test
use only that split's identities. Every image (real or fake) is decoded and
re-encoded as JPEG at the same quality, so compression is no shortcut for
telling fakes apart. The source resolution is kept unless ``--size`` asks for
a centre-crop/resize (the model's preprocessing does that later anyway).

The output is built in a hidden sibling folder (``.OUT.partial-<pid>``) and
renamed into place at the end; an interrupted or failed run leaves nothing that
looks complete, and the next run removes what a killed one left.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from engine.datasets import (FAKE_OF_OTHER, FAKE_OF_SAME, GENUINE, IMPOSTOR, PAIR_TYPES, DataError,
                             read_identity_folders, read_lfw_pairs, remove_orphans)
from training.attacks import ATTACKS, FACE_SWAP, MORPH, SELF_BLEND
from engine.files import FileRefused, check_replaceable, mark_output, printable

DEFAULT_VAL_PAIRS = (2000, 2000, 1000, 300)
DEFAULT_TEST_PAIRS = (3000, 3000, 1500, 500)
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
MAX_SIZE = 4096  # --size: larger than any face crop needs; 100000 would ask for 30 GB per image


TOOL = "training.prepare"  # the output marker's name: --force replaces only folders it wrote


class PrepareError(RuntimeError):
    """The dataset cannot be prepared as asked (bad arguments or output folder)."""


@dataclass(frozen=True)
class Job:
    """One output image: a re-encoded real photo or a fake made from source images."""

    dest: str          # path relative to the temporary output root ("" = only check that target decodes)
    target: str        # source image (absolute path) whose identity the image shows
    attack: str = ""   # "" for a real image
    other: str = ""    # second source image for face-swap (host) / morph (partner)
    seed: tuple = ()   # entropy for this fake's generator, independent of execution order


# ------------------------------------------------------------------ planning

def _split_identities(by_identity: dict[str, list[str]], forced_test: set[str], rng: np.random.Generator,
                      val_fraction: float, test_fraction: float) -> tuple[list[str], list[str], list[str]]:
    """Identity-disjoint train/val/test; ``forced_test`` identities always go to test.

    Fractions are of all identities in ``by_identity``; forced identities
    count towards the test share, and more are drawn only if they fall short.
    """
    names = sorted(by_identity)
    n = len(names)
    n_val = int(round(val_fraction * n))
    n_test = max(0, int(round(test_fraction * n)) - len(forced_test))
    pool = [name for name in names if name not in forced_test]
    order = rng.permutation(len(pool))
    pool = [pool[i] for i in order]
    test = sorted(forced_test | set(pool[:n_test]))
    val = sorted(pool[n_test:n_test + n_val])
    train = sorted(pool[n_test + n_val:])
    return train, val, test


def _plan_train(train: list[str], by_identity: dict[str, list[str]], fakes_per_identity: int, seed: int,
                rng: np.random.Generator, width: int, rel_source):
    """Jobs, meta.json, fakes.json and identities.json for the training split."""
    jobs, meta, fakes, numbers = [], {}, {}, {}
    counter = 0
    for idx, name in enumerate(train):
        ident = f"{idx:0{width}d}"
        numbers[ident] = name
        reals = by_identity[name]
        total = len(reals) + fakes_per_identity
        slots = rng.permutation(total)  # fakes are not told apart by their file number
        for real, slot in zip(reals, slots[:len(reals)]):
            rel = f"{ident}/{slot}.jpg"
            jobs.append(Job(f"train/images/{rel}", real))
            meta[rel] = 0
        for slot in slots[len(reals):]:
            attack = ATTACKS[counter % len(ATTACKS)]
            counter += 1
            target = reals[rng.integers(len(reals))]
            other, other_ident = "", ident
            if attack != SELF_BLEND and len(train) > 1:
                j = int(rng.integers(len(train) - 1))
                j += j >= idx
                other_ident = f"{j:0{width}d}"
                others = by_identity[train[j]]
                other = others[rng.integers(len(others))]
            elif attack != SELF_BLEND:
                attack = SELF_BLEND  # a single identity has nobody to swap with
            rel = f"{ident}/{slot}.jpg"
            jobs.append(Job(f"train/images/{rel}", target, attack, other, (seed, 0, len(jobs))))
            meta[rel] = 1
            fakes[rel] = {"attack": attack, "source": other_ident,
                          "inputs": [rel_source(target)] + ([rel_source(other)] if other else [])}
    meta = dict(sorted(meta.items()))
    fakes = dict(sorted(fakes.items()))
    return jobs, meta, fakes, numbers


def _plan_pairs(split: str, names: list[str], by_identity: dict[str, list[str]], counts: tuple[int, int, int, int],
                seed: int, rng: np.random.Generator, rel_source):
    """Jobs and pair rows for a val/test split (Kryptonite test_public layout).

    Pair kinds: genuine (two real photos of A), impostor (A vs B), fake-of-same
    (real A vs a fake showing A) and fake-of-other (real A vs a fake showing B;
    a face-swap puts B's face on one of A's photos, a morph blends B with A).
    Duplicates are skipped, so a small split may yield fewer pairs than asked;
    the summary reports what was made.
    """
    n_gen, n_imp, n_same, n_other = counts
    multi = [name for name in names if len(by_identity[name]) >= 2]
    pairs = []  # (type, attack, (identity, image or fake spec), (identity, image or fake spec))

    def pick(name, avoid=None):
        imgs = by_identity[name]
        if avoid is not None and len(imgs) > 1:
            choices = [p for p in imgs if p != avoid]
            return choices[rng.integers(len(choices))]
        return imgs[rng.integers(len(imgs))]

    position = {name: i for i, name in enumerate(names)}

    def other_than(name):
        j = int(rng.integers(len(names) - 1))
        j += j >= position[name]
        return names[j]

    def genuine():
        name = multi[rng.integers(len(multi))]
        a = pick(name)
        return name, a, name, pick(name, avoid=a)

    def impostor():
        name_a = names[rng.integers(len(names))]
        name_b = other_than(name_a)
        return name_a, pick(name_a), name_b, pick(name_b)

    # Pairs of real photos: up to 20 draws per pair asked for, repeats skipped.
    seen = set()
    for kind, n, draw in ((GENUINE, n_gen if multi else 0, genuine),
                          (IMPOSTOR, n_imp if len(names) >= 2 else 0, impostor)):
        made = 0
        for _ in range(n * 20):
            if made >= n:
                break
            name_a, a, name_b, b = draw()
            key = (kind,) + tuple(sorted((a, b)))
            if key not in seen:
                seen.add(key)
                pairs.append((kind, "", (name_a, a, "", ""), (name_b, b, "", "")))
                made += 1
    for k in range(n_same):
        attack = ATTACKS[k % len(ATTACKS)]
        name = names[rng.integers(len(names))]
        real = pick(name)
        target = pick(name, avoid=real)
        other = ""
        if attack != SELF_BLEND:
            if len(names) < 2:
                attack = SELF_BLEND
            else:
                other = pick(other_than(name))
        pairs.append((FAKE_OF_SAME, attack, (name, real, "", ""), (name, target, attack, other)))
    if len(names) >= 2:
        for k in range(n_other):
            attack = ATTACKS[k % len(ATTACKS)]
            name_a = names[rng.integers(len(names))]
            name_b = other_than(name_a)
            real = pick(name_a)
            target = pick(name_b)
            # The second image comes from A: B's face on A's photo, or B morphed with A.
            other = pick(name_a, avoid=real) if attack in (FACE_SWAP, MORPH) else ""
            pairs.append((FAKE_OF_OTHER, attack, (name_a, real, "", ""), (name_b, target, attack, other)))

    order = rng.permutation(len(pairs))
    flips = rng.random(len(pairs)) < 0.5  # the fake sits at 0.jpg or 1.jpg at random
    jobs, rows, sources = [], [], []
    for pid, i in enumerate(order):
        ptype, attack, first, second = pairs[i]
        if flips[pid]:
            first, second = second, first
        pair_id = f"{pid:08d}"
        for k, (name, target, fake_attack, other) in enumerate((first, second)):
            jobs.append(Job(f"{split}/images/{pair_id}/{k}.jpg", target, fake_attack, other,
                            (seed, SPLIT_CODES[split], pid * 2 + k) if fake_attack else ()))
        rows.append((pair_id, int(ptype == GENUINE), ptype, attack))
        sources.append((pair_id, first[0], _describe(first, rel_source), second[0], _describe(second, rel_source)))
    return jobs, rows, sources


def _describe(item, rel_source) -> str:
    """A source image as its path under --source, or a fake as ``attack:target+other``."""
    name, target, attack, other = item
    if not attack:
        return rel_source(target)
    return f"{attack}:{rel_source(target)}" + (f"+{rel_source(other)}" if other else "")


# ----------------------------------------------------------------- execution

ALIGN_FRAME = 250  # the canonical frame of --align face: LFW's 250 px, face in the central half


class _Renderer:
    """Decodes source images (cached), makes fakes and encodes JPEGs; thread-safe.

    With ``align`` every source photo is first warped onto the canonical
    frame (the ``lfw-centre`` template at margin 1.0 in 250 px: the face where
    LFW deep-funneled has it), so the attacks' masks, which assume that
    framing, sit on the same facial geometry whatever the source's framing.
    A photo in which no face is found is kept as it is and counted.
    """

    def __init__(self, size: int, jpeg_quality: int, cache_items: int = 4096, align: bool = False):
        self.size = size
        self.quality = jpeg_quality
        self.load = lru_cache(maxsize=cache_items)(self._load)
        self.unaligned: set[str] = set()
        self.aligner = None
        if align:
            from engine.contract import ModelConfig
            from engine.preprocess import Preprocessor

            self.aligner = Preprocessor(ModelConfig(align="face", template="lfw-centre", margin=1.0),
                                        size=ALIGN_FRAME)

    def _load(self, path: str) -> np.ndarray:
        from engine.preprocess import ImageError, decode, preprocess

        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({exc.strerror})") from None
        from engine.preprocess import NoFaceError

        try:
            rgb = decode(data, path)
            if self.aligner is not None:
                try:
                    rgb = self.aligner.prepare(rgb, path).image
                except NoFaceError:
                    self.unaligned.add(path)
            if self.size:
                rgb = preprocess(rgb, self.size, path)
        except ImageError as exc:
            raise DataError(str(exc)) from None
        if min(rgb.shape[:2]) < 16:
            raise DataError(f"{path}: image {rgb.shape[1]}x{rgb.shape[0]} is too small for a face")
        rgb.flags.writeable = False  # shared between jobs through the cache
        return rgb

    def render(self, job: Job, root: Path) -> None:
        import cv2

        from training.attacks import synthesize

        img = self.load(job.target)
        if not job.dest:  # a check-only job: the source image must decode
            return
        if job.attack:
            rng = np.random.default_rng(np.random.SeedSequence(list(job.seed)))
            other = self.load(job.other) if job.other else None
            img = synthesize(job.attack, img, other, rng)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise DataError(f"{job.target}: JPEG encoding failed")
        (root / job.dest).write_bytes(buf.tobytes())


def _run_jobs(jobs: list[Job], root: Path, renderer: _Renderer, workers: int, progress: bool) -> None:
    from tqdm import tqdm

    for d in sorted({str(Path(j.dest).parent) for j in jobs if j.dest}):
        (root / d).mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(jobs), desc="prepare", unit="img", disable=not progress, file=sys.stderr)
    try:
        if workers <= 1:
            for job in jobs:
                renderer.render(job, root)
                bar.update()
            return
        with ThreadPoolExecutor(workers) as pool:
            # Bounded submission keeps memory flat and stops at the first error.
            chunk = 256
            for start in range(0, len(jobs), chunk):
                futures = [pool.submit(renderer.render, job, root) for job in jobs[start:start + chunk]]
                for fut in futures:
                    fut.result()
                    bar.update()
    finally:
        bar.close()


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")


def _write_csv(path: Path, header: tuple[str, ...], rows) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buf.getvalue())


def _is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


# --------------------------------------------------------------------- main

def prepare(source: str | os.PathLike, out: str | os.PathLike, seed: int = 0, fakes_per_identity: int = 5,
            force: bool = False, min_images: int = 2, val_fraction: float = 0.10, test_fraction: float = 0.15,
            val_pairs: tuple[int, int, int, int] = DEFAULT_VAL_PAIRS,
            test_pairs: tuple[int, int, int, int] = DEFAULT_TEST_PAIRS,
            exclude_lfw_pairs: str | os.PathLike | None = None, exclude_fold: int | None = None,
            excluded_to: str = "test", size: int = 0, jpeg_quality: int = 95, workers: int = 2,
            progress: bool = True, unlabelled: bool = False, align: str = "face") -> dict:
    """Write the deepfake-aware dataset to ``out``; returns the summary (also in ``out/summary.json``).

    ``exclude_lfw_pairs``/``exclude_fold`` (1-based: fold 1 is the first 600
    pairs after the header) keep every identity of that LFW fold out of
    train and val: they go to test (``excluded_to="test"``) or are dropped
    (``"drop"``), so the standard LFW fold can be scored without leakage.
    ``align="face"`` warps every photo onto one canonical frame before the
    fakes are made (see ``_Renderer``); ``"none"`` takes the photos as they
    are (right for LFW deep-funneled, which is aligned already).
    ``unlabelled`` also copies the photos of identities with fewer than
    ``min_images`` images (never an excluded identity) to
    ``train/unlabelled/<n>.jpg``: no pair can use them, but distillation
    from a teacher needs no labels (LFW has ~4k such people).
    Raises :class:`DataError` for bad source data, :class:`PrepareError` for
    bad arguments or an output folder that would be overwritten.
    """
    started = time.time()
    source, out = Path(source), Path(out)
    if fakes_per_identity < 0:
        raise PrepareError(f"fakes_per_identity must be >= 0, got {fakes_per_identity}")
    if min_images < 1:
        raise PrepareError(f"min_images must be >= 1, got {min_images}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise PrepareError(f"val_fraction {val_fraction} + test_fraction {test_fraction} must be in [0, 1)")
    for name, counts in (("val_pairs", val_pairs), ("test_pairs", test_pairs)):
        if len(counts) != 4 or any(int(c) < 0 for c in counts):
            raise PrepareError(f"{name} must be 4 counts >= 0 (genuine,impostor,fake-of-same,fake-of-other), "
                               f"got {counts}")
    if excluded_to not in ("test", "drop"):
        raise PrepareError(f"excluded_to must be 'test' or 'drop', got {excluded_to!r}")
    if (exclude_lfw_pairs is None) != (exclude_fold is None):
        raise PrepareError("exclude_lfw_pairs and exclude_fold go together")
    if size and not 16 <= size <= MAX_SIZE:
        raise PrepareError(f"size must be 0 (keep) or in 16..{MAX_SIZE}, got {size}")
    if align not in ("face", "none"):
        raise PrepareError(f"align must be 'face' or 'none', got {align!r}")
    if not 1 <= jpeg_quality <= 100:
        raise PrepareError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    out_abs, cwd = out.resolve(), Path.cwd().resolve()
    if out_abs == cwd or out_abs in cwd.parents:
        # --force would rename it away and delete it: the folder we stand in, or one above it.
        raise PrepareError(f"{out}: is the current directory or one of its parents ({out_abs}); "
                           f"choose a new folder for the output")
    if not source.is_dir():
        raise DataError(f"{source}: no such folder")
    src_abs = source.resolve()
    if out_abs == src_abs or src_abs in out_abs.parents or out_abs in src_abs.parents:
        raise PrepareError(f"{out}: the output must not overlap the source {source}")
    if out.exists() and not out.is_dir():
        raise PrepareError(f"{out}: exists and is not a folder")
    if _is_nonempty_dir(out) and not force:
        raise PrepareError(f"{out}: not empty; pass --force to replace it")
    try:  # --force replaces an earlier prepared set only, never a folder holding an input
        check_replaceable(out, TOOL, [p for p in (source, exclude_lfw_pairs) if p is not None])
    except FileRefused as exc:
        raise PrepareError(str(exc)) from None

    samples = read_identity_folders(source)
    all_images: dict[str, list[str]] = {}
    for s in samples:
        all_images.setdefault(s.identity, []).append(str(s.path))

    forced: set[str] = set()
    excluded_info = None
    if exclude_lfw_pairs is not None:
        lfw = read_lfw_pairs(source, exclude_lfw_pairs)
        folds = max(p.fold for p in lfw) + 1
        if not 1 <= exclude_fold <= folds:
            raise PrepareError(f"exclude_fold must be in 1..{folds} (1-based), got {exclude_fold}")
        forced = {p.parent.name for pr in lfw if pr.fold == exclude_fold - 1 for p in (pr.path_a, pr.path_b)}
        excluded_info = {"pairs_file": str(exclude_lfw_pairs), "fold": exclude_fold, "identities": len(forced),
                         "placed": excluded_to}

    by_identity = {name: imgs for name, imgs in all_images.items() if len(imgs) >= min_images}
    if excluded_to == "drop":
        by_identity = {name: imgs for name, imgs in by_identity.items() if name not in forced}
        forced_test: set[str] = set()
    else:
        # Excluded identities are kept out of train/val even when they have too
        # few images to be used otherwise; in test they serve impostor/fake pairs.
        forced_test = forced
        for name in forced:
            by_identity[name] = all_images[name]
    if not by_identity:
        raise DataError(f"{source}: no identity has >= {min_images} images")

    rng = np.random.default_rng(seed)
    train, val, test = _split_identities(by_identity, forced_test, rng, val_fraction, test_fraction)
    if not train:
        raise DataError(f"{source}: no identities left for training ({len(by_identity)} usable)")
    width = max(6, len(str(len(train) - 1)))

    def rel_source(path: str) -> str:  # metadata names source images relative to --source
        return Path(path).relative_to(source).as_posix()

    train_jobs, meta, fakes, numbers = _plan_train(train, by_identity, fakes_per_identity, seed, rng, width,
                                                   rel_source)
    val_jobs, val_rows, val_sources = _plan_pairs("val", val, by_identity, tuple(val_pairs), seed, rng,
                                                  rel_source) if val else ([], [], [])
    test_jobs, test_rows, test_sources = _plan_pairs("test", test, by_identity, tuple(test_pairs), seed, rng,
                                                     rel_source) if test else ([], [], [])
    lone = [path for name in sorted(all_images) if name not in by_identity and name not in forced
            for path in all_images[name]] if unlabelled else []
    lone_jobs = [Job(f"train/unlabelled/{i:06d}.jpg", path) for i, path in enumerate(lone)]

    summary = {
        "source": str(source),
        "seed": seed,
        "settings": {"fakes_per_identity": fakes_per_identity, "min_images": min_images,
                     "val_fraction": val_fraction, "test_fraction": test_fraction,
                     "val_pairs": list(val_pairs), "test_pairs": list(test_pairs), "size": size,
                     "jpeg_quality": jpeg_quality, "align": align},
        "excluded": excluded_info,
        "identities": {"source": len(all_images), "usable": len(by_identity),
                       "unused": len(all_images) - len(by_identity)},
        "train": {"identities": len(train), "images": len(meta),
                  "real": sum(v == 0 for v in meta.values()), "fake": sum(v == 1 for v in meta.values()),
                  "fakes_by_attack": dict(sorted(Counter(f["attack"] for f in fakes.values()).items())),
                  "unlabelled": len(lone_jobs)},
    }
    for split, names, rows in (("val", val, val_rows), ("test", test, test_rows)):
        by_type = Counter(r[2] for r in rows)
        summary[split] = {"identities": len(names), "pairs": len(rows),
                          "pairs_by_type": {t: by_type.get(t, 0) for t in PAIR_TYPES},
                          "fake_pairs_by_attack": dict(sorted(Counter(r[3] for r in rows if r[3]).items()))}

    out.parent.mkdir(parents=True, exist_ok=True)
    # A killed earlier run's build folder (its pid no longer alive); a live run's is left alone.
    remove_orphans(out.parent, re.compile(re.escape(f".{out.name}.partial-") + r"(?P<pid>[0-9]+)"))
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # parallelism comes from the job pool; nested pools only contend
    try:
        tmp.mkdir()
        renderer = _Renderer(size, jpeg_quality, align=align == "face")
        jobs = train_jobs + lone_jobs + val_jobs + test_jobs
        # Every image of a used identity must decode, even one no pair happens to
        # draw: a broken source file is an error, never silently skipped.
        rendered = {j.target for j in jobs} | {j.other for j in jobs if j.other}
        checks = [Job("", path) for name in train + val + test for path in by_identity[name] if path not in rendered]
        try:
            _run_jobs(checks + jobs, tmp, renderer, workers, progress)
        finally:
            if renderer.aligner is not None:
                renderer.aligner.close()
        _write_json(tmp / "train" / "meta.json", meta)
        _write_json(tmp / "train" / "fakes.json", fakes)
        _write_json(tmp / "train" / "identities.json", numbers)
        for split, rows, sources in (("val", val_rows, val_sources), ("test", test_rows, test_sources)):
            if rows:
                _write_csv(tmp / split / "pairs.csv", ("pair_id", "label", "type", "attack"), rows)
                _write_csv(tmp / split / "sources.csv",
                           ("pair_id", "identity_0", "source_0", "identity_1", "source_1"), sources)
        if align == "face":
            summary["unaligned"] = len(renderer.unaligned)  # photos with no face found, kept as they are
        _write_json(tmp / "summary.json", summary)
        mark_output(tmp, TOOL)
        if _is_nonempty_dir(out) and not force:
            raise PrepareError(f"{out}: became non-empty while preparing; pass --force to replace it")
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        cv2.setNumThreads(threads)
    summary["seconds"] = round(time.time() - started, 1)
    return summary


def format_summary(summary: dict) -> str:
    t = summary["train"]
    lines = [f"source {summary['source']} (seed {summary['seed']}): {summary['identities']['source']} identities, "
             f"{summary['identities']['usable']} used",
             f"train: {t['identities']} identities, {t['images']} images ({t['real']} real, {t['fake']} fake: "
             + ", ".join(f"{k} {v}" for k, v in t["fakes_by_attack"].items()) + ")"
             + (f"; {t['unlabelled']} unlabelled" if t.get("unlabelled") else "")]
    for split in ("val", "test"):
        s = summary[split]
        lines.append(f"{split}: {s['identities']} identities, {s['pairs']} pairs ("
                     + ", ".join(f"{k} {v}" for k, v in s["pairs_by_type"].items()) + "; fakes by attack: "
                     + ", ".join(f"{k} {v}" for k, v in s["fake_pairs_by_attack"].items()) + ")")
    if summary.get("excluded"):
        e = summary["excluded"]
        lines.append(f"excluded from train/val: {e['identities']} identities of LFW fold {e['fold']} "
                     f"({e['pairs_file']}), placed: {e['placed']}")
    if summary.get("unaligned"):
        lines.append(f"{summary['unaligned']} photo(s) with no face found were used unaligned")
    if "seconds" in summary:
        lines.append(f"done in {summary['seconds']} s")
    return "\n".join(lines)


def _counts(text: str) -> tuple[int, int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected 4 counts >= 0 like 3000,3000,1500,500, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.prepare",
        description="Build a deepfake-aware face dataset (Kryptonite layout) from real identity folders "
                    "(e.g. LFW): train/ with real + synthesised fakes, identity-disjoint val/ and test/ pair sets.",
        epilog="Exit status: 0 done; 1 bad source data (file named); 2 arguments refused before any work "
               "(e.g. --out overlapping the source, the current directory or a parent of it, --size out of range). "
               "The output is built in the hidden sibling .OUT.partial-<pid>; such folders left by a killed run "
               "(whose process is gone) are removed by the next run.")
    parser.add_argument("--source", required=True, help="folder of <identity>/<image> folders (e.g. lfw-deepfunneled)")
    parser.add_argument("--out", required=True,
                        help="output folder (built in a temporary sibling, renamed at the end); never the source, "
                             "the current directory or a folder above either")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed; the same seed gives identical output (default 0)")
    parser.add_argument("--fakes-per-identity", type=int, default=5,
                        help="fakes showing each train identity, attacks cycled (default 5, as in Kryptonite)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--min-images", type=int, default=2,
                        help="identities with fewer images are not used, except excluded-fold ones placed in "
                             "test (default 2: genuine pairs need two)")
    parser.add_argument("--val-fraction", type=float, default=0.10,
                        help="share of usable identities for val (default 0.10)")
    parser.add_argument("--test-fraction", type=float, default=0.15,
                        help="share of usable identities for test, excluded-fold identities included (default 0.15)")
    parser.add_argument("--val-pairs", type=_counts, default=DEFAULT_VAL_PAIRS, metavar="G,I,FS,FO",
                        help="val pairs: genuine,impostor,fake-of-same,fake-of-other (default 2000,2000,1000,300)")
    parser.add_argument("--test-pairs", type=_counts, default=DEFAULT_TEST_PAIRS, metavar="G,I,FS,FO",
                        help="test pairs: genuine,impostor,fake-of-same,fake-of-other (default 3000,3000,1500,500)")
    parser.add_argument("--exclude-lfw-pairs", metavar="PAIRS_TXT",
                        help="LFW pairs.txt; with --exclude-fold, that fold's identities stay out of train and val")
    parser.add_argument("--exclude-fold", type=int, metavar="K",
                        help="1-based LFW fold to exclude (1 = the first 600 pairs after the header)")
    parser.add_argument("--excluded-to", choices=("test", "drop"), default="test",
                        help="where excluded identities go: into test (default) or nowhere")
    parser.add_argument("--size", type=int, default=0,
                        help="centre-crop/resize every image to SIZE px with engine.preprocess, 16..4096 (default "
                             "0: keep the source resolution, e.g. 250x250 for LFW)")
    parser.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality of every written image (default 95)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="threads decoding, synthesising and encoding (default: min(4, CPUs))")
    parser.add_argument("--align", choices=("face", "none"), default="face",
                        help="face (default): detect each face and warp the photo onto one canonical 250 px frame "
                             "before synthesising fakes, so the attack masks sit on the face whatever the framing; "
                             "none: use the photos as they are (LFW deep-funneled is aligned already)")
    parser.add_argument("--unlabelled", action="store_true",
                        help="also copy the photos of identities with fewer than --min-images images (never an "
                             "excluded one) to train/unlabelled/, for distillation, which needs no labels")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        summary = prepare(**vars(args))
    except PrepareError as exc:  # refused arguments or output folder, before any work
        print(f"error: {printable(exc)}", file=sys.stderr)
        return 2
    except DataError as exc:  # a bad image or list found during the work: still exit 2, as every command
        print(f"error: {printable(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing written", file=sys.stderr)
        return 130
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
