"""Accuracy gates and the one-command conversion: output folder, report, threshold, atomic failure."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import synthetic_face, write_jpeg
from convert import ConversionError, convert_checkpoint
from convert.__main__ import main
from convert.calibration import CalibrationError, make_manifest
from convert.gate import GateError, check_gates, compare_embeddings, format_table, verification_metrics
from engine.contract import ContractError, ModelConfig, check_onnx
from engine.metrics import equal_error_rate
from tiny_model import random_model
from nets.checkpoint import save_model

pytest.importorskip("modelopt.onnx.quantization", reason="ModelOpt's ONNX tools: pip install -e '.[convert]'")

# crop_fraction < 1: calibration and validation images must be cropped as in training and deployment.
CONFIG = ModelConfig(arch="resnet18", input_size=32, embedding_dim=16, threshold=0.25, crop_fraction=0.75,
                     extra={"epochs": 3})


# ------------------------------------------------------------------ pure parts

def test_compare_embeddings_known_values():
    a = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    b = np.array([[1.0, 0.0], [0.6, 0.8]], np.float32)
    r = compare_embeddings(a, b)
    assert r["cos_min"] == pytest.approx(0.8) and r["cos_mean"] == pytest.approx(0.9)
    assert r["max_abs"] == pytest.approx(0.6) and r["n"] == 2
    flipped = b.copy()
    flipped[1, -1] = -flipped[1, -1]
    assert compare_embeddings(b, flipped, realness=True)["realness_agree"] == pytest.approx(0.5)
    assert "realness_agree" not in compare_embeddings(b, flipped)
    nan = compare_embeddings(a, np.full_like(a, np.nan))
    assert not np.isfinite(nan["cos_min"])
    with pytest.raises(ValueError, match="shapes differ"):
        compare_embeddings(a, b[:1])


def _variant(eer, cos=0.999):
    return {"embedding": {"cos_min": cos, "cos_mean": cos, "max_abs": 0.01},
            "verification": {"eer": eer} if eer is not None else None}


def test_check_gates():
    ref = {"eer": 0.100}
    variants = {"fp32": _variant(0.100), "fp16": _variant(0.104), "int8": _variant(0.106)}
    failures = check_gates(variants, ref, tolerance=0.005)
    assert len(failures) == 1 and failures[0].startswith("int8:") and "0.0060 > tolerance 0.005" in failures[0]
    assert variants["fp16"]["eer_drift"] == pytest.approx(0.004)
    assert check_gates(variants, ref, tolerance=0.01) == []
    assert [f[:5] for f in check_gates(variants, ref, tolerance=0.0)] == ["fp16:", "int8:"]
    # no validation pairs: only the worst-image cosine floor (default 0.98, None = off) applies
    no_pairs = {"int8": _variant(None, cos=0.95)}
    assert check_gates(no_pairs, {}, 0.0, min_cosine=None) == []
    assert check_gates(no_pairs, {}, 0.0)[0].startswith("int8: min cosine to PyTorch 0.950000 < 0.98 (ONNX Runtime)")
    # the OpenVINO pass is held to the same floor, and the realness sign must agree on >= 99 % of images
    ov = {"int8": {**_variant(0.1), "openvino": {"cos_min": 0.97, "realness_agree": 0.95}}}
    assert check_gates(ov, ref) == ["int8: min cosine to PyTorch 0.970000 < 0.98 (OpenVINO)",
                                    "int8: realness coordinate keeps its sign on 95.00% of images < 99% (OpenVINO)"]
    assert check_gates(ov, ref, min_cosine=0.9, min_realness_agree=0.9) == []
    assert "non-finite" in check_gates({"fp16": _variant(0.1, cos=float("nan"))}, ref)[0]
    with pytest.raises(ValueError):
        check_gates(variants, ref, tolerance=-1)


# ------------------------------------------------------------------ end to end

def _variant_of(ident: int, k: int) -> np.ndarray:
    img = synthetic_face(ident * 1000, 40)
    shift = np.random.default_rng(ident * 100 + k).integers(-3, 4, 2)
    return np.roll(img, tuple(int(s) for s in shift), axis=(0, 1))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    model = random_model(CONFIG)
    save_model(model, root / "run", CONFIG)
    # training images for the calibration manifest
    meta = {}
    for ident in range(12):
        for k in range(4):
            rel = f"{ident:06d}/{k}.jpg"
            write_jpeg(root / "data" / "train" / "images" / rel, _variant_of(ident, k))
            meta[rel] = int(k == 3)
    (root / "data" / "train" / "meta.json").write_text(json.dumps(meta))
    make_manifest(root / "data", root / "manifest.csv", count=40, fake_share=0.2, seed=0)
    # labelled validation pairs (Kryptonite test_public layout + pairs.csv)
    rows, pid = ["pair_id,label,type,attack"], 0
    for ident in range(20, 60):
        for other in (ident, ident + 1):
            same = other == ident
            write_jpeg(root / "val" / "images" / f"{pid:08d}" / "0.jpg", _variant_of(ident, 0))
            write_jpeg(root / "val" / "images" / f"{pid:08d}" / "1.jpg", _variant_of(other, 1))
            rows.append(f"{pid:08d},{int(same)},{'genuine' if same else 'impostor'},")
            pid += 1
    (root / "val" / "pairs.csv").write_text("\n".join(rows) + "\n")
    return root


def _common(setup):
    return dict(calib_manifest=setup / "manifest.csv", calib_root=setup / "data", val_pairs=setup / "val",
                quiet=True)


@pytest.fixture(scope="module")
def converted(setup):
    out = setup / "models" / "tiny"
    report = convert_checkpoint(setup / "run", out, precision="fp32,fp16,int8", tolerance=1.0, **_common(setup))
    return out, report


def test_output_folder_is_the_runtime_unit(converted, setup):
    out, report = converted
    names = sorted(p.name for p in out.iterdir())
    assert names == [".fakeaware-output", "model.fp16.onnx", "model.fp32.onnx", "model.int8.onnx", "model.json",
                     "report.json", "report.md"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    cfg = ModelConfig.load(out / "model.json")
    for p in ("fp32", "fp16", "int8"):
        check_onnx(out / f"model.{p}.onnx", cfg)
    assert (cfg.arch, cfg.input_size, cfg.embedding_dim) == ("resnet18", 32, 16)
    assert cfg.extra["precisions"] == ["fp32", "fp16", "int8"]
    assert cfg.extra["epochs"] == 3  # what training put in extra is kept
    assert cfg.extra["gate"]["passed"] is True and set(cfg.extra["gate"]["eer"]) == {"fp32", "fp16", "int8"}
    # the canaries' FP32 embeddings ship with the model, and the runtime checks them when it opens it
    canary = cfg.extra["canary"]
    assert canary["count"] == 8 and np.asarray(canary["fp32"]).shape == (8, 16)
    from engine.backends import open_backend

    with open_backend(out, backend="onnxruntime", precision="fp32") as be:
        assert be.canary_cosine > 0.999


def test_threshold_is_the_fp32_eer_threshold_on_the_validation_pairs(converted, setup):
    out, report = converted
    cfg = ModelConfig.load(out / "model.json")
    from convert.gate import embed_onnx, load_validation_pairs

    pairs = load_validation_pairs(setup / "val", 32, crop_fraction=0.75, progress=False)
    scores = pairs.scores(embed_onnx(out / "model.fp32.onnx", pairs.images))
    eer, threshold = equal_error_rate(pairs.labels, scores)
    assert cfg.threshold == pytest.approx(threshold, abs=1e-6)
    assert cfg.threshold != CONFIG.threshold
    assert report["variants"]["fp32"]["verification"]["eer"] == pytest.approx(eer)
    assert "validation pairs" in cfg.extra["threshold_source"]


def test_report_numbers(converted):
    out, report = converted
    data = json.loads((out / "report.json").read_text())
    assert data["failures"] == [] and data["evaluation"]["pairs"] == 80
    v = data["variants"]
    assert v["fp32"]["embedding"]["cos_min"] > 0.9999  # ONNX Runtime FP32 == PyTorch
    assert v["fp16"]["embedding"]["cos_min"] > 0.999
    assert 0.9 < v["int8"]["embedding"]["cos_min"] < v["fp16"]["embedding"]["cos_min"]
    assert v["fp32"]["eer_drift"] == pytest.approx(0.0, abs=1e-9)
    assert data["steps"]["export"]["parity"]["cos_min"] > 0.9999
    assert data["steps"]["int8"]["calibration_images"] == 40
    assert v["int8"]["bytes"] < v["fp16"]["bytes"] < v["fp32"]["bytes"]
    md = (out / "report.md").read_text()
    assert "| int8 |" in md and "Result: PASS" in md


def test_gate_fails_when_the_tolerance_is_impossibly_tight(setup, converted):
    # INT8 moves the scores of this random model enough to reorder pairs; with a zero
    # tolerance the conversion must fail and write nothing.
    int8_drift = converted[1]["variants"]["int8"]["eer_drift"]
    assert int8_drift > 0
    out = setup / "models" / "tight"
    with pytest.raises(GateError, match=r"int8: EER .* > tolerance 0\.0"):
        convert_checkpoint(setup / "run", out, precision="int8", tolerance=0.0, **_common(setup))
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_refuses_to_overwrite_without_force(setup, converted):
    out, _ = converted
    before = (out / "model.json").read_bytes()
    with pytest.raises(ConversionError, match="--force"):
        convert_checkpoint(setup / "run", out, precision="fp32", quiet=True)
    assert (out / "model.json").read_bytes() == before


def test_mismatched_checkpoint_leaves_nothing(setup, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes((setup / "run" / "model.safetensors").read_bytes())
    ModelConfig(arch="resnet34", input_size=32, embedding_dim=16).save(run / "model.json")
    with pytest.raises(ContractError, match="does not match"):
        convert_checkpoint(run, tmp_path / "out", quiet=True)
    (run / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ContractError, match="not a readable safetensors"):
        convert_checkpoint(run, tmp_path / "out", quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_empty_manifest_leaves_nothing(setup, tmp_path):
    empty = tmp_path / "manifest.csv"
    empty.write_text("path,identity,is_fake\n")
    with pytest.raises(CalibrationError, match="empty calibration manifest"):
        convert_checkpoint(setup / "run", tmp_path / "out", precision="int8", calib_manifest=empty,
                           calib_root=setup / "data", quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.csv"]


def test_argument_errors(setup, tmp_path):
    with pytest.raises(ConversionError, match="int8 needs calibration images"):
        convert_checkpoint(setup / "run", tmp_path / "o", precision="int8")
    with pytest.raises(ConversionError, match="unknown precision"):
        convert_checkpoint(setup / "run", tmp_path / "o", precision="fp8")
    with pytest.raises(ConversionError, match="not offered"):
        convert_checkpoint(setup / "run", tmp_path / "o", calib_method="percentile")
    assert not list(tmp_path.iterdir())


def test_cli_errors_and_engine_without_tensorrt(setup, tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "no such checkpoint folder" in capsys.readouterr().err
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert main(["--checkpoint", str(setup / "run"), "--out", str(tmp_path / "o"), "--engine"]) == 2
        assert "TensorRT is not installed" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_threshold_calibrated_by_rule_is_carried_over_the_validation_eer(setup, tmp_path):
    """training.realness --fmr writes threshold_rule: convert keeps that threshold even with --val-pairs."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(setup / "run", run)
    cfg = ModelConfig.load(run / "model.json")
    rule = "FMR <= 0.001 on 100 cross-identity pairs"
    ModelConfig(**{**cfg.to_dict(), "threshold": 0.4321, "extra": {"threshold_rule": rule}}).save(run / "model.json")
    out = tmp_path / "m"
    report = convert_checkpoint(run, out, precision="fp16", tolerance=1.0, **_common(setup))
    written = ModelConfig.load(out / "model.json")
    assert written.threshold == 0.4321 and rule in written.extra["threshold_source"]
    assert written.extra["thresholds"]["fp16"] == report["variants"]["fp16"]["verification"]["eer_threshold"]


def test_cli_without_pairs_carries_the_threshold_and_force_replaces(setup, tmp_path, capsys):
    out = tmp_path / "m"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    argv = ["--checkpoint", str(setup / "run"), "--out", str(out), "--precision", "fp16", "--quiet"]
    assert main(argv) == 2
    assert "--force" in capsys.readouterr().err and (out / "stale.txt").exists()
    assert main(argv + ["--force"]) == 2  # a folder convert did not write is never replaced
    assert "was not written by this tool" in capsys.readouterr().err and (out / "stale.txt").exists()
    (out / "stale.txt").unlink()
    assert main(argv) == 0 and main(argv + ["--force"]) == 0  # its own output: replaced
    printed = capsys.readouterr().out
    assert "| fp16 |" in printed and "| fp32 |" in printed and "threshold 0.250000 (carried from" in printed
    assert sorted(p.name for p in out.iterdir()) == [".fakeaware-output", "model.fp16.onnx", "model.json",
                                                      "report.json", "report.md"]
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # old folder and temporaries gone
    cfg = ModelConfig.load(out / "model.json")
    assert cfg.threshold == CONFIG.threshold and cfg.extra["precisions"] == ["fp16"]
    report = json.loads((out / "report.json").read_text())
    assert report["evaluation"]["pairs"] == 0 and report["variants"]["fp32"]["written"] is False
    assert "random uint8" in report["evaluation"]["source"]


def test_format_table_without_pairs():
    table = format_table({"variants": {"fp16": {"bytes": 2_000_000, "seconds": 1.0, "gate": "pass",
                                                "embedding": {"cos_min": 0.9991, "cos_mean": 0.9995,
                                                              "max_abs": 0.001, "realness_agree": 1.0},
                                                "openvino": {"cos_min": 0.9985, "realness_agree": 0.995}}}})
    assert "| fp16 | 2.00 | 1.0 | 0.999100 | 0.999500 | 0.00100 | 0.998500 | 0.9950 | - | - | - | - | pass |" in table


def test_verification_metrics_on_known_scores(setup):
    from convert.gate import ValidationPairs

    emb = np.array([[1, 0], [1, 0], [0, 1], [0.6, 0.8]], np.float32)
    pairs = ValidationPairs(None, [0, 0, 2], [1, 2, 3], [1, 0, 1], ["genuine", "impostor", "genuine"], ["", "", ""])
    np.testing.assert_allclose(pairs.scores(emb), [1.0, 0.0, 0.8], atol=1e-6)
    m = verification_metrics(pairs, emb)
    assert m["eer"] == 0.0 and m["n_pairs"] == 3


def test_validation_pairs_with_a_faceless_image_are_left_out(setup, monkeypatch, capsys):
    from convert.gate import load_validation_pairs
    from engine.preprocess import NoFaceError, Preprocessor

    full = load_validation_pairs(setup / "val", 32, crop_fraction=0.75, progress=False)
    real_load = Preprocessor.load

    def load(self, path, *args, **kwargs):
        if "00000001" in str(path):
            raise NoFaceError(f"{path}: no face found")
        return real_load(self, path, *args, **kwargs)

    monkeypatch.setattr(Preprocessor, "load", load)
    fewer = load_validation_pairs(setup / "val", 32, crop_fraction=0.75, progress=False)
    assert len(fewer) == len(full) - 1
    assert "left out 1 of" in capsys.readouterr().err
