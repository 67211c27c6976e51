"""Data records shared by readers, training, conversion and the runtime.

The readers themselves (Kryptonite layout, LFW, identity folders) live here
too, so the runtime never imports training code.
"""
from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from engine.files import FileRefused, check_regular, check_replaceable, mark_output, printable, read_regular

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
# Pair folders are named by exactly 8 ASCII digits. ``[0-9]`` and fullmatch, not
# ``\d`` and ``$``: ``\d`` also matches Arabic-Indic and other Unicode digits, and
# ``$`` matches before a trailing newline.
PAIR_ID_RE = re.compile(r"[0-9]{8}")
PAIR_ID_WIDTH = 8
MAX_PAIR_ID_DIGITS = 18  # significant digits; keeps every id an int64 and far from int() string limits
IDENTITY_WIDTH = 6       # Kryptonite identity folders: 000000 ... 009999
# Control characters, C1 included (\x85 is a line break to str.splitlines), and the Unicode line separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _ascii_digits(text) -> bool:
    """True for a non-empty string of ASCII digits only (``str.isdigit`` also accepts '٠١' and '²')."""
    return isinstance(text, str) and text.isascii() and text.isdigit()


def _shown(value, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages about untrusted names."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def parse_pair_id(raw, where: str) -> str:
    """The one spelling of a pair id: its ASCII digits, zero-padded to 8 ('1', '0001' -> '00000001').

    Ids are compared as integers, so two spellings of one number are the same
    pair. Anything else is a :class:`DataError` naming ``where``: signs,
    spaces or newlines anywhere, non-ASCII digits (Arabic-Indic '٠٠٠٠٠٠٠١'
    passes ``str.isdigit``), more than 18 significant digits.
    """
    if isinstance(raw, int) and not isinstance(raw, bool):
        if not 0 <= raw < 10 ** MAX_PAIR_ID_DIGITS:
            raise DataError(f"{where}: pair id must be an integer in 0..{10 ** MAX_PAIR_ID_DIGITS - 1}")
        return str(raw).zfill(PAIR_ID_WIDTH)
    if not isinstance(raw, str) or not raw:
        raise DataError(f"{where}: empty or non-string pair id {_shown(raw)}")
    if not _ascii_digits(raw):
        raise DataError(f"{where}: pair id {raw[:40]!r} must be ASCII digits 0-9 only (no spaces, signs or "
                        f"other scripts' digits)")
    significant = raw.lstrip("0") or "0"
    if len(significant) > MAX_PAIR_ID_DIGITS:
        raise DataError(f"{where}: pair id {raw[:40]!r}... has {len(significant)} digits, at most "
                        f"{MAX_PAIR_ID_DIGITS} allowed")
    return significant.zfill(PAIR_ID_WIDTH)


def identity_key(label: str, image: Path | None = None) -> str:
    """An identity spelt as its image folder is: the one spelling all readers use.

    ``train/meta.json`` names identities by folder (``000000``), ``train.csv``
    and ``val.csv`` by number (label ``0``). Folder names are kept as they are;
    a numeric label takes the spelling of its image's folder when that folder
    is the same number (``train/images/000000/0.jpg``), else Kryptonite's
    (zero-padded to 6 digits). Non-numeric labels are kept as they are.
    """
    if not _ascii_digits(label):
        return label
    folder = image.parent.name if image is not None else ""
    if _ascii_digits(folder) and folder.lstrip("0") == label.lstrip("0"):
        return folder
    return (label.lstrip("0") or "0").zfill(IDENTITY_WIDTH)


def safe_join(root: str | os.PathLike, rel: str, source: str) -> Path:
    """``root / rel``, refusing absolute paths and ``..`` escapes.

    Every path read from a CSV/JSON goes through here, so a hostile or broken
    label file cannot make a reader (or the prepare step) touch files outside
    the dataset. ``source`` names the file (and line) in the error.
    """
    if not isinstance(rel, str) or not rel.strip():
        raise DataError(f"{source}: empty or non-string path {_shown(rel)}")
    if _CONTROL.search(rel):  # a newline or NUL in a name is a broken file, and breaks one-line errors
        raise DataError(f"{source}: path {rel[:80]!r} contains a control character (newline, tab, NUL ...)")
    rel_path = Path(rel)
    if rel_path.is_absolute() or rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel):
        raise DataError(f"{source}: absolute path {_shown(rel, 80)} is not allowed (paths are relative to {root})")
    if ".." in rel_path.parts or ".." in rel.replace("\\", "/").split("/"):
        raise DataError(f"{source}: path {_shown(rel, 80)} escapes the dataset root {root}")
    root = Path(root)
    joined = root / rel_path
    # Symlinks inside the dataset may point anywhere legitimately (shared
    # storage); only the lexical path is policed here.
    return joined


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False where the name itself cannot be looked up (too long, say)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


# Pairs lists, labels and manifests: the largest real one (the challenge's
# test pairs) is a few MB; the limit keeps /dev/zero-like files from
# filling memory before the first line is parsed.
MAX_TEXT_BYTES = 256 * 1024 * 1024


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """The file's text, or a DataError naming it and saying why not (a FIFO or device is refused, not read)."""
    try:
        data = read_regular(path, MAX_TEXT_BYTES, "a text file")
    except FileRefused as exc:
        raise DataError(str(exc)) from None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not {encoding.upper().replace('-SIG', '')} text ({exc.reason} at byte {exc.start})") from None


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _read_json(path: Path):
    """The parsed JSON of ``path``; every failure is one DataError line naming the file.

    Python's parser raises RecursionError for deep nesting and ValueError for
    numbers over 4300 digits (and accepts NaN/Infinity, which JSON has not):
    all become "not valid JSON" here, never a traceback.
    """
    text = read_text(path)
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise DataError(f"{path}: not readable JSON (nested too deeply)") from None
    except ValueError as exc:  # NaN/Infinity, or an integer over Python's 4300-digit limit
        why = "a number too long to read" if "integer string conversion" in str(exc) else str(exc)[:120]
        raise DataError(f"{path}: not readable JSON ({why})") from None


def _read_csv_rows(path: Path, required: tuple[str, ...],
                   raw: tuple[str, ...] = ()) -> tuple[list[str], list[tuple[int, dict]]]:
    """Rows of a headed CSV as (line number, dict); checks the required columns.

    Cells are stripped of surrounding spaces except in the ``raw`` columns
    (pair ids: whitespace there is an error, not something to tidy away).
    """
    text = read_text(path, "utf-8-sig")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}:1: empty file, expected a header with {','.join(required)}")
        header = [h.strip() for h in header]
        missing = [c for c in required if c not in header]
        if missing:
            shown = ",".join(header)
            shown = repr(shown[:200]) if _CONTROL.search(shown) or len(shown) > 200 else shown
            raise DataError(f"{path}:1: missing column(s) {','.join(missing)} (header is {shown})")
        rows = []
        for fields in reader:
            line_no = reader.line_num
            if not fields or all(not f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                raise DataError(f"{path}:{line_no}: {len(fields)} fields, header has {len(header)}")
            rows.append((line_no, {h: f if h in raw else f.strip() for h, f in zip(header, fields)}))
    except csv.Error as exc:  # e.g. a field over the csv module's size limit
        raise DataError(f"{path}:{reader.line_num}: not a readable CSV row ({exc})") from None
    return header, rows


def _parse_01(value, where: str, booleans: bool = False) -> int:
    """0 or 1 (number or digit string); ``booleans``: JSON true/false too, as participants' meta.json has."""
    if isinstance(value, bool):
        if booleans:
            return int(value)
    elif isinstance(value, (int, float, str)) and value in (0, 1, "0", "1"):
        return int(value)
    raise DataError(f"{where}: expected 0 or 1{', or true/false' if booleans else ''}, got {_shown(value)}")


def _parse_flag(value: str, where: str) -> bool | None:
    """``is_query``/``is_gallery``: 0/1 or True/False; empty means not set (None)."""
    text = value.lower()
    if text == "":
        return None
    if text not in ("0", "1", "true", "false"):
        raise DataError(f"{where} must be 0/1, True/False or empty, got {value[:40]!r}")
    return text in ("1", "true")


def _identity_of(rel: str) -> str:
    return rel.replace("\\", "/").split("/")[0]


def _load_meta(meta_path: Path) -> dict:
    """``train/meta.json`` as a non-empty dict (values checked by the callers)."""
    if not _is_file(meta_path):
        raise DataError(f"{meta_path}: no such file (expected the Kryptonite train/meta.json)")
    meta = _read_json(meta_path)
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: expected a JSON object {{\"<identity>/<k>.jpg\": 0|1}}, "
                        f"got {type(meta).__name__}")
    if not meta:
        raise DataError(f"{meta_path}: no images listed")
    return meta


def read_kryptonite_train(root: str | os.PathLike) -> list[Sample]:
    """Kryptonite training set: ``train/meta.json`` + ``train/images/<identity>/<k>.jpg``.

    ``root`` is the dataset root (holding ``train/``) or the ``train`` folder
    itself. meta.json maps ``"<identity>/<k>.jpg"`` to 0 (real) or 1 (fake);
    JSON ``false``/``true`` are read as 0/1. A ``fakes.json`` beside it
    (written by ``training.prepare``) adds the attack name of each fake.
    Identities are the folder names (see :func:`identity_key`). Samples come
    sorted by path.
    """
    root = Path(root)
    train = root if _is_file(root / "meta.json") else root / "train"
    meta_path = train / "meta.json"
    if not _is_file(meta_path):
        raise DataError(f"{meta_path}: no such file (expected the Kryptonite train/meta.json under {root})")
    meta = _load_meta(meta_path)
    attacks: dict[str, str] = {}
    fakes_path = train / "fakes.json"
    if _is_file(fakes_path):
        fakes = _read_json(fakes_path)
        if not isinstance(fakes, dict):
            raise DataError(f"{fakes_path}: expected a JSON object, got {type(fakes).__name__}")
        for rel, info in fakes.items():
            if not isinstance(info, dict) or not isinstance(info.get("attack"), str):
                raise DataError(f"{fakes_path}: entry {_shown(rel)} must be an object with a string 'attack'")
            if meta.get(rel) != 1:
                raise DataError(f"{fakes_path}: {_shown(rel)} is not marked as fake (1) in {meta_path}")
            attacks[rel] = info["attack"]
    images = train / "images"
    samples = []
    for rel in sorted(meta):
        where = f"{meta_path}: entry {_shown(rel)}"
        is_fake = _parse_01(meta[rel], where, booleans=True)
        path = safe_join(images, rel, where)
        if len(Path(rel).parts) < 2:
            raise DataError(f"{where}: expected '<identity>/<image>'")
        if not _is_file(path):
            raise DataError(f"{where}: image {path} does not exist")
        samples.append(Sample(path, _identity_of(rel), bool(is_fake), attacks.get(rel, "")))
    return samples


def _read_split_rows(path: Path, root) -> list[tuple[str, Sample, bool | None, bool | None]]:
    """(where, sample, is_query, is_gallery) for each row of a train.csv/val.csv."""
    _, rows = _read_csv_rows(path, SPLIT_CSV_COLUMNS)
    out = []
    for line_no, row in rows:
        where = f"{path}:{line_no}"
        if not row["label"]:
            raise DataError(f"{where}: empty label")
        if _CONTROL.search(row["label"]):
            raise DataError(f"{where}: label {_shown(row['label'])} contains a control character")
        query = _parse_flag(row["is_query"], f"{where}: is_query")
        gallery = _parse_flag(row["is_gallery"], f"{where}: is_gallery")
        image = safe_join(root, row["path"], where)
        if not _is_file(image):
            raise DataError(f"{where}: image {image} does not exist")
        out.append((where, Sample(image, identity_key(row["label"], image)), query, gallery))
    if not out:
        raise DataError(f"{path}: no rows")
    return out


def read_split_csv(path: str | os.PathLike, root: str | os.PathLike) -> list[Sample]:
    """Kryptonite ``train.csv``/``val.csv`` (``label,path,split,is_query,is_gallery``).

    ``label`` is the identity (spelt by :func:`identity_key`, so label ``0``
    of ``train/images/000000/0.jpg`` is meta.json's ``000000``), ``path`` is
    relative to ``root``. Extra columns are ignored; ``is_query``/``is_gallery``
    are 0/1 or True/False, or empty for "not set" (the organisers' train.csv
    leaves them empty on every row). For labelled pairs from ``val.csv`` see
    :func:`read_kryptonite_val`.
    """
    return [sample for _, sample, _, _ in _read_split_rows(Path(path), root)]


def _sort_identities(names) -> list[str]:
    return sorted(names, key=lambda n: (0, int(n), n) if _ascii_digits(n) and len(n) < 19 else (1, 0, n))


def read_kryptonite_val(val_csv: str | os.PathLike, root: str | os.PathLike,
                        meta_json: str | os.PathLike | None = None, seed: int = 0) -> list[Pair]:
    """Labelled validation pairs from the organisers' ``val.csv`` + ``train/meta.json``.

    The organisers ship ``val.csv`` (1 query + 2 gallery images per identity)
    but no pair labels. Pairs, for each identity in order, each query image:

    - against every gallery image of the same identity: ``genuine`` (label 1)
      when both are real, ``fake-of-same`` when meta.json marks either as fake;
    - against every gallery image of one other identity (a derangement of the
      identities drawn with ``seed``): ``impostor``, or ``fake-of-other`` when
      either image is fake.

    ``meta_json`` (default ``<root>/train/meta.json``) marks the fakes: every
    val.csv image must lie under its ``images/`` folder and be listed there.
    Pair ids are 8 digits from 00000000 in that order; the result is the same
    for the same files and seed. To validate ``training.train`` on the
    organisers' data, write these pairs as a pair folder once::

        python -m engine.datasets kryptonite-val DATA/val.csv --root DATA --out DATA/val
        python -m training.train data_dir=DATA ...
    """
    val_csv, root = Path(val_csv), Path(root)
    meta_path = Path(meta_json) if meta_json is not None else root / "train" / "meta.json"
    meta = _load_meta(meta_path)
    images = Path(os.path.abspath(meta_path.parent / "images"))
    rows = _read_split_rows(val_csv, root)
    queries: dict[str, list[tuple[Path, bool]]] = {}
    gallery: dict[str, list[tuple[Path, bool]]] = {}
    for where, sample, is_query, is_gallery in rows:
        if not (is_query or is_gallery):
            continue
        try:
            rel = Path(os.path.abspath(sample.path)).relative_to(images).as_posix()
        except ValueError:
            raise DataError(f"{where}: image {sample.path} is not under {images}, so {meta_path} cannot say "
                            f"whether it is fake") from None
        if rel not in meta:
            raise DataError(f"{where}: image {rel} is not listed in {meta_path}")
        item = (sample.path, bool(_parse_01(meta[rel], f"{meta_path}: entry {_shown(rel)}", booleans=True)))
        for flag, group in ((is_query, queries), (is_gallery, gallery)):
            if flag:
                group.setdefault(sample.identity, []).append(item)
    if not queries:
        raise DataError(f"{val_csv}: no row has is_query set; expected the organisers' val.csv "
                        f"(1 query + 2 gallery images per identity)")
    names = _sort_identities(set(queries) | set(gallery))
    lonely = [n for n in names if n not in queries or n not in gallery]
    if lonely:
        raise DataError(f"{val_csv}: identity {lonely[0]} has no {'gallery' if lonely[0] in queries else 'query'} "
                        f"image ({len(lonely)} such identities); each needs a query and a gallery image")
    order = list(names)
    random.Random(seed).shuffle(order)
    partner = {order[k]: order[(k + 1) % len(order)] for k in range(len(order))} if len(order) > 1 else {}
    pairs: list[Pair] = []

    def add(a: tuple[Path, bool], b: tuple[Path, bool], same: bool) -> None:
        fake = a[1] or b[1]
        ptype = (FAKE_OF_SAME if fake else GENUINE) if same else (FAKE_OF_OTHER if fake else IMPOSTOR)
        pairs.append(Pair(f"{len(pairs):0{PAIR_ID_WIDTH}d}", a[0], b[0], int(ptype == GENUINE), ptype))

    for name in names:
        for q in sorted(queries[name]):
            for g in sorted(gallery[name]):
                if g[0] != q[0]:
                    add(q, g, True)
            for g in sorted(gallery.get(partner.get(name), [])):
                add(q, g, False)
    return pairs


def read_label_csv(path: str | os.PathLike) -> dict[str, tuple[int, str, str]]:
    """Pair labels: ``pair_id,label`` required, ``type,attack`` optional.

    Returns ``{pair_id: (label, type, attack)}`` in file order, ids spelt by
    :func:`parse_pair_id` (8 digits; ``1`` and ``0001`` are the same pair,
    so writing both is a repeated id, an error; so is any id that is not
    plain ASCII digits).
    """
    path = Path(path)
    header, rows = _read_csv_rows(path, ("pair_id", "label"), raw=("pair_id",))
    labels: dict[str, tuple[int, str, str]] = {}
    first_line: dict[str, int] = {}
    for line_no, row in rows:
        where = f"{path}:{line_no}"
        if not row["pair_id"].strip():
            raise DataError(f"{where}: empty pair_id")
        pid = parse_pair_id(row["pair_id"], where)
        if pid in labels:
            same = ("" if row["pair_id"] == pid
                    else f" (the same pair as line {first_line[pid]}: ids compare as numbers)")
            raise DataError(f"{where}: pair_id {pid} repeated{same}")
        label = _parse_01(row["label"], f"{where}: label")
        ptype = row.get("type", "")
        if ptype and ptype not in PAIR_TYPES:
            raise DataError(f"{where}: type {_shown(ptype)} is not one of {', '.join(PAIR_TYPES)}")
        if ptype and (label == 1) != (ptype == GENUINE):
            raise DataError(f"{where}: label {label} contradicts type {ptype}")
        labels[pid] = (label, ptype, row.get("attack", ""))
        first_line[pid] = line_no
    return labels


def _pair_dirs(folder: Path) -> tuple[Path, list[str]]:
    """Where the pair folders are and their names: ``folder/images/<id>/`` or ``folder/<id>/``.

    The data and the winners' code use ``test_public/images/<pair_id>/``; the
    organisers' README draws ``test_public/<pair_id>/``. Both are read. Under
    ``images/`` every entry must be a pair folder; directly under ``folder``
    files (pairs.csv ...) are allowed beside them. A name that is not exactly
    8 ASCII digits is refused before any image is read.
    """
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder (expected <folder>/images/<pair_id>/0.jpg,1.jpg)")
    nested = folder / "images"
    base = nested if nested.is_dir() else folder
    names = []
    for entry in sorted(os.scandir(base), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        is_dir = entry.is_dir()
        if base is folder and not is_dir:
            continue  # pairs.csv, sources.csv, a README
        if not is_dir or not PAIR_ID_RE.fullmatch(entry.name):
            raise DataError(f"{base}: entry {_shown(entry.name)} is not an 8-digit pair folder "
                            f"(expected {base}/<8 ASCII digits>/0.jpg,1.jpg)")
        names.append(entry.name)
    if not names:
        raise DataError(f"{base}: no pairs found (expected <folder>/images/<pair_id>/0.jpg,1.jpg or "
                        f"<folder>/<pair_id>/0.jpg,1.jpg)")
    if base is nested and any(PAIR_ID_RE.fullmatch(e.name) and e.is_dir() for e in os.scandir(folder)):
        raise DataError(f"{folder}: holds pair folders both in images/ and directly; keep one layout")
    return base, names


def read_pair_folder(folder: str | os.PathLike, labels_csv: str | os.PathLike | None = None) -> list[Pair]:
    """Kryptonite ``test_public`` layout: ``folder/images/<pair_id>/{0,1}.jpg`` or ``folder/<pair_id>/{0,1}.jpg``.

    Pair ids are 8 ASCII digits; pairs come sorted by id. Labels come from
    ``labels_csv`` or ``folder/pairs.csv`` when present (else ``label=None``);
    a labelled folder must have a label for every pair and vice versa (ids
    matched as numbers, so a label CSV may write ``1`` for folder ``00000001``).
    """
    folder = Path(folder)
    images, pairs_dirs = _pair_dirs(folder)
    labels = None
    if labels_csv is None and _is_file(folder / "pairs.csv"):
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
            if not _is_file(p):
                if not os.path.lexists(p):
                    raise DataError(f"{p}: missing (each pair folder holds 0.jpg and 1.jpg)")
                try:  # there, but a FIFO, a folder, a symlink loop ...: say which
                    check_regular(p, sys.maxsize, "an image")  # its size is checked when it is read
                except FileRefused as exc:
                    raise DataError(f"{exc} (each pair folder holds 0.jpg and 1.jpg)") from None
        if labels is None:
            pairs.append(Pair(pid, a, b))
        else:
            label, ptype, attack = labels[pid]
            pairs.append(Pair(pid, a, b, label, ptype, attack))
    return pairs


PAIR_FOLDER_TOOL = "engine.datasets pair folder"


def write_pair_folder(pairs: list[Pair], out: str | os.PathLike, force: bool = False, inputs=()) -> Path:
    """Write ``pairs`` as a labelled pair folder: ``out/images/<pair_id>/{0,1}.jpg`` + ``pairs.csv``.

    Images are hard-linked where the file system allows (no extra space),
    copied otherwise; ``sources.csv`` says which file each came from. Built in
    the hidden sibling ``.<out>.partial-<pid>`` and renamed into place, so a
    killed run leaves nothing that looks complete (the next run removes such
    orphans). A non-empty ``out`` needs ``force``, and even then only an
    earlier pair folder is replaced, never a folder holding the pairs' images
    or the other ``inputs`` (:func:`engine.files.check_replaceable`).
    """
    out = Path(out)
    if not pairs:
        raise DataError(f"{out}: no pairs to write")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise DataError(f"{out}: not empty; pass --force to replace it")
    try:
        check_replaceable(out, PAIR_FOLDER_TOOL, [*inputs, *{p for pair in pairs for p in (pair.path_a, pair.path_b)}])
    except FileRefused as exc:
        raise DataError(str(exc)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(out.parent, re.compile(re.escape(f".{out.name}.partial-") + r"(?P<pid>[0-9]+)"))
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        rows, sources = [], []
        for pair in pairs:
            for k, src in enumerate((pair.path_a, pair.path_b)):
                dest = tmp / "images" / pair.pair_id / f"{k}.jpg"
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(src, dest)
                except OSError:
                    shutil.copyfile(src, dest)
            label = "" if pair.label is None else str(pair.label)
            rows.append((pair.pair_id, label, pair.type, pair.attack))
            sources.append((pair.pair_id, str(pair.path_a), str(pair.path_b)))
        for name, header, body in (("pairs.csv", ("pair_id", "label", "type", "attack"), rows),
                                   ("sources.csv", ("pair_id", "source_0", "source_1"), sources)):
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(body)
            (tmp / name).write_text(buf.getvalue())
        mark_output(tmp, PAIR_FOLDER_TOOL)
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one we may not signal counts as alive)."""
    if pid <= 0:
        return True  # never guess about process groups
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_orphans(folder: str | os.PathLike, pattern: re.Pattern) -> list[Path]:
    """Remove what a killed run left in ``folder``: entries whose whole name matches ``pattern``.

    Used by every tool that writes through a hidden temporary name
    (``.OUT.partial-<pid>``, ``.OUT.tmp-<pid>-*``, ``.last.pt.tmp``). Where the
    pattern's ``pid`` group matched, the entry of a live process (this one
    included) is spared, so two runs side by side never delete each other's
    work. Returns what was removed.
    """
    folder = Path(folder)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None:
            continue
        pid = match.groupdict().get("pid")
        if pid is not None and (int(pid) == os.getpid() or pid_alive(int(pid))):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


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
    lines = read_text(pairs_txt, "utf-8-sig").splitlines()  # a BOM is what some editors write
    if not lines:
        raise DataError(f"{pairs_txt}:1: empty file, expected the header '10\\t300'")
    head = lines[0].split()
    if len(head) != 2 or not all(_ascii_digits(h) and len(h) <= 9 and int(h) > 0 for h in head):
        raise DataError(f"{pairs_txt}:1: expected a header '<folds>\\t<pairs per class>' like '10\\t300', "
                        f"got {_shown(lines[0])}")
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

        def number(text: str) -> int:  # ASCII digits only: int() would take ' 1', '1_0' and '١'
            if not (_ascii_digits(text) and len(text) <= 9):
                raise ValueError(f"invalid literal for an image number: {_shown(text)}")
            return int(text)

        try:
            if same:
                if len(fields) != 3:
                    raise ValueError(f"expected 'name i j' (same-person block), got {_shown(line, 120)}")
                a = lfw_image_path(lfw_root, fields[0], number(fields[1]))
                b = lfw_image_path(lfw_root, fields[0], number(fields[2]))
            else:
                if len(fields) != 4:
                    raise ValueError(f"expected 'name1 i name2 j' (different-person block), got {_shown(line, 120)}")
                a = lfw_image_path(lfw_root, fields[0], number(fields[1]))
                b = lfw_image_path(lfw_root, fields[2], number(fields[3]))
        except ValueError as exc:
            raise DataError(f"{where}: {exc}") from None
        for name in (fields[0], fields[-2]):
            if "/" in name or "\\" in name or name in ("..", ".") or _CONTROL.search(name):
                raise DataError(f"{where}: bad identity name {_shown(name)}")
        for p in (a, b):
            if not _is_file(p):
                raise DataError(f"{where}: image {p} does not exist")
        pairs.append(Pair(f"{k:08d}", a, b, int(same), GENUINE if same else IMPOSTOR, "", fold))
    return pairs


def _read_marker(marker: Path, root: Path) -> dict[str, int]:
    if marker.suffix.lower() == ".json":
        data = _read_json(marker)
        if not isinstance(data, dict):
            raise DataError(f"{marker}: expected a JSON object {{\"<identity>/<image>\": 0|1}}, "
                            f"got {type(data).__name__}")
        items = [(rel, value, f"{marker}: entry {_shown(rel)}") for rel, value in data.items()]
    else:
        _, rows = _read_csv_rows(marker, ("path", "is_fake"))
        items = [(row["path"], row["is_fake"], f"{marker}:{line_no}") for line_no, row in rows]
    marks = {}
    for rel, value, where in items:
        flag = _parse_01(value, where, booleans=marker.suffix.lower() == ".json")
        path = safe_join(root, rel, where)
        if not _is_file(path):
            raise DataError(f"{where}: image {path} does not exist")
        marks[Path(rel).as_posix()] = flag
    return marks


DFDC_COLUMNS = ("file", "label", "made_from")


def read_dfdc_faces(root: str | os.PathLike) -> list[Sample]:
    """The DFDC face crops of ``root/faces.csv`` (``file,label,made_from``) as samples.

    DFDC names no people, so a sample's identity is its source video: a real
    face is its own (``dfdc/<real file stem>``), a fake the one of the real
    face it was made from (the scene and head are that person's). Splitting
    by this identity keeps a fake and its source on the same side.
    """
    root = Path(root)
    csv_path = root / "faces.csv"
    _, rows = _read_csv_rows(csv_path, DFDC_COLUMNS)
    samples = []
    for line, row in rows:
        where = f"{csv_path}:{line}"
        if row["label"] not in ("real", "fake"):
            raise DataError(f"{where}: label must be real or fake, got {_shown(row['label'])}")
        fake = row["label"] == "fake"
        source = row["made_from"] if fake else row["file"]
        if not source:
            raise DataError(f"{where}: a fake needs made_from (the real face it was made from)")
        path = safe_join(root, row["file"], where)
        samples.append(Sample(path, f"dfdc/{Path(source).stem}", fake, "dfdc" if fake else ""))
    if not samples:
        raise DataError(f"{csv_path}: no rows")
    return samples


def split_by_identity(samples: list[Sample], val_share: float, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """``(train, val)``: a fixed random ``val_share`` of the identities, all their images, go to val."""
    names = sorted({s.identity for s in samples})
    random.Random(seed).shuffle(names)
    val_names = set(names[: int(round(val_share * len(names)))])
    return [s for s in samples if s.identity not in val_names], [s for s in samples if s.identity in val_names]


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Every image file (``IMAGE_EXTENSIONS``) under ``folder``, recursively, sorted; DataError if not a folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


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
        raise DataError(f"{marker}: {_shown(unlisted[0])} is not an image in an identity folder of {root}")
    return samples


# ------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    """``python -m engine.datasets <format> ...``: validate a dataset before a long run."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m engine.datasets",
                                     description="Read and validate a dataset; print its counts. Exit 2 with "
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
    p = sub.add_parser("kryptonite-val", parents=[common],
                       help="labelled validation pairs from the organisers' val.csv + train/meta.json "
                            "(genuine, impostor, fake pairs); --out writes them as a pair folder that "
                            "training.train validates on: kryptonite-val DATA/val.csv --root DATA --out DATA/val, "
                            "then python -m training.train data_dir=DATA",
                       description="Build labelled validation pairs from val.csv (1 query + 2 gallery images per "
                                   "identity): each query against its identity's gallery images (genuine, or "
                                   "fake-of-same where meta.json marks a fake) and against one other identity's "
                                   "(impostor / fake-of-other). Deterministic for a seed. With --out, write "
                                   "OUT/images/<pair_id>/{0,1}.jpg (hard links where possible) + pairs.csv; "
                                   "--out DATA/val makes python -m training.train data_dir=DATA validate on them. "
                                   "Orphans of a killed run (.OUT.partial-<pid>) are removed by the next run.")
    p.add_argument("val_csv", help="the organisers' val.csv (label,path,split,is_query,is_gallery)")
    p.add_argument("--root", required=True, help="folder the CSV's paths are relative to (the dataset root)")
    p.add_argument("--meta", default=None, help="meta.json marking fakes (default ROOT/train/meta.json)")
    p.add_argument("--seed", type=int, default=0, help="which other identity each query meets (default 0)")
    p.add_argument("--out", default=None, help="write the pairs as a labelled pair folder here (e.g. DATA/val)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p = sub.add_parser("pair-folder", parents=[common],
                       help="test_public layout: images/<pair_id>/0.jpg,1.jpg or <pair_id>/0.jpg,1.jpg "
                            "[+ pairs.csv]")
    p.add_argument("folder", help="folder holding images/<pair_id>/ or the <pair_id>/ folders "
                                  "(and optionally pairs.csv)")
    p.add_argument("--labels-csv",
                   help="pair labels (pair_id,label[,type,attack]); default folder/pairs.csv if present")
    p = sub.add_parser("lfw-pairs", parents=[common], help="LFW pairs.txt over identity folders")
    p.add_argument("pairs_txt", help="pairs.txt (header '10\\t300')")
    p.add_argument("--lfw-root", required=True, help="folder of LFW identity folders")
    p = sub.add_parser("identity-folders", parents=[common], help="generic <identity>/<image> folders")
    p.add_argument("root", help="folder of identity folders")
    p.add_argument("--marker", help="JSON {relpath: 0|1} or CSV path,is_fake marking fakes")
    args = parser.parse_args(argv)
    inputs: list = []
    try:
        if args.format == "kryptonite-train":
            items = read_kryptonite_train(args.root)
        elif args.format == "split-csv":
            items = read_split_csv(args.path, args.root)
        elif args.format == "kryptonite-val":
            inputs = [args.val_csv, args.meta or Path(args.root) / "train" / "meta.json"]
            if args.out:  # before any reading: never over a folder holding what this job reads
                out = Path(args.out)
                if out.is_dir() and any(out.iterdir()) and not args.force:
                    raise DataError(f"{out}: not empty; pass --force to replace it")
                try:
                    check_replaceable(out, PAIR_FOLDER_TOOL, inputs)
                except FileRefused as exc:
                    raise DataError(str(exc)) from None
            items = read_kryptonite_val(args.val_csv, args.root, args.meta, args.seed)
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
        if getattr(args, "out", None):
            write_pair_folder(items, args.out, args.force, inputs)
            line += f"; written to {args.out}"
    except DataError as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        return 2  # as every other command: 1 is reserved for "not the same person"
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
