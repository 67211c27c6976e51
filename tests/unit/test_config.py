"""Training config: YAML + overrides, typing, and clear errors before any work."""
from __future__ import annotations

from pathlib import Path

import pytest

from training.config import (ConfigError, TrainConfig, config_from_dict, load_config, parse_overrides,
                             save_config, validate)
from training.train import main

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_valid_and_run_dir_follows_the_name():
    config = TrainConfig()
    validate(config)
    assert config.run_dir() == Path("runs/default")
    assert TrainConfig(output_dir="/x/y").run_dir() == Path("/x/y")
    assert config.model_config().arch == "resnet34" and config.model_config().input_size == 112


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "exp1.yaml"
    path.write_text("lr: 1e-3\np: 8\naugment:\n  jpeg_p: 0.5\nteacher:\n")
    config = load_config(path, ["lr=0.01", "augment.flip_p=0", "channels_last=false", "margin=1", "k=3"])
    assert config.name == "exp1" and config.run_dir() == Path("runs/exp1")
    assert config.lr == 0.01 and isinstance(config.lr, float)
    assert config.p == 8 and config.k == 3
    assert config.margin == 1.0 and isinstance(config.margin, float)
    assert config.augment.jpeg_p == 0.5 and config.augment.flip_p == 0.0
    assert config.channels_last is False
    assert config.teacher == ""
    assert load_config(path, ["name=other"]).run_dir() == Path("runs/other")


@pytest.mark.parametrize("text,value", [("False", False), ("no", False), ("0", False), ("TRUE", True), ("1", True)])
def test_bool_overrides_parse_strictly(text, value):
    assert load_config(None, [f"cache_images={text}"]).cache_images is value


@pytest.mark.parametrize("override,match", [
    (["lerning_rate=0.1"], "unknown config key 'lerning_rate'"),
    (["lr=-0.1"], "lr: must be > 0"),
    (["lr=fast"], "lr: expected a number"),
    (["k=1"], "k: need at least 2"),
    (["p=1"], "p: need at least 2"),
    (["k=2.5"], "k: expected an integer"),
    (["input_size=24"], r"input_size: must be in \[32, 1024\]"),
    (["fake_share=1"], r"fake_share: must be in \[0, 1\)"),
    (["k=2", "fake_share=0.5"], "leaves 1 real"),
    (["channels_last=maybe"], "expected true/false"),
    (["optimizer=adam"], "optimizer: must be one of"),
    (["mining=hardest"], "mining: must be one of"),
    (["arch=resnet101"], "arch: must be one of"),
    (["precision=fp16", "device=cpu"], "fp16 needs CUDA"),
    (["distill_weight=0.5"], "needs teacher"),
    (["realness_weight=-1"], "realness_weight: must be >= 0"),
    (["realness_weight=1", "embedding_dim=1"], "needs embedding_dim >= 2"),
    (["realness_loss=-0.5"], "realness_loss: must be >= 0"),
    (["augment.jpeg_p=1.5"], r"augment.jpeg_p: a probability"),
    (["augment.blurr_p=0.1"], "unknown config key 'augment.blurr_p' \\(did you mean 'blur_p'"),
    (["augment=3"], "augment: expected a mapping"),
    (["epochs=0"], "epochs: must be >= 1"),
    (["val_max_pairs=-1"], "val_max_pairs: must be >= 0"),
    (["lr"], "expected key=value"),
])
def test_bad_values_are_rejected_with_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, override)


def test_fake_share_leaving_too_few_reals():
    with pytest.raises(ConfigError, match="leaves 1 real"):
        load_config(None, ["k=4", "fake_share=0.75"])
    assert load_config(None, ["k=4", "fake_share=0.5"]).fake_share == 0.5


@pytest.mark.parametrize("text,match", [
    ("lr: [1, 2]\n", "lr: expected a number"),
    ("- a\n- b\n", "expected a mapping"),
    ("lr: 1e-3\nbogus: 1\n", "unknown config key 'bogus'"),
    ("lr: [\n", "not valid YAML"),
])
def test_yaml_errors_name_the_file(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="no such config file"):
        load_config("/nonexistent/x.yaml")


def test_parse_overrides_nests_dotted_keys():
    assert parse_overrides(["a=1", "augment.flip_p=0.5", "x=y=z"]) == {"a": "1", "augment": {"flip_p": "0.5"},
                                                                      "x": "y=z"}


def test_saved_config_round_trips(tmp_path):
    config = load_config(None, ["lr=0.02", "augment.blur_p=0.3", "name=abc", "teacher=t.npz", "distill_weight=1"])
    save_config(config, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == config
    assert config_from_dict(config.to_dict()) == config


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_are_valid(name):
    config = load_config(REPO / "configs" / name)
    assert config.name == Path(name).stem


def test_cli_bad_config_fails_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["k=1", f"output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["error: k: need at least 2 images per identity (positives), got 1"]
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_cli_missing_data_fails_before_any_work(tmp_path, capsys):
    code = main([f"data_dir={tmp_path / 'nothing'}", f"output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and "train/meta.json: no such file" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override", ["lr=inf", "lr=nan", "lr=NaN", "margin=-inf", "weight_decay=nan",
                                      "warmup_epochs=1e999", "augment.scale=nan", "augment.flip_p=inf",
                                      "dropout=nan", "aux_scale=inf"])
def test_non_finite_float_values_are_refused(override):
    key, value = override.split("=")
    with pytest.raises(ConfigError, match=rf"^{key}: must be a finite number, got (inf|-inf|nan)$"):
        load_config(None, [override])


def test_non_finite_values_in_yaml_are_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("lr: .inf\n")  # YAML's own infinity
    with pytest.raises(ConfigError, match="lr: must be a finite number, got inf"):
        load_config(path)


def test_cli_non_finite_lr_fails_before_any_work(tmp_path, capsys):
    code = main(["lr=inf", f"output_dir={tmp_path / 'run'}"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: lr: must be a finite number, got inf"]
    assert not (tmp_path / "run").exists()
