"""The GPU training path on a real GPU: images on the device, augmentation there, bf16 + channels_last."""
from __future__ import annotations

import json

import pytest
import torch

from gpu_skips import cuda_runtime
from test_train import dataset, tiny  # noqa: F401  (the tiny synthetic training set fixture)
from training.train import train


@pytest.fixture(scope="module")
def cuda_device():
    cuda_runtime()
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    return torch.device("cuda")


def test_device_loader_trains_on_the_gpu_in_bf16(cuda_device, dataset, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    train(tiny(dataset, run, "device=cuda", "loader=device", "precision=bf16", "epochs=2", "steps_per_epoch=4"),
          progress=False)
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["loss"] > 0 for r in rows[1:]) and rows[-1]["img_s"] > 0
