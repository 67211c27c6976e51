"""``model.safetensors`` + ``model.json``: the hand-off from training to conversion."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from engine.contract import ContractError, ModelConfig
from nets.model import FaceEmbedder, get_model

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model.json"


def save_model(model: FaceEmbedder, run_dir: str | os.PathLike, config: ModelConfig | None = None) -> None:
    """Write weights then config, each atomically (temporary name, then rename)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DDP
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = run_dir / f".{WEIGHTS_FILE}.tmp"
    save_file(state, str(tmp))
    os.replace(tmp, run_dir / WEIGHTS_FILE)
    (config or model.config).save(run_dir / CONFIG_FILE)


def load_model(run_dir: str | os.PathLike, map_location: str = "cpu") -> FaceEmbedder:
    """Rebuild the model from ``model.json`` and load ``model.safetensors`` strictly.

    A config that does not match the weights (other arch, size or dim) is a
    :class:`ContractError` naming both files, not a torch traceback.
    """
    run_dir = Path(run_dir)
    config = ModelConfig.load(run_dir / CONFIG_FILE)
    weights = run_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise ContractError(f"{weights}: no such file")
    try:
        state = load_file(str(weights), device=map_location)
    except Exception as exc:
        raise ContractError(f"{weights}: not a readable safetensors file ({exc})") from None
    model = get_model(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise ContractError(f"{weights} does not match {run_dir / CONFIG_FILE} "
                            f"(arch={config.arch}, input_size={config.input_size}, "
                            f"embedding_dim={config.embedding_dim}): {' '.join(first)}") from None
    return model.eval()
