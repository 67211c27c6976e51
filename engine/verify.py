"""``python -m engine.verify``: similarities, decisions, submissions and evaluations from images.

Three ways to call it (one per run):

* ``IMG_A IMG_B``: similarity and decision for two images. Exit code 0 =
  same person, 1 = not the same person, 2 = any error (130 = interrupted):
  1 never means anything but the decision. ``--json`` prints one JSON
  object (``similarity``, ``match``, ``threshold``, ``backend``, ``precision``,
  ``model`` ...), or ``{"error": ...}``; never NaN or Infinity.
* ``--pairs DIR`` (Kryptonite ``test_public`` layout, ``DIR/images/<pair_id>/0.jpg,1.jpg``):
  ``--out FILE`` writes the submission CSV ``pair_id,similarity`` (sorted,
  one row per pair, written atomically); with ``--labels CSV`` (or
  ``DIR/pairs.csv``) also the full evaluation.
* ``--lfw DIR --lfw-pairs FILE``: evaluation on the LFW protocol (adds 10-fold accuracy).

Evaluations print the metrics and throughput (pairs/s, images/s); ``--report
DIR`` writes metrics.json/.md and ROC/DET/score plots. Images that cannot be
read are reported with the reason and their pairs are left out of the
evaluation; in a submission they get similarity -1 (the "not the same person"
end of the scale), so the file stays complete. ``--strict`` stops at the
first such image instead. Oversized images (by their header), blank (one
colour) images under ``--align none`` and faceless ones under ``--align face``
are such images. ``--out``, ``--report``, ``--cache`` and ``--batch-size`` are
checked before the first image is read.
"""
from __future__ import annotations

import argparse
import errno
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from engine.files import printable

EXIT_MATCH, EXIT_NO_MATCH, EXIT_ERROR = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C
FAILED_PAIR_SCORE = -1.0
# CPU backends run a batch as one call: past this, buffers and activations take
# gigabytes with no gain in throughput (which saturates near batch 32-64 here).
MAX_CPU_BATCH = 1024
# Counts a user types, bounded so a typo cannot exhaust the machine (both went past 3 GB in under 25 s):
# decode threads each hold a batch of decoded photos; bootstrap resamples hold one index array each.
MAX_WORKERS = 64
MAX_BOOTSTRAP = 100_000


class UsageError(ValueError):
    """Flags that do not make sense together."""


class VerificationError(ValueError):
    """A job that cannot give a trustworthy result (unusable image, non-finite score); the message names the input."""


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity, clipped to [-1, 1] (embeddings are already ~unit length)."""
    num = np.einsum("ij,ij->i", a, b, dtype=np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.clip(num / den, -1.0, 1.0)


def _err(message: str) -> None:
    print(f"engine.verify: {printable(message)}", file=sys.stderr)


def _check_usage(image_a, image_b, pairs, out, labels, lfw, lfw_pairs, report) -> str:
    modes = [name for name, on in (("IMG_A IMG_B", image_a is not None), ("--pairs", pairs is not None),
                                   ("--lfw", lfw is not None)) if on]
    if len(modes) != 1:
        raise UsageError("give exactly one of: two images (IMG_A IMG_B), --pairs DIR, --lfw DIR"
                         + (f" (got {', '.join(modes)})" if modes else ""))
    if image_a is not None and image_b is None:
        raise UsageError("two images are needed: IMG_A IMG_B")
    if out is not None and pairs is None:
        raise UsageError("--out writes a submission for --pairs")
    if labels is not None and pairs is None:
        raise UsageError("--labels goes with --pairs (for LFW use --lfw-pairs)")
    if (lfw is None) != (lfw_pairs is None):
        raise UsageError("--lfw DIR and --lfw-pairs FILE go together")
    if report is not None and image_a is not None:
        raise UsageError("--report is for evaluations (--pairs with labels, or --lfw)")
    return "images" if image_a is not None else "pairs" if pairs is not None else "lfw"


def verify(image_a=None, image_b=None, *, pairs=None, out=None, labels=None, lfw=None, lfw_pairs=None,
           lfw_folds: str | None = None, report=None,
           json_output: bool = False, model=None, backend: str = "auto", precision: str | None = None,
           device: str | None = None, threshold: float | None = None, batch_size: int | None = None,
           workers: int | None = None, strict: bool = False, cache=None, bootstrap: int = 1000,
           progress: bool = True, align: str | None = None, fps: float | None = None,
           frames: int | None = None) -> int:
    """Run one verification job (see the module docstring); returns the process exit code.

    Every failure, expected or not, ends here as exit 2 (130 for Ctrl-C) with
    one line naming the input and the problem (and ``{"error": ...}`` with
    ``--json``): in two-image mode exit 1 must only ever mean "not the same person".
    """
    inputs = f"{image_a}, {image_b}" if image_b is not None else str(pairs or lfw_pairs or lfw or image_a)
    try:
        return _run(image_a, image_b, pairs=pairs, out=out, labels=labels, lfw=lfw, lfw_pairs=lfw_pairs,
                    lfw_folds=lfw_folds, report=report, json_output=json_output, model=model, backend=backend,
                    precision=precision, device=device, threshold=threshold, batch_size=batch_size,
                    workers=workers, strict=strict, cache=cache, bootstrap=bootstrap, progress=progress,
                    align=align, fps=fps, frames=frames)
    except KeyboardInterrupt:
        return _fail("interrupted", json_output, EXIT_INTERRUPTED)
    except MemoryError as exc:
        return _fail(f"{inputs}: out of memory{f' ({exc})' if str(exc) else ''}; try a smaller --batch-size",
                     json_output)
    except Exception as exc:  # expected or a bug: one line either way, and never exit 1
        if isinstance(exc, OSError) and exc.filename is None and exc.errno in _OUTPUT_ERRNOS:
            raise  # printing the result failed (stdout on a full disk, a broken pipe): main() says so, once
        return _fail(_describe_error(exc, inputs), json_output)


# What a failed write to stdout raises (a file's own errors carry its name).
_OUTPUT_ERRNOS = (errno.ENOSPC, errno.EPIPE, errno.EBADF, errno.EIO, errno.EDQUOT, errno.EFBIG)


def _describe_error(exc: Exception, inputs: str) -> str:
    """The project's own errors (ContractError, ImageError, BackendError, ...) already name their input;
    an OSError names its file; anything else gets the job's input and its type."""
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    # "__main__": this module's UsageError/VerificationError under `python -m engine.verify`
    if type(exc).__module__.split(".")[0] in ("engine", "convert", "training", "__main__") and str(exc):
        return str(exc)
    return f"{inputs}: {type(exc).__name__}: {exc}" if str(exc) else f"{inputs}: {type(exc).__name__}"


def _fail(message: str, json_output: bool, code: int | None = None) -> int:
    # One line, whatever the exception held; ASCII whitespace only (str.split would also turn NEL,
    # U+2028 and the like into spaces, which printable() shows escaped instead).
    message = " ".join(re.split(r"[ \t\n\r\f\v]+", str(message))).strip()
    _err(f"error: {message}")
    if json_output:
        print(json.dumps({"error": message}))
    return EXIT_ERROR if code is None else code


def _run(image_a, image_b, *, pairs, out, labels, lfw, lfw_pairs, lfw_folds, report, json_output, model, backend,
         precision, device, threshold, batch_size, workers, strict, cache, bootstrap, progress, align,
         fps=None, frames=None) -> int:
    from engine.backends import open_backend
    from engine.embedder import Embedder
    from engine.preprocess import check_file

    mode = _check_usage(image_a, image_b, pairs, out, labels, lfw, lfw_pairs, report)
    if mode == "images":
        from engine.video import looks_like_video

        clips = [p for p in (image_a, image_b) if looks_like_video(p)]
        if clips:
            return _clip(image_a, image_b, clips, json_output=json_output, model=model, backend=backend,
                         precision=precision, device=device, threshold=threshold, fps=fps, frames=frames)
    if fps is not None or frames is not None:
        raise UsageError("--fps and --frames are for a video clip (IMG_A PHOTO CLIP)")
    if threshold is not None and not (math.isfinite(threshold) and -1.0 <= threshold <= 1.0):
        # a cosine threshold outside [-1, 1] decides every pair the same way, whatever the photos
        raise UsageError(f"--threshold must be a cosine similarity in [-1, 1], got {threshold}")
    for flag, value in (("--batch-size", batch_size), ("--workers", workers)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    if workers is not None and workers > MAX_WORKERS:
        raise UsageError(f"--workers must be <= {MAX_WORKERS}, got {workers}")
    if not 0 <= bootstrap <= MAX_BOOTSTRAP:
        raise UsageError(f"--bootstrap must be in [0, {MAX_BOOTSTRAP}], got {bootstrap}")
    if lfw_folds is not None and mode != "lfw":
        raise UsageError("--lfw-folds goes with --lfw")
    if align not in (None, "face", "none"):
        raise UsageError(f"--align must be face or none, got {align!r}")
    # Where results go is checked before any image is read: a long run must not fail at its end.
    if out is not None:
        check_output_file(out, "--out")
    if report is not None:
        from engine.report import REPORT_FILES

        check_output_folder(report, "--report", REPORT_FILES)
    if cache is not None:
        check_output_folder(cache, "--cache")
    job = _load_pairs(mode, pairs, labels, lfw, lfw_pairs, lfw_folds) if mode != "images" else None
    if out is not None and job:
        label_file = labels if labels is not None else Path(pairs) / "pairs.csv"  # read_pair_folder's default
        _refuse_overwriting_inputs(out, [p for pair in job for p in (pair.path_a, pair.path_b)] + [label_file])
    for p in (image_a, image_b) if mode == "images" else ():
        check_file(p)  # says what it is: no such file, a directory, a FIFO, a symlink loop, too large
    if batch_size is not None:
        check_batch_size(batch_size, model, backend, precision)
    from engine.embedder import default_workers

    threads = workers or default_workers()
    pre, warming = _warm_detectors(model, align, min(threads, 2) if mode == "images" else threads)
    try:
        be = open_backend(model, backend=backend, precision=precision, device=device, max_batch=batch_size)
    except BaseException:
        _drop(pre, warming)
        raise
    try:
        if batch_size is not None and batch_size > be.max_batch:  # a backend that caps what it was asked for
            raise UsageError(f"--batch-size {batch_size} is more than the {be.name} backend takes "
                             f"({be.max_batch}, {be.source.path})")
        if align is not None and align != be.config.align:
            import dataclasses

            _err(f"alignment {align} (asked for; the model's model.json says {be.config.align})")
            be.config = dataclasses.replace(be.config, align=align)
        runs = be.executed_precision
        _err(f"backend {be.choice.backend} ({be.choice.precision}{'' if runs == be.precision else f', runs {runs}'}, "
             f"{be.device}): {be.choice.reason}; model {be.source.path}")
        thr = threshold if threshold is not None else be.config.threshold
        if be.config.align == "face":  # once, here, not as every image's failure after the work starts
            from engine.detect import detector_path

            if not detector_path(be.config.detector).is_file():
                raise VerificationError(f"{be.source.path}: model.json names the detector {be.config.detector!r}, "
                                        f"which is not shipped (engine/models/detector/)")
        if warming is not None:
            warming.join()
        if pre is not None and (pre.size != be.input_size or pre.config.detector != be.config.detector):
            pre.close()  # the backend read another configuration than model.json alone gave
            pre = None
        if pre is not None:
            pre.config = be.config
        embedder = Embedder(be, workers=workers, strict=strict, cache_dir=cache, batch_size=batch_size,
                            progress=progress, preprocessor=pre)
    except BaseException:
        _drop(pre, warming)
        be.close()
        raise
    with embedder:  # owns the backend from here on
        if mode == "images":
            return _two_images(embedder, image_a, image_b, thr, json_output)
        return _pair_job(embedder, job, mode, out, report, thr, json_output, bootstrap)


def _warm_detectors(model, align, threads: int):
    """A Preprocessor for ``model`` whose face detectors open in a thread while the main thread opens the backend.

    The two overlap (OpenVINO's compile and ONNX Runtime's session set-up
    release the GIL): 0.03 s of a 0.6 s two-image call on the 2-core EPYC.
    (None, None) when ``model.json`` alone does not say how to preprocess;
    the embedder then makes its own.
    """
    import dataclasses
    import threading

    from engine.backends import resolve_model
    from engine.preprocess import Preprocessor

    try:
        cfg = resolve_model(model).config
    except Exception:  # open_backend reports what is wrong with the model
        return None, None
    if cfg is None:
        return None, None
    if align is not None:
        cfg = dataclasses.replace(cfg, align=align)
    pre = Preprocessor(cfg, refuse_non_faces=True)
    warming = threading.Thread(target=pre.warm, args=(threads,), name="warm-detectors", daemon=True)
    warming.start()
    return pre, warming


def _drop(pre, warming) -> None:
    if warming is not None:
        warming.join()
    if pre is not None:
        pre.close()


def _writable_folder(folder: Path) -> bool:
    """May this process create files in ``folder``? (os.access: also right for root and read-only mounts)."""
    return os.access(folder, os.W_OK | os.X_OK)


def check_output_file(path, flag: str) -> None:
    """Refuse, before any work, an output file that could not be written at the end (UsageError naming ``flag``)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a folder, expected a file name")
    if path.exists() and not path.is_file():
        raise UsageError(f"{flag} {path}: exists and is not a regular file")
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: folder {parent} does not exist")
    if not _writable_folder(parent):
        raise UsageError(f"{flag} {path}: folder {parent} is not writable")


def check_output_folder(path, flag: str, files: tuple[str, ...] = ()) -> None:
    """Refuse, before any work, an output folder that is a file, a device or read-only (it may not exist yet),
    or in which one of the ``files`` to be written exists as something other than a regular file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        kind = "a file" if path.is_file() else "not a folder (a device or other special file)"
        raise UsageError(f"{flag} {path}: is {kind}, expected a folder")
    for name in files:
        target = path / name
        if target.exists() and not target.is_file():
            raise UsageError(f"{flag} {path}: {target} exists and is not a regular file, so it cannot be written")
    existing = path
    while not existing.exists():  # the folder is made when results are written: its nearest existing parent
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag} {path}: {existing} is not a folder")
    if not _writable_folder(existing):
        raise UsageError(f"{flag} {path}: {existing} is not writable")


def _refuse_overwriting_inputs(out, inputs) -> None:
    """``--out`` naming one of the job's own input files (an image, the labels) would destroy it."""
    try:
        st = os.stat(out)
    except OSError:
        return  # a new file: nothing to overwrite
    for p in inputs:
        try:
            other = os.stat(p)
        except OSError:
            continue
        if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
            raise UsageError(f"--out {out}: is one of the job's inputs ({p}); choose another file name")


def check_batch_size(batch_size: int, model, backend: str, precision: str | None) -> None:
    """Refuse a batch size the chosen backend cannot run, before it allocates buffers for it.

    TensorRT: the plan's optimisation-profile maximum (from its sidecar). CPU
    backends take any size, but their batch buffers and activations grow with
    it while throughput stops growing near 32-64: :data:`MAX_CPU_BATCH` bounds it.
    """
    from engine.backends import choose, resolve_model

    src = resolve_model(model)
    choice = choose(src, backend, precision)
    if choice.backend == "tensorrt":
        from engine.backends.tensorrt_backend import read_sidecar

        plan = src.plans[choice.precision]
        try:
            limit = int(read_sidecar(plan)["profile"]["max"][0])
        except (KeyError, IndexError, TypeError, ValueError):
            return  # no profile in the sidecar: the backend checks the plan itself when it opens
        where = f"the profile maximum of {plan}"
    else:
        limit, where = MAX_CPU_BATCH, f"the limit for the {choice.backend} backend"
    if batch_size > limit:
        raise UsageError(f"--batch-size {batch_size} is over {where} ({limit})")


def _describe(be) -> dict:
    out = {"backend": be.name, "precision": be.precision, "executed_precision": be.executed_precision,
           "device": be.device, "model": str(be.source.path)}
    if getattr(be, "canary_cosine", None) is not None:
        out["canary_cosine"] = round(float(be.canary_cosine), 6)
    return out


def _two_images(embedder, image_a, image_b, thr, json_output) -> int:
    from engine.api import decide

    res = embedder.embed_paths([image_a, image_b], desc="images")
    if res.failures:
        raise VerificationError("; ".join(str(f) for f in res.failures))
    for warning in res.warnings:
        _err(f"warning: {warning}")
    weight = embedder.backend.config.realness_weight
    try:  # the decision rule of the Python API and the server (engine.api.decide)
        verdict = decide(res.embeddings, thr if thr is not None else 1.0, weight)
    except ValueError:  # a zero or non-finite embedding: no decision can be read from it
        sim = float(cosine(res.embeddings[:1], res.embeddings[1:])[0])
        raise VerificationError(f"{image_a}, {image_b}: similarity is {sim}: the model returned a zero or "
                                f"non-finite embedding") from None
    sim = verdict.similarity
    match = None if thr is None else verdict.match
    info = {"similarity": sim, "match": match, "threshold": thr, **_describe(embedder.backend),
            "image_a": str(image_a), "image_b": str(image_b)}
    if weight > 0:  # +1 real ... -1 fake per image; looks_fake: a refusal the coordinate explains
        info["realness"] = {"image_a": round(verdict.realness[0], 4), "image_b": round(verdict.realness[1], 4)}
        info["looks_fake"] = bool(match is False and verdict.looks_fake)
    if res.faces:
        info["detection"] = {"image_a": res.faces.get(Path(image_a)), "image_b": res.faces.get(Path(image_b))}
    if res.warnings:
        info["warnings"] = res.warnings
    no_threshold = "no decision threshold: the model's model.json has none; pass --threshold"
    if json_output:
        print(json.dumps({"error": no_threshold, **info} if thr is None else info, allow_nan=False))
    else:
        print(f"similarity: {sim:.4f}")
        if thr is None:
            print("decision:   none (no threshold: the model has none calibrated; pass --threshold)")
        else:
            verdict_text = "same person" if match else "different people (or a fake)"
            print(f"decision:   {verdict_text} (threshold {thr:.4f})")
    if thr is None:
        _err(f"error: {no_threshold}")
        return EXIT_ERROR
    return EXIT_MATCH if match else EXIT_NO_MATCH


def _clip(image_a, image_b, clips, *, json_output, model, backend, precision, device, threshold, fps, frames) -> int:
    """A reference photo against the person in a video clip (engine.video): one decision, and the timeline."""
    from engine.api import FaceVerifier
    from engine.video import DEFAULT_FPS, DEFAULT_MAX_FRAMES, MAX_FRAMES

    if len(clips) == 2:
        raise UsageError("compare a photo with a clip: two clips are not supported yet")
    fps = DEFAULT_FPS if fps is None else fps
    frames = DEFAULT_MAX_FRAMES if frames is None else frames
    if not (math.isfinite(fps) and 0 < fps <= 60):
        raise UsageError(f"--fps must be in (0, 60], got {fps}")
    if not 1 <= frames <= MAX_FRAMES:
        raise UsageError(f"--frames must be in [1, {MAX_FRAMES}], got {frames}")
    if threshold is not None and not (math.isfinite(threshold) and -1.0 <= threshold <= 1.0):
        raise UsageError(f"--threshold must be a cosine similarity in [-1, 1], got {threshold}")
    clip = clips[0]
    photo = image_b if clip == image_a else image_a
    from engine.preprocess import check_file
    from engine.video import probe

    check_file(photo)
    probe(clip)[0].release()  # the clip's header is checked before the model opens
    with FaceVerifier(model, backend=backend, precision=precision, device=device, threshold=threshold) as fv:
        result = fv.verify_video(photo, clip, fps, frames)
        backend_info = _describe(fv._backend)
    fields = result.to_dict()
    info = {"match": result.match, "threshold": result.threshold, "photo": str(photo), "clip": str(clip),
            **{k: v for k, v in fields.items() if k not in ("match", "threshold", "frames")},
            **backend_info, "timeline": fields["frames"]}
    if json_output:
        print(json.dumps(info, allow_nan=False))
    else:
        print(f"frames:     {result.faced} with a face of {len(result.frames)} sampled; "
              f"{result.agree:.0%} match, {result.fake_share:.0%} look fake")
        print(f"similarity: {result.median_similarity:.4f} (median)")
        verdict = "same person" if result.match else (
            "not the same person: the clip looks fake" if result.looks_fake else "different people (or a fake)")
        print(f"decision:   {verdict} (threshold {result.threshold:.4f})")
        if result.changes:
            print(f"warning:    the face changes at {', '.join(f'{t:.2f} s' for t in result.changes)}")
    return EXIT_MATCH if result.match else EXIT_NO_MATCH


def parse_folds(text: str) -> set[int]:
    """``"1"`` or ``"1,3"`` (1-based LFW folds, as in the pairs file) -> 0-based fold ids."""
    try:
        folds = {int(t) for t in text.split(",") if t.strip()}
    except ValueError:
        raise UsageError(f"--lfw-folds: expected comma-separated fold numbers 1-10, got {text!r}") from None
    if not folds or not folds <= set(range(1, 11)):
        raise UsageError(f"--lfw-folds: fold numbers must be 1-10, got {text!r}")
    return {f - 1 for f in folds}


def _load_pairs(mode, pairs, labels, lfw, lfw_pairs, lfw_folds=None):
    from engine.datasets import read_lfw_pairs, read_pair_folder

    if mode == "pairs":
        job = read_pair_folder(pairs, labels)
    else:
        job = read_lfw_pairs(lfw, lfw_pairs)
        if lfw_folds is not None:  # e.g. only the folds whose identities the model never saw
            keep = parse_folds(lfw_folds)
            job = [p for p in job if p.fold in keep]
    if not job:
        raise VerificationError(f"{pairs or lfw_pairs}: no pairs found")
    return job


def _pair_job(embedder, job, mode, out, report, thr, json_output, bootstrap) -> int:
    start = time.perf_counter()
    paths = [p for pair in job for p in (pair.path_a, pair.path_b)]
    res = embedder.embed_paths(paths, desc="pairs")
    emb_a, emb_b = res.embeddings[0::2], res.embeddings[1::2]
    scored = res.ok[0::2] & res.ok[1::2]
    scores = np.full(len(job), FAILED_PAIR_SCORE)
    if scored.any():
        scores[scored] = cosine(emb_a[scored], emb_b[scored])
    nonfinite = np.flatnonzero(~np.isfinite(scores))
    if nonfinite.size:  # never a NaN in a submission, an evaluation or the JSON
        pair = job[int(nonfinite[0])]
        raise VerificationError(f"pair {pair.pair_id} ({pair.path_a}, {pair.path_b}): similarity is "
                         f"{scores[nonfinite[0]]}: the model returned a zero or non-finite embedding "
                         f"({nonfinite.size} such pair(s))")
    seconds = time.perf_counter() - start
    for failure in res.failures:
        _err(f"skipped image {failure}")
    for warning in res.warnings:
        _err(f"warning: {warning}")
    n_failed = int((~scored).sum())
    if n_failed and scored.any():  # with none scored the error below says it all: nothing is written
        _err(f"{n_failed} of {len(job)} pairs have an unusable image"
             + (f"; they get similarity {FAILED_PAIR_SCORE} in the submission" if out else "")
             + ("; left out of the evaluation" if job[0].label is not None else ""))
    summary = {"pairs": len(job), "pairs_scored": int(scored.sum()), "images": res.n_embedded + res.n_cached,
               "images_failed": len(res.failures), "images_cached": res.n_cached, "warnings": len(res.warnings),
               "seconds": round(seconds, 3),
               "pairs_per_s": round(len(job) / seconds, 1) if seconds > 0 else None,
               "images_per_s": round(res.n_embedded / res.seconds, 1) if res.n_embedded and res.seconds > 0 else None,
               **_describe(embedder.backend)}
    if not scored.any():  # before anything is written: a file of failure scores is not a result
        raise VerificationError("no pair could be scored: every pair has an unusable image")
    if out is not None:
        from engine.submission import write_submission

        write_submission(out, [p.pair_id for p in job], scores)
        summary["submission"] = str(out)
    if job[0].label is not None:
        summary["metrics"] = _evaluate(job, scores, scored, mode, report, thr, bootstrap, summary, json_output)
    if json_output:
        print(json.dumps(summary, allow_nan=False))
    else:
        print(f"{summary['pairs']} pairs ({summary['pairs_scored']} scored), {summary['images']} images "
              f"({res.n_cached} from cache) in {seconds:.2f} s: {summary['pairs_per_s']} pairs/s, "
              f"{summary['images_per_s']} images/s ({embedder.backend.name}, {embedder.backend.precision})")
        if out is not None:
            print(f"submission written to {out}")
    return 0


def _evaluate(job, scores, scored, mode, report, thr, bootstrap, summary, json_output) -> dict:
    from engine.metrics import evaluate, kfold_accuracy

    idx = np.flatnonzero(scored)
    labels = np.array([job[i].label for i in idx])
    sc = scores[idx]
    types = [job[i].type for i in idx]
    attacks = [job[i].attack for i in idx]
    result = evaluate(labels, sc, types, attacks, threshold=thr, bootstrap=bootstrap)
    if mode == "lfw":
        folds = np.array([job[i].fold for i in idx])
        if len(np.unique(folds)) >= 2:
            result["lfw_kfold_accuracy"] = kfold_accuracy(labels, sc, folds)
    result["run"] = {k: summary[k] for k in ("backend", "precision", "device", "model", "pairs", "pairs_scored",
                                             "images", "seconds", "pairs_per_s", "images_per_s")}
    if report is not None:
        from engine.report import write_report

        write_report(result, report, labels, sc, types)
    if not json_output:
        from engine.report import format_markdown

        print(format_markdown(result), end="")
        if "lfw_kfold_accuracy" in result:
            acc = result["lfw_kfold_accuracy"]
            print(f"\nLFW 10-fold accuracy: {100 * acc['mean']:.2f}% ± {100 * acc['std']:.2f}%")
        if report is not None:
            print(f"report written to {report}")
    return result


def build_parser() -> argparse.ArgumentParser:
    from engine.backends import BACKENDS, PRECISIONS

    p = _Parser(
        prog="python -m engine.verify",
        description="Face verification with a deepfake-aware model: compare two images, write a Kryptonite "
                    "submission for a pairs folder, or evaluate on labelled pairs / LFW.",
        epilog="Exit codes: two images: 0 same person, 1 not the same person, 2 error; other modes: 0 done, "
               "2 error; 130 interrupted.")
    p.add_argument("image_a", nargs="?", type=_path, metavar="IMG_A", help="first image of a pair to compare")
    p.add_argument("image_b", nargs="?", type=_path, metavar="IMG_B", help="second image of a pair to compare")
    p.add_argument("--pairs", metavar="DIR", type=_path, help="pairs folder in the Kryptonite test_public layout: "
                   "DIR/images/<8-digit pair_id>/0.jpg and 1.jpg")
    p.add_argument("--out", metavar="FILE", type=_path, help="with --pairs: write the submission CSV (pair_id,similarity, "
                   "sorted by pair id) to FILE, atomically")
    p.add_argument("--labels", metavar="CSV", type=_path, help="with --pairs: labels (pair_id,label[,type,attack]) to evaluate "
                   "against; DIR/pairs.csv is used when present")
    p.add_argument("--lfw", metavar="DIR", type=_path, help="evaluate on LFW: folder of identity folders (lfw-deepfunneled)")
    p.add_argument("--lfw-pairs", metavar="FILE", type=_path, help="with --lfw: the LFW View 2 pairs.txt")
    p.add_argument("--lfw-folds", metavar="K[,K]", help="with --lfw: score only these folds (1-10, 1 = the "
                   "first 600 pairs), e.g. the folds held out of training; 10-fold accuracy needs >= 2 folds")
    p.add_argument("--report", metavar="DIR", type=_path, help="evaluations: write metrics.json, metrics.md, roc.png, det.png "
                   "and scores.png into DIR")
    p.add_argument("--json", dest="json_output", action="store_true",
                   help="print one JSON object instead of text (errors too, as {\"error\": ...})")
    p.add_argument("--model", metavar="PATH", type=_path, help="model folder from `python -m convert`, an .onnx file, or a "
                   "TensorRT .plan with its .plan.json sidecar (default: the model bundled in the package)")
    p.add_argument("--backend", default="auto", choices=("auto", *BACKENDS),
                   help="inference backend; auto = TensorRT when a plan, TensorRT and a GPU are present, else "
                        "OpenVINO if installed, else ONNX Runtime (default: %(default)s)")
    p.add_argument("--precision", choices=PRECISIONS, help="which model variant to run (default: the backend's "
                   "preferred one among the files present; bf16 = the FP32 file under OpenVINO's bf16 hint)")
    p.add_argument("--device", help="backend device: onnxruntime cpu|cuda|tensorrt, openvino CPU|GPU, "
                   "torch cpu|cuda, tensorrt GPU index (default: the backend's best)")
    p.add_argument("--align", choices=("face", "none"), help="how photos become model inputs: face = detect and "
                   "align (needs a face), none = centre crop, for crops that are already aligned (default: what the "
                   "model's model.json says)")
    p.add_argument("--threshold", type=float, help="decision threshold on cosine similarity (default: the one "
                   "calibrated in the model's model.json)")
    p.add_argument("--batch-size", type=int, help="images per backend call (default: the backend's maximum; "
                   f"32 on CPU, the plan's profile maximum on TensorRT; at most {MAX_CPU_BATCH} on CPU, the profile "
                   "maximum on TensorRT)")
    p.add_argument("--workers", type=int, help="image decoding threads (default: up to 4, one per core)")
    p.add_argument("--strict", action="store_true", help="stop at the first unusable image instead of "
                   "reporting it and scoring the rest")
    p.add_argument("--cache", metavar="DIR", type=_path, help="keep embeddings in DIR (embeddings.npy + index.json per model) "
                   "so a re-run does not embed the same files again")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="evaluations: bootstrap resamples for "
                   "the EER's 95%% confidence interval, 0 = none (default: %(default)s)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    p.add_argument("--fps", type=float, help="with a video clip (MP4, MOV, WebM, AVI) as IMG_A or IMG_B: frames "
                   "sampled per second (default 5)")
    p.add_argument("--frames", type=int, help="with a video clip: at most this many frames, spread over the clip "
                   "(default 60)")
    return p


class _Parser(argparse.ArgumentParser):
    """Argument errors as :class:`UsageError`, so they take the one error path (and ``--json``)."""

    def error(self, message):
        raise UsageError(f"{message} (see --help)")


def _path(text: str) -> str:
    """A path argument; an empty one would become '.' (then reported as 'is a directory')."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path names no file")
    return text


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # OpenCV's own log lines (libtiff warnings, "can't read data") would come before the one
    # error line that says what was wrong with the file; a user's setting wins.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        return _fail(str(exc), "--json" in argv)
    if sys.stdout is None:  # `>&-`: refused before the work, as a decision nobody can read must not exit 0/1
        return _fail("stdout is closed: the result could not be reported", False)
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        code = verify(**vars(args))
        sys.stdout.flush()
    except OSError as exc:  # a full disk or /dev/full: exit 0/1 would read as a decision
        _err(f"error: cannot write the result to stdout ({exc.strerror or exc})")
        return EXIT_ERROR
    return code


def _exit_now(code: int) -> None:
    """Leave without the interpreter's teardown.

    Freeing OpenVINO's and ONNX Runtime's sessions and every module costs
    0.07-0.1 s of a two-image call on a 2-core CPU and changes nothing the
    caller sees: ``atexit`` handlers (logging) still run and the streams are
    flushed before ``os._exit``.
    """
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach the caller
            pass
    os._exit(code)


if __name__ == "__main__":
    _exit_now(main())
