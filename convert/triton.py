"""``python -m convert.triton --model engine/models --out REPO``: a Triton model repository for GPU fleets.

``python -m engine.serve`` runs the whole pipeline (decode, detect, align,
embed, decide) in Python behind Triton; this repository is for the full
Triton server (the NGC image ``nvcr.io/nvidia/tritonserver:<yy.mm>-py3``),
where Triton's own C++ backends run the graphs and clients send aligned
crops::

    REPO/
      embedder/       onnxruntime_onnx   1/model.onnx   (always)
      embedder_trt/   tensorrt_plan      1/model.plan   (when the model folder has a .plan + sidecar)
      detector/       onnxruntime_onnx   1/model.onnx   (BlazeFace, when model.json says align: face)

Each ``config.pbtxt`` carries the contract from ``model.json``: input
``images`` (as named there) TYPE_UINT8 ``[S, S, 3]`` RGB NHWC with the batch
in front, output ``embeddings`` TYPE_FP32 ``[D]`` (L2-normalised: cosine =
dot product), the decision threshold and the whole preprocessing contract as
``parameters`` (Triton hands them to no one; clients read them from
``GET /v2/models/embedder/config``). ``max_batch_size`` is the plan's
optimisation-profile maximum (its ``.plan.json`` sidecar) for TensorRT and
``--max-batch`` (default 64) for ONNX; ``dynamic_batching`` prefers powers
of two up to it.

The detector is its own model so a client can detect server-side: send the
photo letterboxed to 192 px (:func:`engine.detect.letterbox`), get the flat
``(N * 17)`` anchor rows back, and keep the score threshold and weighted NMS
on the client as :class:`engine.detect.FaceDetector` does (Triton's ONNX
backend runs graphs, not that host-side step); then align
(:func:`engine.align.align_face`) and call ``embedder``.

Start it (the TensorRT plan only on the GPU model and TensorRT release it was
built for: pick the NGC tag whose TensorRT matches the ``tensorrt_version``
parameter)::

    docker run --rm --gpus all -p 8000:8000 -p 8001:8001 -p 8002:8002 -v $PWD/REPO:/models \\
        nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models

Scale out: more ``instance_group`` count per GPU (``--instances``) while GPU
utilisation (``nv_gpu_utilization`` on :8002/metrics) is below ~80 % and the
queue time (``nv_inference_queue_duration_us``) grows; more GPUs in one
server are used automatically (one group per GPU); beyond one host, run one
container per GPU node with the same read-only repository (or an object-store
path: ``--model-repository=s3://...``) behind a load balancer that checks
``/v2/health/ready``; dynamic batching works per server, so route enough
traffic to each to fill its preferred batches.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from engine.files import FileRefused, check_replaceable, printable
from engine.integrity import sha256_file

TOOL = "convert.triton"


def _is_repository(folder: Path) -> bool:
    """What this command writes: only model folders (embedder, detector) with a config.pbtxt each.
    Recognised by its shape, not a marker file: Triton reads every entry of a repository."""
    entries = list(folder.iterdir())
    return bool(entries) and all(e.name in ("embedder", "detector") and (e / "config.pbtxt").is_file()
                                 for e in entries)

DEFAULT_ONNX_MAX_BATCH = 64
DEFAULT_QUEUE_DELAY_US = 2000
DEFAULT_INSTANCES = 2  # per GPU: one instance copies while the other computes
DETECTOR_INPUT, DETECTOR_OUTPUT = "images", "detections"


class RepositoryError(ValueError):
    """The repository cannot be written as asked; the message names the input and the problem."""


def preferred_batch_sizes(max_batch: int) -> list[int]:
    """Powers of two from 4 up to ``max_batch``, and ``max_batch`` itself: what the batcher should aim for."""
    sizes = [b for b in (4, 8, 16, 32, 64, 128, 256, 512, 1024) if b < max_batch]
    return sizes + [max_batch]


def _quote(text: str) -> str:
    """A protobuf text-format string literal: UTF-8 as is, quotes, backslashes and control bytes escaped."""
    out = []
    for ch in str(text):
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def model_config_text(*, name: str, platform: str, max_batch: int, inputs, outputs, queue_delay_us: int,
                      instances: int, kind: str, parameters: dict[str, str]) -> str:
    """A ``config.pbtxt``; ``inputs``/``outputs`` are ``(name, TYPE_..., dims)``."""
    def tensors(items):
        return ",\n".join(f'  {{\n    name: {_quote(n)}\n    data_type: {t}\n    dims: [ {", ".join(map(str, d))} ]\n  }}'
                          for n, t, d in items)

    lines = [f"name: {_quote(name)}", f"platform: {_quote(platform)}", f"max_batch_size: {max_batch}",
             f"input [\n{tensors(inputs)}\n]", f"output [\n{tensors(outputs)}\n]",
             "dynamic_batching {\n"
             f"  preferred_batch_size: [ {', '.join(map(str, preferred_batch_sizes(max_batch)))} ]\n"
             f"  max_queue_delay_microseconds: {queue_delay_us}\n}}",
             f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]"]
    lines += [f"parameters {{\n  key: {_quote(k)}\n  value {{ string_value: {_quote(v)} }}\n}}"
              for k, v in parameters.items()]
    return "\n".join(lines) + "\n"


def _contract(config) -> dict:
    keys = ("input_name", "output_name", "dtype", "layout", "colour", "input_size", "embedding_dim", "align",
            "detector", "template", "margin", "crop_fraction", "min_face", "realness_weight", "realness_scale",
            "realness_bias", "pixel_mean", "pixel_std")
    data = config.to_dict()
    return {k: data[k] for k in keys}


def _embedder_parameters(config, precision: str, source: Path, extra: dict | None = None) -> dict[str, str]:
    params = {"threshold": "" if config.threshold is None else repr(float(config.threshold)),
              "precision": precision, "contract": json.dumps(_contract(config), separators=(",", ":"), ensure_ascii=False),
              "source": source.name, "source_sha256": sha256_file(source)}
    params.update(extra or {})
    return params


def write_repository(model=None, out=None, *, precision: str | None = None, max_batch: int | None = None,
                     queue_delay_us: int = DEFAULT_QUEUE_DELAY_US, instances: int = DEFAULT_INSTANCES,
                     kind: str = "gpu", detector: bool = True, force: bool = False) -> dict:
    """Write the repository ``out`` for ``model`` (a folder from ``python -m convert``; default: the bundled one).

    Returns ``{model name: {"platform", "max_batch_size", "files"}}``. Built
    in a temporary sibling folder and renamed at the end, so a failure leaves
    nothing; an existing non-empty ``out`` needs ``force``.
    """
    from engine.backends import default_precision, resolve_model

    if out is None:
        raise RepositoryError("--out REPO_DIR is required")
    out = Path(out)
    if max_batch is not None and max_batch < 1:
        raise RepositoryError(f"--max-batch must be >= 1, got {max_batch}")
    if queue_delay_us < 0 or instances < 1:
        raise RepositoryError(f"--queue-delay-us must be >= 0 and --instances >= 1, got {queue_delay_us}, {instances}")
    if kind not in ("gpu", "cpu"):
        raise RepositoryError(f"--kind must be gpu or cpu, got {kind!r}")
    src = resolve_model(model)
    if not src.path.is_dir() or src.config is None:
        raise RepositoryError(f"{src.path}: expected a model folder with model.json (the output of python -m convert)")
    config = src.config
    if not src.onnx:
        raise RepositoryError(f"{src.path}: no model.<precision>.onnx in it")
    precision = precision or default_precision("onnxruntime", list(src.onnx))
    if precision not in src.onnx:
        raise RepositoryError(f"{src.path}: no {precision} ONNX file (has: {', '.join(sorted(src.onnx))})")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise RepositoryError(f"{out}: already exists and is not empty; pass --force to replace it")
    try:  # --force replaces an earlier repository of this command's only, never one holding the model
        check_replaceable(out, TOOL, [src.path], own=_is_repository)
    except FileRefused as exc:
        raise RepositoryError(str(exc)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    group = "KIND_GPU" if kind == "gpu" else "KIND_CPU"
    size, dim = config.input_size, config.embedding_dim
    images = [(config.input_name, "TYPE_UINT8", [size, size, 3])]
    embeddings = [(config.output_name, "TYPE_FP32", [dim])]
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    written: dict[str, dict] = {}
    try:
        def add(name, platform, file, target, batch, inputs, outputs, params, copies=instances, where=group):
            (work / name / "1").mkdir(parents=True)
            shutil.copyfile(file, work / name / "1" / target)
            (work / name / "config.pbtxt").write_text(model_config_text(
                name=name, platform=platform, max_batch=batch, inputs=inputs, outputs=outputs,
                queue_delay_us=queue_delay_us, instances=copies, kind=where, parameters=params))
            written[name] = {"platform": platform, "max_batch_size": batch, "files": [f"{name}/config.pbtxt",
                                                                                        f"{name}/1/{target}"]}

        onnx_batch = max_batch or DEFAULT_ONNX_MAX_BATCH
        add("embedder", "onnxruntime_onnx", src.onnx[precision], "model.onnx", onnx_batch, images, embeddings,
            _embedder_parameters(config, precision, src.onnx[precision]))
        plan_precision = default_precision("tensorrt", list(src.plans)) if src.plans else None
        if plan_precision is not None:
            plan = src.plans[plan_precision]
            sidecar, profile_max = _plan_profile(plan)
            if max_batch is not None and max_batch > profile_max:
                raise RepositoryError(f"--max-batch {max_batch} is over the profile maximum of {plan} ({profile_max})")
            if kind != "gpu":
                raise RepositoryError(f"{plan}: a TensorRT plan runs on a GPU only; use --kind gpu")
            add("embedder_trt", "tensorrt_plan", plan, "model.plan", min(max_batch or profile_max, profile_max),
                images, embeddings, _embedder_parameters(config, plan_precision, plan, {
                    k: str(sidecar.get(k, "")) for k in ("tensorrt_version", "gpu_name", "compute_capability",
                                                         "cuda_runtime_version")}))
        if detector and config.align == "face":
            from engine.detect import VALUES, detector_path

            det = detector_path(config.detector)
            if not det.is_file():
                raise RepositoryError(f"{det}: detector {config.detector!r} of model.json is not shipped")
            det_size, det_width = _detector_shape(det)
            add("detector", "onnxruntime_onnx", det, "model.onnx", onnx_batch,
                [(DETECTOR_INPUT, "TYPE_UINT8", [det_size, det_size, 3])],
                [(DETECTOR_OUTPUT, "TYPE_FP32", [det_width])],
                {"detector": config.detector, "source_sha256": sha256_file(det), "values_per_anchor": str(VALUES),
                 "input": f"RGB letterboxed to {det_size} px (engine.detect.letterbox)",
                 "postprocess": "score >= 0.5 and weighted NMS at IoU 0.3 on the client (engine.detect.FaceDetector)"})
        _replace_dir(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return written


def _detector_shape(path: Path) -> tuple[int, int]:
    """(square input side, flat output width) from the detector's ONNX graph."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    side = graph.input[0].type.tensor_type.shape.dim[1].dim_value
    width = graph.output[0].type.tensor_type.shape.dim[1].dim_value
    if not side or not width:
        raise RepositoryError(f"{path}: expected input (batch, S, S, 3) and output (batch, N*17) with fixed S, N")
    return side, width


def _plan_profile(plan: Path) -> tuple[dict, int]:
    """The plan's sidecar and its optimisation-profile maximum batch."""
    from engine.backends.tensorrt_backend import read_sidecar

    sidecar = read_sidecar(plan)
    try:
        return sidecar, int(sidecar["profile"]["max"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        raise RepositoryError(f"{plan}: its sidecar has no profile maximum (profile.max); rebuild it with "
                              f"python -m convert.tensorrt_build") from None


def _replace_dir(work: Path, out: Path) -> None:
    """Put the finished folder in place of ``out`` (swapping an old one out first)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(work, 0o777 & ~umask)  # mkdtemp's 0700 would hide the repository from a container's user
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(work, out)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    else:
        os.replace(work, out)


def build_parser() -> argparse.ArgumentParser:
    from engine.backends import PRECISIONS

    p = argparse.ArgumentParser(prog="python -m convert.triton", description="Write a Triton model repository "
                                "(embedder as onnxruntime_onnx, + tensorrt_plan when a plan exists, + the face "
                                "detector) for the full Triton Inference Server, e.g. the NGC container.")
    p.add_argument("--model", metavar="DIR", help="model folder from python -m convert (default: the bundled model)")
    p.add_argument("--out", metavar="REPO_DIR", required=True, help="repository folder to write")
    p.add_argument("--precision", choices=PRECISIONS, help="which ONNX variant the onnxruntime_onnx model serves "
                   "(default: ONNX Runtime's preferred one among the files)")
    p.add_argument("--max-batch", type=int, help=f"max_batch_size (default: {DEFAULT_ONNX_MAX_BATCH} for ONNX; the "
                   "profile maximum for a plan, which also caps this)")
    p.add_argument("--queue-delay-us", type=int, default=DEFAULT_QUEUE_DELAY_US,
                   help="dynamic batching max_queue_delay_microseconds (default: %(default)s)")
    p.add_argument("--instances", type=int, default=DEFAULT_INSTANCES,
                   help="instance_group count per GPU (or per host with --kind cpu) (default: %(default)s)")
    p.add_argument("--kind", choices=("gpu", "cpu"), default="gpu", help="instance_group kind (default: %(default)s)")
    p.add_argument("--no-detector", dest="detector", action="store_false", help="leave the face detector out")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        written = write_repository(**vars(args))
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"convert.triton: error: {printable(' '.join(str(exc).split()))}", file=sys.stderr)
        return 2
    for name, info in written.items():
        print(f"{args.out}/{name}: {info['platform']}, max_batch_size {info['max_batch_size']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
