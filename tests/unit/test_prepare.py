"""training.prepare: layout, counts, identity-disjoint splits, determinism, atomic failure."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import make_identity_folders, synthetic_face, write_jpeg
from engine.datasets import (FAKE_OF_OTHER, FAKE_OF_SAME, GENUINE, IMPOSTOR, PAIR_TYPES, DataError,
                             read_kryptonite_train, read_pair_folder)
from engine.preprocess import load_image
from training import prepare as prep
from training.attacks import ATTACKS

SMALL = dict(seed=0, fakes_per_identity=3, val_fraction=0.2, test_fraction=0.2, val_pairs=(6, 6, 6, 3),
             test_pairs=(8, 8, 6, 3), workers=2, progress=False)
CLI_SMALL = ["--fakes-per-identity", "3", "--val-fraction", "0.2", "--test-fraction", "0.2",
             "--val-pairs", "6,6,6,3", "--test-pairs", "8,8,6,3", "--no-progress"]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def _split_identities(out: Path) -> dict[str, set[str]]:
    """Source identities each split uses, fakes' inputs included."""
    names = json.loads((out / "train" / "identities.json").read_text())
    fakes = json.loads((out / "train" / "fakes.json").read_text())
    used = {"train": set(names.values()) | {rel.split("/")[0] for f in fakes.values() for rel in f["inputs"]}}
    for split in ("val", "test"):
        used[split] = set()
        for line in (out / split / "sources.csv").read_text().splitlines()[1:]:
            _, id0, src0, id1, src1 = line.split(",")
            used[split] |= {id0, id1}
            for src in (src0, src1):
                for rel in src.split(":")[-1].split("+"):
                    used[split].add(rel.split("/")[0])
    return used


def test_round_trip_layout_and_counts(small_faces, tmp_path):
    out = tmp_path / "out"
    summary = prep.prepare(small_faces, out, **SMALL)
    assert sorted(p.name for p in out.iterdir()) == [".fakeaware-output", "summary.json", "test", "train", "val"]
    assert json.loads((out / "summary.json").read_text()) == {k: v for k, v in summary.items() if k != "seconds"}

    samples = read_kryptonite_train(out)
    n_train = summary["train"]["identities"]
    # 12 identities: 20% -> round(2.4) = 2 each for val and test, 8 for train.
    assert (n_train, summary["val"]["identities"], summary["test"]["identities"]) == (8, 2, 2)
    by_identity = Counter(s.identity for s in samples)
    fakes_by_identity = Counter(s.identity for s in samples if s.is_fake)
    assert len(by_identity) == n_train
    assert all(n == 3 + 3 for n in by_identity.values())  # 3 real + 3 fakes each
    assert all(n == 3 for n in fakes_by_identity.values())
    assert sorted(by_identity) == [f"{i:06d}" for i in range(n_train)]
    attacks = Counter(s.attack for s in samples if s.is_fake)
    assert set(attacks) == set(ATTACKS) and max(attacks.values()) - min(attacks.values()) <= 1
    assert all(s.attack == "" for s in samples if not s.is_fake)
    assert summary["train"] == {"identities": n_train, "images": len(samples), "real": 3 * n_train,
                                "fake": 3 * n_train, "fakes_by_attack": dict(sorted(attacks.items())), "unlabelled": 0}
    img = load_image(samples[0].path, 64)
    assert img.shape == (64, 64, 3)
    meta = json.loads((out / "train" / "meta.json").read_text())
    fakes = json.loads((out / "train" / "fakes.json").read_text())
    assert sorted(k for k, v in meta.items() if v == 1) == sorted(fakes)
    for rel, info in fakes.items():
        assert (info["source"] == rel.split("/")[0]) == (info["attack"] == "self-blend")
        assert len(info["inputs"]) == (1 if info["attack"] == "self-blend" else 2)

    # Test asks 8 genuine pairs, but 2 identities x 3 photos have only 2 x C(3,2) = 6 distinct ones.
    for split, made in (("val", SMALL["val_pairs"]), ("test", (6,) + SMALL["test_pairs"][1:])):
        pairs = read_pair_folder(out / split)
        assert [p.pair_id for p in pairs] == [f"{i:08d}" for i in range(len(pairs))]
        types = Counter(p.type for p in pairs)
        assert [types[t] for t in PAIR_TYPES] == list(made)
        assert summary[split]["pairs_by_type"] == dict(zip(PAIR_TYPES, made))
        genuine = {frozenset((p.path_a.read_bytes(), p.path_b.read_bytes())) for p in pairs if p.type == GENUINE}
        assert len(genuine) == types[GENUINE]  # no genuine pair repeated
        for p in pairs:
            assert p.label == int(p.type == GENUINE)
            assert (p.attack in ATTACKS) == (p.type in (FAKE_OF_SAME, FAKE_OF_OTHER))
            assert not np.array_equal(load_image(p.path_a, 64), load_image(p.path_b, 64))


def test_splits_are_identity_disjoint(small_faces, tmp_path):
    out = tmp_path / "out"
    prep.prepare(small_faces, out, **SMALL)
    used = _split_identities(out)
    assert used["train"] and used["val"] and used["test"]
    assert not used["train"] & used["val"]
    assert not used["train"] & used["test"]
    assert not used["val"] & used["test"]
    assert used["train"] | used["val"] | used["test"] == {f"person_{i:02d}" for i in range(12)}


def test_same_seed_same_bytes_any_worker_count(small_faces, tmp_path):
    prep.prepare(small_faces, tmp_path / "one", **SMALL)
    prep.prepare(small_faces, tmp_path / "two", **dict(SMALL, workers=1))
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert one.keys() == two.keys()
    assert all(one[k] == two[k] for k in one)
    prep.prepare(small_faces, tmp_path / "three", **dict(SMALL, seed=1))
    three = _files(tmp_path / "three")
    assert three["train/meta.json"] != one["train/meta.json"] or three["test/pairs.csv"] != one["test/pairs.csv"]


def test_exclude_lfw_fold(small_faces, tmp_path):
    pairs_txt = tmp_path / "pairs.txt"
    pairs_txt.write_text("2\t1\nperson_00\t1\t2\nperson_01\t1\tperson_02\t1\n"
                         "person_03\t1\t3\nperson_04\t1\tperson_05\t2\n")
    out = tmp_path / "out"
    summary = prep.prepare(small_faces, out, exclude_lfw_pairs=pairs_txt, exclude_fold=1, **SMALL)
    fold1 = {"person_00", "person_01", "person_02"}
    used = _split_identities(out)
    assert fold1 <= used["test"]
    assert not fold1 & (used["train"] | used["val"])
    assert summary["excluded"]["identities"] == 3 and summary["excluded"]["placed"] == "test"

    dropped = tmp_path / "dropped"
    prep.prepare(small_faces, dropped, exclude_lfw_pairs=pairs_txt, exclude_fold=1, excluded_to="drop", **SMALL)
    used = _split_identities(dropped)
    assert not fold1 & (used["train"] | used["val"] | used["test"])

    with pytest.raises(prep.PrepareError, match=r"exclude_fold must be in 1\.\.2"):
        prep.prepare(small_faces, tmp_path / "x", exclude_lfw_pairs=pairs_txt, exclude_fold=3, **SMALL)
    with pytest.raises(prep.PrepareError, match="go together"):
        prep.prepare(small_faces, tmp_path / "x", exclude_lfw_pairs=pairs_txt, **SMALL)


def test_size_option_crops_every_image(small_faces, tmp_path):
    out = tmp_path / "out"
    prep.prepare(small_faces, out, **dict(SMALL, size=32))
    for path in list((out / "train" / "images").rglob("*.jpg"))[:10] + list((out / "test").rglob("*.jpg"))[:10]:
        assert cv2.imread(str(path)).shape == (32, 32, 3)


def _huge_png_header() -> bytes:
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("kind", ["truncated", "zero-byte", "text", "huge-header"])
def test_bad_source_image_fails_cleanly(small_faces, tmp_path, capsys, kind):
    bad = small_faces / "person_05" / "person_05_0004.jpg"
    if kind == "truncated":
        data = write_jpeg(tmp_path / "good.jpg", synthetic_face(5, 64)).read_bytes()
        bad.write_bytes(data[: len(data) * 2 // 3])
    elif kind == "zero-byte":
        bad.write_bytes(b"")
    elif kind == "text":
        bad.write_text("hello, I am not a JPEG\n" * 10)
    else:
        bad.write_bytes(_huge_png_header())
    out = tmp_path / "out"
    assert prep.main(["--source", str(small_faces), "--out", str(out), *CLI_SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "person_05_0004.jpg" in err and len(err.splitlines()) == 1
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_refuses_non_empty_out_without_force(small_faces, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert prep.main(["--source", str(small_faces), "--out", str(out), *CLI_SMALL]) == 2  # refused up front
    assert "not empty" in capsys.readouterr().err
    assert _files(out) == {"keep.txt": b"precious"}
    # --force replaces only a folder training.prepare wrote: never a user's own
    assert prep.main(["--source", str(small_faces), "--out", str(out), "--force", *CLI_SMALL]) == 2
    assert "was not written by this tool" in capsys.readouterr().err and _files(out) == {"keep.txt": b"precious"}
    (out / "keep.txt").unlink()
    assert prep.main(["--source", str(small_faces), "--out", str(out), *CLI_SMALL]) == 0
    assert prep.main(["--source", str(small_faces), "--out", str(out), "--force", *CLI_SMALL]) == 0
    assert (out / "summary.json").is_file() and (out / ".fakeaware-output").read_text() == "training.prepare\n"
    assert "train:" in capsys.readouterr().out
    assert _leftovers(tmp_path) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prep.main(["--source", str(small_faces), "--out", str(empty), *CLI_SMALL]) == 0


def test_interrupted_run_leaves_nothing(small_faces, tmp_path, monkeypatch):
    calls = []
    real_render = prep._Renderer.render

    def flaky(self, job, root):
        calls.append(job)
        if len(calls) == 20:
            raise KeyboardInterrupt
        return real_render(self, job, root)

    monkeypatch.setattr(prep._Renderer, "render", flaky)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prep.prepare(small_faces, out, **dict(SMALL, workers=1))
    assert not out.exists() and _leftovers(tmp_path) == []


def test_bad_arguments(small_faces, tmp_path, capsys):
    with pytest.raises(prep.PrepareError, match="overlap"):
        prep.prepare(small_faces, small_faces / "out", **SMALL)
    with pytest.raises(DataError, match="no such folder"):
        prep.prepare(tmp_path / "missing", tmp_path / "out", **SMALL)
    with pytest.raises(prep.PrepareError, match="fakes_per_identity"):
        prep.prepare(small_faces, tmp_path / "out", **dict(SMALL, fakes_per_identity=-1))
    with pytest.raises(SystemExit) as exc:
        prep.main(["--source", str(small_faces), "--out", str(tmp_path / "o"), "--val-pairs", "1,2,3"])
    assert exc.value.code == 2 and "expected 4 counts" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        prep.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--source", "--out", "--seed", "--fakes-per-identity", "--force", "--min-images", "--val-fraction",
                 "--test-fraction", "--val-pairs", "--test-pairs", "--exclude-lfw-pairs", "--exclude-fold",
                 "--excluded-to", "--size", "--jpeg-quality", "--workers", "--no-progress"):
        assert flag in text
    # Every keyword of prepare() has a flag (CLI = function).
    import inspect
    for name in inspect.signature(prep.prepare).parameters:
        assert ("--" + name.replace("_", "-")) in text or name == "progress"


def test_single_image_identities_unused_by_default(tmp_path):
    root = make_identity_folders(tmp_path / "faces", 10, 2)
    write_jpeg(root / "solo" / "solo_0001.jpg", synthetic_face(99, 64))
    out = tmp_path / "out"
    summary = prep.prepare(root, out, **SMALL)
    assert summary["identities"] == {"source": 11, "usable": 10, "unused": 1}
    assert "solo" not in set().union(*_split_identities(out).values())


def test_unlabelled_copies_lone_identities_but_never_excluded_ones(tmp_path):
    root = make_identity_folders(tmp_path / "faces", 10, 2)
    for name in ("solo", "excluded_solo"):
        write_jpeg(root / name / f"{name}_0001.jpg", synthetic_face(len(name), 64))
    pairs_txt = tmp_path / "pairs.txt"
    pairs_txt.write_text("1\t1\nperson_00\t1\t2\nperson_01\t1\texcluded_solo\t1\n")
    out = tmp_path / "out"
    # align="none": the copy is compared with the photo itself (the synthetic face is found
    # on the detector's retry, and alignment would move it).
    summary = prep.prepare(root, out, unlabelled=True, exclude_lfw_pairs=pairs_txt, exclude_fold=1, align="none",
                           **SMALL)
    lone = sorted((out / "train" / "unlabelled").iterdir())
    assert summary["train"]["unlabelled"] == 1 and [p.name for p in lone] == ["000000.jpg"]
    solo = load_image(root / "solo" / "solo_0001.jpg", 64).astype(int)
    assert np.abs(load_image(lone[0], 64).astype(int) - solo).mean() < 3  # the solo photo (JPEG re-encoded)
    # The unlabelled photos do not change the labelled splits.
    plain = tmp_path / "plain"
    prep.prepare(root, plain, exclude_lfw_pairs=pairs_txt, exclude_fold=1, align="none", **SMALL)
    assert {k: v for k, v in _files(out).items() if "unlabelled" not in k and k != "summary.json"} == \
        {k: v for k, v in _files(plain).items() if k != "summary.json"}
    assert "unlabelled" in prep.format_summary(summary)


@pytest.mark.data
def test_real_lfw_subset(face_data, tmp_path):
    """A few real LFW identities end to end: fakes differ from every real photo of their identity."""
    lfw = face_data / "lfw-deepfunneled"
    src = tmp_path / "lfw"
    src.mkdir()
    names = sorted(p.name for p in lfw.iterdir() if len(list(p.iterdir())) >= 3)[:15]
    for name in names:
        (src / name).symlink_to(lfw / name)
    out = tmp_path / "out"
    summary = prep.prepare(src, out, **dict(SMALL, fakes_per_identity=3))
    samples = read_kryptonite_train(out)
    assert summary["train"]["fake"] == 3 * summary["train"]["identities"]
    fake = next(s for s in samples if s.is_fake and s.attack == "face-swap")
    reals = [load_image(s.path, 250) for s in samples if s.identity == fake.identity and not s.is_fake]
    img = load_image(fake.path, 250)
    assert img.shape == (250, 250, 3)
    assert min(np.abs(img.astype(int) - r.astype(int)).mean() for r in reals) > 2
    assert _leftovers(tmp_path) == []
    assert {IMPOSTOR, GENUINE} <= {p.type for p in read_pair_folder(out / "test")}


@pytest.mark.data
def test_align_face_puts_every_photo_on_the_canonical_frame(face_data, tmp_path):
    """Photos framed differently (LFW padded off-centre) come out with the face where the attacks expect it."""
    from engine.align import template_points
    from engine.detect import open_detector

    lfw = face_data / "lfw-deepfunneled"
    src = tmp_path / "padded"
    names = sorted(p.name for p in lfw.iterdir() if len(list(p.iterdir())) >= 3)[:10]
    for i, name in enumerate(names):
        for f in sorted((lfw / name).iterdir())[:3]:
            canvas = np.full((420, 360, 3), 128, np.uint8)
            canvas[30 + 10 * i: 280 + 10 * i, 80:330] = load_image(f, 250)
            write_jpeg(src / name / f.name, canvas)
    out = tmp_path / "out"
    summary = prep.prepare(src, out, **dict(SMALL, val_pairs=(2, 2, 2, 1), test_pairs=(2, 2, 2, 1)))
    assert summary["settings"]["align"] == "face" and summary["unaligned"] == 0
    target = template_points("lfw-centre", prep.ALIGN_FRAME, 1.0)
    detector = open_detector()
    reals = [s for s in read_kryptonite_train(out) if not s.is_fake]
    for s in reals[:8]:
        img = load_image(s.path, 250)
        assert img.shape == (250, 250, 3)
        eyes = detector.detect(img)[0].keypoints[:2]
        assert np.abs(eyes - target[:2]).max() < 8, (s.path, eyes, target[:2])
    detector.close()


# ------------------------------------------------------------- up-front refusals

@pytest.mark.parametrize("out", [".", "..", "./"])
def test_refuses_the_current_directory_or_a_parent_before_any_work(small_faces, tmp_path, monkeypatch, capsys, out):
    cwd = tmp_path / "work" / "here"
    cwd.mkdir(parents=True)
    (cwd / "precious.txt").write_text("keep me")
    monkeypatch.chdir(cwd)
    assert prep.main(["--source", str(small_faces), "--out", out, "--force", *CLI_SMALL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {Path(out)}: is the current directory or one of its parents")
    assert (cwd / "precious.txt").read_text() == "keep me"
    assert _leftovers(cwd) == [] and _leftovers(cwd.parent) == [] and _leftovers(tmp_path) == []


def test_refuses_an_ancestor_of_the_source(small_faces, tmp_path, capsys):
    assert prep.main(["--source", str(small_faces), "--out", str(small_faces.parent), "--force", *CLI_SMALL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "must not overlap the source" in err[0]
    assert small_faces.is_dir()


@pytest.mark.parametrize("size", ["100000", "4097", "8", "-5"])
def test_refuses_an_unreasonable_size_before_any_work(small_faces, tmp_path, capsys, size):
    out = tmp_path / "out"
    assert prep.main(["--source", str(small_faces), "--out", str(out), "--size", size, *CLI_SMALL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: size must be 0 (keep) or in 16..4096, got {size}"]
    assert not out.exists() and _leftovers(tmp_path) == []


def test_removes_the_build_folder_of_a_killed_run(small_faces, tmp_path):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        for name in (f".out.partial-{dead.pid}", f".out.partial-{live.pid}", ".out.partial-notapid",
                     f".other.partial-{dead.pid}"):
            (tmp_path / name / "train").mkdir(parents=True)
        prep.prepare(small_faces, tmp_path / "out", **SMALL)
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == sorted(
            [f".out.partial-{live.pid}", ".out.partial-notapid", f".other.partial-{dead.pid}"])
    finally:
        live.kill()
        live.wait()


def test_help_says_what_is_refused_and_cleaned(capsys):
    with pytest.raises(SystemExit):
        prep.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "16..4096" in text and "current directory" in text
    assert ".OUT.partial-<pid>" in text and "removed by the next run" in text
