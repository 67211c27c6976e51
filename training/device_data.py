"""The GPU training path's data: every image in one uint8 tensor on the device, augmented there.

On a GPU the CPU loader (decode, OpenCV augmentation, collate, copy) cannot
keep up with a ResNet-34 at 112 px, and LFW-sized sets fit in device memory
many times over (20k faces at 112 + 150 px: 2.1 GB). So the images are
decoded and aligned once, moved to the device, and each batch is gathered
by index and augmented with batched tensor ops: flip, rotation/zoom/shift
(one ``affine_grid`` + ``grid_sample``, reflected borders), brightness,
contrast, saturation, greyscale and Gaussian blur. JPEG recompression has
no tensor form and is the one CPU augmentation left out here.

Random parameters are drawn on the host from the sampler's per-image seeds,
so a batch is a pure function of the sampler (``--resume`` stays exact)
and the teacher's view gets exactly the same transform: the affine matrix
is in normalised coordinates, which do not depend on the image size. The
same code runs on the CPU (``loader=device device=cpu``), which is how the
tests exercise it.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from training.config import AugmentConfig


def draw_params(seeds: list[int], cfg: AugmentConfig) -> dict[str, np.ndarray]:
    """Per-image augmentation parameters (float64 arrays of len(seeds)) from each image's seed."""
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        coins = rng.random(6)
        u = rng.uniform(-1.0, 1.0, 8)
        rows.append([
            coins[0] < cfg.flip_p,
            coins[1] < cfg.affine_p,
            u[0] * cfg.rotate_deg, 1.0 + u[1] * cfg.scale, u[2] * cfg.shift, u[3] * cfg.shift,
            coins[2] < cfg.color_p,
            1.0 + u[4] * cfg.brightness, 1.0 + u[5] * cfg.contrast, 1.0 + u[6] * cfg.saturation,
            coins[3] < cfg.grayscale_p,
            (coins[5] < cfg.blur_p) * (0.1 + (u[7] + 1.0) / 2.0 * max(cfg.blur_sigma_max - 0.1, 0.0)),
        ])
    a = np.asarray(rows, np.float64).reshape(len(seeds), 12)
    names = ("flip", "affine", "angle", "zoom", "tx", "ty", "colour", "brightness", "contrast", "saturation",
             "grey", "blur")
    return {name: a[:, i] for i, name in enumerate(names)}


def _theta(p: dict[str, np.ndarray]) -> torch.Tensor:
    """(B, 2, 3) output -> input sampling matrices in normalised coordinates."""
    n = len(p["flip"])
    angle = np.deg2rad(np.where(p["affine"] > 0, p["angle"], 0.0))
    zoom = np.where(p["affine"] > 0, p["zoom"], 1.0)
    tx, ty = (np.where(p["affine"] > 0, p[k], 0.0) * 2.0 for k in ("tx", "ty"))  # shift: fraction of the side
    cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
    theta = np.zeros((n, 2, 3))
    # Inverse of "rotate by angle, zoom, then shift": sample the input at R^-1 (x - t) / zoom.
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, sin, -sin, cos
    theta[:, 0, 2] = -(cos * tx + sin * ty)
    theta[:, 1, 2] = -(-sin * tx + cos * ty)
    theta[:, 0, :] *= np.where(p["flip"] > 0, -1.0, 1.0)[:, None]  # mirror the sampled x
    return torch.from_numpy(theta).float()


def _blur(x: torch.Tensor, sigma_px: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of each image (NCHW float) with its own sigma in pixels (0 = none)."""
    out = x.clone()
    for i in torch.nonzero(sigma_px > 0).flatten().tolist():
        s = float(sigma_px[i])
        r = max(1, int(np.ceil(3 * s)))
        k = torch.exp(-0.5 * (torch.arange(-r, r + 1, device=x.device, dtype=x.dtype) / s) ** 2)
        k = k / k.sum()
        img = F.pad(x[i:i + 1], (r, r, r, r), mode="reflect")
        img = F.conv2d(img, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
        out[i:i + 1] = F.conv2d(img, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    return out


def augment_batch(images: torch.Tensor, p: dict[str, np.ndarray]) -> torch.Tensor:
    """Augment uint8 NHWC ``images`` on their device with :func:`draw_params`' parameters; uint8 NHWC out."""
    x = images.permute(0, 3, 1, 2).float()
    n, _, h, _ = x.shape
    dev = x.device
    theta = _theta(p).to(dev)
    if not torch.allclose(theta, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], device=dev).expand_as(theta)):
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def per_image(name, default):
        return torch.from_numpy(np.where(p["colour"] > 0, p[name], default)).float().to(dev).view(n, 1, 1, 1)

    luma = torch.tensor([0.299, 0.587, 0.114], device=dev).view(1, 3, 1, 1)
    x = (x * per_image("brightness", 1.0)).clamp(0, 255)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * per_image("contrast", 1.0) + mean).clamp(0, 255)
    grey = (x * luma).sum(1, keepdim=True)
    x = ((x - grey) * per_image("saturation", 1.0) + grey).clamp(0, 255)
    to_grey = torch.from_numpy(p["grey"] > 0).to(dev).view(n, 1, 1, 1)
    x = torch.where(to_grey, (x * luma).sum(1, keepdim=True).expand_as(x), x)
    # blur sigma is in pixels of a 112 px image, as on the CPU path
    x = _blur(x, torch.from_numpy(p["blur"] * h / 112.0).float())
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


class DeviceBatches:
    """A :class:`training.data.TrainDataset`'s images on ``device``; turns sampler batches into training batches."""

    def __init__(self, dataset, device: torch.device, augment: AugmentConfig | None, progress: bool = False):
        dataset.fill(progress)

        def stack(cache, teacher: bool):
            n = len(cache)
            if n == 0:
                return []
            return [torch.from_numpy(np.stack([cache.views(i)[int(teacher)] for i in range(n)]))]

        self.images = torch.cat(stack(dataset.images, False) + stack(dataset.extra, False)).to(device)
        self.teacher = (torch.cat(stack(dataset.images, True) + stack(dataset.extra, True)).to(device)
                        if dataset.teacher_size else None)
        n_extra = len(dataset.extra)
        lab = dataset.labels
        is_real = ~lab.is_fake
        self.identity = torch.from_numpy(np.concatenate([lab.identity, np.full(n_extra, -1)])).to(device)
        self.is_fake = torch.from_numpy(np.concatenate([lab.is_fake, np.zeros(n_extra, bool)])).to(device)
        self.class_id = torch.from_numpy(np.concatenate([lab.class_id, np.full(n_extra, -1)])).to(device)
        t = np.where(is_real, dataset.teacher_index, -1)
        self.teacher_index = torch.from_numpy(np.concatenate([t, np.full(n_extra, -1)])).to(device)
        self.augment = augment
        self.device = device

    def __call__(self, items: list[tuple[int, int]]) -> dict:
        index = torch.tensor([i for i, _ in items], device=self.device)
        params = draw_params([s for _, s in items], self.augment) if self.augment is not None else None
        batch = {"identity": self.identity[index], "is_fake": self.is_fake[index],
                 "class_id": self.class_id[index], "teacher": self.teacher_index[index]}
        batch["image"] = augment_batch(self.images[index], params) if params else self.images[index]
        if self.teacher is not None:
            batch["teacher_image"] = augment_batch(self.teacher[index], params) if params else self.teacher[index]
        return batch
