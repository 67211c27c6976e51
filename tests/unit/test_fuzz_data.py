"""Property tests over the dataset readers and pair-id parsing (engine.datasets).

Whatever bytes a CSV or JSON file holds, a reader either returns records it
has checked or raises :class:`DataError` with one line naming the file; never
another exception, and never an invalid pair id accepted in silence.
"""
from __future__ import annotations

import csv
import io
import json
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import synthetic_face, write_jpeg
from engine.datasets import (PAIR_TYPES, DataError, identity_key, parse_pair_id, read_identity_folders,
                             read_kryptonite_train, read_kryptonite_val, read_label_csv, read_lfw_pairs,
                             read_pair_folder, read_split_csv)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ASCII_ID = re.compile(r"[0-9]+")

# Text that finds the corners: digits of other scripts, whitespace and line breaks of every kind,
# CSV syntax, path syntax, control characters.
tricky = st.sampled_from(["0", "1", "00000001", "٠", "١", "０", "²", " ", "\t", "\n", "\r", "\x85", "\u2028", "\x00",
                          ",", '"', "/", "\\", "..", "C:", "-", "+", "_", "e", "True", "false", "genuine", "impostor",
                          "fake-of-same", "\ufeff", "x" * 300])
cells = st.lists(st.one_of(tricky, st.text(max_size=12)), max_size=4).map("".join)


def one_line_error(exc: DataError, path: Path) -> None:
    message = str(exc)
    assert message.startswith(str(path)), message
    assert len(message.splitlines()) == 1 and len(message) < 2000, message


def _tmpdir():
    return tempfile.TemporaryDirectory(prefix="fuzz-")


def _csv_text(header: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


# ------------------------------------------------------------------ pair ids

@FUZZ
@given(st.one_of(st.text(max_size=30), cells, st.integers(-10, 10 ** 20), st.booleans(), st.none(), st.floats()))
@example("٠٠٠٠٠٠٠١")
@example("00000001\n")
@example("1" * 5000)
def test_parse_pair_id_accepts_only_ascii_digits(raw):
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        valid = False
    elif isinstance(raw, int):
        valid = 0 <= raw < 10 ** 18
    else:
        valid = bool(ASCII_ID.fullmatch(raw)) and len(raw.lstrip("0")) <= 18
    try:
        pid = parse_pair_id(raw, "ids.csv:2")
    except DataError as exc:
        one_line_error(exc, Path("ids.csv:2"))
        assert not valid
        return
    assert valid, raw  # never a silent acceptance
    assert re.fullmatch(r"[0-9]{8,18}", pid) and int(pid) == int(str(raw))  # the same number, spelt one way


# ------------------------------------------------------------------ label CSV

@FUZZ
@given(st.lists(st.tuples(cells, cells, cells), max_size=6), st.booleans())
@example([("٠٠٠٠٠٠٠١", "1", "")], False)
@example([("1", "1", ""), ("0001", "0", "")], False)
@example([(" 00000002", "0", "")], False)
def test_label_csv_accepts_only_valid_ids(rows, with_type):
    header = ["pair_id", "label", "type"] if with_type else ["pair_id", "label", "attack"]
    with _tmpdir() as tmp:
        path = Path(tmp) / "labels.csv"
        path.write_text(_csv_text(header, [list(r) for r in rows]), encoding="utf-8", errors="surrogatepass")
        try:
            labels = read_label_csv(path)
        except DataError as exc:
            one_line_error(exc, path)
            return
        raw = [r[0] for r in rows if any(c.strip() for c in r)]
        # Accepted: every id was plain ASCII digits as written, and no number appears twice.
        assert all(ASCII_ID.fullmatch(r) for r in raw)
        assert sorted(int(r) for r in raw) == sorted(int(k) for k in labels)
        assert all(ASCII_ID.fullmatch(k) and len(k) >= 8 for k in labels)
        assert all(v[0] in (0, 1) and (not v[1] or v[1] in PAIR_TYPES) for v in labels.values())


@FUZZ
@given(st.binary(max_size=300))
def test_label_csv_from_arbitrary_bytes(data):
    with _tmpdir() as tmp:
        path = Path(tmp) / "labels.csv"
        path.write_bytes(b"pair_id,label\n" + data)
        try:
            labels = read_label_csv(path)
        except DataError as exc:
            one_line_error(exc, path)
            return
        assert all(ASCII_ID.fullmatch(k) and len(k) >= 8 for k in labels)


# ------------------------------------------------------------------ train.csv / val.csv

@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    """A Kryptonite-style root: train/meta.json + train/images/<6 digits>/<k>.jpg (2 identities x 3)."""
    root = tmp_path_factory.mktemp("kryptonite")
    meta = {}
    for ident in range(2):
        for k in range(3):
            rel = f"{ident:06d}/{k}.jpg"
            write_jpeg(root / "train" / "images" / rel, synthetic_face(ident * 10 + k, 24))
            meta[rel] = k == 2
    (root / "train" / "meta.json").write_text(json.dumps(meta))
    return root


paths = st.one_of(st.sampled_from([f"train/images/{i:06d}/{k}.jpg" for i in range(2) for k in range(3)]), cells)
flags = st.one_of(st.sampled_from(["", "0", "1", "True", "False", "true"]), cells)
split_rows = st.lists(st.tuples(st.one_of(st.sampled_from(["0", "1", "000001", "٠"]), cells), paths,
                                st.just("val"), flags, flags), max_size=8)


@FUZZ
@given(split_rows)
def test_split_csv_only_data_errors(image_root, rows):
    with _tmpdir() as tmp:
        path = Path(tmp) / "train.csv"
        path.write_text(_csv_text(["label", "path", "split", "is_query", "is_gallery"], [list(r) for r in rows]),
                        encoding="utf-8", errors="surrogatepass")
        try:
            samples = read_split_csv(path, image_root)
        except DataError as exc:
            one_line_error(exc, path)
            return
        assert all(s.path.is_file() and s.identity == identity_key(s.identity, s.path) for s in samples)


@FUZZ
@given(split_rows, st.integers(0, 3))
@example([("0", "train/images/000000/0.jpg", "val", "True", "False"),
          ("0", "train/images/000000/1.jpg", "val", "False", "True"),
          ("1", "train/images/000001/0.jpg", "val", "True", "False"),
          ("1", "train/images/000001/2.jpg", "val", "False", "True")], 0)
def test_val_pairs_only_data_errors_and_valid_ids(image_root, rows, seed):
    with _tmpdir() as tmp:
        path = Path(tmp) / "val.csv"
        path.write_text(_csv_text(["label", "path", "split", "is_query", "is_gallery"], [list(r) for r in rows]),
                        encoding="utf-8", errors="surrogatepass")
        try:
            pairs = read_kryptonite_val(path, image_root, seed=seed)
        except DataError as exc:
            message = str(exc)
            assert len(message.splitlines()) == 1 and (str(path) in message or "meta.json" in message), message
            return
        assert [p.pair_id for p in pairs] == [f"{k:08d}" for k in range(len(pairs))]
        assert all(p.label == int(p.type == "genuine") and p.type in PAIR_TYPES for p in pairs)


# ------------------------------------------------------------------ JSON

json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                                     st.text(max_size=8)),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                           max_leaves=10)
meta_keys = st.one_of(st.sampled_from(["000000/0.jpg", "000001/2.jpg", "../x.jpg", "/abs.jpg", "000000",
                                       "000000/0.jpg\n", "000000/missing.jpg"]), cells)


@FUZZ
@given(st.one_of(st.dictionaries(meta_keys, json_values, max_size=4), json_values))
@example({"000000/0.jpg": True, "000001/2.jpg": False})
def test_meta_json_values_only_data_errors(meta):
    with _tmpdir() as tmp:
        train = Path(tmp) / "train"
        (train / "images" / "000000").mkdir(parents=True)
        write_jpeg(train / "images" / "000000" / "0.jpg", synthetic_face(0, 16))
        write_jpeg(train / "images" / "000001" / "2.jpg", synthetic_face(1, 16))
        (train / "meta.json").write_text(json.dumps(meta))
        try:
            samples = read_kryptonite_train(tmp)
        except DataError as exc:
            one_line_error(exc, train / "meta.json")
            return
        assert isinstance(meta, dict) and len(samples) == len(meta)
        assert all(meta[k] in (0, 1) for k in meta)  # True/False included: bool is 0/1


@FUZZ
@given(st.one_of(st.text(max_size=60), st.integers(1, 200_000).map(lambda d: "[" * d + "]" * d),
                 st.integers(1, 200_000).map(lambda d: '{"a":' * d + "1" + "}" * d),
                 st.integers(4000, 6000).map(lambda n: '{"000000/0.jpg": ' + "1" * n + "}"),
                 st.sampled_from(["NaN", "Infinity", '{"000000/0.jpg": -Infinity}', "1e999", "\ufeff{}"])))
def test_meta_json_text_only_data_errors(text):
    with _tmpdir() as tmp:
        train = Path(tmp) / "train"
        write_jpeg(train / "images" / "000000" / "0.jpg", synthetic_face(0, 16))
        for name in ("meta.json", "marker.json"):
            (train / name).write_text(text, encoding="utf-8", errors="surrogatepass")
        for read, path in ((lambda: read_kryptonite_train(tmp), train / "meta.json"),
                           (lambda: read_identity_folders(train / "images", train / "marker.json"),
                            train / "marker.json")):
            try:
                read()
            except DataError as exc:
                one_line_error(exc, path)


# ------------------------------------------------------------------ pair folders

folder_names = st.one_of(st.sampled_from(["00000000", "00000001", "٠٠٠٠٠٠٠١", "0000000\n", "0000 001", "1",
                                          "000000001", "images", "pairs.csv", "１２３４５６７８"]),
                         st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"),
                                 min_size=1, max_size=12))


@FUZZ
@given(st.lists(folder_names, min_size=1, max_size=4, unique=True), st.booleans())
def test_pair_folder_names_only_ascii_ids(names, nested):
    with _tmpdir() as tmp:
        base = Path(tmp) / "images" if nested else Path(tmp)
        base.mkdir(exist_ok=True)
        made = []
        for name in names:
            if name in (".", "..") or (not nested and name == "images"):
                continue
            try:
                (base / name).mkdir()
            except OSError:  # a name this file system will not hold
                continue
            made.append(name)
            for k in (0, 1):
                write_jpeg(base / name / f"{k}.jpg", synthetic_face(k, 16))
        try:
            pairs = read_pair_folder(tmp)
        except DataError as exc:
            assert len(str(exc).splitlines()) == 1 and str(tmp) in str(exc), str(exc)
            return
        visible = [n for n in made if not n.startswith(".")]
        assert visible and all(re.fullmatch(r"[0-9]{8}", n) for n in visible)
        assert [p.pair_id for p in pairs] == sorted(visible)


# ------------------------------------------------------------------ LFW pairs.txt

@FUZZ
@given(st.lists(st.lists(st.one_of(st.sampled_from(["Ann", "Bob", "1", "2", "٢", "1_0", "0001", "-1", "9" * 50,
                                                    ".."]), cells), max_size=5).map("\t".join), max_size=5),
       st.sampled_from(["1\t1", "1\t2", "2\t1", "٢\t1", "9" * 5000 + "\t1", "x"]))
def test_lfw_pairs_only_data_errors(lines, head):
    with _tmpdir() as tmp:
        root = Path(tmp) / "lfw"
        for name, n in (("Ann", 2), ("Bob", 1)):
            for i in range(1, n + 1):
                write_jpeg(root / name / f"{name}_{i:04d}.jpg", synthetic_face(i, 16))
        txt = Path(tmp) / "pairs.txt"
        txt.write_text("\n".join([head, *lines]) + "\n", encoding="utf-8", errors="surrogatepass")
        try:
            pairs = read_lfw_pairs(root, txt)
        except DataError as exc:
            one_line_error(exc, txt)
            return
        assert all(p.path_a.is_file() and p.path_b.is_file() for p in pairs)
