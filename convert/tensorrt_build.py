"""TensorRT engine build from a variant's ONNX file: ``model.<precision>.plan`` + sidecar.

As thin as NVIDIA's samples, so it is right by construction: a strongly typed
network parsed from the ONNX file (precision comes from the file: FP16 from
AutoCast, INT8 from Q/DQ nodes; TensorRT 11 has no other way and TensorRT 10
honours the same file), one optimisation profile over the batch dimension,
a timing cache, ``build_serialized_network``. Works with TensorRT 10.x
(Jetson / JetPack 6) and 11.x: the strongly-typed creation flag is set when
the enum still has it (required on 10.x, accepted and ignored on 11.x).

Engines are specific to the GPU, TensorRT and CUDA versions. The plan file
holds nothing but TensorRT's bytes (trtexec can load it); what it was built
for lives in the sidecar ``model.<precision>.plan.json``, which the runtime
(:mod:`engine.backends.tensorrt_backend`) checks before deserialising.

``tensorrt`` is imported lazily. The pure helpers (:func:`profile_shapes`,
:func:`timing_cache_key`, :func:`sidecar_contents`) need neither TensorRT nor
a GPU and are unit-tested everywhere.

    python -m convert.tensorrt_build --onnx models/NAME/model.int8.onnx --max-batch 64
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import sys
import time
from pathlib import Path

from engine.contract import ContractError, ModelConfig, check_onnx, write_json_atomic
from engine.files import printable
from engine.integrity import sha256_file

HARDWARE_COMPAT_LEVELS = ("none", "ampere_plus", "same_compute_capability")
DEFAULT_OPT_LEVEL = 3
DEFAULT_TIMING_CACHE_DIR = Path.home() / ".cache" / "fakeaware-faceverify" / "tensorrt"
SIDECAR_SCHEMA = 1


class TensorRTUnavailable(RuntimeError):
    """TensorRT or a usable GPU is missing; the message says which and what to do."""


class EngineBuildError(RuntimeError):
    """TensorRT refused the network or the build failed; the message carries its errors."""


# ------------------------------------------------------------------ pure helpers

def profile_shapes(input_size: int, *, min_batch: int = 1, opt_batch: int = 8, max_batch: int = 32,
                   dla: bool = False) -> dict[str, tuple[int, int, int, int]]:
    """NHWC min/opt/max shapes of the one optimisation profile.

    DLA runs static shapes only, so with ``dla`` the profile collapses to
    ``opt_batch`` for all three.
    """
    for name, value in (("min_batch", min_batch), ("opt_batch", opt_batch), ("max_batch", max_batch)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    if not min_batch <= opt_batch <= max_batch:
        raise ValueError(f"need min_batch <= opt_batch <= max_batch, got {min_batch}, {opt_batch}, {max_batch}")
    if input_size < 1:
        raise ValueError(f"input_size must be positive, got {input_size}")
    if dla:
        min_batch = max_batch = opt_batch
    s = int(input_size)
    return {"min": (int(min_batch), s, s, 3), "opt": (int(opt_batch), s, s, 3), "max": (int(max_batch), s, s, 3)}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", str(text)).strip("-") or "unknown"


def timing_cache_key(gpu_name: str, compute_capability: str, tensorrt_version: str, cuda_version: str) -> str:
    """File-name-safe key: a timing cache is only valid for one GPU / TensorRT / CUDA combination."""
    cc = str(compute_capability).replace(".", "")
    return f"{_slug(gpu_name)}_sm{_slug(cc)}_trt{_slug(tensorrt_version)}_cuda{_slug(cuda_version)}"


def timing_cache_path(cache_dir: str | os.PathLike, key: str) -> Path:
    return Path(cache_dir) / f"timing-{key}.cache"


def cuda_version_string(version: int | None) -> str:
    """cudaRuntimeGetVersion's 12080 -> "12.8"."""
    if not version:
        return "unknown"
    return f"{int(version) // 1000}.{(int(version) % 1000) // 10}"


def precision_from_name(path: str | os.PathLike) -> str:
    """``model.int8.onnx`` -> ``int8``; anything else -> ``unknown``."""
    m = re.match(r"^model\.(fp32|fp16|int8)\.onnx$", Path(path).name)
    return m.group(1) if m else "unknown"


def sidecar_contents(*, precision: str, config: ModelConfig, profile: dict, onnx_name: str, onnx_sha256: str,
                     plan_name: str, plan_sha256: str, tensorrt_version: str, gpu_name: str,
                     compute_capability: str, cuda_runtime_version: str, cuda_driver_version: str = "",
                     opt_level: int = DEFAULT_OPT_LEVEL, version_compatible: bool = False,
                     hardware_compatibility_level: str = "none", dla_core: int | None = None,
                     workspace_bytes: int | None = None, timing_cache_key: str | None = None,
                     build_seconds: float | None = None, created_utc: str | None = None) -> dict:
    """What ``model.<precision>.plan.json`` records: enough to refuse a mismatched plan and to rebuild it."""
    return {
        "schema": SIDECAR_SCHEMA,
        "plan_file": plan_name,
        "plan_sha256": plan_sha256,
        "precision": precision,
        "tensorrt_version": str(tensorrt_version),
        "gpu_name": gpu_name,
        "compute_capability": str(compute_capability),
        "cuda_runtime_version": str(cuda_runtime_version),
        "cuda_driver_version": str(cuda_driver_version),
        "onnx_file": onnx_name,
        "onnx_sha256": onnx_sha256,
        "input": {"name": config.input_name, "dtype": config.dtype, "layout": config.layout,
                  "colour": config.colour, "shape": [-1, config.input_size, config.input_size, 3],
                  "pixel_mean": list(config.pixel_mean), "pixel_std": list(config.pixel_std),
                  "crop_fraction": config.crop_fraction, "normalised_in_graph": True},
        "output": {"name": config.output_name, "dtype": "float32", "shape": [-1, config.embedding_dim],
                   "l2_normalised": True},
        "profile": {"input": config.input_name, **{k: list(v) for k, v in profile.items()}},
        "build_flags": {
            "strongly_typed": True,
            "builder_optimization_level": int(opt_level),
            "version_compatible": bool(version_compatible),
            "hardware_compatibility_level": hardware_compatibility_level,
            "dla_core": dla_core,
            "gpu_fallback": dla_core is not None,
            "workspace_bytes": workspace_bytes,
            "timing_cache_key": timing_cache_key,
        },
        "build_seconds": build_seconds,
        "created_utc": created_utc,
    }


# ------------------------------------------------------------------ TensorRT side

def load_tensorrt():
    """``import tensorrt`` with a message that says what is missing."""
    try:
        import tensorrt
    except ImportError as exc:
        raise TensorRTUnavailable(
            f"TensorRT is not installed ({exc}). Building an engine needs the full TensorRT Python package "
            "with its builder libraries on a machine with an NVIDIA GPU (pip install tensorrt where NVIDIA's "
            "package index is reachable, or JetPack on Jetson); the ONNX files in the output folder "
            "run without it (ONNX Runtime / OpenVINO)") from None
    if not hasattr(tensorrt, "Builder"):
        raise TensorRTUnavailable(f"the installed tensorrt {getattr(tensorrt, '__version__', '?')} is a "
                                  "lean/dispatch runtime without a builder; install the full TensorRT package")
    return tensorrt


def gpu_info(device: int = 0) -> dict:
    """GPU name, compute capability and CUDA versions, or :class:`TensorRTUnavailable` saying why not.

    Checked before any TensorRT object is created: without a working device
    TensorRT crashes later instead of failing cleanly.
    """
    from engine import cuda

    try:
        rt = cuda.load_runtime()
        info = cuda.select_device(device, rt)
    except cuda.CudaUnavailable as exc:
        raise TensorRTUnavailable(f"{exc}; a TensorRT engine can only be built on a CUDA GPU") from None
    runtime_v = cuda.check(rt.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion", rt)
    driver_v = cuda.check(rt.cudaDriverGetVersion(), "cudaDriverGetVersion", rt)
    return {**info, "cuda_runtime_version": cuda_version_string(runtime_v),
            "cuda_driver_version": cuda_version_string(driver_v)}


def check_build_environment(device: int = 0) -> dict:
    """TensorRT imports and a GPU is usable: returns versions and device info, else raises."""
    trt = load_tensorrt()
    return {"tensorrt_version": trt.__version__, **gpu_info(device)}


def _config_from_onnx(onnx_path: Path) -> ModelConfig:
    """The contract read from the graph, next to a ``model.json`` when there is one."""
    beside = onnx_path.with_name("model.json")
    if beside.is_file():
        return ModelConfig.load(beside)
    # No model.json (e.g. the face detector): take the I/O names from the graph; check_onnx
    # still holds it to the rest of the contract (uint8 NHWC in, dynamic batch, float32 (B, D) out).
    import onnx

    try:
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    except Exception as exc:  # protobuf raises several types for garbage
        raise ContractError(f"{onnx_path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1 or len(graph.output) != 1:
        info = check_onnx(onnx_path)  # says what is wrong
        return ModelConfig(input_size=info["input_size"], embedding_dim=info["embedding_dim"])
    inp, out = inputs[0], graph.output[0]
    in_dims, out_dims = inp.type.tensor_type.shape.dim, out.type.tensor_type.shape.dim
    try:
        config = ModelConfig(input_name=inp.name, output_name=out.name, input_size=in_dims[1].dim_value,
                             embedding_dim=out_dims[1].dim_value)
    except (ContractError, IndexError) as exc:
        raise ContractError(f"{onnx_path}: off the contract ({exc})") from None
    check_onnx(onnx_path, config)
    return config


def _write_bytes_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def build_engine(onnx_path: str | os.PathLike, plan_path: str | os.PathLike | None = None, *,
                 precision: str | None = None, config: ModelConfig | None = None,
                 min_batch: int = 1, opt_batch: int = 8, max_batch: int = 32,
                 timing_cache: str | os.PathLike | None = DEFAULT_TIMING_CACHE_DIR,
                 opt_level: int = DEFAULT_OPT_LEVEL, version_compatible: bool = False,
                 hardware_compat: str = "none", dla_core: int | None = None,
                 workspace_gb: float | None = None, device: int = 0, verbose: bool = False) -> dict:
    """Build ``plan_path`` (default: ``model.<precision>.plan`` beside the ONNX) and its sidecar.

    ``timing_cache`` is a folder; the cache file inside it is named by
    :func:`timing_cache_key`, so caches of different GPUs or versions never
    mix. ``None`` builds without a cache. Returns the sidecar dict.
    """
    onnx_path = Path(onnx_path)
    if hardware_compat not in HARDWARE_COMPAT_LEVELS:
        raise ValueError(f"hardware_compat must be one of {', '.join(HARDWARE_COMPAT_LEVELS)}, got {hardware_compat!r}")
    if not 0 <= int(opt_level) <= 5:
        raise ValueError(f"opt_level must be 0..5, got {opt_level}")
    if dla_core is not None and dla_core < 0:
        raise ValueError(f"dla_core must be >= 0, got {dla_core}")
    config = config or _config_from_onnx(onnx_path)
    check_onnx(onnx_path, config)  # corrupt or off-contract files fail here, with the file named
    precision = precision or precision_from_name(onnx_path)
    plan_path = Path(plan_path) if plan_path else onnx_path.with_suffix(".plan")
    profile = profile_shapes(config.input_size, min_batch=min_batch, opt_batch=opt_batch,
                             max_batch=max_batch, dla=dla_core is not None)

    trt = load_tensorrt()
    env = {"tensorrt_version": trt.__version__, **gpu_info(device)}
    key = timing_cache_key(env["gpu_name"], env["compute_capability"], env["tensorrt_version"],
                           env["cuda_runtime_version"])
    start = time.perf_counter()

    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    if inputs != [config.input_name]:
        raise EngineBuildError(f"{onnx_path}: network inputs {inputs}, expected [{config.input_name!r}]")

    build_config = builder.create_builder_config()
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(config.input_name, profile["min"], profile["opt"], profile["max"])
    build_config.add_optimization_profile(opt_profile)
    build_config.builder_optimization_level = int(opt_level)
    workspace_bytes = None
    if workspace_gb:
        workspace_bytes = int(workspace_gb * (1 << 30))
        build_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if version_compatible:
        build_config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if hardware_compat != "none":
        build_config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, hardware_compat.upper())
    if dla_core is not None:
        build_config.default_device_type = trt.DeviceType.DLA
        build_config.DLA_core = int(dla_core)
        build_config.set_flag(trt.BuilderFlag.GPU_FALLBACK)

    cache_file = None
    if timing_cache is not None:
        cache_file = timing_cache_path(timing_cache, key)
        cache_bytes = cache_file.read_bytes() if cache_file.is_file() else b""
        cache = build_config.create_timing_cache(cache_bytes)
        build_config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, build_config)
    if serialized is None:
        raise EngineBuildError(f"{onnx_path}: TensorRT could not build an engine (see the log above)")
    seconds = time.perf_counter() - start
    plan_bytes = memoryview(serialized)
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    _write_bytes_atomic(plan_path, plan_bytes)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        _write_bytes_atomic(cache_file, memoryview(build_config.get_timing_cache().serialize()))

    sidecar = sidecar_contents(
        precision=precision, config=config, profile=profile, onnx_name=onnx_path.name,
        onnx_sha256=sha256_file(onnx_path), plan_name=plan_path.name, plan_sha256=sha256_file(plan_path),
        tensorrt_version=env["tensorrt_version"], gpu_name=env["gpu_name"],
        compute_capability=env["compute_capability"], cuda_runtime_version=env["cuda_runtime_version"],
        cuda_driver_version=env["cuda_driver_version"], opt_level=opt_level,
        version_compatible=version_compatible, hardware_compatibility_level=hardware_compat,
        dla_core=dla_core, workspace_bytes=workspace_bytes, timing_cache_key=key if cache_file else None,
        build_seconds=round(seconds, 3),
        created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    write_json_atomic(plan_path.with_name(plan_path.name + ".json"), sidecar)
    return sidecar


# ------------------------------------------------------------------ CLI

def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The engine flags, shared by this CLI and ``python -m convert --engine``."""
    g = parser.add_argument_group("TensorRT engine")
    g.add_argument("--min-batch", type=int, default=1, help="smallest batch of the optimisation profile (default 1)")
    g.add_argument("--opt-batch", type=int, default=8, help="batch size TensorRT tunes for (default 8)")
    g.add_argument("--max-batch", type=int, default=32, help="largest batch of the profile (default 32)")
    g.add_argument("--timing-cache", default=str(DEFAULT_TIMING_CACHE_DIR),
                   help="folder for timing caches, one file per GPU/CC/TensorRT/CUDA combination "
                        f"(default {DEFAULT_TIMING_CACHE_DIR}); 'none' disables the cache")
    g.add_argument("--opt-level", type=int, default=DEFAULT_OPT_LEVEL,
                   help=f"builder optimisation level 0-5 (default {DEFAULT_OPT_LEVEL}; higher builds slower)")
    g.add_argument("--version-compatible", action="store_true",
                   help="build a version-compatible engine (runs on later TensorRT of the same major version)")
    g.add_argument("--hardware-compat", choices=HARDWARE_COMPAT_LEVELS, default="none",
                   help="hardware compatibility level (default none = this GPU only)")
    g.add_argument("--dla-core", type=int, default=None,
                   help="build for this DLA core (Jetson): static batch = --opt-batch, GPU fallback on")
    g.add_argument("--workspace-gb", type=float, default=None, help="builder workspace limit in GiB (default: TensorRT's)")
    g.add_argument("--device", type=int, default=0, help="CUDA device index (default 0)")


def engine_kwargs(args: argparse.Namespace) -> dict:
    cache = None if str(args.timing_cache).lower() == "none" else args.timing_cache
    return {"min_batch": args.min_batch, "opt_batch": args.opt_batch, "max_batch": args.max_batch,
            "timing_cache": cache, "opt_level": args.opt_level, "version_compatible": args.version_compatible,
            "hardware_compat": args.hardware_compat, "dla_core": args.dla_core,
            "workspace_gb": args.workspace_gb, "device": args.device}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m convert.tensorrt_build",
        description="Build a TensorRT engine (model.<precision>.plan + .plan.json sidecar) from one ONNX "
                    "variant of a converted model folder, on the machine that will run it.")
    parser.add_argument("--onnx", required=True, help="model.<precision>.onnx from python -m convert")
    parser.add_argument("--plan", default=None, help="plan to write (default: the ONNX path with .plan)")
    parser.add_argument("--precision", default=None,
                        help="precision to record (default: read from the file name model.<precision>.onnx)")
    parser.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")
    add_engine_arguments(parser)
    args = parser.parse_args(argv)
    try:
        sidecar = build_engine(args.onnx, args.plan, precision=args.precision, verbose=args.verbose,
                               **engine_kwargs(args))
    except (TensorRTUnavailable, EngineBuildError, ContractError, ValueError) as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        return 2
    print(json.dumps({k: sidecar[k] for k in ("plan_file", "precision", "tensorrt_version", "gpu_name",
                                              "compute_capability", "build_seconds")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
