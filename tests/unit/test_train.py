"""End-to-end training on a tiny synthetic dataset: loss, files, exact resume, options, torchrun."""
from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import synthetic_face, write_jpeg
from engine.contract import ModelConfig
from nets.checkpoint import load_model
from training.config import load_config
from training.distill import save_teacher
from nets.model import get_model
from training.train import TrainError, load_init, lr_at, rng_state, set_rng_state, train

REPO = Path(__file__).resolve().parents[2]
N_IDS, N_REAL, N_FAKE = 8, 4, 2


def _face(ident: int, k: int, fake: bool = False) -> np.ndarray:
    img = synthetic_face(ident * 1000, size=64)
    rng = np.random.default_rng(ident * 100 + k + (50 if fake else 0))
    img = np.roll(img, tuple(int(s) for s in rng.integers(-3, 4, 2)), axis=(0, 1))
    if fake:  # another face's centre pasted into A's: a crude face swap that still looks like A around it
        img = img.copy()
        img[20:44, 14:50] = synthetic_face(ident * 1000 + 7, size=64)[20:44, 14:50]
    return img


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """The layout training.prepare writes: train/ (meta.json, fakes.json, images/), val/ (pairs)."""
    root = tmp_path_factory.mktemp("fakeaware")
    meta, fakes = {}, {}
    for ident in range(N_IDS):
        for k in range(N_REAL + N_FAKE):
            fake = k >= N_REAL
            rel = f"{ident:05d}/{k}.jpg"
            write_jpeg(root / "train" / "images" / rel, _face(ident, k, fake))
            meta[rel] = int(fake)
            if fake:
                fakes[rel] = {"attack": "face-swap", "source": f"{ident:05d}"}
    (root / "train" / "meta.json").write_text(json.dumps(meta))
    (root / "train" / "fakes.json").write_text(json.dumps(fakes))
    rows = []
    for i, ident in enumerate(range(20, 26)):
        for j, kind in enumerate(("genuine", "impostor", "fake-of-same")):
            pid = f"{i * 3 + j:08d}"
            other = {"genuine": _face(ident, 1), "impostor": _face(ident + 10, 1),
                     "fake-of-same": _face(ident, 2, fake=True)}[kind]
            write_jpeg(root / "val" / "images" / pid / "0.jpg", _face(ident, 0))
            write_jpeg(root / "val" / "images" / pid / "1.jpg", other)
            rows.append([pid, int(kind == "genuine"), kind, "face-swap" if kind == "fake-of-same" else ""])
    with open(root / "val" / "pairs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["pair_id", "label", "type", "attack"])
        writer.writerows(rows)
    return root


def tiny(dataset: Path, run_dir: Path, *overrides: str):
    return load_config(REPO / "configs" / "tiny.yaml",
                       [f"data_dir={dataset}", f"output_dir={run_dir}", *overrides])


def test_lr_schedule():
    assert lr_at(0, 100, 10, 1.0, 0.01) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0, 0.01) == pytest.approx(1.0)
    assert lr_at(10, 100, 10, 1.0, 0.01) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0, 0.01) == pytest.approx(0.505)
    assert lr_at(100, 100, 10, 1.0, 0.01) == pytest.approx(0.01)
    assert lr_at(0, 100, 0, 1.0, 0.0) == pytest.approx(1.0)


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.save(rng_state(), tmp_path / "rng.pt")
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_end_to_end_training_reduces_the_loss(dataset, tmp_path):
    run = tmp_path / "run"
    no_augment = [f"augment.{k}=0" for k in ("flip_p", "affine_p", "color_p", "grayscale_p", "jpeg_p", "blur_p")]
    summary = train(tiny(dataset, run, "epochs=6", "steps_per_epoch=4", "lr=5e-3", *no_augment), progress=False)
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(7))
    assert rows[0]["val_eer"] is not None and "loss" not in rows[0]  # epoch 0: the untrained model
    assert all(r["val_eer"] is not None and r["val_eer_real"] is not None and r["val_eer_fake"] is not None
               for r in rows)
    losses = [r["loss"] for r in rows[1:]]
    assert losses[-1] < 0.5 * losses[0], losses
    assert min(r["val_eer"] for r in rows[1:]) < rows[0]["val_eer"]  # better than untrained on held-out people
    assert all(r["img_s"] > 0 for r in rows[1:])
    with open(run / "log.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == list(range(7))

    # best checkpoint = lowest val EER, with its threshold; it loads through the contract
    best = min(rows, key=lambda r: (r["val_eer"], r["epoch"]))
    assert summary["best_epoch"] == rows[-1]["best_epoch"] == best["epoch"]
    cfg = ModelConfig.load(run / "model.json")
    assert cfg.threshold == pytest.approx(best["val_threshold"]) and cfg.extra["epoch"] == best["epoch"]
    model = load_model(run)
    with torch.no_grad():
        emb = model(torch.zeros(2, 32, 32, 3, dtype=torch.uint8))
    assert emb.shape == (2, 16)
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["progress"]["epoch"] == 7 and state["progress"]["global_step"] == 24
    assert load_config(run / "config.yaml").epochs == 6


@pytest.mark.parametrize("stop_after", [3, 4], ids=["epoch-boundary", "mid-epoch"])
def test_resume_reproduces_the_uninterrupted_run(dataset, tmp_path, stop_after):
    overrides = ("epochs=2", "steps_per_epoch=3", "dropout=0.3", "checkpoint_every=1")
    whole = tmp_path / "whole"
    train(tiny(dataset, whole, *overrides), progress=False)
    parts = tmp_path / "parts"
    first = train(tiny(dataset, parts, *overrides), stop_after_steps=stop_after, progress=False)
    assert first["stopped"] and first["global_step"] == stop_after
    # the resumed process starts from a different RNG state: resume must restore it
    torch.manual_seed(12345), random.seed(5), np.random.seed(5)
    second = train(tiny(dataset, parts, *overrides, "threads=1"), resume=True, progress=False)
    assert not second["stopped"] and second["global_step"] == 6

    a = torch.load(whole / "last.pt", weights_only=True)
    b = torch.load(parts / "last.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])
    assert (whole / "model.safetensors").read_bytes() == (parts / "model.safetensors").read_bytes()
    rows_a = [json.loads(line) for line in (whole / "log.jsonl").read_text().splitlines()]
    rows_b = [json.loads(line) for line in (parts / "log.jsonl").read_text().splitlines()]
    timing = ("img_s", "train_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in rows_a] == \
           [{k: v for k, v in r.items() if k not in timing} for r in rows_b]


def test_run_directory_guards(dataset, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(TrainError, match="nothing to resume"):
        train(tiny(dataset, run), resume=True, progress=False)
    train(tiny(dataset, run, "epochs=1", "steps_per_epoch=1"), progress=False)
    with pytest.raises(TrainError, match="already holds a run"):
        train(tiny(dataset, run, "epochs=1", "steps_per_epoch=1"), progress=False)
    with pytest.raises(TrainError, match="changed: lr"):
        train(tiny(dataset, run, "epochs=1", "steps_per_epoch=1", "lr=0.5"), resume=True, progress=False)


def test_all_options_together(dataset, tmp_path):
    """Aux ArcFace head, semi-hard mining, SGD, clipping, bf16 autocast, distillation, no validation."""
    teacher = tmp_path / "teacher.npz"
    meta = json.loads((dataset / "train" / "meta.json").read_text())
    reals = sorted(k for k, v in meta.items() if v == 0)
    save_teacher(teacher, reals, np.random.default_rng(0).normal(size=(len(reals), 7)))
    run = tmp_path / "run"
    summary = train(tiny(dataset, run, "epochs=2", "steps_per_epoch=2", "aux_head=arcface", "mining=semi_hard",
                         "optimizer=sgd", "lr=0.05", "grad_clip=1", "precision=bf16", "fake_fake=positive",
                         f"teacher={teacher}", "distill_weight=1", "validate=false"), progress=False)
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert all(r["aux"] > 0 and r["distill"] > 0 for r in rows[1:])
    assert all(r["loss"] == pytest.approx(r["triplet"] + r["aux"] + r["distill"], rel=1e-5) for r in rows[1:])
    assert summary["best_epoch"] == 2
    cfg = ModelConfig.load(run / "model.json")
    assert cfg.threshold is None and cfg.extra["epoch"] == 2
    load_model(run)  # the shipped model has no auxiliary head weights


def test_init_loads_a_torchvision_state_dict(tmp_path):
    source = get_model(ModelConfig(arch="resnet18", input_size=32, embedding_dim=8))
    state = {k: v + 1.0 if v.dtype.is_floating_point else v for k, v in source.backbone.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    torch.save(state, tmp_path / "resnet18.pth")
    target = get_model(ModelConfig(arch="resnet18", input_size=32, embedding_dim=8))
    report = load_init(target, str(tmp_path / "resnet18.pth"))
    assert report["unexpected"] == []
    torch.testing.assert_close(target.backbone.conv1.weight, source.backbone.conv1.weight + 1.0)
    (tmp_path / "bad.pth").write_bytes(b"nope")
    with pytest.raises(TrainError, match="bad.pth: not a readable state dict"):
        load_init(target, str(tmp_path / "bad.pth"))
    wrong = get_model(ModelConfig(arch="resnet50", input_size=32, embedding_dim=8)).backbone.state_dict()
    torch.save(wrong, tmp_path / "resnet50.pth")
    with pytest.raises(TrainError, match="resnet50.pth"):
        load_init(target, str(tmp_path / "resnet50.pth"))


def test_realness_training_logs_its_loss_and_ships_the_coordinate(dataset, tmp_path):
    run = tmp_path / "run"
    train(tiny(dataset, run, "epochs=1", "steps_per_epoch=2", "realness_weight=1.0", "realness_loss=0.5"),
          progress=False)
    row = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()][-1]
    assert row["realness"] > 0
    assert row["loss"] == pytest.approx(row["triplet"] + 0.5 * row["realness"], rel=1e-5)
    model = load_model(run)
    assert model.config.realness_weight == 1.0 and model.realness is not None


def test_init_from_a_run_fine_tunes_what_fits(dataset, tmp_path):
    """A run's weights seed a model with a realness head: the trunk loads, resized/new layers start fresh."""
    stage1 = tmp_path / "stage1"
    train(tiny(dataset, stage1, "epochs=1", "steps_per_epoch=1"), progress=False)
    source = load_model(stage1)
    target = get_model(ModelConfig(**{**source.config.to_dict(), "realness_weight": 1.0, "threshold": None,
                                      "extra": {}}))
    report = load_init(target, str(stage1))
    torch.testing.assert_close(target.backbone.conv1.weight, source.backbone.conv1.weight)
    assert "head.fc.weight" in report["missing"] and "realness.fc.weight" in report["missing"]
    assert report["unexpected"] == ["head.bn_out.bias", "head.bn_out.running_mean", "head.bn_out.running_var",
                                    "head.bn_out.weight", "head.fc.weight"]
    run = tmp_path / "stage2"
    train(tiny(dataset, run, "epochs=1", "steps_per_epoch=1", "realness_weight=1.0", f"init={stage1}"),
          progress=False)
    with pytest.raises(TrainError, match="neither a weights file nor a run directory"):
        train(tiny(dataset, tmp_path / "x", f"init={tmp_path / 'empty'}"), progress=False)


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_one_epoch(dataset, tmp_path):
    # Loader workers are exercised here, in child processes: torch's DataLoader installs a
    # process-wide Python SIGCHLD handler, which must not leak into the test process.
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "training.train", "--config", str(REPO / "configs" / "tiny.yaml"), f"data_dir={dataset}",
           f"output_dir={run}", "epochs=1", "steps_per_epoch=0", "workers=1", "--no-progress"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["sampler"]["world_size"] == 2
    assert len(state["rng"]) == 2  # one RNG state per process
    # auto steps: 8 identities // (P=4 x 2 ranks) = 1 step per rank, 2 x 16 images in all
    assert state["progress"]["global_step"] == 1
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and rows[1]["loss"] > 0 and rows[1]["val_eer"] is not None
    # the optimizer stepped on gradients averaged over both processes
    assert any(st["exp_avg"].abs().sum() > 0 for st in state["optimizer"]["state"].values())


class _CentreDetector:
    """Stands in for BlazeFace on the synthetic faces: one face with the lfw-centre keypoints
    (so the aligned crop is the centre crop), none in a black image."""

    def detect(self, rgb):
        from engine.align import template_points
        from engine.detect import Face

        if rgb.mean() < 5:
            return []
        h, w = rgb.shape[:2]
        side = min(h, w) / 2
        pts = template_points("lfw-centre", 112) * side / 112 + ((w - side) / 2, (h - side) / 2)
        kp = np.vstack([pts, pts[:2]])
        return [Face((0.0, 0.0, float(w), float(h)), 0.9, kp)]

    def close(self):
        pass


def test_feature_distillation_on_aligned_faces_with_unlabelled_photos(dataset, tmp_path, monkeypatch, capsys):
    """Teacher run on each view, unlabelled photos in every batch, faceless images left out, exact resume."""
    import shutil

    from test_teachers import write_fake_dat
    from training.teachers import dlib_resnet

    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    meta = json.loads((data / "train" / "meta.json").read_text())
    write_jpeg(data / "train" / "images" / "00000" / "9.jpg", np.zeros((64, 64, 3), np.uint8))
    meta["00000/9.jpg"] = 0
    (data / "train" / "meta.json").write_text(json.dumps(meta))
    extra = tmp_path / "extra"
    for i in range(5):
        write_jpeg(extra / f"{i}.jpg", synthetic_face(777 + i, size=64))
    write_jpeg(extra / "black.jpg", np.zeros((64, 64, 3), np.uint8))
    dat = tmp_path / "teacher.dat"
    write_fake_dat(dat, np.random.default_rng(1))
    monkeypatch.setattr(dlib_resnet, "default_weights", lambda: dat)
    monkeypatch.setattr("engine.detect.open_detector", lambda *a, **k: _CentreDetector())

    opts = ["align=face", "align_template=lfw-centre", "feature_teacher=dlib", "feature_weight=2",
            f"extra_images={extra}", "extra_per_batch=3", "epochs=2", "steps_per_epoch=2"]
    full = tmp_path / "full"
    train(tiny(data, full, *opts), progress=False)
    err = capsys.readouterr().err
    assert "extra images: 5 with a face, 1 skipped" in err
    assert "left out 1 training image(s) with no face found" in err
    row = [json.loads(line) for line in (full / "log.jsonl").read_text().splitlines()][-1]
    assert 0 < row["feature"] < 2
    assert row["loss"] == pytest.approx(row["triplet"] + 2 * row["feature"], rel=1e-5)
    state = torch.load(full / "last.pt", weights_only=True)
    assert state["model"]["projection.teacher_mean"].abs().sum() > 0
    assert ModelConfig.load(full / "model.json").align == "face"

    part = tmp_path / "part"
    train(tiny(data, part, *opts), stop_after_steps=3, progress=False)
    train(tiny(data, part, *opts), resume=True, progress=False)
    resumed = torch.load(part / "last.pt", weights_only=True)["model"]
    for key, value in state["model"].items():
        assert torch.equal(resumed[key], value), key


def test_device_loader_trains_and_resumes_exactly_on_the_cpu(dataset, tmp_path):
    """The GPU path's data (images on the device, augmented there) runs the same code on the CPU."""
    opts = ["loader=device", "epochs=2", "steps_per_epoch=3", "lr=5e-3"]
    full = tmp_path / "full"
    train(tiny(dataset, full, *opts), progress=False)
    rows = [json.loads(line) for line in (full / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in rows[1:])
    part = tmp_path / "part"
    train(tiny(dataset, part, *opts), stop_after_steps=4, progress=False)
    train(tiny(dataset, part, *opts), resume=True, progress=False)
    a = torch.load(full / "last.pt", weights_only=True)["model"]
    b = torch.load(part / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------- damaged checkpoints, orphans, refusals, organisers' data

def _bare_data(tmp_path) -> Path:
    """Enough for check_inputs (train/meta.json present); --resume fails on last.pt before reading it."""
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "train" / "meta.json").write_text("{}")
    return data


class _Mkdir:
    """A pickle that would create a folder when loaded unsafely (a disallowed global: os.mkdir)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def _damage(kind: str, last: Path, marker: Path) -> None:
    good = {"model": {"w": torch.zeros(4)}, "optimizer": {}, "scaler": {}, "sampler": {}, "progress": {},
            "rng": [], "config": {}}
    if kind == "truncated":
        torch.save(good, last)
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    elif kind == "random bytes":
        last.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "empty":
        last.write_bytes(b"")
    elif kind == "disallowed global":
        torch.save({**good, "model": _Mkdir(marker)}, last)
    elif kind == "plain pickle":
        import pickle

        last.write_bytes(pickle.dumps(_Mkdir(marker), protocol=4))
    elif kind == "not a checkpoint":
        torch.save({"state_dict": {"w": torch.zeros(1)}}, last)
    else:  # a checkpoint whose config is not a valid config
        torch.save({**good, "config": {"lr": "fast"}}, last)


@pytest.mark.parametrize("kind", ["truncated", "random bytes", "empty", "disallowed global", "plain pickle",
                                  "not a checkpoint", "bad config"])
def test_resume_from_a_damaged_last_pt_is_one_line_naming_it(tmp_path, capsys, kind):
    from training.train import main

    data, run = _bare_data(tmp_path), tmp_path / "run"
    run.mkdir()
    marker = tmp_path / "pwned"
    _damage(kind, run / "last.pt", marker)
    code = main(["--resume", f"data_dir={data}", f"output_dir={run}", "validate=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"error: {run / 'last.pt'}: "), err
    assert "weights_only" not in err[0] and "Traceback" not in err[0]
    assert not marker.exists()  # nothing in the file was run


def test_output_dir_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    from training.train import main

    data = _bare_data(tmp_path)
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    for output_dir in (taken, taken / "run"):
        assert main([f"data_dir={data}", f"output_dir={output_dir}", "validate=false"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: output_dir: {taken} exists and is not a folder"), err
    assert taken.read_text() == "not a folder"


def test_the_next_run_removes_a_killed_runs_temporaries(tmp_path, capsys):
    from training.train import main

    data, run = _bare_data(tmp_path), tmp_path / "run"
    (data / "train" / "meta.json").write_text("[]")  # the run stops at reading the data, after the clean-up
    run.mkdir()
    orphans = [".last.pt.tmp", ".log.jsonl.tmp", ".log.csv.tmp", ".model.safetensors.tmp", ".model.json.tmp",
               ".config.yaml.tmp"]
    kept = [".last.pt.tmp.bak", ".last.pt.tmpx", "last.pt.tmp", "notes.tmp", ".other.tmp"]
    for name in orphans + kept:
        (run / name).write_bytes(b"partial")
    assert main([f"data_dir={data}", f"output_dir={run}", "validate=false"]) == 2
    assert "meta.json" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir() if p.name != "config.yaml") == sorted(kept)


def test_help_says_the_next_run_removes_temporaries(capsys):
    from training.train import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ".last.pt.tmp" in text and "removed when the next run starts" in text


def test_missing_val_pairs_points_to_the_val_csv_converter(tmp_path):
    from training.train import check_inputs

    data = _bare_data(tmp_path)
    (data / "val.csv").write_text("label,path,split,is_query,is_gallery\n")
    with pytest.raises(TrainError, match=r"val/pairs\.csv: no such file .*engine\.datasets kryptonite-val"):
        check_inputs(load_config(None, [f"data_dir={data}"]), tmp_path / "run", resume=False)


def test_trains_and_validates_on_the_organisers_layout(tmp_path):
    """train/meta.json with JSON booleans and 6-digit folders, train.csv with empty flags, val.csv with
    1 query + 2 gallery images per identity: converted once, then training validates on it."""
    from engine.datasets import main as datasets_main

    root = tmp_path / "kryptonite"
    meta, train_rows, val_rows = {}, [], []
    for ident in range(N_IDS + 4):
        held_out = ident >= N_IDS  # val identities (their images are in train/images and meta.json too)
        for k in range(3 if held_out else N_REAL + N_FAKE):
            fake = not held_out and k >= N_REAL
            rel = f"{ident:06d}/{k}.jpg"
            write_jpeg(root / "train" / "images" / rel, _face(ident, k, fake))
            meta[rel] = fake
            row = f"{ident},train/images/{rel}"
            if held_out:
                val_rows.append(f"{row},val,{k == 0},{k > 0}")
            else:
                train_rows.append(f"{row},train,,")
    (root / "train" / "meta.json").write_text(json.dumps(meta))
    header = "label,path,split,is_query,is_gallery\n"
    (root / "train.csv").write_text(header + "\n".join(train_rows) + "\n")
    (root / "val.csv").write_text(header + "\n".join(val_rows) + "\n")
    assert datasets_main(["kryptonite-val", str(root / "val.csv"), "--root", str(root), "--out",
                          str(root / "val")]) == 0
    run = tmp_path / "run"
    summary = train(tiny(root, run, "epochs=1", "steps_per_epoch=2"), progress=False)
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert all(r["val_eer"] is not None for r in rows) and summary["best_eer"] is not None


def _dfdc_folder(root: Path, n: int = 6) -> Path:
    """DFDC's layout: real/<video>.jpg, fake/<video>.jpg and faces.csv linking each fake to its source."""
    rows = ["file,label,made_from"]
    for i in range(n):
        write_jpeg(root / "real" / f"r{i}.jpg", _face(40 + i, 0))
        write_jpeg(root / "fake" / f"f{i}.jpg", _face(40 + i, 1, fake=True))
        rows += [f"real/r{i}.jpg,real,", f"fake/f{i}.jpg,fake,real/r{i}.jpg"]
    (root / "faces.csv").write_text("\n".join(rows) + "\n")
    return root


def test_dlib_recipe_starts_as_dlib_and_learns_realness_from_real_deepfakes(dataset, tmp_path, monkeypatch,
                                                                             capsys):
    """The bundled model's recipe end to end on synthetic data: dlib_resnet29 initialised from a dlib
    .dat (here random weights in dlib's layout), direct feature distillation (zero at the start: the
    student is the teacher), DFDC-style fake + source rows, held-out realness AUC, slower trunk."""
    from nets.dlib_resnet import PIXEL_MEAN
    from test_teachers import write_fake_dat
    from training.teachers import dlib_resnet

    dat = tmp_path / "dlib.dat"
    write_fake_dat(dat, np.random.default_rng(2), mean=PIXEL_MEAN)
    monkeypatch.setattr(dlib_resnet, "default_weights", lambda: dat)
    monkeypatch.setattr("engine.detect.open_detector", lambda *a, **k: _CentreDetector())
    dfdc = _dfdc_folder(tmp_path / "dfdc", n=10)
    run = tmp_path / "run"
    config = tiny(dataset, run, "arch=dlib_resnet29", "init=dlib", "input_size=150", "embedding_dim=129",
                  "align=face", "align_template=dlib-chip", "realness_weight=3", "feature_teacher=dlib",
                  "feature_weight=5", "feature_projection=false", f"realness_data={dfdc}", "realness_per_batch=4",
                  "realness_val_share=0.3", "trunk_lr_scale=0.1", "epochs=1", "steps_per_epoch=1")
    result = train(config, progress=False)
    err = capsys.readouterr().err
    assert "init: loaded dlib" in err and "realness AUC" in err
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert 0.0 <= rows[0]["val_realness_auc"] <= 1.0 and "val_realness_auc" in rows[-1]
    assert rows[-1]["val_score"] == pytest.approx((rows[-1]["val_eer"] + rows[-1]["val_realness_eer"]) / 2)
    assert rows[-1]["loss"] == pytest.approx(rows[-1]["triplet"] + 5 * rows[-1]["feature"]
                                             + rows[-1]["realness"], rel=1e-5)
    assert abs(rows[-1]["feature"]) < 1e-5  # measured before the first step: the student is the teacher
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["model"]["projection.teacher_mean"].abs().sum() > 0  # the centring the head started with
    assert result["global_step"] == 1
    model = load_model(run)
    assert model.config.input_size == 150 and model.config.pixel_std == (256.0, 256.0, 256.0)
    assert "CC0" in model.config.extra["initial_weights"]


def test_dlib_init_reproduces_the_teacher_centred(tmp_path, monkeypatch):
    """init=dlib: the identity vector is dlib's descriptor minus the images' mean, normalised."""
    from nets.dlib_resnet import PIXEL_MEAN
    from test_teachers import write_fake_dat
    from training.teachers import dlib_resnet
    from training.train import load_dlib_init

    dat = tmp_path / "dlib.dat"
    write_fake_dat(dat, np.random.default_rng(3), mean=PIXEL_MEAN)
    monkeypatch.setattr(dlib_resnet, "default_weights", lambda: dat)
    model = get_model(ModelConfig(arch="dlib_resnet29", input_size=150, embedding_dim=129, realness_weight=1.0,
                                  pixel_mean=PIXEL_MEAN, pixel_std=(256.0, 256.0, 256.0)))
    images = torch.randint(0, 256, (6, 150, 150, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    report = load_dlib_init(model, images)
    assert report["missing"] and all(k.startswith("realness.") for k in report["missing"])
    with torch.no_grad():
        descriptors = dlib_resnet.DlibResNet(dat)(images)
        identity, _ = model.eval().parts(images)
    expected = torch.nn.functional.normalize(descriptors - descriptors.mean(0), dim=1)
    torch.testing.assert_close(identity, expected, rtol=0, atol=1e-4)
    wrong = get_model(ModelConfig(arch="dlib_resnet29", input_size=150, embedding_dim=128))  # contract's 127.5 means
    with pytest.raises(TrainError, match="pixel mean"):
        load_dlib_init(wrong, images)


def test_trunk_runs_at_its_own_learning_rate(dataset, tmp_path):
    from training.train import Trainee, build_optimizer

    config = tiny(dataset, tmp_path / "run", "trunk_lr_scale=0.1", "realness_weight=1")
    net = Trainee(get_model(config.model_config()))
    groups = build_optimizer(config, net).param_groups
    trunk = {id(p) for part in (net.embedder.backbone, net.embedder.head) for p in part.parameters()}
    for group in groups:
        assert {id(p) in trunk for p in group["params"]} <= {group["lr_scale"] == 0.1}
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
