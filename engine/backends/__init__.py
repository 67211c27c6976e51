"""Inference backends behind one interface, and :func:`open_backend` which picks one.

``open_backend(model)`` takes a model folder from ``python -m convert``
(``model.json`` + ``model.<precision>.onnx`` + optional ``model.<precision>.plan``
with its ``.plan.json`` sidecar, optional ``model.safetensors``), a single
ONNX file, a single plan, or nothing (the model bundled in ``engine/models/``).

The automatic choice (:func:`auto_backend`, :func:`default_precision`):
TensorRT when a plan, the TensorRT package and a GPU are all present; else
the default CPU backend (OpenVINO where installed, ONNX Runtime otherwise).
Backends are imported lazily, so a machine without OpenVINO, TensorRT or
cuda-python can still use the others.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from engine.backends.base import Backend, BackendError
from engine.contract import ContractError, ModelConfig
from engine.cpu import has_int8_dot
from engine.files import FileRefused, check_regular
from engine.onnx_graph import FLOAT16

__all__ = ["Backend", "BackendError", "ModelNotFound", "ModelSource", "Choice", "BACKENDS", "PRECISIONS",
           "open_backend", "resolve_model", "choose", "auto_backend", "default_precision",
           "default_model_dir"]

log = logging.getLogger(__name__)

BACKENDS = ("tensorrt", "onnxruntime", "openvino", "torch")
PRECISIONS = ("fp32", "fp16", "int8", "bf16")
CPU_MAX_BATCH = 32
CONFIG_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
_ARTIFACT = re.compile(r"^model\.(fp32|fp16|int8|bf16)\.(onnx|plan)$")

# Which precision each backend takes from a model folder when none is asked for,
# best first. Files in a folder from `python -m convert` have passed its accuracy gate.
PRECISION_PREFERENCE = {
    "tensorrt": ("int8", "fp16", "fp32"),
    "openvino": ("int8", "fp32", "fp16"),  # INT8 Q/DQ runs on AMX/VNNI int8 kernels
    # ModelOpt puts Q/DQ on conv inputs only (TensorRT style); ONNX Runtime's CPU
    # provider then runs FP32 convs plus DequantizeLinear: INT8 measured 0.5-0.65x
    # FP32 there (bench/results), so ONNX Runtime takes INT8 last.
    "onnxruntime": ("fp32", "fp16", "int8"),
    "torch": ("fp32",),
}


class ModelNotFound(BackendError):
    """No model where one was expected; the message says how to make one."""


@dataclass
class ModelSource:
    """What a ``--model`` argument resolved to."""

    path: Path
    config: ModelConfig | None  # None for a bare ONNX/plan without model.json: read from the file
    onnx: dict[str, Path] = field(default_factory=dict)  # precision -> file
    plans: dict[str, Path] = field(default_factory=dict)
    weights_dir: Path | None = None  # folder with model.safetensors (TorchBackend)


@dataclass
class Choice:
    backend: str
    precision: str
    reason: str


def default_model_dir() -> Path:
    """The model folder shipped inside the package (package data)."""
    return Path(__file__).resolve().parents[1] / "models"


def _no_default_model(folder: Path) -> ModelNotFound:
    return ModelNotFound(
        f"no model given and no default model bundled in {folder} (needs {CONFIG_FILE} + model.<precision>.onnx). "
        f"Make one with `python -m convert --checkpoint RUN_DIR --out MODEL_DIR` "
        f"(a RUN_DIR from `python -m training.train`) and pass --model MODEL_DIR, or copy MODEL_DIR's files into {folder}")


def _precision_from_graph(info) -> str:
    """int8 for Q/DQ or integer ops, fp16 for FP16 weights, else fp32 (``info``: an onnx_graph.GraphInfo)."""
    if info.op_types & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger"}:
        return "int8"
    if FLOAT16 in info.initializer_types:
        return "fp16"
    return "fp32"


def _read_onnx(path: Path, config: ModelConfig | None) -> tuple[ModelConfig | None, str, str]:
    """Check an ONNX file against its recorded digest and the contract; return (config, precision, digest).

    The digest is checked first (``engine.integrity``): a file that is not the
    one ``model.json`` records is refused before any of it is parsed. A passed
    contract check is remembered in the cache by that digest: reading the
    graph maps the whole file, and a second call need not.
    """
    from engine.cachedir import remembered
    from engine.integrity import verified_digest

    try:  # a FIFO would block the read below; protobuf caps a graph at 2 GiB
        check_regular(path, 2**31, "an ONNX model")
    except FileRefused as exc:
        raise ContractError(str(exc)) from None
    digest = verified_digest(path, config)
    want = [config.input_name, config.output_name, config.input_size, config.embedding_dim] if config else None

    def check() -> dict:
        checked, precision = _check_onnx_file(path, config)
        return {"input_size": checked.input_size, "embedding_dim": checked.embedding_dim, "precision": precision}

    info = remembered("onnx-checks", digest, [path.name, want], check, ("input_size", "embedding_dim", "precision"))
    config = config or ModelConfig(input_size=info["input_size"], embedding_dim=info["embedding_dim"])
    return config, info["precision"], digest


def _check_onnx_file(path: Path, config: ModelConfig | None) -> tuple[ModelConfig, str]:
    from engine.contract import check_onnx, read_onnx

    info = read_onnx(path)
    checked = check_onnx(info, config, source=str(path))
    if config is None:
        config = ModelConfig(input_size=checked["input_size"], embedding_dim=checked["embedding_dim"])
    match = _ARTIFACT.match(path.name)
    return config, match.group(1) if match else _precision_from_graph(info)


def resolve_model(model=None) -> ModelSource:
    """Find the files behind ``model`` (folder, .onnx, .plan or None = the bundled default)."""
    if model is None:
        folder = default_model_dir()
        if not (folder / CONFIG_FILE).is_file():
            raise _no_default_model(folder)
        return resolve_model(folder)
    path = Path(model)
    if not path.exists():
        raise ModelNotFound(f"{path}: no such file or folder")
    if path.is_dir():
        if not os.path.lexists(path / CONFIG_FILE):  # there but not a file: ModelConfig.load says what it is
            raise ModelNotFound(f"{path}: not a model folder (no {CONFIG_FILE}); expected the output of "
                                f"`python -m convert`, an .onnx file or a .plan file")
        src = ModelSource(path, ModelConfig.load(path / CONFIG_FILE))
        for entry in sorted(path.iterdir()):
            m = _ARTIFACT.match(entry.name)
            if m:
                (src.onnx if m.group(2) == "onnx" else src.plans)[m.group(1)] = entry
        if (path / WEIGHTS_FILE).is_file():
            src.weights_dir = path
        if not (src.onnx or src.plans or src.weights_dir):
            raise ModelNotFound(f"{path}: no model.<precision>.onnx, model.<precision>.plan or {WEIGHTS_FILE} in it")
        return src
    beside = path.parent / CONFIG_FILE
    config = ModelConfig.load(beside) if beside.is_file() else None
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        config, precision, _ = _read_onnx(path, config)
        return ModelSource(path, config, onnx={precision: path})
    if suffix in (".plan", ".engine", ".trt"):
        from engine.backends.tensorrt_backend import read_sidecar

        precision = str(read_sidecar(path).get("precision", "fp32"))
        return ModelSource(path, config, plans={precision: path})
    raise ContractError(f"{path}: not an ONNX file (.onnx), TensorRT plan (.plan with .plan.json sidecar) "
                        f"or model folder")


def auto_backend(has_plan: bool, tensorrt_installed: bool, gpu_count: int, openvino_installed: bool) -> tuple[str, str]:
    """The automatic backend choice and why, in one place (tuned by the benchmarks).

    TensorRT needs a plan, the package and a GPU; otherwise the fastest CPU
    path: OpenVINO where installed (AMX/VNNI int8 and bf16 kernels on x86),
    ONNX Runtime elsewhere (e.g. ARM/Jetson CPUs, where OpenVINO is absent).
    """
    if has_plan and tensorrt_installed and gpu_count > 0:
        return "tensorrt", "a TensorRT plan, the TensorRT package and a GPU are present"
    missing = [what for what, ok in (("plan", has_plan), ("TensorRT package", tensorrt_installed),
                                     ("GPU", gpu_count > 0)) if not ok]
    why = f"no {', no '.join(missing)} for TensorRT"
    if openvino_installed:
        return "openvino", f"{why}; OpenVINO is the fastest CPU path installed"
    return "onnxruntime", f"{why}; OpenVINO not installed, using ONNX Runtime"


def default_precision(backend: str, available: list[str]) -> str | None:
    """The preferred precision among ``available`` files for ``backend`` (None if none fits)."""
    for precision in PRECISION_PREFERENCE[backend]:
        if precision in available:
            return precision
    return None


def _environment(need_gpu: bool) -> dict:
    env = {"tensorrt": importlib.util.find_spec("tensorrt") is not None,
           "openvino": importlib.util.find_spec("openvino") is not None, "gpus": 0}
    if need_gpu and env["tensorrt"]:
        from engine.cuda import device_count

        env["gpus"] = device_count()[0]
    return env


def choose(src: ModelSource, backend: str = "auto", precision: str | None = None, env: dict | None = None) -> Choice:
    """Backend and precision for ``src``; an explicit ``backend``/``precision`` wins, and is checked."""
    if backend not in ("auto", *BACKENDS):
        raise BackendError(f"unknown backend {backend!r}; choose auto, {', '.join(BACKENDS)}")
    if precision is not None and precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
    plans = [p for p in src.plans if precision in (None, p)]
    reason = "asked for"
    if backend == "auto" and not (src.onnx or src.plans):
        backend, reason = "torch", "the model folder holds only PyTorch weights"
    elif backend == "auto":
        env = env if env is not None else _environment(need_gpu=bool(plans))
        backend, reason = auto_backend(bool(plans), env["tensorrt"], env["gpus"], env["openvino"])
    if backend == "tensorrt":
        available = list(src.plans)
        what = "plan"
    elif backend == "torch":
        if src.weights_dir is None:
            raise BackendError(f"{src.path}: the torch backend needs {WEIGHTS_FILE} + {CONFIG_FILE} "
                               f"(a training run folder); this model has none")
        available = ["fp32", "bf16", "fp16"]
        what = "weights"
    else:
        available = list(src.onnx)
        if "fp32" in available and backend == "openvino":
            available.append("bf16")  # the FP32 file under OpenVINO's bf16 inference hint
        what = "ONNX file"
    if precision is None:
        candidates = available
        if backend == "openvino" and "int8" in available and len(available) > 1 and has_int8_dot() is False:
            # No VNNI/AMX: OpenVINO's INT8 runs slower than FP32 here (0.92x on an AVX2-only EPYC,
            # bench/results/avx2-only) and earlier models' INT8 drifted. Asked for explicitly,
            # INT8 still runs, checked by the canaries.
            candidates = [p for p in available if p != "int8"]
            reason += ("; INT8 not chosen: this CPU has no int8 dot-product instruction (VNNI/AMX), where "
                       "OpenVINO's INT8 is slower than FP32 (--precision int8 to try it)")
        precision = default_precision(backend, candidates)
        if precision is None:
            raise BackendError(f"{src.path}: no {what} for the {backend} backend (has: "
                               f"{', '.join(sorted(src.onnx) + [p + ' plan' for p in src.plans]) or 'nothing'})")
    elif precision not in available:
        raise BackendError(f"{src.path}: no {precision} {what} for the {backend} backend "
                           f"(available: {', '.join(available) or 'none'})")
    return Choice(backend, precision, reason)


def open_backend(model=None, backend: str = "auto", precision: str | None = None, device: str | None = None,
                 max_batch: int | None = None, threads: int | None = None, cuda_graphs: bool = False,
                 timing: bool = False) -> Backend:
    """Resolve ``model``, choose a backend (logged with the reason) and open it.

    The returned backend also carries ``config`` (the model's ModelConfig,
    with the calibrated ``threshold`` when the model folder has one),
    ``choice`` (:class:`Choice`) and ``source`` (:class:`ModelSource`).
    """
    src = resolve_model(model)
    choice = choose(src, backend, precision)
    if max_batch is not None and max_batch < 1:
        raise BackendError(f"batch size must be >= 1, got {max_batch}")
    opts = dict(device=device, max_batch=max_batch, threads=threads, cuda_graphs=cuda_graphs, timing=timing)
    out = _open(src, choice, **opts)
    record = (out.config.extra or {}).get("canary")
    if record is None or record == {}:  # a folder without canaries (hand-made); anything else is checked
        return out
    from engine.canary import MIN_COSINE, checked_cosine, record_problem

    problem = record_problem(record)
    if problem:
        out.close()
        raise BackendError(f"{src.path}: model.json: {problem}")

    # The canaries: does this precision, on this CPU/GPU, agree with FP32? An
    # automatic choice falls back to the next precision; an explicit one is refused.
    tried = []
    while True:
        cos = checked_cosine(out, record, out.config.input_size)
        out.canary_cosine = cos
        if cos >= MIN_COSINE:
            if tried:
                log.warning("%s; using %s (canary cosine %.4f)", "; ".join(tried), out.choice.precision, cos)
            return out
        out.close()
        tried.append(f"{choice.backend} {out.choice.precision} disagrees with FP32 on this machine "
                     f"(canary cosine {cos:.4f} < {MIN_COSINE})")
        if precision is not None:
            raise BackendError(f"{src.path}: {tried[-1]}; choose another --precision")
        order = PRECISION_PREFERENCE[choice.backend]
        nxt = None
        for p in order[order.index(out.choice.precision) + 1:]:
            try:
                nxt = choose(src, choice.backend, p)
                break
            except BackendError:
                continue
        if nxt is None:
            raise BackendError(f"{src.path}: " + "; ".join(tried) + "; no other precision to fall back to")
        out = _open(src, Choice(nxt.backend, nxt.precision, f"{choice.reason}; fallback"), **opts)


def _open(src: ModelSource, choice: Choice, *, device, max_batch, threads, cuda_graphs, timing) -> Backend:
    log.info("backend %s (%s): %s", choice.backend, choice.precision, choice.reason)
    config = src.config
    name, prec = choice.backend, choice.precision
    if name == "tensorrt":
        from engine.backends.tensorrt_backend import TensorRTBackend

        gpu = int(str(device).removeprefix("cuda").lstrip(":") or 0) if device else 0
        out = TensorRTBackend(src.plans[prec], max_batch=max_batch, cuda_graphs=cuda_graphs, timing=timing, device=gpu,
                              **({"input_name": config.input_name, "output_name": config.output_name} if config else {}))
    elif name == "torch":
        from engine.backends.torch_backend import TorchBackend

        out = TorchBackend(src.weights_dir, precision=prec, device=device, max_batch=max_batch or CPU_MAX_BATCH,
                           threads=threads, timing=timing)
    else:
        onnx_file = src.onnx["fp32" if prec == "bf16" else prec]
        config, _, digest = _read_onnx(onnx_file, config)  # digest and contract (remembered: cheap the second time)
        if name == "openvino":
            from engine.backends.openvino_backend import OpenVinoBackend as cls
        else:
            from engine.backends.onnxruntime_backend import OnnxRuntimeBackend as cls
        out = cls(onnx_file, input_size=config.input_size, embedding_dim=config.embedding_dim, precision=prec,
                  device=device, max_batch=max_batch or CPU_MAX_BATCH, threads=threads,
                  input_name=config.input_name, output_name=config.output_name, digest=digest)
    if config is None:
        config = ModelConfig(input_size=out.input_size, embedding_dim=out.embedding_dim)
    out.config, out.choice, out.source = config, choice, src
    return out
