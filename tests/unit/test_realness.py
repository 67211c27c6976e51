"""Calibration of the realness coordinate (training.realness) on a tiny trained run."""
from __future__ import annotations

import json

import pytest

from engine.contract import ModelConfig
from engine.datasets import read_pair_folder
from test_train import dataset, tiny  # noqa: F401  (module fixture of synthetic train/val folders)
from nets.checkpoint import load_model
from training.data import PairSet
from training.realness import best_row, main, sweep
from training.train import train


@pytest.fixture(scope="module")
def run(dataset, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("realness") / "run"
    train(tiny(dataset, out, "epochs=1", "steps_per_epoch=2", "realness_weight=1.0"), progress=False)
    return out


def test_sweep_scores_every_candidate_and_the_identity_reference(dataset, run):  # noqa: F811
    model = load_model(run)
    pairset = PairSet(read_pair_folder(dataset / "val"), model.config.input_size,
                      crop_fraction=model.config.crop_fraction)
    rows = sweep(model, pairset, weights=(0.0, 1.0, 2.0), scales=(0.5, 1.0), biases=(-1.0, 0.0, 1.0))
    assert len(rows) == 1 + 2 * 2 * 3
    assert [r["weight"] for r in rows].count(0.0) == 1
    assert {(r["weight"], r["scale"], r["bias"]) for r in rows if r["weight"] > 0} == {
        (w, s, b) for w in (1.0, 2.0) for s in (0.5, 1.0) for b in (-1.0, 0.0, 1.0)}
    for r in rows:
        assert 0.0 <= r["eer"] <= 1.0 and 0.0 <= r["eer_fake"] <= 1.0
    best = best_row(rows)
    assert best["weight"] > 0 and best["eer"] == min(r["eer"] for r in rows if r["weight"] > 0)


def test_best_row_prefers_lower_eer_then_the_gentler_setting():
    rows = [{"weight": 0.0, "scale": 0.5, "bias": 0.0, "eer": 0.01},  # identity only: never chosen
            {"weight": 2.0, "scale": 0.5, "bias": 0.0, "eer": 0.1},
            {"weight": 1.0, "scale": 1.0, "bias": -1.0, "eer": 0.1},
            {"weight": 1.0, "scale": 1.0, "bias": 0.0, "eer": 0.1},
            {"weight": 1.0, "scale": 2.0, "bias": 0.0, "eer": 0.2}]
    assert best_row(rows) is rows[3]
    with pytest.raises(ValueError, match="no candidate"):
        best_row(rows[:1])


def test_cli_writes_the_best_setting_into_the_run(dataset, run, tmp_path, capsys):  # noqa: F811
    target = tmp_path / "run"
    target.mkdir()
    for f in run.iterdir():
        if f.is_file():
            (target / f.name).write_bytes(f.read_bytes())
    argv = ["--run", str(target), "--pairs", str(dataset / "val"), "--weights", "0,1,2", "--scales", "0.5,1",
            "--biases", "0,1", "--real-kept", "", "--fmr", "0", "--quiet"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "(best)" in table and "(identity only)" in table
    assert ModelConfig.load(target / "model.json").realness_scale == 0.5  # no --write: untouched
    assert main(argv + ["--write"]) == 0
    out = capsys.readouterr().out
    config = json.loads((target / "model.json").read_text())
    assert config["realness_weight"] in (1.0, 2.0) and config["realness_scale"] in (0.5, 1.0)
    assert config["realness_bias"] in (0.0, 1.0) and config["threshold"] is not None
    assert config["extra"]["realness_calibrated_on"] == str(dataset / "val")
    assert f"weight={config['realness_weight']:g}" in out
    assert load_model(target).config.realness_bias == config["realness_bias"]  # weights still load


@pytest.mark.parametrize("extra, message", [
    (["--scales", "0"], "--scales: need scales > 0"),
    (["--weights", "0"], "at least one of them > 0"),
    (["--biases", "a,b"], "--biases: expected comma-separated numbers"),
    (["--weights", ","], "--weights: need at least one value"),
    (["--biases", "", "--real-kept", ""], "need at least one value between them"),
    (["--real-kept", "1.5"], "--real-kept: shares must be in (0, 1)"),
    (["--fmr", "1"], "--fmr: must be in [0, 1)"),
])
def test_cli_rejects_bad_grids(dataset, run, extra, message, capsys):  # noqa: F811
    with pytest.raises(SystemExit) as exc:
        main(["--run", str(run), "--pairs", str(dataset / "val"), *extra])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_cli_names_the_problem_with_the_run_or_the_pairs(dataset, run, tmp_path, capsys):  # noqa: F811
    assert main(["--run", str(run), "--pairs", str(tmp_path / "nowhere"), "--quiet"]) == 2
    assert "nowhere" in capsys.readouterr().err
    plain = tmp_path / "plain"
    train(tiny(dataset, plain, "epochs=1", "steps_per_epoch=1"), progress=False)
    assert main(["--run", str(plain), "--pairs", str(dataset / "val"), "--quiet"]) == 2
    assert "no realness head" in capsys.readouterr().err


def test_threshold_at_fmr_admits_at_most_that_share_of_impostor_pairs():
    import numpy as np

    from training.realness import threshold_at_fmr

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(60, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    identity = np.array([f"p{i // 3}" for i in range(57)] + ["", "", ""], object)  # 19 people x 3, 3 unknown
    point = threshold_at_fmr(emb, identity, 0.05)
    assert point["images"] == 57 and point["identities"] == 19
    assert point["impostor_pairs"] == 57 * 56 // 2 - 19 * 3
    cos = emb[:57] @ emb[:57].T
    names = identity[:57]
    impostor = cos[np.triu(np.ones((57, 57), bool), 1) & (names[:, None] != names[None, :])]
    assert (impostor >= point["threshold"]).mean() <= 0.05 == point["fmr_target"]
    assert (impostor >= np.nextafter(point["threshold"], -1)).mean() > 0.05  # the lowest such threshold
    assert point["fmr"] == (impostor >= point["threshold"]).mean()
    assert (impostor >= threshold_at_fmr(emb, identity, 0.0)["threshold"]).sum() == 0


def test_cli_sets_the_threshold_at_a_false_match_rate_with_real_deepfakes(dataset, run, tmp_path, capsys):  # noqa: F811
    """sources.csv names each photo's person: the threshold comes from every cross-identity pair of the real
    photos; DFDC-style fakes join the pairs against the faces they were made from."""
    import csv
    import shutil

    from test_train import _dfdc_folder

    val = tmp_path / "val"
    shutil.copytree(dataset / "val", val)
    with open(val / "pairs.csv") as f:
        rows = list(csv.DictReader(f))
    with open(val / "sources.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["pair_id", "identity_0", "source_0", "identity_1", "source_1"])
        for k, r in enumerate(rows):
            a = f"p{k // 3}"
            b = {"genuine": a, "impostor": f"q{k // 3}", "fake-of-same": a}[r["type"]]
            fake = r["type"] == "fake-of-same"
            w.writerow([r["pair_id"], a, f"{a}/0.jpg", b, ("face-swap:" if fake else "") + f"{b}/1.jpg"])
    target = tmp_path / "run"
    shutil.copytree(run, target)
    dfdc = _dfdc_folder(tmp_path / "dfdc", n=10)
    out = tmp_path / "calib.json"
    assert main(["--run", str(target), "--pairs", str(val), "--realness-data", str(dfdc), "--realness-val-share",
                 "0.5", "--weights", "0,1", "--scales", "1", "--biases", "", "--real-kept", "0.9,0.99",
                 "--fmr", "0.1", "--json", str(out), "--write", "--quiet"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["n_pairs"] == len(rows) + 5  # 5 held-out DFDC fakes against their sources
    assert {r["real_kept"] for r in result["rows"] if r["weight"] > 0} == {0.9, 0.99}
    assert "dfdc" in result["by_attack"]
    point = result["fmr_point"]
    assert point["identities"] == 12 and point["fmr"] <= 0.1  # 6 p* (genuine/impostor/fake rows) + 6 q*
    assert point["images"] == 18  # each source photo once, though every pair folder holds its own copy
    config = ModelConfig.load(target / "model.json")
    assert config.threshold == result["threshold"] == point["threshold"]
    assert "FMR <= 0.1" in config.extra["threshold_rule"] and "FMR <= 0.1" in printed
    assert config.extra["eer_threshold"] == result["best"]["threshold"]
    assert main(["--run", str(target), "--pairs", str(dataset / "val"), "--quiet"]) == 2  # --fmr needs sources
    assert "sources.csv: no such file" in capsys.readouterr().err


def test_best_row_can_hold_realness_to_an_identity_cost():
    rows = [{"weight": 0.0, "scale": 0.5, "bias": 0.0, "eer": 0.3, "eer_real": 0.010},
            {"weight": 4.0, "scale": 2.0, "bias": 0.0, "eer": 0.10, "eer_real": 0.030},  # best EER, costs 0.02
            {"weight": 1.0, "scale": 1.0, "bias": 0.0, "eer": 0.15, "eer_real": 0.014},
            {"weight": 2.0, "scale": 1.0, "bias": 0.0, "eer": 0.12, "eer_real": 0.0145}]
    assert best_row(rows) is rows[1]
    assert best_row(rows, 0.005) is rows[3]
    assert best_row(rows, 0.001) is rows[2]  # none within: the cheapest for identity
