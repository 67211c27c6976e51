"""Calibrate a trained run's realness coordinate on its validation pairs.

    python -m training.realness --run runs/default_model_realness --pairs DATA/val [--write]

Training fixes the identity part and the real-vs-fake logit; three numbers
decide how much the logit counts in the cosine: the coordinate is
``weight * tanh(scale * (logit + bias))`` (see
:class:`nets.model.FaceEmbedder`). Too little and fakes of the same
person pass; too much and a real photo the detector doubts loses its genuine
matches. The best trade-off for the headline EER is a property of the
trained detector, so it is measured, like the decision threshold, on
validation pairs: every image is embedded once, then each candidate costs
one metrics pass. ``--write`` stores the candidate with the lowest overall
EER and its EER threshold in the run's ``model.json``.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from engine.contract import ContractError, ModelConfig
from engine.preprocess import Preprocessor

DEFAULT_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
DEFAULT_SCALES = (0.25, 0.5, 1.0, 2.0)
DEFAULT_BIASES = (-2.0, -1.0, 0.0, 1.0, 2.0)


@torch.no_grad()
def embed_parts(model, pairset, batch_size: int = 128, progress: bool = False):
    """``(identity (N, D-1), logit (N,))`` for every distinct image of ``pairset``, in eval mode."""
    from tqdm import tqdm

    model.eval()
    identity, logit = [], []
    for images in tqdm(pairset.batches(batch_size), total=math.ceil(len(pairset.images) / batch_size),
                       desc="embed", disable=not progress, file=sys.stderr):
        i, z = model.parts(images)
        identity.append(i)
        logit.append(z)
    return torch.cat(identity), torch.cat(logit)


def sweep(model, pairset, weights=DEFAULT_WEIGHTS, scales=DEFAULT_SCALES, biases=DEFAULT_BIASES,
          batch_size: int = 128, progress: bool = False) -> list[dict]:
    """One row per (weight, scale, bias): overall / real / fake EER and the EER threshold.

    Weight 0 (identity only) is scored once, as the reference.
    """
    import itertools

    from engine.metrics import evaluate

    if model.realness is None:
        raise ContractError("the model has no realness head (trained with realness_weight=0)")
    identity, logit = embed_parts(model, pairset, batch_size, progress)
    grid = [(0.0, scales[0], 0.0)] if 0 in weights else []
    grid += list(itertools.product([w for w in weights if w > 0], scales, biases))
    rows = []
    for weight, scale, bias in grid:
        emb = model.combine(identity, logit, float(weight), float(scale), float(bias)).numpy()
        scores = (emb[pairset.a] * emb[pairset.b]).sum(1)
        result = evaluate(pairset.labels, scores, pairset.types, pairset.attacks, bootstrap=0)
        rows.append({"weight": float(weight), "scale": float(scale), "bias": float(bias), "eer": result["eer"],
                     "eer_real": result["eer_real"], "eer_fake": result["eer_fake"],
                     "threshold": result["eer_threshold"]})
    return rows


def best_row(rows: list[dict]) -> dict:
    """Lowest overall EER among weights > 0 (0 is the identity-only reference: a model
    without the head is another architecture); ties go to the smaller weight, then
    the gentler scale, then the bias nearest 0."""
    candidates = [r for r in rows if r["weight"] > 0]
    if not candidates:
        raise ValueError("no candidate weight > 0")
    return min(candidates, key=lambda r: (r["eer"], r["weight"], r["scale"], abs(r["bias"])))


def main(argv=None) -> int:
    from engine.datasets import DataError, read_pair_folder
    from nets.checkpoint import CONFIG_FILE, load_model
    from training.data import PairSet, subset_pairs

    parser = argparse.ArgumentParser(prog="python -m training.realness", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run folder (model.safetensors + model.json)")
    parser.add_argument("--pairs", required=True, help="validation pair folder (pairs.csv + images/)")
    parser.add_argument("--limit", type=int, default=0, help="use a fixed subset of about N pairs (0 = all)")
    for name, values in (("weights", DEFAULT_WEIGHTS), ("scales", DEFAULT_SCALES), ("biases", DEFAULT_BIASES)):
        parser.add_argument(f"--{name}", default=",".join(f"{v:g}" for v in values),
                            help=f"comma-separated candidate {name} (default %(default)s)")
    parser.add_argument("--top", type=int, default=10, help="table rows to print, best first (default 10)")
    parser.add_argument("--write", action="store_true", help="store the best weight and its threshold in "
                                                             "the run's model.json")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    grid = {}
    for name in ("weights", "scales", "biases"):
        text = getattr(args, name)
        try:
            grid[name] = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            parser.error(f"--{name}: expected comma-separated numbers, got {text!r}")
        if not grid[name]:
            parser.error(f"--{name}: need at least one value")
    if min(grid["weights"]) < 0 or max(grid["weights"]) <= 0:
        parser.error("--weights: need weights >= 0, at least one of them > 0")
    if min(grid["scales"]) <= 0:
        parser.error("--scales: need scales > 0")
    try:
        model = load_model(args.run)
        pairset = PairSet(subset_pairs(read_pair_folder(Path(args.pairs)), args.limit), model.config.input_size,
                          preprocessor=Preprocessor(model.config))
        rows = sweep(model, pairset, grid["weights"], grid["scales"], grid["biases"], progress=not args.quiet)
    except (ContractError, DataError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    best = best_row(rows)
    print(f"{len(pairset.pairs)} pairs from {args.pairs}")
    print("| weight | scale | bias | EER | EER_real | EER_fake | threshold |\n|---:|---:|---:|---:|---:|---:|---:|")
    shown = sorted((r for r in rows if r["weight"] > 0), key=lambda r: r["eer"])[:max(1, args.top)]
    for r in shown + [r for r in rows if r["weight"] == 0]:
        mark = " (best)" if r is best else " (identity only)" if r["weight"] == 0 else ""
        print(f"| {r['weight']:g}{mark} | {r['scale']:g} | {r['bias']:g} | {r['eer']:.4f} | {r['eer_real']:.4f} "
              f"| {r['eer_fake']:.4f} | {r['threshold']:.4f} |")
    if args.write:
        path = Path(args.run) / CONFIG_FILE
        config = model.config.to_dict()
        config.update(realness_weight=best["weight"], realness_scale=best["scale"], realness_bias=best["bias"],
                      threshold=best["threshold"])
        config["extra"] = {**config["extra"], "realness_calibrated_on": str(args.pairs),
                           "realness_val_eer": best["eer"]}
        ModelConfig.from_dict(config, str(path)).save(path)
        print(f"wrote realness weight={best['weight']:g} scale={best['scale']:g} bias={best['bias']:g}, "
              f"threshold={best['threshold']:.4f} to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
