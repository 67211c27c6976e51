"""ResNet backbones (torchvision layer names) and the face embedding model.

The backbone keeps torchvision's parameter names (``conv1``, ``bn1``,
``layer1.0.conv1`` ...) so a torchvision-format state dict loads with
``--init``. :class:`FaceEmbedder` wraps it with the contract of
:mod:`engine.contract`: uint8 RGB NHWC in, L2-normalised float32 (B, D) out,
with normalisation inside the module so export, training and every backend
agree by construction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from engine.contract import ModelConfig
from nets.dlib_resnet import DlibResNet29, MeanLinearHead
from nets import dlib_resnet


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet trunk without ``avgpool``/``fc`` (the head replaces them)."""

    def __init__(self, block, layers: list[int]):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 2)
        self.out_channels = 512 * block.expansion
        self.stage_channels = [w * block.expansion for w in (64, 128, 256, 512)]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero the last BN of each residual branch: blocks start as identities,
        # which trains faster from scratch (Goyal et al. 2017).
        for m in self.modules():
            last_bn = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else getattr(m, "bn2", None)
            if isinstance(m, (BasicBlock, Bottleneck)):
                nn.init.zeros_(last_bn.weight)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stages(self, x) -> list[torch.Tensor]:
        """Outputs of layer1..layer4 (strides 4, 8, 16, 32)."""
        out = [self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))]
        for layer in (self.layer2, self.layer3, self.layer4):
            out.append(layer(out[-1]))
        return out

    def forward(self, x):
        return self.stages(x)[-1]


@dataclass(frozen=True)
class Arch:
    """A registered network: its trunk, its identity head and what it was made for.

    ``taps`` picks the stage maps (of ``backbone.stages()``) that feed the
    realness head; ``defaults`` are the contract values (``model.json``) the
    architecture is built around (input size, pixel normalisation, face template).
    """

    backbone: Callable[[], nn.Module]
    head: Callable[[nn.Module, int, int, float], nn.Module]  # (backbone, input_size, dim, dropout) -> head
    taps: slice
    realness_width: int = 0
    defaults: dict = field(default_factory=dict)


def _gdc_head(backbone, input_size: int, dim: int, dropout: float) -> nn.Module:
    return EmbeddingHead(backbone.out_channels, feature_map_size(input_size), dim, dropout)


def _resnet(block, layers) -> Arch:
    return Arch(lambda: ResNet(block, layers), _gdc_head, slice(1, None))


ARCHS: dict[str, Arch] = {
    "resnet18": _resnet(BasicBlock, [2, 2, 2, 2]),
    "resnet34": _resnet(BasicBlock, [3, 4, 6, 3]),
    "resnet50": _resnet(Bottleneck, [3, 4, 6, 3]),
    # dlib's face recognizer's shape (nets/dlib_resnet.py); initialised from its CC0 weights with init=dlib.
    "dlib_resnet29": Arch(DlibResNet29, lambda b, size, dim, dropout: MeanLinearHead(b.out_channels, dim),
                          slice(0, 4), realness_width=64,
                          defaults={"input_size": dlib_resnet.CHIP_SIZE, "template": "dlib-chip", "embedding_dim": 128,
                                    "pixel_mean": dlib_resnet.PIXEL_MEAN, "pixel_std": dlib_resnet.PIXEL_STD}),
}


def available_models() -> list[str]:
    return sorted(ARCHS)


def arch_defaults(arch: str) -> dict:
    """The contract values ``arch`` is built around ({} for the ResNets: the contract's defaults)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; available: {available_models()}")
    return dict(ARCHS[arch].defaults)


class EmbeddingHead(nn.Module):
    """BN - dropout - global depthwise conv - FC - BN.

    The depthwise conv over the whole final map (MobileFaceNet's "GDC") keeps
    a learned spatial weighting, which plain average pooling throws away, at a
    cost of a few thousand parameters.
    """

    def __init__(self, channels: int, map_size: int, embedding_dim: int, dropout: float = 0.0):
        super().__init__()
        self.bn_in = nn.BatchNorm2d(channels)
        self.dropout = nn.Dropout(dropout)
        self.gdc = nn.Conv2d(channels, channels, map_size, groups=channels, bias=False)
        self.fc = nn.Linear(channels, embedding_dim, bias=False)
        self.bn_out = nn.BatchNorm1d(embedding_dim)

    def forward(self, x):
        x = self.gdc(self.dropout(self.bn_in(x))).flatten(1)
        return self.bn_out(self.fc(x))


class RealnessHead(nn.Module):
    """Real-vs-fake logit (positive = real) from several stage maps of the trunk.

    Blending seams, colour steps and compression traces are local, mid-level
    evidence that the identity-pooled last map mostly discards, so earlier,
    higher-resolution maps come in too. Average pooling sees each map's
    overall statistics, max pooling its strongest local response; both go in.
    With ``width`` > 0 each map first passes a 1x1 convolution (+ BN, ReLU) to
    that many channels, so the head can learn local detectors of its own
    instead of reading the identity features' pooled values only.
    """

    def __init__(self, stage_channels: list[int], width: int = 0):
        super().__init__()
        self.local = None
        if width:
            self.local = nn.ModuleList(nn.Sequential(nn.Conv2d(c, width, 1, bias=False), nn.BatchNorm2d(width),
                                                     nn.ReLU(inplace=True)) for c in stage_channels)
            stage_channels = [width] * len(stage_channels)
        features = 2 * sum(stage_channels)
        self.bn = nn.BatchNorm1d(features)
        self.fc = nn.Linear(features, 1)

    def forward(self, maps: list[torch.Tensor]):
        if self.local is not None:
            maps = [f(x) for f, x in zip(self.local, maps)]
        pooled = torch.cat([p for x in maps for p in (x.mean((2, 3)), x.amax((2, 3)))], 1)
        return self.fc(self.bn(pooled)).squeeze(1)


def feature_map_size(input_size: int) -> int:
    """Side of the last feature map for torchvision's stride-32 trunk."""
    side = input_size
    for _ in range(5):  # conv1, maxpool, layer2, layer3, layer4 each halve (rounding up)
        side = math.ceil(side / 2)
    return side


class FaceEmbedder(nn.Module):
    """uint8 RGB NHWC images -> L2-normalised float32 embeddings (B, D).

    With ``config.realness_weight`` = a > 0 the output is
    ``normalise([identity, a * t])``: a unit identity vector of D - 1 values
    and the realness coordinate ``t = min(0, tanh(scale * (logit + bias)))``
    (0 for a face that looks real, down to -1 for one that looks fake). Two
    photos that both look real score exactly their identity cosine ``s``:
    realness never moves a real-vs-real decision. A pair with one fake-looking
    face scores ``s / sqrt(1 + a^2 t^2)``: with a = 3 and t = -1, a third of
    its identity match. ``bias`` sets how sure the head must be before a face
    counts as fake (calibrated on real validation photos, training.realness).
    """

    def __init__(self, config: ModelConfig, dropout: float = 0.0):
        super().__init__()
        if config.arch not in ARCHS:
            raise ValueError(f"unknown arch {config.arch!r}; available: {available_models()}")
        self.config = config
        arch = ARCHS[config.arch]
        self.taps = arch.taps
        self.backbone = arch.backbone()
        realness = config.realness_weight > 0
        self.head = arch.head(self.backbone, config.input_size, config.embedding_dim - int(realness), dropout)
        taps = self.backbone.stage_channels[arch.taps]
        self.realness = RealnessHead(taps, arch.realness_width) if realness else None
        # Buffers so they travel with .to() and are folded into the exported graph.
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_inv_std", 1.0 / torch.tensor(config.pixel_std).view(1, 3, 1, 1),
                             persistent=False)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        # NHWC -> NCHW as a view: memory stays channels_last, which is what
        # the CPU (oneDNN) and cuDNN convolution kernels prefer.
        x = images.permute(0, 3, 1, 2).float()
        return (x - self.pixel_mean) * self.pixel_inv_std

    def parts(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(unit identity vectors (B, D or D - 1), realness logits (B,) or None)``."""
        maps = self.backbone.stages(self.normalise(images))
        identity = F.normalize(self.head(maps[-1]).float(), dim=1)
        logit = self.realness(maps[self.taps]).float() if self.realness is not None else None
        return identity, logit

    def combine(self, identity: torch.Tensor, logit: torch.Tensor | None, weight: float | None = None,
                scale: float | None = None, bias: float | None = None) -> torch.Tensor:
        """The shipped embedding from :meth:`parts`' outputs; ``weight``, ``scale`` and
        ``bias`` override the config's ``realness_*`` values (for calibration)."""
        if logit is None:
            return identity
        c = self.config
        weight = c.realness_weight if weight is None else weight
        scale = c.realness_scale if scale is None else scale
        bias = c.realness_bias if bias is None else bias
        # Clamped at 0: an image that looks real adds nothing, so two real photos score
        # exactly their identity cosine; only a face that looks fake moves away.
        coordinate = weight * torch.clamp(torch.tanh(scale * (logit + bias)), max=0.0)
        return F.normalize(torch.cat([identity, coordinate[:, None]], 1), dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.combine(*self.parts(images))


def get_model(config: ModelConfig | str, **kwargs) -> FaceEmbedder:
    """Registry entry point: ``get_model("resnet34")`` or ``get_model(ModelConfig(...))``."""
    if isinstance(config, str):
        config = ModelConfig(arch=config, **arch_defaults(config))
    return FaceEmbedder(config, **kwargs)


def load_torchvision_backbone(model: FaceEmbedder, state_dict: dict) -> dict:
    """Load a torchvision-format ResNet state dict into ``model.backbone``.

    ``fc.*`` (the ImageNet classifier) is dropped; returns the lists of
    missing and unexpected keys so the caller can report them.
    """
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    if not set(sd) & set(model.backbone.state_dict()):
        raise ValueError("no key of the state dict matches the backbone: not a torchvision-format ResNet")
    result = model.backbone.load_state_dict(sd, strict=False)
    return {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}
