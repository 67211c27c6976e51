"""INT8 calibration set: a manifest of training images and the loader that reads it.

The manifest (``calib_data/manifest.csv``) lists image paths relative to a
data root, with the identity and a real/fake flag::

    path,identity,is_fake
    train/images/0001/0.jpg,0001,0

It is a deterministic, identity-stratified sample of TRAINING images (read
with :func:`engine.datasets.read_kryptonite_train`, which only looks under
``train/``), fakes included, so the activation ranges cover what the model
meets in deployment, and no test image ever leaks into the conversion.

    python -m convert.calibration --data data/lfw-fakeaware --out calib_data/manifest.csv

Images are read back through :func:`engine.preprocess.load_image`, the one
preprocessing function every backend uses.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.files import printable

MANIFEST_COLUMNS = ("path", "identity", "is_fake")
DEFAULT_COUNT = 512
RECOMMENDED_MIN = 500
DEFAULT_FAKE_SHARE = 0.2


class CalibrationError(ValueError):
    """Bad calibration input; the message names the file (and line)."""


@dataclass(frozen=True)
class CalibrationImage:
    """One manifest row: ``path`` relative to the data root."""

    path: str
    identity: str
    is_fake: bool


def _round_robin(groups: list[list], count: int) -> list:
    """Take one item from each group in turn until ``count`` are taken or all are empty."""
    taken, depth = [], 0
    while len(taken) < count:
        layer = [g[depth] for g in groups if depth < len(g)]
        if not layer:
            break
        taken.extend(layer[: count - len(taken)])
        depth += 1
    return taken


def sample_calibration(samples, count: int = DEFAULT_COUNT, fake_share: float = DEFAULT_FAKE_SHARE,
                       seed: int = 0) -> list:
    """Pick ``count`` samples, spread over identities, ``fake_share`` of them fakes.

    Identity-stratified: identities are visited in a seeded random order and
    each gives one image per round, so every identity is represented before
    any gives a second image. Fakes and real images are drawn separately so
    the share holds; if there are too few fakes, real images fill the rest
    (and vice versa). Deterministic for a given input and seed, whatever the
    order of ``samples``.
    """
    if count < 1:
        raise CalibrationError(f"count must be >= 1, got {count}")
    if not 0.0 <= fake_share <= 1.0:
        raise CalibrationError(f"fake share must be within [0, 1], got {fake_share}")
    samples = sorted(samples, key=lambda s: (s.identity, str(s.path)))
    if len(samples) < count:
        raise CalibrationError(f"asked for {count} calibration images, the training set has only {len(samples)}")
    rng = np.random.default_rng(seed)
    identities = sorted({s.identity for s in samples})
    order = [identities[i] for i in rng.permutation(len(identities))]

    def groups(fake: bool) -> list[list]:
        by_id: dict[str, list] = {i: [] for i in order}
        for s in samples:
            if bool(s.is_fake) == fake:
                by_id[s.identity].append(s)
        out = []
        for ident in order:
            items = by_id[ident]
            out.append([items[i] for i in rng.permutation(len(items))])
        return out

    real_groups, fake_groups = groups(False), groups(True)
    n_fake_avail = sum(map(len, fake_groups))
    n_fake = min(int(round(count * fake_share)), n_fake_avail)
    n_real = min(count - n_fake, len(samples) - n_fake_avail)
    n_fake = count - n_real  # top up with fakes when real images run short
    picked = _round_robin(real_groups, n_real) + _round_robin(fake_groups, n_fake)
    return sorted(picked, key=lambda s: (s.identity, str(s.path)))


def _relative(path, root: Path) -> str:
    path = Path(path)
    full = path if path.is_absolute() else Path.cwd() / path
    try:
        rel = os.path.relpath(full.resolve(), root.resolve())
    except ValueError:
        rel = ".."
    if rel.startswith(".."):
        raise CalibrationError(f"{path}: not inside the data root {root}")
    return Path(rel).as_posix()


def make_manifest(data: str | os.PathLike, out: str | os.PathLike, *, count: int = DEFAULT_COUNT,
                  fake_share: float = DEFAULT_FAKE_SHARE, seed: int = 0) -> list[CalibrationImage]:
    """Sample the training split of ``data`` (Kryptonite layout) and write the manifest CSV.

    Paths in the manifest are relative to ``data``. Written atomically.
    """
    from engine.datasets import read_kryptonite_train

    data = Path(data)
    samples = read_kryptonite_train(data)
    picked = sample_calibration(samples, count, fake_share, seed)
    rows = [CalibrationImage(_relative(s.path, data), str(s.identity), bool(s.is_fake)) for s in picked]
    write_manifest(rows, out)
    return rows


def write_manifest(rows: list[CalibrationImage], out: str | os.PathLike) -> None:
    out = Path(out)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for r in rows:
        writer.writerow([r.path, r.identity, int(r.is_fake)])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, out)


def read_manifest(path: str | os.PathLike) -> list[CalibrationImage]:
    """Read and validate a manifest; an empty one is an error, not zero images."""
    from engine.datasets import DataError, safe_join

    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CalibrationError(f"{path}: no such calibration manifest "
                               f"(make one with python -m convert.calibration)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"{path}: cannot read ({exc})") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
    if reader.fieldnames is None:
        raise CalibrationError(f"{path}: empty calibration manifest (no header, no images)")
    if missing:
        raise CalibrationError(f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(MANIFEST_COLUMNS)}")
    rows = []
    for line_no, row in enumerate(reader, start=2):
        where = f"{path}:{line_no}"
        rel, ident, fake = (row.get(c) for c in MANIFEST_COLUMNS)
        if rel is None or ident is None or fake is None:
            raise CalibrationError(f"{where}: too few fields")
        try:
            safe_join(".", rel, where)
        except DataError as exc:
            raise CalibrationError(str(exc)) from None
        if fake.strip() not in ("0", "1"):
            raise CalibrationError(f"{where}: is_fake must be 0 or 1, got {fake!r}")
        rows.append(CalibrationImage(rel, ident, fake.strip() == "1"))
    if not rows:
        raise CalibrationError(f"{path}: empty calibration manifest (header only, no images)")
    return rows


def load_calibration_images(rows: list[CalibrationImage], root: str | os.PathLike, size: int, *,
                            crop_fraction: float = 1.0, limit: int | None = None,
                            progress: bool = True, config=None) -> np.ndarray:
    """Read manifest images through the shared preprocessing: uint8 (N, size, size, 3) RGB.

    ``config`` (the model's ``model.json``: alignment, or ``crop_fraction``
    when it is absent) makes calibration see exactly the pixels training and
    deployment see.
    """
    from engine.contract import ModelConfig
    from engine.datasets import safe_join
    from engine.preprocess import Preprocessor

    pre = Preprocessor(config or ModelConfig(input_size=size, crop_fraction=crop_fraction), size=size)

    root = Path(root)
    if not root.is_dir():
        raise CalibrationError(f"{root}: calibration data root is not a folder")
    if not rows:
        raise CalibrationError("no calibration images to load (empty manifest)")
    rows = rows[:limit] if limit else rows
    out = np.empty((len(rows), size, size, 3), dtype=np.uint8)
    it = rows
    if progress:
        from tqdm import tqdm

        it = tqdm(rows, desc="calibration images", unit="img", leave=False)
    from engine.preprocess import NoFaceError

    kept, faceless = 0, []
    for r in it:
        try:
            out[kept] = pre.load(safe_join(root, r.path, "calibration manifest")).image
            kept += 1
        except NoFaceError as exc:  # with alignment on, an image without a face has nothing to calibrate
            faceless.append(str(exc))
    if not kept:
        raise CalibrationError(f"no calibration image has a face ({faceless[0]})")
    if faceless:
        import sys

        print(f"calibration: left out {len(faceless)} of {len(rows)} images with no face found "
              f"(e.g. {faceless[0]})", file=sys.stderr)
    return out[:kept]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m convert.calibration",
        description="Write the INT8 calibration manifest: a deterministic, identity-stratified sample "
                    "of training images (fakes included, never the test split).")
    parser.add_argument("--data", required=True,
                        help="dataset root in the Kryptonite layout (holding train/meta.json + train/images/); "
                             "manifest paths are written relative to it")
    parser.add_argument("--out", required=True, help="manifest CSV to write, e.g. calib_data/manifest.csv")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT,
                        help=f"number of images (default {DEFAULT_COUNT}; >= {RECOMMENDED_MIN} recommended)")
    parser.add_argument("--fake-share", type=float, default=DEFAULT_FAKE_SHARE,
                        help=f"fraction of fakes among them (default {DEFAULT_FAKE_SHARE})")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    args = parser.parse_args(argv)
    from engine.datasets import DataError

    try:
        rows = make_manifest(args.data, args.out, count=args.count, fake_share=args.fake_share, seed=args.seed)
    except (CalibrationError, DataError) as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        return 2
    n_fake = sum(r.is_fake for r in rows)
    n_ids = len({r.identity for r in rows})
    print(f"wrote {args.out}: {len(rows)} images ({n_fake} fakes) from {n_ids} identities")
    if len(rows) < RECOMMENDED_MIN:
        print(f"warning: {len(rows)} images is below the {RECOMMENDED_MIN} recommended for INT8 calibration",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
