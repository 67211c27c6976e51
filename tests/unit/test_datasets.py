"""engine.datasets readers: each format read back, each broken input named by file (and line)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import synthetic_face, write_jpeg
from engine.datasets import (FAKE_OF_SAME, GENUINE, IMPOSTOR, DataError, Pair, Sample, main, read_identity_folders,
                             read_kryptonite_train, read_label_csv, read_lfw_pairs, read_pair_folder, read_split_csv,
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
    ({"000000/0.jpg": 2}, "expected 0 or 1, got 2"),
    ({"000000/0.jpg": "fake"}, "expected 0 or 1"),
    ({"000000/0.jpg": True}, "expected 0 or 1, got True"),
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
    assert samples == [Sample(tmp_path / "images/a/0.jpg", "7"), Sample(tmp_path / "images/b/0.jpg", "8")]


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
    assert main(["kryptonite-train", str(root), "--check-images"]) == 1
    assert "1.jpg: empty file" in capsys.readouterr().err
    (root / "train" / "meta.json").write_text("[]")
    assert main(["kryptonite-train", str(root)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "meta.json" in err and len(err.strip().splitlines()) == 1


def test_pair_record_defaults():
    pair = Pair("00000000", Path("a"), Path("b"))
    assert pair.label is None and pair.type == "" and pair.fold == -1
