"""Calibrate a trained run's realness coordinate and decision threshold on validation data.

    python -m training.realness --run runs/NAME --pairs DATA/val [--realness-data DFDC] [--fmr 0.001] [--write]

Training fixes the identity part and the real-vs-fake logit; three numbers
decide how much the logit counts in the cosine: the coordinate is
``weight * min(0, tanh(scale * (logit + bias)))`` (see
:class:`nets.model.FaceEmbedder`). ``bias`` decides which faces count as
real (coordinate 0, similarity untouched): ``--real-kept 0.99`` puts it where
99% of the real validation faces have a logit above ``-bias``. Too little
weight and fakes of the same person pass; too much, or a bias that
doubts real faces, and real photos lose their genuine matches. Every image
is embedded once, then each candidate costs one metrics pass; the
candidate with the lowest overall EER wins among those that cost real-vs-real
pairs at most ``--max-identity-cost`` of EER. ``--realness-data`` adds real
deepfakes: each held-out DFDC fake against the real face it was made from
(split by source video as in training).

The decision threshold is set the way biometric systems set it: at a false
match rate (``--fmr``) among impostor pairs of identities never trained on,
every cross-identity pair of the validation set's real photos (named in its
``sources.csv``). ``--write`` stores the coordinate and that threshold in
the run's ``model.json``, with the EER threshold beside it for comparison.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

from engine.contract import ContractError, ModelConfig
from engine.preprocess import Preprocessor
from engine.files import printable

DEFAULT_WEIGHTS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
DEFAULT_SCALES = (0.5, 1.0, 2.0, 4.0)
DEFAULT_BIASES = ()
DEFAULT_REAL_KEPT = (0.9, 0.95, 0.98, 0.99, 0.995)
DEFAULT_FMR = 0.001
DEFAULT_MAX_IDENTITY_COST = 0.005


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


def read_sources(folder: str | Path) -> dict[str, tuple[tuple[str, bool, str], tuple[str, bool, str]]]:
    """``sources.csv`` of a ``training.prepare`` pair folder: pair id -> ((identity, real, source), ...)
    for its two images; a fake's source names its attack (``morph:...``)."""
    import csv

    path = Path(folder) / "sources.csv"
    out = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out[row["pair_id"]] = tuple((row[f"identity_{k}"], ":" not in row[f"source_{k}"], row[f"source_{k}"])
                                        for k in (0, 1))
    return out


def dfdc_pairs(root: str | Path, val_share: float) -> list:
    """Each held-out DFDC fake against the real face it was made from (label 0, attack ``dfdc``)."""
    from engine.datasets import Pair, read_dfdc_faces, split_by_identity

    _, val = split_by_identity(read_dfdc_faces(root), val_share, seed=0)
    reals = {s.identity: s for s in val if not s.is_fake}
    return [Pair(f"dfdc-{k:05d}", reals[s.identity].path, s.path, 0, "fake-of-same", "dfdc")
            for k, s in enumerate(f for f in val if f.is_fake and f.identity in reals)]


def image_truth(pairset, sources: dict | None) -> tuple[np.ndarray, np.ndarray]:
    """Per image of ``pairset``: (is real, identity name or "").

    LFW-derived pairs take both from ``sources``; a DFDC pair's first image is
    the real face, its second the fake. The identity is given once per source
    photo (a pair folder holds a copy of a photo for every pair it is in), so
    the impostor pairs of :func:`threshold_at_fmr` count each photo once.
    """
    real = np.zeros(len(pairset.images), bool)
    identity = np.full(len(pairset.images), "", object)
    seen: set[str] = set()
    for pair, a, b in zip(pairset.pairs, pairset.a, pairset.b):
        if pair.attack == "dfdc":
            real[a] = True  # one photo per DFDC identity: no impostor pairs from it
            continue
        if sources is None or pair.pair_id not in sources:
            if pair.type in ("genuine", "impostor"):
                real[a] = real[b] = True
            continue
        for index, (name, is_real, source) in zip((a, b), sources[pair.pair_id]):
            real[index] = is_real
            if is_real and source not in seen:
                seen.add(source)
                identity[index] = name
    return real, identity


def threshold_at_fmr(emb: np.ndarray, identity: np.ndarray, fmr: float) -> dict:
    """The lowest threshold whose false match rate among every cross-identity pair of the
    images with a known identity is at most ``fmr`` (a pair matches when its cosine >= threshold)."""
    known = np.flatnonzero(identity != "")
    e, names = emb[known], identity[known]
    scores = []
    for start in range(0, len(e), 512):
        block = e[start:start + 512] @ e.T
        rows = np.arange(start, min(start + 512, len(e)))[:, None]
        upper = np.arange(len(e))[None, :] > rows  # each unordered pair once
        other = names[start:start + 512, None] != names[None, :]
        scores.append(block[upper & other])
    scores = np.sort(np.concatenate(scores))[::-1]
    n = len(scores)
    if n == 0:
        raise ValueError("no impostor pairs: no images with a known identity")
    allowed = int(np.floor(fmr * n))  # impostor pairs that may match
    threshold = float(np.nextafter(scores[allowed], np.inf)) if allowed < n else float(scores[-1])
    return {"threshold": min(1.0, threshold), "impostor_pairs": n, "identities": int(len(set(names))),
            "images": int(len(known)), "fmr": float((scores >= threshold).mean()), "fmr_target": fmr}


def sweep(model, pairset, weights=DEFAULT_WEIGHTS, scales=DEFAULT_SCALES, biases=DEFAULT_BIASES,
          batch_size: int = 128, progress: bool = False, real_kept=(), is_real=None, parts=None) -> list[dict]:
    """One row per (weight, scale, bias): overall / real / fake EER, per attack, and the EER threshold.

    Weight 0 (identity only) is scored once, as the reference. ``real_kept``
    adds one bias per share: where that share of the real images
    (``is_real``, per image) keeps a coordinate of 0. ``parts``: :func:`embed_parts`'
    output when the caller has it already.
    """
    import itertools

    from engine.metrics import evaluate

    if model.realness is None:
        raise ContractError("the model has no realness head (trained with realness_weight=0)")
    identity, logit = parts if parts is not None else embed_parts(model, pairset, batch_size, progress)
    biases = [(float(b), None) for b in biases]
    if real_kept:
        z = logit.numpy()[np.asarray(is_real, bool)]
        biases += [(float(-np.quantile(z, 1.0 - k)), float(k)) for k in real_kept]
    grid = [(0.0, scales[0], (0.0, None))] if 0 in weights else []
    grid += list(itertools.product([w for w in weights if w > 0], scales, biases))
    rows = []
    for weight, scale, (bias, kept) in grid:
        emb = model.combine(identity, logit, float(weight), float(scale), float(bias)).numpy()
        scores = (emb[pairset.a] * emb[pairset.b]).sum(1)
        result = evaluate(pairset.labels, scores, pairset.types, pairset.attacks, bootstrap=0)
        rows.append({"weight": float(weight), "scale": float(scale), "bias": float(bias), "real_kept": kept,
                     "eer": result["eer"], "eer_real": result["eer_real"], "eer_fake": result["eer_fake"],
                     "eer_by_attack": {k: v["eer"] for k, v in (result.get("eer_by_attack") or {}).items()},
                     "threshold": result["eer_threshold"]})
    return rows


def best_row(rows: list[dict], max_identity_cost: float | None = None) -> dict:
    """Lowest overall EER among weights > 0 (0 is the identity-only reference: a model
    without the head is another architecture); ties go to the smaller weight, then
    the gentler scale, then the bias nearest 0.

    With ``max_identity_cost``, only candidates whose EER_real (genuine vs impostor
    pairs) is within that much of the identity-only row's compete: realness must not
    buy fake refusals with real-vs-real mistakes (real photos it doubts). If none is,
    the one with the lowest EER_real wins.
    """
    candidates = [r for r in rows if r["weight"] > 0]
    if not candidates:
        raise ValueError("no candidate weight > 0")
    reference = next((r for r in rows if r["weight"] == 0), None)
    if max_identity_cost is not None and reference is not None:
        within = [r for r in candidates if r["eer_real"] <= reference["eer_real"] + max_identity_cost]
        if not within:
            return min(candidates, key=lambda r: (r["eer_real"], r["eer"], r["weight"], r["scale"]))
        candidates = within
    return min(candidates, key=lambda r: (r["eer"], r["weight"], r["scale"], abs(r["bias"])))


def main(argv=None) -> int:
    from engine.datasets import DataError, read_pair_folder
    from engine.metrics import evaluate
    from nets.checkpoint import CONFIG_FILE, load_model
    from training.data import PairSet, subset_pairs

    parser = argparse.ArgumentParser(prog="python -m training.realness", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run folder (model.safetensors + model.json)")
    parser.add_argument("--pairs", required=True, help="validation pair folder (pairs.csv + images/, and the "
                                                       "sources.csv of training.prepare for the FMR threshold)")
    parser.add_argument("--limit", type=int, default=0, help="use a fixed subset of about N pairs (0 = all)")
    for name, values in (("weights", DEFAULT_WEIGHTS), ("scales", DEFAULT_SCALES), ("biases", DEFAULT_BIASES),
                         ("real-kept", DEFAULT_REAL_KEPT)):
        parser.add_argument(f"--{name}", default=",".join(f"{v:g}" for v in values),
                            help=f"comma-separated candidate {name} (default %(default)s)" +
                            (": shares of real validation faces that keep a coordinate of 0, each gives a bias"
                             if name == "real-kept" else ""))
    parser.add_argument("--realness-data", default="", help="DFDC face crops (faces.csv): its held-out fakes "
                                                            "against their source faces join the pairs")
    parser.add_argument("--realness-val-share", type=float, default=0.2,
                        help="share of DFDC source videos held out, as in training (default %(default)s)")
    parser.add_argument("--fmr", type=float, default=DEFAULT_FMR,
                        help="false match rate the threshold is set at, among cross-identity pairs of the "
                             "validation set's real photos (default %(default)s); 0 = the EER threshold")
    parser.add_argument("--max-identity-cost", type=float, default=DEFAULT_MAX_IDENTITY_COST,
                        help="only candidates whose genuine-vs-impostor EER is within this of the identity-only "
                             "score's compete (default %(default)s; needs weight 0 in --weights)")
    parser.add_argument("--top", type=int, default=10, help="table rows to print, best first (default 10)")
    parser.add_argument("--json", default="", help="also write the table and the operating point here")
    parser.add_argument("--write", action="store_true", help="store the best coordinate and the threshold in "
                                                             "the run's model.json")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    grid = {}
    for name in ("weights", "scales", "biases", "real_kept"):
        text = getattr(args, name)
        try:
            grid[name] = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            parser.error(f"--{name.replace('_', '-')}: expected comma-separated numbers, got {text!r}")
    for name in ("weights", "scales"):
        if not grid[name]:
            parser.error(f"--{name}: need at least one value")
    if not grid["biases"] and not grid["real_kept"]:
        parser.error("--biases/--real-kept: need at least one value between them")
    if min(grid["weights"]) < 0 or max(grid["weights"]) <= 0:
        parser.error("--weights: need weights >= 0, at least one of them > 0")
    if min(grid["scales"]) <= 0:
        parser.error("--scales: need scales > 0")
    if any(not 0.0 < k < 1.0 for k in grid["real_kept"]):
        parser.error("--real-kept: shares must be in (0, 1)")
    if not 0.0 <= args.fmr < 1.0:
        parser.error("--fmr: must be in [0, 1)")
    try:
        model = load_model(args.run)
        if model.realness is None:
            raise ContractError("the model has no realness head (trained with realness_weight=0)")
        pairs = subset_pairs(read_pair_folder(Path(args.pairs)), args.limit)
        if args.realness_data:
            pairs += dfdc_pairs(args.realness_data, args.realness_val_share)
        pairset = PairSet(pairs, model.config.input_size, preprocessor=Preprocessor(model.config))
        sources_csv = Path(args.pairs) / "sources.csv"
        sources = read_sources(args.pairs) if sources_csv.is_file() else None
        if args.fmr and sources is None:
            raise DataError(f"{sources_csv}: no such file (the FMR threshold needs each photo's identity; "
                            f"--fmr 0 uses the EER threshold)")
        is_real, identity = image_truth(pairset, sources)
        parts = embed_parts(model, pairset, progress=not args.quiet)
        rows = sweep(model, pairset, grid["weights"], grid["scales"], grid["biases"], real_kept=grid["real_kept"],
                     is_real=is_real, parts=parts)
    except (ContractError, DataError, OSError, KeyError) as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        return 2
    best = best_row(rows, args.max_identity_cost)
    print(f"{len(pairset.pairs)} pairs from {args.pairs}" + (f" and {args.realness_data}" if args.realness_data
                                                              else ""))
    print("| weight | scale | bias | real kept | EER | EER_real | EER_fake | threshold |\n"
          "|---:|---:|---:|---:|---:|---:|---:|---:|")
    shown = sorted((r for r in rows if r["weight"] > 0), key=lambda r: r["eer"])[:max(1, args.top)]
    for r in shown + [r for r in rows if r["weight"] == 0]:
        mark = " (best)" if r is best else " (identity only)" if r["weight"] == 0 else ""
        kept = "" if r.get("real_kept") is None else f"{r['real_kept']:g}"
        print(f"| {r['weight']:g}{mark} | {r['scale']:g} | {r['bias']:.4g} | {kept} | {r['eer']:.4f} "
              f"| {r['eer_real']:.4f} | {r['eer_fake']:.4f} | {r['threshold']:.4f} |")
    emb = model.combine(*parts, best["weight"], best["scale"], best["bias"]).numpy()
    threshold, rule = best["threshold"], "EER on validation pairs"
    point = None
    if args.fmr:
        point = threshold_at_fmr(emb, identity, args.fmr)
        threshold = point["threshold"]
        rule = (f"FMR <= {args.fmr:g} on {point['impostor_pairs']} cross-identity pairs of "
                f"{point['images']} real validation photos ({point['identities']} identities never trained on)")
    scores = (emb[pairset.a] * emb[pairset.b]).sum(1)
    at = evaluate(pairset.labels, scores, pairset.types, pairset.attacks, threshold=threshold, bootstrap=0)
    op = at["at_threshold"]
    print(f"threshold {threshold:.4f} ({rule}): genuine pairs refused {op['frr']:.4f}, impostor pairs accepted "
          f"{op['impostor_acceptance_rate']:.4f}, fake pairs accepted {op['fake_acceptance_rate']:.4f}; "
          + ", ".join(f"{k} accepted {v['fake_acceptance_rate_at_threshold']:.4f}"
                      for k, v in at.get("eer_by_attack", {}).items()))
    if args.json:
        from engine.contract import write_json_atomic

        write_json_atomic(args.json, {"pairs": str(args.pairs), "realness_data": args.realness_data,
                                      "n_pairs": len(pairset.pairs), "dropped": pairset.dropped, "rows": rows,
                                      "best": best, "threshold": threshold, "threshold_rule": rule,
                                      "fmr_point": point, "at_threshold": op,
                                      "by_attack": at.get("eer_by_attack")})
    if args.write:
        path = Path(args.run) / CONFIG_FILE
        config = model.config.to_dict()
        config.update(realness_weight=best["weight"], realness_scale=best["scale"], realness_bias=best["bias"],
                      threshold=threshold)
        config["extra"] = {**config["extra"], "realness_calibrated_on": str(args.pairs)
                           + (f" + {args.realness_data}" if args.realness_data else ""),
                           "realness_val_eer": best["eer"], "threshold_rule": rule,
                           "eer_threshold": best["threshold"]}
        ModelConfig.from_dict(config, str(path)).save(path)
        print(f"wrote realness weight={best['weight']:g} scale={best['scale']:g} bias={best['bias']:.4g}, "
              f"threshold={threshold:.4f} to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
