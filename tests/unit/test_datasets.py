"""engine.datasets readers: each format read back, each broken input named by file (and line)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import synthetic_face, write_jpeg
from engine.datasets import (FAKE_OF_OTHER, FAKE_OF_SAME, GENUINE, IMPOSTOR, DataError, Pair, Sample, identity_key,
                             main, parse_pair_id, read_identity_folders, read_kryptonite_train, read_kryptonite_val,
                             read_label_csv, read_lfw_pairs, read_pair_folder, read_split_csv, remove_orphans,
                             safe_join)


def _jpeg(path: Path, seed: int = 0) -> Path:
    return write_jpeg(path, synthetic_face(seed, 32))


# ----------------------------------------------------------------- safe_join

def test_safe_join_accepts_relative_paths(tmp_path):
    assert safe_join(tmp_path, "a/b.jpg", "x.csv:2") == tmp_path / "a" / "b.jpg"
    assert safe_join(tmp_path, "a/./b..jpg", "x.csv:2") == tmp_path / "a" / "b..jpg"


@pytest.mark.parametrize("rel,why", [
    ("/etc/passwd", "absolute"),
    ("C:/Windows/x.jpg", "absolute"),
    ("../outside.jpg", "escapes"),
    ("a/../../outside.jpg", "escapes"),
    ("a\\..\\..\\outside.jpg", "escapes"),
    ("", "empty"),
])
def test_safe_join_rejects_escapes(tmp_path, rel, why):
    with pytest.raises(DataError, match=f"labels.csv:7.*{why}"):
        safe_join(tmp_path, rel, "labels.csv:7")


# ------------------------------------------------------- Kryptonite training

def _kryptonite(root: Path, meta: dict, fakes: dict | None = None) -> Path:
    train = root / "train"
    for i, rel in enumerate(meta):
        if isinstance(rel, str) and ".." not in rel and not rel.startswith("/"):
            _jpeg(train / "images" / rel, i)
    train.mkdir(parents=True, exist_ok=True)
    (train / "meta.json").write_text(json.dumps(meta))
    if fakes is not None:
        (train / "fakes.json").write_text(json.dumps(fakes))
    return root


def test_kryptonite_train_round_trip(tmp_path):
    meta = {"000001/1.jpg": 1, "000000/0.jpg": 0, "000000/1.jpg": 0, "000001/0.jpg": 0}
    root = _kryptonite(tmp_path, meta, {"000001/1.jpg": {"attack": "morph", "source": "000000"}})
    for where in (root, root / "train"):  # the dataset root or the train folder itself
        samples = read_kryptonite_train(where)
        assert [(s.identity, s.path.name, s.is_fake, s.attack) for s in samples] == [
            ("000000", "0.jpg", False, ""), ("000000", "1.jpg", False, ""),
            ("000001", "0.jpg", False, ""), ("000001", "1.jpg", True, "morph")]
        assert all(s.path.is_file() for s in samples)


def test_kryptonite_meta_not_a_dict(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "meta.json").write_text('["000000/0.jpg"]')
    with pytest.raises(DataError, match=r"meta\.json: expected a JSON object.*got list"):
        read_kryptonite_train(tmp_path)


@pytest.mark.parametrize("meta,message", [
    ({"000000/0.jpg": 2}, "expected 0 or 1, or true/false, got 2"),
    ({"000000/0.jpg": "fake"}, "expected 0 or 1"),
    ({"000000/0.jpg": "true"}, "expected 0 or 1, or true/false, got 'true'"),  # a string, not a JSON boolean
    ({"000000/0.jpg": [1]}, r"expected 0 or 1, or true/false, got \[1\]"),
    ({"../000000/0.jpg": 0}, "escapes"),
    ({"/abs/0.jpg": 0}, "absolute"),
    ({}, "no images listed"),
])
def test_kryptonite_bad_meta(tmp_path, meta, message):
    _kryptonite(tmp_path, meta)
    with pytest.raises(DataError, match=message) as err:
        read_kryptonite_train(tmp_path)
    assert "meta.json" in str(err.value)


def test_kryptonite_missing_image_and_bad_json(tmp_path):
    root = _kryptonite(tmp_path, {"000000/0.jpg": 0})
    meta = json.loads((root / "train" / "meta.json").read_text())
    meta["000000/9.jpg"] = 0
    (root / "train" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"000000/9\.jpg.*does not exist"):
        read_kryptonite_train(root)
    (root / "train" / "meta.json").write_text('{"000000/0.jpg": 0,\n oops}')
    with pytest.raises(DataError, match=r"meta\.json:2: not valid JSON"):
        read_kryptonite_train(root)
    with pytest.raises(DataError, match="no such file"):
        read_kryptonite_train(tmp_path / "elsewhere")


def test_kryptonite_fakes_json_must_match_meta(tmp_path):
    _kryptonite(tmp_path, {"000000/0.jpg": 0}, {"000000/0.jpg": {"attack": "morph"}})
    with pytest.raises(DataError, match=r"fakes\.json.*not marked as fake"):
        read_kryptonite_train(tmp_path)


# ------------------------------------------------------------ train/val CSV

def test_split_csv(tmp_path):
    _jpeg(tmp_path / "images" / "a" / "0.jpg")
    _jpeg(tmp_path / "images" / "b" / "0.jpg", 1)
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("label,path,split,is_query,is_gallery\n"
                        "7,images/a/0.jpg,train,0,1\n"
                        "8,images/b/0.jpg,train,True,False\n")
    samples = read_split_csv(csv_path, tmp_path)
    # Numeric labels are spelt like Kryptonite's identity folders (identity_key).
    assert samples == [Sample(tmp_path / "images/a/0.jpg", "000007"), Sample(tmp_path / "images/b/0.jpg", "000008")]


@pytest.mark.parametrize("body,message", [
    ("label,path,split,is_query\n7,a.jpg,train,0\n", r"train\.csv:1: missing column\(s\) is_gallery"),
    ("label,path,split,is_query,is_gallery\n7,../a.jpg,train,0,1\n", r"train\.csv:2: .*escapes"),
    ("label,path,split,is_query,is_gallery\n7,images/none.jpg,train,0,1\n", r"train\.csv:2: image .* does not exist"),
    ("label,path,split,is_query,is_gallery\n7,images/a.jpg,train\n", r"train\.csv:2: 3 fields, header has 5"),
    ("label,path,split,is_query,is_gallery\n7,images/a.jpg,train,maybe,1\n", r"train\.csv:2: is_query"),
    ("", r"train\.csv:1: empty file"),
])
def test_split_csv_errors(tmp_path, body, message):
    _jpeg(tmp_path / "images" / "a.jpg")
    (tmp_path / "train.csv").write_text(body)
    with pytest.raises(DataError, match=message):
        read_split_csv(tmp_path / "train.csv", tmp_path)


# -------------------------------------------------------------- pair folders

def _pair_folder(folder: Path, ids: list[str]) -> Path:
    for i, pid in enumerate(ids):
        for k in (0, 1):
            _jpeg(folder / "images" / pid / f"{k}.jpg", i * 2 + k)
    return folder


def test_pair_folder_sorted_unlabelled(tmp_path):
    folder = _pair_folder(tmp_path / "test_public", ["00000002", "00000000", "00000001"])
    pairs = read_pair_folder(folder)
    assert [p.pair_id for p in pairs] == ["00000000", "00000001", "00000002"]
    assert all(p.label is None and p.path_a.name == "0.jpg" and p.path_b.name == "1.jpg" for p in pairs)


def test_pair_folder_with_labels(tmp_path):
    folder = _pair_folder(tmp_path / "val", ["00000000", "00000001"])
    (folder / "pairs.csv").write_text("pair_id,label,type,attack\n00000001,0,fake-of-same,morph\n00000000,1,genuine,\n")
    pairs = read_pair_folder(folder)
    assert [(p.pair_id, p.label, p.type, p.attack) for p in pairs] == [
        ("00000000", 1, GENUINE, ""), ("00000001", 0, FAKE_OF_SAME, "morph")]
    other = tmp_path / "labels.csv"
    other.write_text("pair_id,label\n00000000,0\n00000001,1\n")
    assert [p.label for p in read_pair_folder(folder, other)] == [0, 1]


def test_pair_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="no pairs found"):
        read_pair_folder(empty)
    with pytest.raises(DataError, match="no such folder"):
        read_pair_folder(tmp_path / "missing")
    folder = _pair_folder(tmp_path / "f", ["00000000"])
    (folder / "images" / "00000000" / "1.jpg").unlink()
    with pytest.raises(DataError, match=r"00000000/1\.jpg: missing"):
        read_pair_folder(folder)
    bad = _pair_folder(tmp_path / "g", ["123"])
    with pytest.raises(DataError, match="8-digit"):
        read_pair_folder(bad)
    labelled = _pair_folder(tmp_path / "h", ["00000000", "00000001"])
    (labelled / "pairs.csv").write_text("pair_id,label\n00000000,1\n")
    with pytest.raises(DataError, match=r"pairs\.csv: no label for pair\(s\) 00000001"):
        read_pair_folder(labelled)


@pytest.mark.parametrize("body,message", [
    ("pair_id,similarity\n00000000,0.5\n", r":1: missing column\(s\) label"),
    ("pair_id,label\n00000000,1\n00000000,0\n", r":3: pair_id 00000000 repeated"),
    ("pair_id,label\n00000000,yes\n", r":2: label: expected 0 or 1"),
    ("pair_id,label,type\n00000000,1,impostor\n", r":2: label 1 contradicts type impostor"),
    ("pair_id,label,type\n00000000,0,cheese\n", r":2: type 'cheese'"),
])
def test_label_csv_errors(tmp_path, body, message):
    path = tmp_path / "labels.csv"
    path.write_text(body)
    with pytest.raises(DataError, match=message):
        read_label_csv(path)


def test_label_csv_values(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("\ufeffpair_id,label,type,attack\n00000000,0,impostor,\n00000001,0,fake-of-same,self-blend\n")
    assert read_label_csv(path) == {"00000000": (0, IMPOSTOR, ""), "00000001": (0, FAKE_OF_SAME, "self-blend")}


# ----------------------------------------------------------------------- LFW

def _lfw(root: Path) -> Path:
    for name, n in (("Ann", 3), ("Bob", 2), ("Cid", 1), ("Dee", 2)):
        for i in range(1, n + 1):
            _jpeg(root / name / f"{name}_{i:04d}.jpg", ord(name[0]) + i)
    return root


def test_lfw_pairs_folds_and_labels(tmp_path):
    root = _lfw(tmp_path / "lfw")
    txt = tmp_path / "pairs.txt"
    txt.write_text("2\t1\nAnn\t1\t2\nAnn\t1\tCid\t1\nBob\t1\t2\nDee\t2\tCid\t1\n")
    pairs = read_lfw_pairs(root, txt)
    assert [(p.fold, p.label, p.type) for p in pairs] == [(0, 1, GENUINE), (0, 0, IMPOSTOR),
                                                          (1, 1, GENUINE), (1, 0, IMPOSTOR)]
    assert pairs[1].path_a == root / "Ann" / "Ann_0001.jpg" and pairs[1].path_b == root / "Cid" / "Cid_0001.jpg"
    assert [p.pair_id for p in pairs] == ["00000000", "00000001", "00000002", "00000003"]


@pytest.mark.parametrize("body,message", [
    ("ten\t300\n", r"pairs\.txt:1: expected a header"),
    ("1\t1\nAnn\t1\t2\n", r"pairs\.txt: header says 1 folds x 2 x 1 = 2 lines, found 1"),
    ("1\t1\nAnn\t1\nAnn\t1\tBob\t1\n", r"pairs\.txt:2: expected 'name i j'"),
    ("1\t1\nAnn\t1\t2\nAnn\t1\tBob\n", r"pairs\.txt:3: expected 'name1 i name2 j'"),
    ("1\t1\nAnn\tone\t2\nAnn\t1\tBob\t1\n", r"pairs\.txt:2: invalid literal"),
    ("1\t1\nAnn\t1\t9\nAnn\t1\tBob\t1\n", r"pairs\.txt:2: image .*Ann_0009\.jpg does not exist"),
    ("1\t1\nAnn\t1\t2\n..\t1\tBob\t1\n", r"pairs\.txt:3: bad identity name"),
])
def test_lfw_pairs_errors(tmp_path, body, message):
    root = _lfw(tmp_path / "lfw")
    txt = tmp_path / "pairs.txt"
    txt.write_text(body)
    with pytest.raises(DataError, match=message):
        read_lfw_pairs(root, txt)


def test_a_pair_image_that_is_not_a_file_is_named_for_what_it_is(tmp_path):
    folder = tmp_path / "p"
    pair = folder / "images" / "00000001"
    pair.mkdir(parents=True)
    (pair / "1.jpg").write_bytes(b"x")
    image = pair / "0.jpg"
    for make, why in ((os.mkfifo, "is a FIFO"), (Path.mkdir, "is a directory"),
                      (lambda p: p.symlink_to(p), "symlink loop"), (lambda p: None, "missing")):
        make(image)
        with pytest.raises(DataError, match=f"0.jpg: {why}"):
            read_pair_folder(folder)
        if image.is_dir() and not image.is_symlink():
            image.rmdir()
        elif image.is_symlink() or image.exists():
            image.unlink()


def test_lfw_pairs_with_a_bom_and_crlf_read_as_without(tmp_path):
    root = _lfw(tmp_path / "lfw")
    txt = tmp_path / "pairs.txt"
    txt.write_bytes(b"\xef\xbb\xbf2\t1\r\nAnn\t1\t2\r\nAnn\t1\tCid\t1\r\nBob\t1\t2\r\nDee\t2\tCid\t1\r\n")
    assert [(p.fold, p.label) for p in read_lfw_pairs(root, txt)] == [(0, 1), (0, 0), (1, 1), (1, 0)]


def test_pairs_and_labels_that_are_not_regular_files_are_refused_without_blocking(tmp_path):
    root = _lfw(tmp_path / "lfw")
    fifo = tmp_path / "pairs.txt"
    os.mkfifo(fifo)  # reading it would wait for a writer forever
    with pytest.raises(DataError, match=r"pairs\.txt: is a FIFO \(named pipe\), not a text file"):
        read_lfw_pairs(root, fifo)
    with pytest.raises(DataError, match=r"/dev/zero: is a character device, not a text file"):
        read_lfw_pairs(root, "/dev/zero")  # would fill memory before a line is parsed
    folder = tmp_path / "p"
    (folder / "images" / "00000000").mkdir(parents=True)
    labels = tmp_path / "labels.csv"
    os.mkfifo(labels)
    with pytest.raises(DataError, match=r"labels\.csv: is a FIFO"):
        read_pair_folder(folder, labels)


@pytest.mark.data
def test_real_lfw_pairs(face_data):
    pairs = read_lfw_pairs(face_data / "lfw-deepfunneled", face_data / "lfw-pairs.txt")
    assert len(pairs) == 6000
    assert sum(p.label for p in pairs) == 3000
    assert {p.fold for p in pairs} == set(range(10))
    fold_ids = [{q.parent.name for p in pairs if p.fold == f for q in (p.path_a, p.path_b)} for f in range(10)]
    assert all(not (fold_ids[i] & fold_ids[j]) for i in range(10) for j in range(i + 1, 10))


# ---------------------------------------------------------- identity folders

def test_identity_folders_with_markers(tmp_path):
    root = tmp_path / "faces"
    for ident in ("bob", "ann"):
        for k in range(2):
            _jpeg(root / ident / f"{k}.jpg", k)
    (root / "ann" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    samples = read_identity_folders(root)
    assert [(s.identity, s.path.name, s.is_fake) for s in samples] == [
        ("ann", "0.jpg", False), ("ann", "1.jpg", False), ("bob", "0.jpg", False), ("bob", "1.jpg", False)]
    marker = tmp_path / "marks.json"
    marker.write_text(json.dumps({"bob/1.jpg": 1, "ann/0.jpg": 0}))
    assert [s.is_fake for s in read_identity_folders(root, marker)] == [False, False, False, True]
    marker_csv = tmp_path / "marks.csv"
    marker_csv.write_text("path,is_fake\nann/1.jpg,1\n")
    assert [s.is_fake for s in read_identity_folders(root, marker_csv)] == [False, True, False, False]


@pytest.mark.parametrize("name,body,message", [
    ("m.json", '[1, 2]', r"m\.json: expected a JSON object"),
    ("m.json", '{"../x.jpg": 1}', "escapes"),
    ("m.json", '{"ann/9.jpg": 1}', "does not exist"),
    ("m.csv", "path,fake\nann/0.jpg,1\n", r"m\.csv:1: missing column\(s\) is_fake"),
    ("m.csv", "path,is_fake\n/etc/passwd,1\n", r"m\.csv:2: absolute path"),
])
def test_identity_marker_errors(tmp_path, name, body, message):
    root = tmp_path / "faces"
    _jpeg(root / "ann" / "0.jpg")
    marker = tmp_path / name
    marker.write_text(body)
    with pytest.raises(DataError, match=message):
        read_identity_folders(root, marker)


def test_identity_folders_empty(tmp_path):
    (tmp_path / "faces" / "ann").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        read_identity_folders(tmp_path / "faces")


# ----------------------------------------------------------------------- CLI

def test_cli_counts_and_errors(tmp_path, capsys):
    root = _kryptonite(tmp_path / "k", {"000000/0.jpg": 0, "000000/1.jpg": 1})
    assert main(["kryptonite-train", str(root), "--check-images"]) == 0
    assert "2 images, 1 identities, 1 fake" in capsys.readouterr().out
    (root / "train" / "images" / "000000" / "1.jpg").write_bytes(b"")
    assert main(["kryptonite-train", str(root), "--check-images"]) == 2
    assert "1.jpg: empty file" in capsys.readouterr().err
    (root / "train" / "meta.json").write_text("[]")
    assert main(["kryptonite-train", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "meta.json" in err and len(err.strip().splitlines()) == 1


def test_pair_record_defaults():
    pair = Pair("00000000", Path("a"), Path("b"))
    assert pair.label is None and pair.type == "" and pair.fold == -1


# ------------------------------------------------- the organisers' real files, in their shapes

def _organiser_data(root: Path, n_ids: int = 4, fake: str = "000002/2.jpg") -> Path:
    """The Kryptonite download: train/meta.json (JSON booleans), train/images/<6 digits>/<k>.jpg,
    train.csv with empty is_query/is_gallery, val.csv with 1 query + 2 gallery images per identity."""
    meta = {}
    for ident in range(n_ids):
        for k in range(3):
            rel = f"{ident:06d}/{k}.jpg"
            _jpeg(root / "train" / "images" / rel, ident * 10 + k)
            meta[rel] = rel == fake
    (root / "train" / "meta.json").write_text(json.dumps(meta))
    train_rows = [f"{ident},train/images/{ident:06d}/{k}.jpg,train,," for ident in range(n_ids) for k in range(3)]
    (root / "train.csv").write_text("label,path,split,is_query,is_gallery\n" + "\n".join(train_rows) + "\n")
    val_rows = [f"{ident},train/images/{ident:06d}/{k}.jpg,val,{k == 0},{k > 0}"
                for ident in range(n_ids) for k in range(3)]
    (root / "val.csv").write_text("label,path,split,is_query,is_gallery\n" + "\n".join(val_rows) + "\n")
    return root


def test_split_csv_reads_the_organisers_train_csv_with_empty_flags(tmp_path):
    root = _organiser_data(tmp_path)
    assert (root / "train.csv").read_text().splitlines()[1] == "0,train/images/000000/0.jpg,train,,"
    samples = read_split_csv(root / "train.csv", root)
    assert len(samples) == 12 and samples[0] == Sample(root / "train/images/000000/0.jpg", "000000")
    assert main(["split-csv", str(root / "train.csv"), "--root", str(root)]) == 0
    (root / "bad.csv").write_text("label,path,split,is_query,is_gallery\n0,train/images/000000/0.jpg,train, ,maybe\n")
    with pytest.raises(DataError, match=r"bad\.csv:2: is_gallery must be 0/1, True/False or empty, got 'maybe'"):
        read_split_csv(root / "bad.csv", root)


def test_kryptonite_meta_json_booleans_read_as_0_1(tmp_path):
    root = _kryptonite(tmp_path, {"000000/0.jpg": False, "000000/1.jpg": True, "000001/0.jpg": 0})
    assert json.loads((root / "train" / "meta.json").read_text())["000000/1.jpg"] is True
    assert [(s.path.name, s.is_fake) for s in read_kryptonite_train(root)] == [
        ("0.jpg", False), ("1.jpg", True), ("0.jpg", False)]
    marker = tmp_path / "marks.json"  # the generic reader's JSON marker takes booleans too
    marker.write_text('{"000000/1.jpg": true}')
    assert [s.is_fake for s in read_identity_folders(root / "train" / "images", marker)] == [False, True, False]


def test_pair_folder_without_images_level_as_the_organisers_readme_draws(tmp_path):
    flat = tmp_path / "test_public"
    for i, pid in enumerate(["00000001", "00000000"]):
        for k in (0, 1):
            _jpeg(flat / pid / f"{k}.jpg", 2 * i + k)
    pairs = read_pair_folder(flat)
    assert [(p.pair_id, p.path_a, p.path_b, p.label) for p in pairs] == [
        ("00000000", flat / "00000000/0.jpg", flat / "00000000/1.jpg", None),
        ("00000001", flat / "00000001/0.jpg", flat / "00000001/1.jpg", None)]
    (flat / "pairs.csv").write_text("pair_id,label\n0,1\n1,0\n")  # files beside the pair folders are fine
    assert [(p.pair_id, p.label) for p in read_pair_folder(flat)] == [("00000000", 1), ("00000001", 0)]
    assert main(["pair-folder", str(flat)]) == 0
    _jpeg(flat / "images" / "00000002" / "0.jpg")
    with pytest.raises(DataError, match="both in images/ and directly"):
        read_pair_folder(flat)
    (flat / "notes").mkdir(parents=True)
    flat_only = tmp_path / "flat_only"
    (flat_only / "00000000").mkdir(parents=True)
    (flat_only / "notes").mkdir()
    with pytest.raises(DataError, match=r"entry 'notes' is not an 8-digit pair folder"):
        read_pair_folder(flat_only)


def test_identity_keys_agree_between_the_train_and_csv_readers(tmp_path):
    root = _organiser_data(tmp_path)
    by_meta = {s.path: s.identity for s in read_kryptonite_train(root)}
    by_csv = {s.path: s.identity for s in read_split_csv(root / "train.csv", root)}
    assert by_meta == by_csv and sorted(set(by_csv.values())) == ["000000", "000001", "000002", "000003"]
    assert identity_key("0") == identity_key("000000") == identity_key("0000000") == "000000"
    assert identity_key("0", Path("train/images/00000/3.jpg")) == "00000"  # the image folder's own spelling
    assert identity_key("7", Path("train/images/00000/3.jpg")) == "000007"  # another number: Kryptonite's
    assert identity_key("12345678") == "12345678" and identity_key("Ann") == "Ann"
    assert identity_key("٠") == "٠"  # not an ASCII number: kept as written, never read as 0


def test_kryptonite_val_pairs_from_val_csv_and_meta(tmp_path):
    root = _organiser_data(tmp_path, n_ids=4, fake="000002/2.jpg")
    pairs = read_kryptonite_val(root / "val.csv", root)
    assert [p.pair_id for p in pairs] == [f"{k:08d}" for k in range(len(pairs))]
    genuine = [p for p in pairs if p.type == GENUINE]
    assert len(genuine) == 7 and all(p.label == 1 and p.path_a.parent == p.path_b.parent for p in genuine)
    fake_same = [p for p in pairs if p.type == FAKE_OF_SAME]
    assert [(p.path_a.relative_to(root).as_posix(), p.path_b.name, p.label) for p in fake_same] == [
        ("train/images/000002/0.jpg", "2.jpg", 0)]  # the query against its identity's fake gallery image
    others = [p for p in pairs if p.type in (IMPOSTOR, FAKE_OF_OTHER)]
    assert len(others) == 8 and all(p.label == 0 and p.path_a.parent != p.path_b.parent for p in others)
    assert all((p.type == FAKE_OF_OTHER) == (p.path_b.relative_to(root).as_posix() == "train/images/000002/2.jpg")
               for p in others)
    assert all(p.path_a.name == "0.jpg" for p in pairs)  # every pair starts from a query image
    assert read_kryptonite_val(root / "val.csv", root) == pairs  # deterministic
    assert read_kryptonite_val(root / "val.csv", root, root / "train" / "meta.json", seed=0) == pairs

    def partners(pairs):  # which other identity each identity's query meets
        met = {}
        for p in pairs:
            if p.type in (IMPOSTOR, FAKE_OF_OTHER):
                met.setdefault(p.path_a.parent.name, set()).add(p.path_b.parent.name)
        return met

    met = partners(pairs)  # a derangement: one other identity each, every gallery used once
    assert all(len(v) == 1 and k not in v for k, v in met.items())
    assert sorted(next(iter(v)) for v in met.values()) == sorted(met)
    assert len({tuple(sorted((k, *v) for k, v in partners(read_kryptonite_val(root / "val.csv", root, seed=s)).items()))
                for s in range(6)}) > 1  # the seed picks which


def test_kryptonite_val_cli_writes_a_pair_folder_training_validates_on(tmp_path, capsys):
    root = _organiser_data(tmp_path)
    out = root / "val"
    assert main(["kryptonite-val", str(root / "val.csv"), "--root", str(root), "--out", str(out)]) == 0
    assert "16 pairs, 16 labelled, 7 positive; written to" in capsys.readouterr().out
    built = read_kryptonite_val(root / "val.csv", root)
    back = read_pair_folder(out)  # what training.train reads from data_dir/val
    assert [(p.pair_id, p.label, p.type) for p in back] == [(p.pair_id, p.label, p.type) for p in built]
    assert all(b.path_a.read_bytes() == p.path_a.read_bytes() and b.path_b.read_bytes() == p.path_b.read_bytes()
               for b, p in zip(back, built))
    assert not [p for p in root.iterdir() if ".partial-" in p.name]
    assert main(["kryptonite-val", str(root / "val.csv"), "--root", str(root), "--out", str(out)]) == 2
    assert "not empty; pass --force" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["kryptonite-val", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--out DATA/val" in text and "training.train data_dir=DATA" in text


@pytest.mark.parametrize("where", ["root", "train", "parent", "cwd"])
def test_force_never_replaces_a_folder_holding_the_data_it_reads(tmp_path, capsys, monkeypatch, where):
    """`--out DATA --force` (beside DATA/val.csv) deleted the data set, and a user's own file with it."""
    root = _organiser_data(tmp_path / "data")
    (root / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    monkeypatch.chdir(root if where == "cwd" else tmp_path)
    out = {"root": root, "train": root / "train", "parent": tmp_path, "cwd": Path(".")}[where]
    code = main(["kryptonite-val", str(root / "val.csv"), "--root", str(root), "--out", str(out), "--force"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "holds an input" in err or "current directory" in err
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before


def test_force_replaces_only_an_earlier_pair_folder(tmp_path, capsys):
    root = _organiser_data(tmp_path / "data")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    argv = ["kryptonite-val", str(root / "val.csv"), "--root", str(root), "--force", "--out"]
    assert main(argv + [str(mine)]) == 2
    assert "was not written by this tool" in capsys.readouterr().err and (mine / "thesis.tex").exists()
    out = tmp_path / "val"
    assert main(argv + [str(out)]) == 0 and main(argv + [str(out)]) == 0  # its own output: replaced
    assert (out / ".fakeaware-output").read_text().strip() == "engine.datasets pair folder"


@pytest.mark.parametrize("edit,message", [
    (lambda root: (root / "val.csv").write_text((root / "val.csv").read_text().replace(",True,False", ",,")),
     "no row has is_query set"),
    (lambda root: (root / "train" / "meta.json").write_text('{"000000/0.jpg": 0}'), "is not listed in"),
    (lambda root: (root / "val.csv").write_text("label,path,split,is_query,is_gallery\n9,elsewhere/x.jpg,val,True,"
                                                "False\n"), "does not exist"),
])
def test_kryptonite_val_errors_name_the_file(tmp_path, edit, message):
    root = _organiser_data(tmp_path)
    edit(root)
    with pytest.raises(DataError, match=message) as info:
        read_kryptonite_val(root / "val.csv", root)
    assert str(root) in str(info.value) and "\n" not in str(info.value)


def test_kryptonite_val_needs_query_and_gallery_per_identity(tmp_path):
    root = _organiser_data(tmp_path)
    lines = (root / "val.csv").read_text().splitlines()
    (root / "val.csv").write_text("\n".join(line for line in lines if not line.startswith("3,")
                                            or line.endswith("True,False")) + "\n")
    with pytest.raises(DataError, match=r"val\.csv: identity 000003 has no gallery image"):
        read_kryptonite_val(root / "val.csv", root)


# ------------------------------------------------------------------ pair ids

@pytest.mark.parametrize("raw,canonical", [("00000001", "00000001"), ("1", "00000001"), ("0001", "00000001"),
                                           ("000000000001", "00000001"), ("123456789", "123456789"),
                                           (7, "00000007"), ("0", "00000000")])
def test_pair_ids_have_one_spelling(raw, canonical):
    assert parse_pair_id(raw, "x.csv:2") == canonical


@pytest.mark.parametrize("raw", ["٠٠٠٠٠٠٠١", "００００００００", "0000000²", " 00000001", "00000001\n", "0000 001",
                                 "+1", "-1", "1_000", "1e3", "0x10", "", "1" * 19, True, None, 1.0, -1])
def test_pair_ids_other_than_ascii_digits_are_refused(raw):
    with pytest.raises(DataError, match=r"^x\.csv:2: ") as info:
        parse_pair_id(raw, "x.csv:2")
    assert "\n" not in str(info.value)


def test_label_csv_ids_compare_as_numbers_and_refuse_other_digits(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("pair_id,label\n1,1\n00000002,0\n")
    assert read_label_csv(path) == {"00000001": (1, "", ""), "00000002": (0, "", "")}
    path.write_text("pair_id,label\n1,1\n0001,0\n")
    with pytest.raises(DataError, match=r"labels\.csv:3: pair_id 00000001 repeated \(the same pair as line 2"):
        read_label_csv(path)
    for bad in ("٠٠٠٠٠٠٠١", " 00000001", '"00000001\n"', "0000 0001"):
        path.write_text(f"pair_id,label\n{bad},1\n")
        with pytest.raises(DataError, match=r"labels\.csv:\d: pair id .* ASCII digits") as info:
            read_label_csv(path)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["٠٠٠٠٠٠٠١", "0000000١", "00000001\n", "0000 001", "00000001 ", "１２３４５６７８"])
def test_pair_folder_names_other_than_8_ascii_digits_are_refused_before_any_work(tmp_path, name):
    folder = _pair_folder(tmp_path / "t", ["00000000"])
    (folder / "images" / name).mkdir()  # holds no images: refused by name, before any image is looked at
    with pytest.raises(DataError, match="is not an 8-digit pair folder") as info:
        read_pair_folder(folder)
    assert "\n" not in str(info.value) and repr(name) in str(info.value)


def test_names_with_control_characters_are_refused(tmp_path):
    for rel in ("a\nb.jpg", "a/b\x00.jpg", "a\tb/c.jpg", "a\rb"):
        with pytest.raises(DataError, match="control character") as info:
            safe_join(tmp_path, rel, "m.json")
        assert "\n" not in str(info.value)
    lfw = _lfw(tmp_path / "lfw")
    txt = tmp_path / "pairs.txt"
    txt.write_text("1\t1\nAnn\t1\t٢\nAnn\t1\tBob\t1\n")  # Arabic-Indic 2: int() would read it as 2
    with pytest.raises(DataError, match=r"pairs\.txt:2: invalid literal for an image number: '٢'"):
        read_lfw_pairs(lfw, txt)
    txt.write_text(f"{'9' * 5000}\t1\n")
    with pytest.raises(DataError, match=r"pairs\.txt:1: expected a header"):
        read_lfw_pairs(lfw, txt)


# ------------------------------------------------------------ deep or huge JSON and CSV

JSON_BOMBS = {
    "deep": "[" * 100_000 + "]" * 100_000,
    "deep object": '{"a":' * 100_000 + "0" + "}" * 100_000,
    "huge number": '{"000000/0.jpg": ' + "1" * 5000 + "}",
    "NaN": '{"000000/0.jpg": NaN}',
}


@pytest.mark.parametrize("kind", sorted(JSON_BOMBS))
@pytest.mark.parametrize("which", ["meta.json", "fakes.json", "marker"])
def test_deep_or_huge_json_is_one_line_naming_the_file(tmp_path, kind, which, capsys):
    root = _kryptonite(tmp_path, {"000000/0.jpg": 0})
    target = root / "train" / ("marker.json" if which == "marker" else which)
    target.write_text(JSON_BOMBS[kind])
    with pytest.raises(DataError) as info:
        if which == "marker":
            read_identity_folders(root / "train" / "images", target)
        else:
            read_kryptonite_train(root)
    message = str(info.value)
    assert message.startswith(str(target)) and "\n" not in message and len(message) < 300
    if which == "meta.json":
        assert main(["kryptonite-train", str(root)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {target}") and len(err.strip().splitlines()) == 1


def test_csv_field_over_the_csv_module_limit_is_a_data_error(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text('pair_id,label\n00000001,"' + "x" * 200_000 + '"\n')
    with pytest.raises(DataError, match=r"labels\.csv:2: not a readable CSV row"):
        read_label_csv(path)


# ------------------------------------------------------------ orphans of killed runs

def test_remove_orphans_spares_live_processes_and_other_names(tmp_path):
    import re
    import subprocess
    import sys

    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = [f".out.partial-{done.pid}", f".out.partial-{alive.pid}", f".out.partial-{os.getpid()}",
                 ".out.partial-abc", f".out.partial-{done.pid}x", f".other.partial-{done.pid}", "out"]
        for name in names:
            (tmp_path / name).mkdir()
            (tmp_path / name / "f").write_text("x")
        removed = remove_orphans(tmp_path, re.compile(re.escape(".out.partial-") + r"(?P<pid>[0-9]+)"))
        assert [p.name for p in removed] == [f".out.partial-{done.pid}"]
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])
    finally:
        alive.kill()
        alive.wait()


def test_convert_removes_the_build_folder_of_a_killed_run(tmp_path, monkeypatch):
    """convert builds in .OUT.tmp-<pid>-XXXXXXXX (engine.datasets.remove_orphans clears dead ones)."""
    import subprocess
    import sys

    import convert
    import convert.export
    import convert.gate
    from engine.contract import ModelConfig

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    model = type("Model", (), {"config": ModelConfig()})()
    monkeypatch.setattr(convert.export, "load_checkpoint", lambda path: model)
    monkeypatch.setattr(convert.gate, "embed_torch", stop)  # the first step inside the build folder
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        orphans = [f".model.tmp-{dead.pid}-ab_c1234", ".model.tmp-k3x9_q0z"]  # a dead pid's; an old pid-less one
        kept = [f".model.tmp-{live.pid}-ab_c1234", ".model.tmp-short", f".model.tmp-{dead.pid}-toolong99",
                f".other.tmp-{dead.pid}-ab_c1234"]
        for name in orphans + kept:
            (tmp_path / name).mkdir()
        with pytest.raises(Stop):
            convert.convert_checkpoint(tmp_path / "run", tmp_path / "model", precision="fp32", quiet=True)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)  # its own build folder is gone too
    finally:
        live.kill()
        live.wait()


# ----------------------------------------------------------------- DFDC face crops

def _dfdc(root: Path, rows: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "faces.csv").write_text("file,label,made_from\n" + "".join(r + "\n" for r in rows))
    return root


def test_dfdc_faces_take_their_source_videos_identity(tmp_path):
    from engine.datasets import read_dfdc_faces

    root = _dfdc(tmp_path / "dfdc", ["real/aa.jpg,real,", "fake/ff.jpg,fake,real/aa.jpg", "real/bb.jpg,real,"])
    samples = read_dfdc_faces(root)
    assert [(s.path, s.identity, s.is_fake, s.attack) for s in samples] == [
        (root / "real/aa.jpg", "dfdc/aa", False, ""), (root / "fake/ff.jpg", "dfdc/aa", True, "dfdc"),
        (root / "real/bb.jpg", "dfdc/bb", False, "")]


@pytest.mark.parametrize("rows, message", [
    (["real/a.jpg,maybe,"], "faces.csv:2: label must be real or fake"),
    (["fake/f.jpg,fake,"], "faces.csv:2: a fake needs made_from"),
    (["../x.jpg,real,"], "escapes"),
    ([], "faces.csv: no rows"),
])
def test_dfdc_faces_refuse_bad_rows_by_line(tmp_path, rows, message):
    from engine.datasets import read_dfdc_faces

    with pytest.raises(DataError, match=message):
        read_dfdc_faces(_dfdc(tmp_path / "dfdc", rows))


def test_split_by_identity_keeps_a_fake_with_its_source_and_is_fixed_per_seed():
    from engine.datasets import split_by_identity

    samples = [Sample(Path(f"{i}{k}.jpg"), f"v{i}", k == "f") for i in range(50) for k in "rf"]
    train, val = split_by_identity(samples, 0.2, seed=0)
    assert len(val) == 20 and len(train) == 80
    assert not {s.identity for s in train} & {s.identity for s in val}
    assert split_by_identity(samples, 0.2, seed=0) == (train, val)
    assert split_by_identity(samples, 0.2, seed=1)[1] != val
    assert split_by_identity(samples, 0.0) == (samples, [])
