"""Checkpoint -> ONNX, with the cheap preprocessing inside the graph.

:class:`nets.model.FaceEmbedder` already takes uint8 RGB NHWC and casts,
normalises, transposes and L2-normalises inside ``forward``, so exporting it
as is gives a graph whose input is the 4x smaller uint8 tensor and whose
output is the final embedding: the runtime does no arithmetic on the host.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

from engine.contract import INPUT_NAME, OUTPUT_NAME, ContractError, ModelConfig, check_onnx

# The torch.export-based exporter implements opset 18 natively; lower targets
# go through a version converter that fails on this graph (ReduceL2 axes).
DEFAULT_OPSET = 18
MIN_OPSET = 18
BATCH_DIM = "batch"


class ExportError(RuntimeError):
    """The model could not be exported; the message says which step failed."""


def load_checkpoint(run_dir: str | os.PathLike):
    """``model.safetensors`` + ``model.json`` -> FaceEmbedder in eval mode.

    A missing file, an unreadable file or a config that does not match the
    weights raises :class:`engine.contract.ContractError` naming the files.
    """
    from nets.checkpoint import load_model

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ContractError(f"{run_dir}: no such checkpoint folder (expected model.safetensors + model.json)")
    return load_model(run_dir)


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress prints and warnings; give them back on failure."""
    buf = io.StringIO()
    torch_log = logging.getLogger("torch.onnx")
    level = torch_log.level
    torch_log.setLevel(logging.ERROR)  # "torchvision is not installed" notes are noise here
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            warnings.simplefilter("ignore")
            yield buf
    except Exception as exc:
        tail = buf.getvalue().strip().splitlines()[-15:]
        if tail:
            exc.add_note("exporter output:\n" + "\n".join(tail))
        raise
    finally:
        torch_log.setLevel(level)


def export_onnx(model, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
                config: ModelConfig | None = None) -> dict:
    """Export ``model`` (a FaceEmbedder) to ``path`` with a dynamic batch.

    The file has one uint8 input ``images`` (batch, S, S, 3) and one float32
    output ``embeddings`` (batch, D); it is checked against the contract
    before it is written (via a temporary name, so ``path`` is never half a
    file). Returns what :func:`engine.contract.check_onnx` read back plus the
    node count.
    """
    import onnx
    import torch

    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is not supported; use {MIN_OPSET} or later")
    config = config or model.config
    path = Path(path)
    model = model.eval()
    example = torch.zeros((2, config.input_size, config.input_size, 3), dtype=torch.uint8)
    batch = torch.export.Dim(BATCH_DIM, min=1, max=65536)
    try:
        with torch.no_grad(), _quiet():
            program = torch.onnx.export(
                model, (example,), None, dynamo=True, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},), optimize=True, verbose=False)
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed for {config.arch} at {config.input_size}px: "
                          f"{type(exc).__name__}: {exc}") from exc
    proto = program.model_proto
    _name_batch_dims(proto)
    proto.producer_name = "fakeaware-faceverify convert"
    _set_metadata(proto, {"arch": config.arch, "input_size": str(config.input_size),
                          "embedding_dim": str(config.embedding_dim), "layout": "NHWC uint8 RGB"})
    info = check_onnx(proto, config, source=str(path))
    save_onnx(proto, path)
    info["nodes"] = len(proto.graph.node)
    return info


def _name_batch_dims(proto) -> None:
    """Call the dynamic batch dimension ``batch`` on the input and the output."""
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = BATCH_DIM


def _set_metadata(proto, items: dict[str, str]) -> None:
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in items.items():
        entry = existing.get(key) or proto.metadata_props.add()
        entry.key, entry.value = key, value


def _drop_unbound_dim_names(proto) -> None:
    """Clear symbolic dim names that no graph input binds.

    ONNX Runtime plans buffer reuse by shape, and two dims with the same name
    count as equal. ModelOpt's AutoCast labels every dim it cannot infer
    ``unk``, so the (B, 511) and (B, 512) halves of the realness embedding
    looked alike and shared a buffer ("Shape mismatch attempting to re-use
    buffer"). An unnamed dim is simply unknown.
    """
    bound = {d.dim_param for v in proto.graph.input for d in v.type.tensor_type.shape.dim if d.dim_param}
    for value in list(proto.graph.value_info) + list(proto.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param and dim.dim_param not in bound:
                dim.ClearField("dim_param")


def save_onnx(proto, path: str | os.PathLike) -> None:
    """Write a ModelProto via a temporary name and rename (weights inline, < 2 GB), without
    unbound dim names (see :func:`_drop_unbound_dim_names`)."""
    import onnx

    _drop_unbound_dim_names(proto)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        onnx.save_model(proto, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_onnx(path: str | os.PathLike, config: ModelConfig | None = None):
    """Load and contract-check an ONNX file; a corrupt file is a ContractError naming it."""
    import onnx

    check_onnx(path, config)  # clear message for garbage before the full load
    return onnx.load(str(path))
