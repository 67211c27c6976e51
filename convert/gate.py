"""Accuracy gates: every ONNX variant against the PyTorch model it came from.

Two views of the same question, "did conversion change the model?":

* embedding drift, ONNX Runtime (CPU) vs PyTorch on the same uint8 images,
  and again through OpenVINO where it is installed (the default CPU
  runtime, whose INT8 kernels round differently from ONNX Runtime's
  emulation): cosine similarity per image (min, mean), the largest absolute
  error and, for a model with a realness coordinate, the share of images
  whose coordinate keeps its sign. The worst image must stay at cosine >=
  ``min_cosine`` (default 0.98) and the sign agree on >= 99 %: a mean hides
  the one face whose decision flips;
* verification drift: the EER on a validation pair set, computed with the
  shared :mod:`engine.metrics` code, compared with the PyTorch model's EER.
  A variant whose EER moves by more than ``tolerance`` (absolute, default
  0.005) fails the conversion.

The report is written as ``report.json`` (all numbers) and ``report.md``
(the table) next to the models.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

DEFAULT_TOLERANCE = 0.005
from engine.canary import MIN_COSINE as DEFAULT_MIN_COSINE  # one bound: the gate's and the runtime's canaries
DEFAULT_MIN_REALNESS_AGREEMENT = 0.99
DEFAULT_BATCH = 64


class GateError(RuntimeError):
    """A variant failed its accuracy gate; the message lists each failure."""


# ------------------------------------------------------------------ embeddings

def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """ONNX Runtime session on the CPU execution provider only."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def embed_onnx(path_or_session, images: np.ndarray, *, batch_size: int = DEFAULT_BATCH,
               input_name: str = "images") -> np.ndarray:
    """Embeddings of uint8 NHWC ``images`` from an ONNX file (or session), in batches."""
    sess = onnx_session(path_or_session) if isinstance(path_or_session, (str, os.PathLike)) else path_or_session
    out = [sess.run(None, {input_name: np.ascontiguousarray(images[i:i + batch_size])})[0]
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out).astype(np.float32, copy=False)


def openvino_parity(path, images: np.ndarray, reference: np.ndarray, config, precision: str,
                    realness: bool = False) -> dict | None:
    """:func:`compare_embeddings` of ``path`` run by OpenVINO on the CPU against ``reference``;
    None where OpenVINO is not installed (it is optional)."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return None
    from engine.backends.openvino_backend import OpenVinoBackend

    with OpenVinoBackend(path, input_size=config.input_size, embedding_dim=config.embedding_dim,
                         precision=precision, max_batch=DEFAULT_BATCH, input_name=config.input_name,
                         output_name=config.output_name) as backend:
        out = np.concatenate([backend.embed(images[i:i + DEFAULT_BATCH]) for i in range(0, len(images), DEFAULT_BATCH)])
    return compare_embeddings(reference, out, realness)


def embed_torch(model, images: np.ndarray, *, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
    """Embeddings of uint8 NHWC ``images`` from the PyTorch model (eval mode, no grad)."""
    import torch

    model = model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            out.append(model(torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size]))).float().numpy())
    return np.concatenate(out)


def compare_embeddings(reference: np.ndarray, candidate: np.ndarray, realness: bool = False) -> dict:
    """Cosine similarity per row (min, mean) and max absolute error between two embedding sets;
    with ``realness``, also ``realness_agree``: the share of rows whose last coordinate keeps its sign."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        raise ValueError(f"embedding shapes differ: {reference.shape} vs {candidate.shape}")
    if not np.isfinite(candidate).all():
        return {"cos_min": float("nan"), "cos_mean": float("nan"), "max_abs": float("inf"), "n": len(reference)}
    num = (reference * candidate).sum(1)
    den = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    cos = num / np.maximum(den, 1e-12)
    out = {"cos_min": float(cos.min()), "cos_mean": float(cos.mean()),
           "max_abs": float(np.abs(reference - candidate).max()), "n": int(len(reference))}
    if realness:
        out["realness_agree"] = float((np.sign(reference[:, -1]) == np.sign(candidate[:, -1])).mean())
    return out


# ------------------------------------------------------------------ validation pairs

class ValidationPairs:
    """Pairs of a pair folder, with each distinct image loaded once.

    ``images[index_a[k]]`` and ``images[index_b[k]]`` are the two images of
    pair k; ``labels``, ``types`` and ``attacks`` as in :class:`engine.datasets.Pair`.
    """

    def __init__(self, images, index_a, index_b, labels, types, attacks, source: str = ""):
        self.images, self.index_a, self.index_b = images, np.asarray(index_a), np.asarray(index_b)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.types, self.attacks, self.source = list(types), list(attacks), source

    def __len__(self) -> int:
        return len(self.labels)

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """Cosine similarity of each pair (embeddings are L2-normalised, renormalised for safety)."""
        e = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        return (e[self.index_a] * e[self.index_b]).sum(1)


def load_validation_pairs(folder: str | os.PathLike, size: int, *, crop_fraction: float = 1.0,
                          limit: int | None = None, progress: bool = True, config=None) -> ValidationPairs:
    """Read a labelled pair folder (``images/<pair_id>/{0,1}.jpg`` + ``pairs.csv``).

    Images go through :class:`engine.preprocess.Preprocessor` with the
    model's ``config`` (alignment; ``crop_fraction`` without one), as in deployment.
    """
    from engine.contract import ModelConfig
    from engine.datasets import DataError, read_pair_folder
    from engine.preprocess import Preprocessor

    pre = Preprocessor(config or ModelConfig(input_size=size, crop_fraction=crop_fraction), size=size)
    pairs = read_pair_folder(folder)
    if limit:
        pairs = pairs[:limit]
    if any(p.label is None for p in pairs):
        raise DataError(f"{folder}: validation pairs need labels (pairs.csv with pair_id,label)")
    labels = [p.label for p in pairs]
    if len(set(labels)) < 2:
        raise DataError(f"{folder}: validation pairs need both same-person (1) and other (0) labels")
    from engine.preprocess import NoFaceError

    index: dict[str, int] = {}
    for p in pairs:
        for path in (p.path_a, p.path_b):
            index.setdefault(str(path), len(index))
    images = np.empty((len(index), size, size, 3), dtype=np.uint8)
    paths = list(index)
    it = paths
    if progress:
        from tqdm import tqdm

        it = tqdm(paths, desc="validation images", unit="img", leave=False)
    faceless = set()
    for i, path in enumerate(it):
        try:
            images[i] = pre.load(path).image
        except NoFaceError:  # with alignment on: the pair is left out, as training's validation does
            faceless.add(path)
            images[i] = 0
    if faceless:
        import sys

        before = len(pairs)
        pairs = [p for p in pairs if str(p.path_a) not in faceless and str(p.path_b) not in faceless]
        labels = [p.label for p in pairs]
        print(f"validation: left out {before - len(pairs)} of {before} pairs with an image where no face is found",
              file=sys.stderr)
    return ValidationPairs(images, [index[str(p.path_a)] for p in pairs], [index[str(p.path_b)] for p in pairs],
                           labels, [p.type for p in pairs], [p.attack for p in pairs], str(folder))


def verification_metrics(pairs: ValidationPairs, embeddings: np.ndarray) -> dict:
    """EER (overall, real impostors, fakes) and its threshold, via :func:`engine.metrics.evaluate`."""
    from engine.metrics import evaluate

    types = pairs.types if any(pairs.types) else None
    attacks = pairs.attacks if any(pairs.attacks) else None
    result = evaluate(pairs.labels, pairs.scores(embeddings), types, attacks, bootstrap=0)
    return {k: result.get(k) for k in ("eer", "eer_threshold", "eer_real", "eer_fake", "roc_auc", "n_pairs")}


# ------------------------------------------------------------------ gates

def check_gates(variants: dict[str, dict], reference: dict, tolerance: float = DEFAULT_TOLERANCE,
                min_cosine: float | None = DEFAULT_MIN_COSINE,
                min_realness_agree: float | None = DEFAULT_MIN_REALNESS_AGREEMENT) -> list[str]:
    """The failures (empty list = pass) of each variant against the reference.

    ``variants[precision]`` holds ``embedding`` (from :func:`compare_embeddings`)
    and, when validation pairs were given, ``verification`` (from
    :func:`verification_metrics`); ``reference`` is the PyTorch model's
    ``verification`` (or ``{}``); ``openvino``, where present, is a second
    ``embedding`` result held to the same bounds. Records ``eer_drift`` in
    each variant that has an EER. No I/O, so it is unit-tested directly.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    failures = []
    for precision, result in variants.items():
        broken = False
        for runtime, key in (("ONNX Runtime", "embedding"), ("OpenVINO", "openvino")):
            emb = result.get(key) or {}
            if not emb:
                continue
            if not np.isfinite(emb.get("cos_min", np.nan)):
                failures.append(f"{precision}: non-finite embeddings (NaN/inf) from {runtime}")
                broken = True
                continue
            if min_cosine is not None and emb["cos_min"] < min_cosine:
                failures.append(f"{precision}: min cosine to PyTorch {emb['cos_min']:.6f} < {min_cosine} "
                                f"({runtime})")
            agree = emb.get("realness_agree")
            if min_realness_agree is not None and agree is not None and agree < min_realness_agree:
                failures.append(f"{precision}: realness coordinate keeps its sign on {agree:.2%} of images "
                                f"< {min_realness_agree:.0%} ({runtime})")
        if broken:
            continue
        ver = result.get("verification")
        if ver and reference.get("eer") is not None:
            drift = abs(ver["eer"] - reference["eer"])
            result["eer_drift"] = drift
            if drift > tolerance:
                failures.append(f"{precision}: EER {ver['eer']:.4f} vs PyTorch {reference['eer']:.4f} "
                                f"drifts by {drift:.4f} > tolerance {tolerance}")
    return failures


# ------------------------------------------------------------------ report

def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not np.isfinite(value):
            return str(value)
        return f"{value:.{digits}f}"
    return str(value)


def format_table(report: dict) -> str:
    """Markdown table: one row per variant (plus the PyTorch reference)."""
    head = ("| variant | size (MB) | time (s) | cos min | cos mean | max abs err | cos min OpenVINO "
            "| realness sign kept | EER | EER drift | EER real | EER fake | gate |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    ref = report.get("reference", {}).get("verification") or {}
    if ref:
        lines.append(f"| pytorch fp32 | - | - | 1 | 1 | 0 | - | - | {_fmt(ref.get('eer'))} | - "
                     f"| {_fmt(ref.get('eer_real'))} | {_fmt(ref.get('eer_fake'))} | reference |")
    for precision, v in report.get("variants", {}).items():
        emb, ver, ov = v.get("embedding") or {}, v.get("verification") or {}, v.get("openvino") or {}
        agree = [e["realness_agree"] for e in (emb, ov) if e.get("realness_agree") is not None]
        size = v.get("bytes")
        lines.append(
            f"| {precision} | {_fmt(size / 1e6, 2) if size else '-'} | {_fmt(v.get('seconds'), 1)} "
            f"| {_fmt(emb.get('cos_min'), 6)} | {_fmt(emb.get('cos_mean'), 6)} | {_fmt(emb.get('max_abs'), 5)} "
            f"| {_fmt(ov.get('cos_min'), 6)} | {_fmt(min(agree), 4) if agree else '-'} "
            f"| {_fmt(ver.get('eer'))} | {_fmt(v.get('eer_drift'))} | {_fmt(ver.get('eer_real'))} "
            f"| {_fmt(ver.get('eer_fake'))} | {v.get('gate', '-')} |")
    return "\n".join(lines)


def format_markdown(report: dict) -> str:
    lines = [f"# Conversion report: {report.get('checkpoint', '')}", ""]
    cfg = report.get("config", {})
    lines.append(f"Model: {cfg.get('arch')} at {cfg.get('input_size')}px, embedding dim "
                 f"{cfg.get('embedding_dim')}. Gate: EER drift <= {report.get('tolerance')} "
                 f"(absolute) against the PyTorch model, ONNX Runtime CPU.")
    lines.append("")
    ev = report.get("evaluation", {})
    lines.append(f"Embedding drift measured on {ev.get('images')} images ({ev.get('source')}); "
                 + (f"EER on {ev.get('pairs')} validation pairs from {ev.get('val_pairs')}."
                    if ev.get("pairs") else "no validation pairs given: EER not gated."))
    lines.append("")
    lines.append(format_table(report))
    if report.get("threshold") is not None:
        source = report.get("threshold_source") or "fp32 EER point on the validation pairs"
        lines += ["", f"Decision threshold (cosine): {report['threshold']:.6f}, {source}"]
    failures = report.get("failures") or []
    lines += ["", "Result: " + ("PASS" if not failures else "FAIL")]
    lines += [f"- {f}" for f in failures]
    engines = report.get("engines") or {}
    if engines:
        lines += ["", "## TensorRT engines", ""]
        for precision, e in engines.items():
            lines.append(f"- {precision}: {e.get('plan')} ({_fmt(e.get('seconds'), 1)} s, "
                         f"TensorRT {e.get('tensorrt_version')}, {e.get('gpu_name')})")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``report.json`` + ``report.md`` in ``out_dir``, each written atomically."""
    from engine.contract import write_json_atomic

    out_dir = Path(out_dir)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    write_json_atomic(json_path, json.loads(json.dumps(report, default=_json_default)))
    tmp = md_path.with_name(".report.md.tmp")
    tmp.write_text(format_markdown(report))
    os.replace(tmp, md_path)
    return json_path, md_path


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
