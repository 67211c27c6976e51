"""Data records shared by readers, training, conversion and the runtime.

The readers themselves (Kryptonite layout, LFW, identity folders) live here
too, so the runtime never imports training code.
"""
from __future__ import annotations

import csv
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

# Pair types, as written by ``training.prepare`` into pairs.csv.
GENUINE = "genuine"            # two real images of the same person (label 1)
IMPOSTOR = "impostor"          # real images of two different people (label 0)
FAKE_OF_SAME = "fake-of-same"  # real A vs a fake showing A (label 0)
FAKE_OF_OTHER = "fake-of-other"  # real A vs a fake showing someone else (label 0)
PAIR_TYPES = (GENUINE, IMPOSTOR, FAKE_OF_SAME, FAKE_OF_OTHER)


class DataError(ValueError):
    """Bad dataset input; the message names the file (and line where there is one)."""


@dataclass(frozen=True)
class Sample:
    """One image of an identity; a fake is tied to the identity whose face it shows."""

    path: Path
    identity: str
    is_fake: bool = False
    attack: str = ""  # synthesis method for fakes ("" for real images or unknown)


@dataclass(frozen=True)
class Pair:
    """Two images with a label (1 = two real images of the same person)."""

    pair_id: str
    path_a: Path
    path_b: Path
    label: int | None = None
    type: str = ""
    attack: str = ""
    fold: int = -1  # LFW fold (0-9) where known


# ---------------------------------------------------------------- readers

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SPLIT_CSV_COLUMNS = ("label", "path", "split", "is_query", "is_gallery")
PAIR_ID_RE = re.compile(r"^\d{8}$")


def safe_join(root: str | os.PathLike, rel: str, source: str) -> Path:
    """``root / rel``, refusing absolute paths and ``..`` escapes.

    Every path read from a CSV/JSON goes through here, so a hostile or broken
    label file cannot make a reader (or the prepare step) touch files outside
    the dataset. ``source`` names the file (and line) in the error.
    """
    if not isinstance(rel, str) or not rel.strip():
        raise DataError(f"{source}: empty or non-string path {rel!r}")
    rel_path = Path(rel)
    if rel_path.is_absolute() or rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel):
        raise DataError(f"{source}: absolute path {rel!r} is not allowed (paths are relative to {root})")
    if ".." in rel_path.parts or ".." in rel.replace("\\", "/").split("/"):
        raise DataError(f"{source}: path {rel!r} escapes the dataset root {root}")
    root = Path(root)
    joined = root / rel_path
    # Symlinks inside the dataset may point anywhere legitimately (shared
    # storage); only the lexical path is policed here.
    return joined


def _read_text(path: Path, encoding: str = "utf-8") -> str:
    """The file's text, or a DataError naming it and saying why not."""
    try:
        return path.read_text(encoding=encoding)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None


def _read_json(path: Path):
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None


def _read_csv_rows(path: Path, required: tuple[str, ...]) -> tuple[list[str], list[tuple[int, dict]]]:
    """Rows of a headed CSV as (line number, dict); checks the required columns."""
    text = _read_text(path, "utf-8-sig")
    reader = csv.reader(text.splitlines())
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}:1: empty file, expected a header with {','.join(required)}") from None
    header = [h.strip() for h in header]
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path}:1: missing column(s) {','.join(missing)} (header is {','.join(header)})")
    rows = []
    for line_no, fields in enumerate(reader, start=2):
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            raise DataError(f"{path}:{line_no}: {len(fields)} fields, header has {len(header)}")
        rows.append((line_no, {h: f.strip() for h, f in zip(header, fields)}))
    return header, rows


def _parse_01(value, where: str) -> int:
    if isinstance(value, bool) or value not in (0, 1, "0", "1"):
        raise DataError(f"{where}: expected 0 or 1, got {value!r}")
    return int(value)


def _identity_of(rel: str) -> str:
    return rel.replace("\\", "/").split("/")[0]


def read_kryptonite_train(root: str | os.PathLike) -> list[Sample]:
    """Kryptonite training set: ``train/meta.json`` + ``train/images/<identity>/<k>.jpg``.

    ``root`` is the dataset root (holding ``train/``) or the ``train`` folder
    itself. meta.json maps ``"<identity>/<k>.jpg"`` to 0 (real) or 1 (fake).
    A ``fakes.json`` beside it (written by ``training.prepare``) adds the
    attack name of each fake. Samples come sorted by path.
    """
    root = Path(root)
    train = root if (root / "meta.json").is_file() else root / "train"
    meta_path = train / "meta.json"
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: no such file (expected the Kryptonite train/meta.json under {root})")
    meta = _read_json(meta_path)
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: expected a JSON object {{\"<identity>/<k>.jpg\": 0|1}}, "
                        f"got {type(meta).__name__}")
    if not meta:
        raise DataError(f"{meta_path}: no images listed")
    attacks: dict[str, str] = {}
    fakes_path = train / "fakes.json"
    if fakes_path.is_file():
        fakes = _read_json(fakes_path)
        if not isinstance(fakes, dict):
            raise DataError(f"{fakes_path}: expected a JSON object, got {type(fakes).__name__}")
        for rel, info in fakes.items():
            if not isinstance(info, dict) or not isinstance(info.get("attack"), str):
                raise DataError(f"{fakes_path}: entry {rel!r} must be an object with a string 'attack'")
            if meta.get(rel) != 1:
                raise DataError(f"{fakes_path}: {rel!r} is not marked as fake (1) in {meta_path}")
            attacks[rel] = info["attack"]
    images = train / "images"
    samples = []
    for rel in sorted(meta):
        where = f"{meta_path}: entry {rel!r}"
        is_fake = _parse_01(meta[rel], where)
        path = safe_join(images, rel, where)
        if len(Path(rel).parts) < 2:
            raise DataError(f"{where}: expected '<identity>/<image>'")
        if not path.is_file():
            raise DataError(f"{where}: image {path} does not exist")
        samples.append(Sample(path, _identity_of(rel), bool(is_fake), attacks.get(rel, "")))
    return samples


def read_split_csv(path: str | os.PathLike, root: str | os.PathLike) -> list[Sample]:
    """Kryptonite ``train.csv``/``val.csv`` (``label,path,split,is_query,is_gallery``).

    ``label`` is the identity, ``path`` is relative to ``root``. Extra columns
    are ignored; ``is_query``/``is_gallery`` must be 0/1 (or True/False).
    """
    path = Path(path)
    _, rows = _read_csv_rows(path, SPLIT_CSV_COLUMNS)
    samples = []
    for line_no, row in rows:
        where = f"{path}:{line_no}"
        if not row["label"]:
            raise DataError(f"{where}: empty label")
        for col in ("is_query", "is_gallery"):
            if row[col].lower() not in ("0", "1", "true", "false"):
                raise DataError(f"{where}: {col} must be 0/1 or True/False, got {row[col]!r}")
        image = safe_join(root, row["path"], where)
        if not image.is_file():
            raise DataError(f"{where}: image {image} does not exist")
        samples.append(Sample(image, row["label"]))
    if not samples:
        raise DataError(f"{path}: no rows")
    return samples


def read_label_csv(path: str | os.PathLike) -> dict[str, tuple[int, str, str]]:
    """Pair labels: ``pair_id,label`` required, ``type,attack`` optional.

    Returns ``{pair_id: (label, type, attack)}``; pair ids are kept as
    written (8 digits in the Kryptonite layout); a repeated id is an error.
    """
    path = Path(path)
    header, rows = _read_csv_rows(path, ("pair_id", "label"))
    labels: dict[str, tuple[int, str, str]] = {}
    for line_no, row in rows:
        where = f"{path}:{line_no}"
        pid = row["pair_id"]
        if not pid:
            raise DataError(f"{where}: empty pair_id")
        if pid in labels:
            raise DataError(f"{where}: pair_id {pid} repeated")
        label = _parse_01(row["label"], f"{where}: label")
        ptype = row.get("type", "")
        if ptype and ptype not in PAIR_TYPES:
            raise DataError(f"{where}: type {ptype!r} is not one of {', '.join(PAIR_TYPES)}")
        if ptype and (label == 1) != (ptype == GENUINE):
            raise DataError(f"{where}: label {label} contradicts type {ptype}")
        labels[pid] = (label, ptype, row.get("attack", ""))
    return labels


def read_pair_folder(folder: str | os.PathLike, labels_csv: str | os.PathLike | None = None) -> list[Pair]:
    """Kryptonite ``test_public`` layout: ``folder/images/<pair_id>/{0,1}.jpg``.

    Pair ids are 8 digits; pairs come sorted by id. Labels come from
    ``labels_csv`` or ``folder/pairs.csv`` when present (else ``label=None``);
    a labelled folder must have a label for every pair and vice versa.
    """
    folder = Path(folder)
    images = folder / "images"
    if not images.is_dir():
        raise DataError(f"{images}: no such folder (expected <folder>/images/<pair_id>/0.jpg,1.jpg)")
    pairs_dirs = []
    for entry in sorted(os.scandir(images), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir() or not PAIR_ID_RE.match(entry.name):
            raise DataError(f"{entry.path}: expected 8-digit pair folders under {images}")
        pairs_dirs.append(entry.name)
    if not pairs_dirs:
        raise DataError(f"{images}: no pairs found")
    labels = None
    if labels_csv is None and (folder / "pairs.csv").is_file():
        labels_csv = folder / "pairs.csv"
    if labels_csv is not None:
        labels = read_label_csv(labels_csv)
        missing = [p for p in pairs_dirs if p not in labels]
        if missing:
            raise DataError(f"{labels_csv}: no label for pair(s) {', '.join(missing[:5])}"
                            f"{' ...' if len(missing) > 5 else ''}")
        extra = sorted(set(labels) - set(pairs_dirs))
        if extra:
            raise DataError(f"{labels_csv}: pair(s) {', '.join(extra[:5])} not in {images}")
    pairs = []
    for pid in pairs_dirs:
        a, b = images / pid / "0.jpg", images / pid / "1.jpg"
        for p in (a, b):
            if not p.is_file():
                raise DataError(f"{p}: missing (each pair folder holds 0.jpg and 1.jpg)")
        if labels is None:
            pairs.append(Pair(pid, a, b))
        else:
            label, ptype, attack = labels[pid]
            pairs.append(Pair(pid, a, b, label, ptype, attack))
    return pairs


def lfw_image_path(lfw_root: str | os.PathLike, name: str, index: int) -> Path:
    """``<root>/<name>/<name>_<%04d>.jpg``, the LFW file naming."""
    return Path(lfw_root) / name / f"{name}_{index:04d}.jpg"


def read_lfw_pairs(lfw_root: str | os.PathLike, pairs_txt: str | os.PathLike) -> list[Pair]:
    """LFW View 2 ``pairs.txt``: header ``<folds>\\t<n>``, then per fold n same + n different lines.

    Same-person lines are ``name i j``, different-person lines
    ``name1 i name2 j``. Returns pairs in file order with ``fold`` (0-based),
    label 1/0 and type genuine/impostor; pair ids are 8-digit line indices.
    """
    pairs_txt = Path(pairs_txt)
    lines = _read_text(pairs_txt).splitlines()
    if not lines:
        raise DataError(f"{pairs_txt}:1: empty file, expected the header '10\\t300'")
    head = lines[0].split()
    if len(head) != 2 or not all(h.isdigit() and int(h) > 0 for h in head):
        raise DataError(f"{pairs_txt}:1: expected a header '<folds>\\t<pairs per class>' like '10\\t300', "
                        f"got {lines[0]!r}")
    folds, per_class = int(head[0]), int(head[1])
    body = lines[1:]
    while body and not body[-1].strip():
        body.pop()
    expected = folds * 2 * per_class
    if len(body) != expected:
        raise DataError(f"{pairs_txt}: header says {folds} folds x 2 x {per_class} = {expected} lines, "
                        f"found {len(body)}")
    pairs = []
    for k, line in enumerate(body):
        line_no = k + 2
        where = f"{pairs_txt}:{line_no}"
        fold, within = divmod(k, 2 * per_class)
        same = within < per_class
        fields = line.split()
        try:
            if same:
                if len(fields) != 3:
                    raise ValueError(f"expected 'name i j' (same-person block), got {line!r}")
                a = lfw_image_path(lfw_root, fields[0], int(fields[1]))
                b = lfw_image_path(lfw_root, fields[0], int(fields[2]))
            else:
                if len(fields) != 4:
                    raise ValueError(f"expected 'name1 i name2 j' (different-person block), got {line!r}")
                a = lfw_image_path(lfw_root, fields[0], int(fields[1]))
                b = lfw_image_path(lfw_root, fields[2], int(fields[3]))
        except ValueError as exc:
            raise DataError(f"{where}: {exc}") from None
        for name in (fields[0], fields[-2]):
            if "/" in name or "\\" in name or name in ("..", "."):
                raise DataError(f"{where}: bad identity name {name!r}")
        for p in (a, b):
            if not p.is_file():
                raise DataError(f"{where}: image {p} does not exist")
        pairs.append(Pair(f"{k:08d}", a, b, int(same), GENUINE if same else IMPOSTOR, "", fold))
    return pairs


def _read_marker(marker: Path, root: Path) -> dict[str, int]:
    if marker.suffix.lower() == ".json":
        data = _read_json(marker)
        if not isinstance(data, dict):
            raise DataError(f"{marker}: expected a JSON object {{\"<identity>/<image>\": 0|1}}, "
                            f"got {type(data).__name__}")
        items = [(rel, value, f"{marker}: entry {rel!r}") for rel, value in data.items()]
    else:
        _, rows = _read_csv_rows(marker, ("path", "is_fake"))
        items = [(row["path"], row["is_fake"], f"{marker}:{line_no}") for line_no, row in rows]
    marks = {}
    for rel, value, where in items:
        flag = _parse_01(value, where)
        path = safe_join(root, rel, where)
        if not path.is_file():
            raise DataError(f"{where}: image {path} does not exist")
        marks[Path(rel).as_posix()] = flag
    return marks


def read_identity_folders(root: str | os.PathLike, marker: str | os.PathLike | None = None) -> list[Sample]:
    """Generic ``<root>/<identity>/<image>`` folders (LFW, VGGFace2-style crops ...).

    Images are files with a known image extension, sorted by identity then
    name; hidden files are skipped. ``marker`` (JSON ``{relpath: 0|1}`` or CSV
    ``path,is_fake``, paths relative to ``root``) marks fakes.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    marks = _read_marker(Path(marker), root) if marker is not None else {}
    samples = []
    for ident in sorted(os.scandir(root), key=lambda e: e.name):
        if ident.name.startswith(".") or not ident.is_dir():
            continue
        for img in sorted(os.scandir(ident.path), key=lambda e: e.name):
            if img.name.startswith(".") or not img.is_file():
                continue
            if not img.name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            rel = f"{ident.name}/{img.name}"
            samples.append(Sample(Path(img.path), ident.name, bool(marks.get(rel, 0))))
    if not samples:
        raise DataError(f"{root}: no images found (expected <identity>/<image> folders)")
    listed = {f"{s.identity}/{s.path.name}" for s in samples}
    unlisted = sorted(set(marks) - listed)
    if unlisted:
        raise DataError(f"{marker}: {unlisted[0]!r} is not an image in an identity folder of {root}")
    return samples


# ------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    """``python -m engine.datasets <format> ...``: validate a dataset before a long run."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m engine.datasets",
                                     description="Read and validate a dataset; print its counts. Exit 1 with "
                                                 "the file (and line) of the first problem.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--check-images", action="store_true",
                        help="also decode every image with engine.preprocess (slow; finds broken files)")
    common.add_argument("--check-faces", action="store_true",
                        help="also run the shipped face detector on every image (implies --check-images; "
                             "lists the images with no usable face)")
    sub = parser.add_subparsers(dest="format", required=True)
    p = sub.add_parser("kryptonite-train", parents=[common], help="train/meta.json + train/images/<identity>/<k>.jpg")
    p.add_argument("root", help="dataset root holding train/, or the train folder itself")
    p = sub.add_parser("split-csv", parents=[common], help="train.csv / val.csv (label,path,split,is_query,is_gallery)")
    p.add_argument("path", help="the CSV file")
    p.add_argument("--root", required=True, help="folder the CSV's paths are relative to")
    p = sub.add_parser("pair-folder", parents=[common],
                       help="test_public layout: images/<pair_id>/0.jpg,1.jpg [+ pairs.csv]")
    p.add_argument("folder", help="folder holding images/ (and optionally pairs.csv)")
    p.add_argument("--labels-csv",
                   help="pair labels (pair_id,label[,type,attack]); default folder/pairs.csv if present")
    p = sub.add_parser("lfw-pairs", parents=[common], help="LFW pairs.txt over identity folders")
    p.add_argument("pairs_txt", help="pairs.txt (header '10\\t300')")
    p.add_argument("--lfw-root", required=True, help="folder of LFW identity folders")
    p = sub.add_parser("identity-folders", parents=[common], help="generic <identity>/<image> folders")
    p.add_argument("root", help="folder of identity folders")
    p.add_argument("--marker", help="JSON {relpath: 0|1} or CSV path,is_fake marking fakes")
    args = parser.parse_args(argv)
    try:
        if args.format == "kryptonite-train":
            items = read_kryptonite_train(args.root)
        elif args.format == "split-csv":
            items = read_split_csv(args.path, args.root)
        elif args.format == "pair-folder":
            items = read_pair_folder(args.folder, args.labels_csv)
        elif args.format == "lfw-pairs":
            items = read_lfw_pairs(args.lfw_root, args.pairs_txt)
        else:
            items = read_identity_folders(args.root, args.marker)
        if isinstance(items[0], Sample):
            paths = [s.path for s in items]
            line = (f"{len(items)} images, {len({s.identity for s in items})} identities, "
                    f"{sum(s.is_fake for s in items)} fake")
        else:
            paths = [p for pair in items for p in (pair.path_a, pair.path_b)]
            labelled = [pair for pair in items if pair.label is not None]
            line = f"{len(items)} pairs, {len(labelled)} labelled, {sum(pair.label == 1 for pair in labelled)} positive"
        if args.check_images or args.check_faces:
            line += _check_images(list(dict.fromkeys(paths)), args.check_faces)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(line)
    return 0


def _check_images(paths: list, faces: bool) -> str:
    """Decode (and with ``faces`` detect + align) every image; a broken file raises, faceless ones are listed."""
    from tqdm import tqdm

    from engine.contract import ModelConfig
    from engine.preprocess import ImageError, NoFaceError, Preprocessor, decode, read_file

    pre = Preprocessor(ModelConfig(align="face")) if faces else None
    faceless = []
    try:
        for path in tqdm(paths, desc="checking images", unit="img", leave=False, file=sys.stderr):
            try:
                rgb = decode(read_file(path), str(path))
                if pre is not None:
                    pre.prepare(rgb, str(path))
            except NoFaceError as exc:
                faceless.append(str(exc))
            except ImageError as exc:
                raise DataError(str(exc)) from None
    finally:
        if pre is not None:
            pre.close()
    if not faces:
        return ""
    for message in faceless[:20]:
        print(f"warning: {message}", file=sys.stderr)
    if len(faceless) > 20:
        print(f"warning: ... and {len(faceless) - 20} more without a usable face", file=sys.stderr)
    return f"; {len(paths) - len(faceless)} of {len(paths)} images with a usable face"


if __name__ == "__main__":
    raise SystemExit(main())
