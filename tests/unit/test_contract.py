"""engine.contract.ModelConfig: every value the runtime reads is checked when model.json is loaded."""
from __future__ import annotations

import json
import re
import os

import numpy as np
import pytest

from engine.contract import ContractError, ModelConfig
from engine.files import current_umask


def load(tmp_path, **values):
    path = tmp_path / "model.json"
    path.write_text(json.dumps(values))
    return ModelConfig.load(path), path


BAD = [  # (key, value, what the message says)
    ("threshold", "0.5", "threshold must be a finite number in [-1, 1], got '0.5' (str)"),
    ("threshold", [0.5], "threshold must be a finite number in [-1, 1], got [0.5] (list)"),
    ("threshold", True, "threshold must be a finite number in [-1, 1], got True (bool)"),
    ("threshold", 5.0, "threshold must be in [-1, 1], got 5.0"),
    ("input_size", 112.0, "input_size must be an integer, got 112.0 (float)"),
    ("input_size", True, "input_size must be an integer, got True (bool)"),
    ("input_size", "112", "input_size must be an integer, got '112' (str)"),
    ("input_size", 10 ** 6, "input_size must be in [32, 1024], got 1000000"),
    ("input_size", 10 ** 400, "input_size must be in [32, 1024], got " + str(10 ** 400)[:57] + "..."),
    ("threshold", 10 ** 400, "threshold must be a finite number in [-1, 1], got " + str(10 ** 400)[:57] + "... (int)"),
    ("input_size", 31, "input_size must be in [32, 1024], got 31"),
    ("embedding_dim", 0, "embedding_dim must be in [1, 65536], got 0"),
    ("embedding_dim", False, "embedding_dim must be an integer, got False (bool)"),
    ("crop_fraction", "1", "crop_fraction must be a finite number, got '1' (str)"),
    ("crop_fraction", 0.0, "crop_fraction must be in (0, 1], got 0.0"),
    ("margin", -0.5, "margin must be in [0, 4], got -0.5"),
    ("margin", None, "margin must be a finite number in [0, 4], got None (NoneType)"),
    ("min_face", "16", "min_face must be a finite number >= 0, got '16' (str)"),
    ("realness_weight", True, "realness_weight must be a finite number >= 0, got True (bool)"),
    ("realness_scale", 0, "realness_scale must be > 0, got 0.0"),
    ("realness_bias", [], "realness_bias must be a finite number, got [] (list)"),
    ("pixel_mean", [127.5, 127.5], "pixel_mean must be 3 numbers (R, G, B), got [127.5, 127.5] (list)"),
    ("pixel_mean", [127.5, "x", 127.5], "pixel_mean[1] must be a finite number, got 'x' (str)"),
    ("pixel_std", [127.5, 0, 127.5], "pixel_std must be > 0, got [127.5, 0.0, 127.5]"),
    ("template", [[1, 2]], "template must be a name or 4 (x, y) points, got [[1, 2]] (list)"),
    ("align", ["face"], "align must be 'none' or 'face', got ['face'] (list)"),
    ("layout", "NCHW", "layout must be 'NHWC', got 'NCHW' (str)"),
    ("input_name", "", "input_name must be a non-empty string, got '' (str)"),
    ("extra", [], "extra must be a JSON object, got [] (list)"),
]


@pytest.mark.parametrize("key, value, message", BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_bad_values_are_refused_naming_the_file_and_key(tmp_path, key, value, message):
    with pytest.raises(ContractError) as err:
        load(tmp_path, **{key: value})
    assert str(err.value) == f"{tmp_path / 'model.json'}: {message}"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_json_literals_are_refused(tmp_path, literal):
    # Python's json module reads these non-standard literals as floats: they must not become a threshold.
    path = tmp_path / "model.json"
    path.write_text(f'{{"threshold": {literal}, "crop_fraction": 1.0}}')
    with pytest.raises(ContractError, match=r"model\.json: threshold must be a finite number in \[-1, 1\]"):
        ModelConfig.load(path)


def test_good_values_load_and_numpy_numbers_become_plain_json_numbers(tmp_path):
    face = [[38, 50], [74, 50], [56, 70], [56, 90]]
    config, _ = load(tmp_path, threshold=-1, input_size=64, margin=0, template=face)
    assert config.threshold == -1.0 and isinstance(config.threshold, float)
    assert config.template == [[38.0, 50.0], [74.0, 50.0], [56.0, 70.0], [56.0, 90.0]]
    made = ModelConfig(threshold=np.float32(0.25), input_size=np.int64(48), realness_bias=np.float64(1.5))
    assert json.loads(json.dumps(made.to_dict()))["threshold"] == 0.25  # np.float32 would not serialise
    assert type(made.input_size) is int


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe not utf-8", "not UTF-8 text"),
    (b"[" * 100_000, "JSON nested too deeply|not valid JSON"),
    (b'{"input_size": 1' + b"0" * 5000 + b"}", "not valid JSON .Exceeds the limit"),
    (b"[1, 2]", "expected a JSON object, got list"),
    (b'{"thresold": 0.5}', r"unknown keys \['thresold'\]"),
])
def test_unreadable_model_json_is_a_contract_error(tmp_path, content, message):
    path = tmp_path / "model.json"
    path.write_bytes(content)
    with pytest.raises(ContractError, match=message):
        ModelConfig.load(path)
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(ContractError, match="folder.json: is a directory, not a model.json"):
        ModelConfig.load(tmp_path / "folder.json")
    os.mkfifo(tmp_path / "fifo.json")  # refused, not opened: an open would wait for a writer forever
    with pytest.raises(ContractError, match="fifo.json: is a FIFO"):
        ModelConfig.load(tmp_path / "fifo.json")


@pytest.mark.parametrize("name", ["/tmp/elsewhere/det", "../../../../etc/passwd", "sub/det", ".hidden"])
def test_the_detector_is_a_shipped_name_never_a_path(name):
    # model.json is input: a path here would have the runtime load and run any .onnx on the disk
    with pytest.raises(ContractError, match="detector must be the name of a shipped detector"):
        ModelConfig(detector=name)
    assert ModelConfig(detector="blazeface_full_range").detector == "blazeface_full_range"


def test_current_umask_is_read_without_changing_it():
    old = os.umask(0o027)
    try:
        assert current_umask() == 0o027 and current_umask() == 0o027
    finally:
        os.umask(old)


@pytest.mark.parametrize("points, why", [
    ([[56, 70]] * 4, "the first eye must be left of the second"),                       # one point four times
    ([[10, 10], [40, 40], [70, 70], [100, 100]], "the eye line must be within 1:2"),   # collinear
    ([[55, 55], [57, 55], [56, 56], [56, 57]], "the eyes must be 11.2 to 100.8 px apart"),  # a pinhead: crops nothing
    ([[38, 50], [74, 50], [56, 45], [56, 90]], "the nose must be below the eyes"),
    ([[38, 50], [74, 50], [56, 52], [56, 55]], "the mouth must be at least 11.2 px below"),
    ([[38, 50], [74, 50], [20, 70], [56, 90]], "the nose and mouth must lie between the eyes"),
    ([[38, 50], [74, 50], [56, 70], [56, 190]], "points must lie inside the 112 px frame"),
])
@pytest.mark.parametrize("align", ["face", "none"])
def test_templates_that_are_no_face_are_refused(tmp_path, points, why, align):
    """Such templates warp every photo to the same few pixels: every pair scored ~0.997 'same person'."""
    with pytest.raises(ContractError, match=f"template: not a face template: {re.escape(why)}"):
        load(tmp_path, align="face" if align == "face" else "none", template=points)
