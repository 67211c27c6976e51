"""Graph simplification (constant folding, BN/Conv fusion, dead-node removal).

onnxslim is the default: it is maintained, pure Python and already a
ModelOpt dependency. onnxsim is offered for comparison; it is an optional
wheel (``pip install onnxsim``). Both keep the symbolic batch dimension,
which :func:`engine.contract.check_onnx` verifies on the result.
"""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

from engine.contract import ModelConfig, check_onnx

SIMPLIFIERS = ("onnxslim", "onnxsim", "none")


class SimplifyError(RuntimeError):
    """The simplifier is missing or failed; the message names it."""


def simplify_onnx(src: str | os.PathLike, dst: str | os.PathLike, *, simplifier: str = "onnxslim",
                  config: ModelConfig | None = None) -> dict:
    """Simplify ``src`` into ``dst`` and check the contract on the result.

    Returns ``{"simplifier", "version", "nodes_before", "nodes_after"}``.
    ``simplifier="none"`` copies the graph unchanged (for debugging a
    simplifier bug).
    """
    from convert.export import load_onnx, save_onnx

    if simplifier not in SIMPLIFIERS:
        raise SimplifyError(f"unknown simplifier {simplifier!r}; choose one of {', '.join(SIMPLIFIERS)}")
    model = load_onnx(src, config)  # a corrupt or off-contract file: ContractError naming it
    before = len(model.graph.node)
    version = ""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            if simplifier == "onnxslim":
                import onnxslim

                version = onnxslim.__version__
                result = onnxslim.slim(model)
            elif simplifier == "onnxsim":
                try:
                    import onnxsim
                except ImportError:
                    raise SimplifyError("onnxsim is not installed: pip install onnxsim "
                                        "(or use --simplifier onnxslim)") from None
                version = getattr(onnxsim, "__version__", "")
                result, ok = onnxsim.simplify(model)
                if not ok:
                    raise SimplifyError(f"{src}: onnxsim could not validate the simplified model")
            else:
                result = model
    except SimplifyError:
        raise
    except Exception as exc:
        raise SimplifyError(f"{src}: {simplifier} failed: {type(exc).__name__}: {exc}") from exc
    if result is None:
        raise SimplifyError(f"{src}: {simplifier} returned no model")
    check_onnx(result, config, source=f"{dst} (after {simplifier})")
    save_onnx(result, dst)
    return {"simplifier": simplifier, "version": version, "nodes_before": before,
            "nodes_after": len(result.graph.node)}
