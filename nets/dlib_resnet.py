"""The network shape of dlib's face recognizer, as a trainable backbone.

dlib's ``dlib_face_recognition_resnet_model_v1`` (its author: "a ResNet-34
with a few layers removed and half the filters") is 29 convolutions: a 7x7
stem, then residual blocks at 32/64/128/256/256 channels (3, 4, 3, 3, 1
blocks), each down block's shortcut a 2x2 average pool zero-padded to the
wider channel count, and a 256 -> 128 linear map of the mean-pooled last
map. Each convolution is followed by an affine layer (batch norm folded at
training time), so here conv + affine are one biased convolution and there
are no batch statistics: small CPU batches fine-tune it without BN noise.

Input 150x150 (dlib's face chip): stage outputs 35, 17, 8, 4 and 2 px wide,
the last two from paths of unequal size (see :func:`_add_top_left`).
The weights come from dlib's ``.dat`` (CC0) through
``training.teachers.dlib_resnet.read_dat`` and :meth:`DlibResNet29.load_dlib`;
this module needs only torch, so a trained checkpoint loads without the
``.dat`` present.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# (channels, blocks, first block downsamples) from the input side.
STAGES = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))
CHIP_SIZE = 150
DESCRIPTOR_DIM = 128
# dlib's input layer subtracts these per-channel means (RGB) and divides by 256;
# read from the shipped .dat (load_dlib checks they still match).
PIXEL_MEAN = (122.782, 117.001, 104.298)
PIXEL_STD = (256.0, 256.0, 256.0)


def _add_top_left(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: the sum over the larger extent of channels, rows and
    columns, each input zero outside its own (aligned at the top left). At
    150 px a down block's convolution gives 3x3 from 8x8 while its pooled
    shortcut is 4x4, and 1x1 from 4x4 beside 2x2: the padding is real."""
    shape = [max(x, y) for x, y in zip(a.shape[1:], b.shape[1:])]

    def pad(x):
        pads = []
        for dim in (3, 2, 1):
            pads += [0, shape[dim - 1] - x.shape[dim]]
        return F.pad(x, pads) if any(pads) else x

    return pad(a) + pad(b)


class DlibBlock(nn.Module):
    def __init__(self, channels_in: int, channels: int, down: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels, 3, 2 if down else 1, 0 if down else 1)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.down = down

    def forward(self, x):
        y = self.conv2(F.relu(self.conv1(x)))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(_add_top_left(y, shortcut))


class DlibResNet29(nn.Module):
    """Trunk: normalised NCHW float in, the five stage outputs out (:meth:`stages`)."""

    out_channels = STAGES[-1][0]

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, STAGES[0][0], 7, 2, 0)
        stages, channels = [], STAGES[0][0]
        for width, count, down in STAGES:
            blocks = []
            for b in range(count):
                blocks.append(DlibBlock(channels, width, down and b == 0))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.stages_ = nn.ModuleList(stages)
        self.stage_channels = [width for width, _, _ in STAGES]

    def stages(self, x) -> list[torch.Tensor]:
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        out = []
        for stage in self.stages_:
            x = stage(x)
            out.append(x)
        return out

    def forward(self, x):
        return self.stages(x)[-1]

    def convolutions(self) -> list[nn.Conv2d]:
        """The 29 convolutions in dlib's order (stem, then conv1/conv2 of each block)."""
        return [self.stem] + [c for stage in self.stages_ for block in stage for c in (block.conv1, block.conv2)]

    @torch.no_grad()
    def load_dlib(self, params: dict, head: nn.Linear | None = None) -> None:
        """Copy ``read_dat``'s parameters in: each affine folded into its convolution,
        the final 128x256 matrix into ``head`` (when given). The input means are
        the caller's to check (they live in the model's pixel normalisation)."""
        convs = self.convolutions()
        if len(params["convs"]) != len(convs):
            raise ValueError(f"dlib weights have {len(params['convs'])} convolutions, this network {len(convs)}")
        for conv, (weight, bias, stride, padding), (gamma, beta) in zip(convs, params["convs"], params["affines"]):
            if tuple(conv.weight.shape) != weight.shape or tuple(conv.stride) != tuple(stride) \
                    or tuple(conv.padding) != tuple(padding):
                raise ValueError(f"dlib convolution {weight.shape} stride {stride} does not fit {conv}")
            g = torch.from_numpy(gamma.copy())
            conv.weight.copy_(torch.from_numpy(weight.copy()) * g.view(-1, 1, 1, 1))
            conv.bias.copy_(torch.from_numpy(bias.copy()) * g + torch.from_numpy(beta.copy()))
        if head is not None:
            head.weight.copy_(torch.from_numpy(params["fc"].copy()))


class MeanLinearHead(nn.Module):
    """dlib's descriptor: global average pool, then a linear map.

    dlib's map has no bias; here the bias starts at zero and is set to minus
    the mean descriptor of real faces when training starts from dlib's
    weights (``training.train``): dlib's raw descriptors share one large
    common direction, which compresses cosines between different people.
    """

    def __init__(self, channels: int, embedding_dim: int):
        super().__init__()
        self.fc = nn.Linear(channels, embedding_dim)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        return self.fc(x.mean(dim=(2, 3)))
