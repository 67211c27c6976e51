"""Checkpoint -> ONNX (FP32 / FP16 / INT8) with accuracy gates -> TensorRT engines.

``python -m convert --checkpoint RUN_DIR --out models/NAME --precision fp32,fp16,int8``
runs :func:`convert_checkpoint`: export -> simplify -> precision variants ->
accuracy gates -> (engines), and writes the folder the runtime loads::

    models/NAME/
      model.fp32.onnx  model.fp16.onnx  model.int8.onnx   (those asked for)
      model.json        input contract, preprocessing, embedding dim, threshold
      report.json  report.md                              (gates)
      model.<precision>.plan + model.<precision>.plan.json (with --engine)

The folder is built under a temporary sibling name and renamed at the end,
so a failure (bad checkpoint, corrupt file, failed gate) leaves nothing.
Heavy modules (torch, onnx, ModelOpt, TensorRT) are imported on use.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from convert.gate import DEFAULT_MIN_COSINE, DEFAULT_MIN_REALNESS_AGREEMENT

DEFAULT_PRECISIONS = ("fp32", "fp16")
TOOL = "convert"  # the output marker's name: --force replaces only model folders convert wrote
# Raw export vs simplified graph: the same arithmetic, so only float rounding may differ.
SIMPLIFY_MIN_COSINE = 0.99999
EXPORT_MIN_COSINE = 0.9999
DEFAULT_GATE_IMAGES = 256


class ConversionError(RuntimeError):
    """The conversion cannot proceed; the message names the input and the problem."""


def _log(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"[convert] {message}", file=sys.stderr, flush=True)


def parse_precisions(value) -> tuple[str, ...]:
    """``"fp32,fp16"`` or a sequence -> validated, de-duplicated tuple in canonical order."""
    from convert.precision import PRECISIONS

    items = [p.strip().lower() for p in (value.split(",") if isinstance(value, str) else value) if p.strip()]
    unknown = sorted(set(items) - set(PRECISIONS))
    if unknown:
        raise ConversionError(f"unknown precision(s) {', '.join(unknown)}; choose from {', '.join(PRECISIONS)}")
    if not items:
        raise ConversionError("no precision asked for")
    return tuple(p for p in PRECISIONS if p in items)


def _file_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def convert_checkpoint(checkpoint, out, *, precision=DEFAULT_PRECISIONS, engine: bool = False,
                       simplifier: str = "onnxslim", opset: int | None = None,
                       calib_manifest=None, calib_root=None, calib_method: str = "entropy",
                       calib_count: int | None = None, calib_batch: int = 32,
                       int8_high_precision: str = "fp32", int8_fp32_layers=(),
                       val_pairs=None, val_limit: int | None = None, tolerance: float = 0.005,
                       min_cosine: float | None = DEFAULT_MIN_COSINE,
                       min_realness_agree: float | None = DEFAULT_MIN_REALNESS_AGREEMENT,
                       gate_images: int = DEFAULT_GATE_IMAGES,
                       engine_options: dict | None = None, force: bool = False, quiet: bool = False,
                       verbose: bool = False) -> dict:
    """Convert the run folder ``checkpoint`` into the model folder ``out``; returns the report.

    ``precision``: which ONNX variants to write (the FP32 graph is always
    made, as the base of the others, and always gated). INT8 needs
    ``calib_manifest`` + ``calib_root`` (the data root its paths are
    relative to). ``val_pairs``: a labelled pair folder
    (``images/<pair_id>/{0,1}.jpg`` + ``pairs.csv``) for the EER gate and the
    decision threshold. ``engine_options``: keyword arguments of
    :func:`convert.tensorrt_build.build_engine` (batch profile, cache, flags).
    Raises :class:`ConversionError`, :class:`engine.contract.ContractError`,
    :class:`convert.gate.GateError` and friends with messages naming the input.
    """
    import numpy as np

    from convert import gate
    from convert.export import DEFAULT_OPSET, export_onnx, load_checkpoint
    from convert.precision import CALIB_METHODS, convert_fp16, modelopt_version, quantize_int8
    from convert.simplify import SIMPLIFIERS, simplify_onnx
    from engine.contract import check_onnx

    started = time.perf_counter()
    precisions = parse_precisions(precision)
    checkpoint, out = Path(checkpoint), Path(out)
    if tolerance < 0:
        raise ConversionError(f"tolerance must be >= 0, got {tolerance}")
    if simplifier not in SIMPLIFIERS:
        raise ConversionError(f"unknown simplifier {simplifier!r}; choose one of {', '.join(SIMPLIFIERS)}")
    if calib_method not in CALIB_METHODS:
        raise ConversionError(f"calibration method {calib_method!r} is not offered by ModelOpt for INT8; "
                              f"choose one of {', '.join(CALIB_METHODS)}")
    if "int8" in precisions and not calib_manifest:
        raise ConversionError("int8 needs calibration images: pass --calib-manifest calib_data/manifest.csv "
                              "and --calib-root DATA (make the manifest with python -m convert.calibration)")
    if calib_manifest and not calib_root:
        raise ConversionError("--calib-manifest needs --calib-root: the data root its paths are relative to")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ConversionError(f"{out}: already exists and is not empty; pass --force to replace it")
    from engine.files import FileRefused, check_replaceable

    try:  # --force replaces an earlier model folder of convert's only, never one holding an input
        check_replaceable(out, TOOL, [p for p in (checkpoint, calib_manifest, val_pairs) if p])
    except FileRefused as exc:
        raise ConversionError(str(exc)) from None
    engine_options = dict(engine_options or {})
    if engine:
        from convert.tensorrt_build import check_build_environment

        env = check_build_environment(engine_options.get("device", 0))  # fail before the slow steps
        _log(f"TensorRT {env['tensorrt_version']} on {env['gpu_name']} (sm {env['compute_capability']})", quiet)

    # ---------------------------------------------------------------- inputs
    _log(f"loading checkpoint {checkpoint}", quiet)
    model = load_checkpoint(checkpoint)
    config = model.config
    size = config.input_size

    calibration = None
    if calib_manifest:
        from convert.calibration import load_calibration_images, read_manifest

        rows = read_manifest(calib_manifest)
        if calib_count and calib_count < len(rows):
            # Evenly spaced rows: the manifest is sorted by identity, so a prefix would not be stratified.
            keep = np.unique(np.linspace(0, len(rows) - 1, calib_count).round().astype(int))
            rows = [rows[i] for i in keep]
        _log(f"reading {len(rows)} calibration images from {calib_root}", quiet)
        calibration = load_calibration_images(rows, calib_root, size, crop_fraction=config.crop_fraction,
                                              progress=not quiet, config=config)

    pairs = None
    if val_pairs:
        _log(f"reading validation pairs {val_pairs}", quiet)
        pairs = gate.load_validation_pairs(val_pairs, size, crop_fraction=config.crop_fraction, limit=val_limit,
                                           progress=not quiet, config=config)

    if pairs is not None:
        eval_images, eval_source = pairs.images[:gate_images], f"validation pairs {val_pairs}"
    elif calibration is not None:
        eval_images, eval_source = calibration[:gate_images], f"calibration images {calib_manifest}"
    else:
        rng = np.random.default_rng(0)
        eval_images = rng.integers(0, 256, (min(gate_images, 64), size, size, 3), dtype=np.uint8)
        eval_source = "random uint8 images (no validation pairs or calibration data given)"
    # AutoCast's reference run decides which nodes overflow FP16: real images if we have any.
    reference_images = calibration if calibration is not None else eval_images

    report: dict = {
        "checkpoint": str(checkpoint), "config": config.to_dict(), "precisions": list(precisions),
        "tolerance": tolerance, "min_cosine": min_cosine, "min_realness_agree": min_realness_agree,
        "simplifier": simplifier,
        "modelopt_version": modelopt_version(),
        "evaluation": {"images": int(len(eval_images)), "source": eval_source,
                       "pairs": len(pairs) if pairs is not None else 0,
                       "val_pairs": str(val_pairs) if val_pairs else None},
        "steps": {}, "variants": {},
    }

    out.parent.mkdir(parents=True, exist_ok=True)
    # Build folders of killed runs: .OUT.tmp-<pid>-XXXXXXXX of a dead pid, or the older pid-less
    # .OUT.tmp-XXXXXXXX (mkdtemp's 8 characters); a live run's folder is left alone.
    from engine.datasets import remove_orphans

    name = re.escape(f".{out.name}.tmp-")
    remove_orphans(out.parent, re.compile(rf"{name}(?:(?P<pid>[0-9]+)-)?[a-z0-9_]{{8}}"))
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        # ------------------------------------------------------------ export + simplify
        _log("PyTorch reference embeddings", quiet)
        t = time.perf_counter()
        # Computed once; eval_images is a prefix of pairs.images.
        ref_all = gate.embed_torch(model, pairs.images) if pairs is not None else None
        reference = ref_all[: len(eval_images)] if ref_all is not None else gate.embed_torch(model, eval_images)
        report["steps"]["reference"] = {"backend": "pytorch", "seconds": round(time.perf_counter() - t, 2)}
        # Canaries: FP32 embeddings of fixed drawn images, checked by the runtime when it opens a backend.
        from engine.canary import canary_images, canary_record

        report["canary"] = canary_record(gate.embed_torch(model, canary_images(config.input_size)))
        t = time.perf_counter()
        _log("exporting to ONNX", quiet)
        raw = work / "export.raw.onnx"
        report["steps"]["export"] = export_onnx(model, raw, opset=opset or DEFAULT_OPSET, config=config)
        raw_parity = gate.compare_embeddings(reference, gate.embed_onnx(raw, eval_images))
        report["steps"]["export"].update(seconds=round(time.perf_counter() - t, 2), parity=raw_parity)
        if not raw_parity["cos_min"] >= EXPORT_MIN_COSINE:
            raise ConversionError(f"exported ONNX disagrees with PyTorch: min cosine {raw_parity['cos_min']:.6f} "
                                  f"< {EXPORT_MIN_COSINE}")

        t = time.perf_counter()
        _log(f"simplifying with {simplifier}", quiet)
        fp32 = work / "model.fp32.onnx"
        report["steps"]["simplify"] = simplify_onnx(raw, fp32, simplifier=simplifier, config=config)
        simp_parity = gate.compare_embeddings(gate.embed_onnx(raw, eval_images), gate.embed_onnx(fp32, eval_images))
        report["steps"]["simplify"].update(seconds=round(time.perf_counter() - t, 2), parity=simp_parity)
        if not simp_parity["cos_min"] >= SIMPLIFY_MIN_COSINE:
            raise ConversionError(f"{simplifier} changed the model: min cosine {simp_parity['cos_min']:.7f} vs the "
                                  f"unsimplified graph (< {SIMPLIFY_MIN_COSINE}); try --simplifier "
                                  f"{'onnxsim' if simplifier == 'onnxslim' else 'onnxslim'} or none")
        raw.unlink()

        # ------------------------------------------------------------ variants
        files = {"fp32": fp32}
        timings = {"fp32": report["steps"]["export"]["seconds"] + report["steps"]["simplify"]["seconds"]}
        if "fp16" in precisions:
            t = time.perf_counter()
            _log("FP16 variant (ModelOpt AutoCast, CPU)", quiet)
            files["fp16"] = work / "model.fp16.onnx"
            report["steps"]["fp16"] = convert_fp16(fp32, files["fp16"], reference_images, config=config,
                                                   verbose=verbose)
            timings["fp16"] = round(time.perf_counter() - t, 2)
        if "int8" in precisions:
            t = time.perf_counter()
            _log(f"INT8 variant (ModelOpt PTQ, {calib_method} calibration on {len(calibration)} images, CPU)", quiet)
            files["int8"] = work / "model.int8.onnx"
            report["steps"]["int8"] = quantize_int8(fp32, files["int8"], calibration, config=config,
                                                    method=calib_method, high_precision=int8_high_precision,
                                                    calib_batch=calib_batch, fp32_layers=int8_fp32_layers,
                                                    verbose=verbose)
            timings["int8"] = round(time.perf_counter() - t, 2)

        # ------------------------------------------------------------ gates
        t = time.perf_counter()
        _log("accuracy gates (ONNX Runtime CPU vs PyTorch)", quiet)
        ref_verification = {}
        if pairs is not None:
            ref_verification = gate.verification_metrics(pairs, ref_all)
        report["reference"] = {"backend": "pytorch", "verification": ref_verification}
        if pairs is not None:
            report["evaluation"]["images"] = int(len(pairs.images))
        realness = config.realness_weight > 0
        for p, path in files.items():
            check_onnx(path, config)
            images, ref = (pairs.images, ref_all) if pairs is not None else (eval_images, reference)
            out_p = gate.embed_onnx(path, images)
            emb = gate.compare_embeddings(ref, out_p, realness)
            # every validation image: drift and EER from one pass
            ver = gate.verification_metrics(pairs, out_p) if pairs is not None else None
            report["variants"][p] = {"file": path.name, "bytes": _file_size(path), "seconds": timings[p],
                                     "written": p in precisions, "embedding": emb, "verification": ver,
                                     "openvino": gate.openvino_parity(path, images, ref, config, p, realness)}
        failures = gate.check_gates(report["variants"], ref_verification, tolerance, min_cosine, min_realness_agree)
        for p, v in report["variants"].items():
            v["gate"] = "FAIL" if any(f.startswith(f"{p}:") for f in failures) else "pass"
        report["failures"] = failures
        report["steps"]["gates"] = {"seconds": round(time.perf_counter() - t, 2)}
        if failures:
            raise gate.GateError("accuracy gate failed:\n  " + "\n  ".join(failures)
                                 + "\n\n" + gate.format_table(report))

        # ------------------------------------------------------------ threshold + model.json
        rule = config.extra.get("threshold_rule") if config.threshold is not None else None
        if rule:
            # Calibrated on purpose (training.realness: a false match rate on never-trained identities):
            # the EER of these pairs is a different operating point, kept per variant in `thresholds`.
            threshold = config.threshold
            threshold_source = f"carried from {checkpoint / 'model.json'} ({rule})"
        elif pairs is not None:
            # An EER threshold of raw cosines can round past 1 (a collapsed model); the contract wants [-1, 1].
            threshold = min(1.0, max(-1.0, report["variants"]["fp32"]["verification"]["eer_threshold"]))
            threshold_source = f"fp32 ONNX EER threshold on {len(pairs)} validation pairs ({val_pairs})"
        else:
            threshold = config.threshold
            threshold_source = f"carried from {checkpoint / 'model.json'}" if threshold is not None else "none"
        report["threshold"], report["threshold_source"] = threshold, threshold_source
        if "fp32" not in precisions:
            fp32.unlink()

        # ------------------------------------------------------------ engines
        report["engines"] = {}
        if engine:
            from convert.tensorrt_build import build_engine

            for p in precisions:
                _log(f"TensorRT engine for {p}", quiet)
                plan = work / f"model.{p}.plan"
                sidecar = build_engine(files[p], plan, precision=p, config=config, verbose=verbose, **engine_options)
                report["engines"][p] = {"plan": plan.name, "bytes": _file_size(plan),
                                        "seconds": sidecar["build_seconds"],
                                        "tensorrt_version": sidecar["tensorrt_version"],
                                        "gpu_name": sidecar["gpu_name"]}

        report["seconds"] = round(time.perf_counter() - started, 2)
        _write_model_json(config, work, precisions, report, threshold, threshold_source, checkpoint)
        gate.write_report(report, work)
        from engine.files import mark_output

        mark_output(work, TOOL)
        _replace_dir(work, out)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    _log(f"wrote {out} in {report['seconds']:.1f} s", quiet)
    return report


def _write_model_json(config, work: Path, precisions, report: dict, threshold, threshold_source: str,
                      checkpoint: Path) -> None:
    import dataclasses

    from engine.integrity import sha256_file

    variants = report["variants"]
    extra = dict(config.extra)
    extra.update({
        "precisions": list(precisions),
        "files": {p: f"model.{p}.onnx" for p in precisions},
        "onnx_sha256": {p: sha256_file(work / f"model.{p}.onnx") for p in precisions},
        "engines": {p: e["plan"] for p, e in report.get("engines", {}).items()},
        "threshold_source": threshold_source,
        "thresholds": {p: (variants[p].get("verification") or {}).get("eer_threshold") for p in precisions},
        "gate": {
            "passed": not report["failures"],
            "tolerance": report["tolerance"],
            "reference_eer": (report["reference"]["verification"] or {}).get("eer"),
            "eer": {p: (variants[p].get("verification") or {}).get("eer") for p in precisions},
            "cos_min": {p: variants[p]["embedding"]["cos_min"] for p in precisions},
            "cos_mean": {p: variants[p]["embedding"]["cos_mean"] for p in precisions},
            "cos_min_openvino": {p: (variants[p].get("openvino") or {}).get("cos_min") for p in precisions},
        },
        "canary": report["canary"],
        "source_checkpoint": str(checkpoint),
    })
    dataclasses.replace(config, threshold=threshold, extra=extra).save(work / "model.json")


def _replace_dir(work: Path, out: Path) -> None:
    """Move the finished folder into place; an existing ``out`` (with --force) is swapped out first.

    ``work`` came from ``mkdtemp`` (mode 0700, private); the model folder gets
    the umask's default mode, as ``mkdir`` would have given it.
    """
    from engine.files import current_umask

    os.chmod(work, 0o777 & ~current_umask())
    if out.exists() or out.is_symlink():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        try:
            os.replace(work, out)
        except Exception:
            os.replace(old, out)
            raise
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.replace(work, out)
