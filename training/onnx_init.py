"""Start training from one of our own exported ONNX files (``init=model.onnx``).

A shipped model folder holds ONNX files, not the PyTorch checkpoint; this
lets a user fine-tune the bundled model on their own data. The simplifier
folds each BatchNorm into the conv (or linear) before it, leaving
``<conv>.weight`` and ``<conv>.weight_bias`` = W', b'. Eval-mode BN computes
``g * (z - m) / sqrt(v + eps) + beta``; with ``g = sqrt(v + eps)`` and
``beta = m + b'`` that is ``z + b'`` for *any* (m, v), so the folded network
is reproduced exactly. Training-mode BN normalises by batch statistics
instead, so (m, v) are set to the statistics of each BN's input on sample
images: then a training step starts from (almost) the same function.
"""
from __future__ import annotations

import re

import torch
from torch import nn


class OnnxInitError(ValueError):
    pass


def _folded_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv or linear, the BN after it) by our module names: convN->bnN, downsample.0->.1, head.fc->bn_out."""
    modules = dict(model.named_modules())
    pairs = []
    for name, module in modules.items():
        if isinstance(module, nn.Conv2d) and re.search(r"(^|\.)conv\d$", name):
            bn = re.sub(r"conv(\d)$", r"bn\1", name)
        elif isinstance(module, nn.Conv2d) and name.endswith("downsample.0"):
            bn = name[:-1] + "1"
        elif name == "head.fc":
            bn = "head.bn_out"
        else:
            continue
        if isinstance(modules.get(bn), (nn.BatchNorm1d, nn.BatchNorm2d)):
            pairs.append((name, bn))
    return pairs


def read_initializers(path: str) -> dict[str, torch.Tensor]:
    """Every float initializer of an ONNX file, as float32 tensors by name."""
    import onnx
    from onnx import numpy_helper

    try:
        proto = onnx.load(path)
    except Exception as exc:
        raise OnnxInitError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {exc})") from None
    out = {}
    for init in proto.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype.kind == "f":
            out[init.name] = torch.from_numpy(array.astype("float32"))
    return out


@torch.no_grad()
def load_onnx_weights(model: nn.Module, path: str, images: torch.Tensor) -> dict:
    """Load ``path``'s weights into ``model``, un-folding BNs with statistics measured on ``images``.

    ``images``: a uint8 NHWC batch of typical inputs (a few hundred real
    photos). Tensors whose name or shape does not fit keep their fresh
    initialisation and are reported as missing, as for a run directory.
    An INT8 Q/DQ file holds quantised weights: use the FP32 or FP16 one.
    """
    weights = read_initializers(path)
    own = model.state_dict()
    loaded: set[str] = set()
    for key, value in weights.items():
        if key in own and own[key].shape == value.shape:
            own[key].copy_(value)
            loaded.add(key)
    # The trunk must match as a whole (heads may be resized for fine-tuning).
    clash = [k for k in weights if k.startswith("backbone.") and k in own and k not in loaded]
    if clash or not any(k.startswith("backbone.") and own[k].dim() == 4 for k in loaded):
        detail = (f"{clash[0]} is {tuple(weights[clash[0]].shape)} there, {tuple(own[clash[0]].shape)} here"
                  if clash else "no conv weight fits")
        raise OnnxInitError(f"{path}: not the trunk of this {model.config.arch} ({detail}); expected an "
                            f"FP32/FP16 ONNX of the same architecture (an INT8 file holds quantised weights)")
    modules = dict(model.named_modules())
    unfolded = []
    for layer, bn_name in _folded_pairs(model):
        weight, bias = f"{layer}.weight", f"{layer}.weight_bias"
        bn = modules[bn_name]
        if weight not in loaded or bias not in weights or weights[bias].shape != bn.bias.shape:
            continue
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
        bn.weight.fill_((1.0 + bn.eps) ** 0.5)
        bn.bias.copy_(weights[bias])
        unfolded.append(bn)
        loaded.update(f"{bn_name}.{p}" for p in ("weight", "bias", "running_mean", "running_var"))
        loaded.add(bias)
    _set_bn_statistics(model, unfolded, images)
    # Not weights: BN step counters, the graph's own constants (no module path), the pixel
    # normalisation buffers (the config's, not learned).
    constants = {k for k, _ in model.named_buffers()} - set(own)
    return {"missing": sorted(k for k in set(own) - loaded if not k.endswith("num_batches_tracked")),
            "unexpected": sorted(k for k in set(weights) - loaded - constants if "." in k),
            "unfolded": len(unfolded)}


def _set_bn_statistics(model: nn.Module, bns: list, images: torch.Tensor) -> None:
    """Measure each BN's input in eval mode (the network's function does not depend on the
    (m, v) chosen), then move (m, v) there keeping ``g = sqrt(v + eps)``, ``beta = m + b'``."""
    stats, hooks = {}, []
    for bn in bns:
        def record(module, args, bn=bn):
            z = args[0].float()
            dims = [d for d in range(z.dim()) if d != 1]
            stats[bn] = (z.mean(dims), z.var(dims, unbiased=False))
        hooks.append(bn.register_forward_pre_hook(record))
    was_training = model.training
    model.eval()
    try:
        model(images)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    for bn, (mean, var) in stats.items():
        shift = bn.bias - bn.running_mean  # b'
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.weight.copy_((var + bn.eps).sqrt())
        bn.bias.copy_(mean + shift)
