"""What machine a measurement ran on, and the compute peak it is judged against.

:func:`describe_machine` reads ``/proc/cpuinfo`` (model, vendor, family, the
ISA flags that decide which kernels a runtime can use), the cores this process
may use, memory, the load average and the GPU if one is usable;
:func:`machine_name` turns that into the short slug used in result file names.

Peaks come from :data:`PEAK_TABLE`: operations per cycle per core for each
class of vector/matrix unit, times cores times the nominal clock. Sources:

- Intel AMX (Sapphire/Emerald/Granite Rapids): one TMUL per core does a
  16x16x64 int8 tile product (16,384 MACs) or 16x16x32 bf16 (8,192 MACs) per
  16 cycles -> 1,024 int8 MACs = 2,048 int8 ops/cycle, 1,024 bf16 flops/cycle
  (Intel 64 and IA-32 Architectures Optimization Reference Manual, "Intel AMX"
  chapter; Intel's AMX product brief quotes the same 2,048 int8 ops/cycle).
- AVX-512 with two 512-bit FMA pipes (Xeon Scalable ports 0+5; AMD Zen 5
  server/desktop parts, whose FP datapath is 512 bits wide): FP32 FMA 2 x 16
  lanes x 2 = 64 flops/cycle; VPDPBUSD zmm 2 x 64 int8 MACs = 256 ops/cycle;
  VDPBF16PS zmm 2 x 32 bf16 MACs = 128 flops/cycle (Intel optimisation manual,
  port tables; AMD "Software Optimization Guide for the AMD Zen 5
  Microarchitecture", pub. 58455, FP pipe widths).
- AMD Zen 4 runs 512-bit instructions on 256-bit pipes (two passes): half of
  the row above (AMD pub. 57647).
- AVX2 only (two 256-bit FMA pipes): FP32 32 flops/cycle; int8 with AVX-VNNI
  (ymm VPDPBUSD) 128 ops/cycle.

The nominal clock is the one ``/proc/cpuinfo`` reports (on VMs the TSC rate,
usually the base clock); cores boost above it, so a fully loaded unit can show
more than 100% of a table peak. ``--peak matmul`` in ``python -m bench``
measures a large matrix product instead, which is the achievable peak of the
library (MKL/oneDNN) on this machine at this moment.
"""
from __future__ import annotations

import os
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path

from engine.cpu import read_cpuinfo  # the one /proc/cpuinfo parser (the runtime reads ISA flags too)

# Flags worth recording: they decide which kernels oneDNN/OpenVINO/MLAS pick.
X86_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                 "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "amx_fp16")
ARM_ISA_FLAGS = ("asimd", "asimddp", "sve", "sve2", "bf16", "i8mm")

# ops/cycle/core by unit class and precision (int8 counts ops = 2 x MACs, like flops).
PEAK_TABLE: dict[str, dict[str, int]] = {
    "amx": {"int8": 2048, "bf16": 1024, "fp16": 64, "fp32": 64},
    "avx512-2fma": {"int8": 256, "bf16": 128, "fp16": 64, "fp32": 64},
    "avx512-256bit": {"int8": 128, "bf16": 64, "fp16": 32, "fp32": 32},
    "avx2-fma": {"int8": 64, "bf16": 32, "fp16": 32, "fp32": 32},
    "avx2-vnni": {"int8": 128, "bf16": 32, "fp16": 32, "fp32": 32},
}
PEAK_SOURCE = "bench/machine.py PEAK_TABLE (vendor manuals; nominal clock from /proc/cpuinfo)"


@dataclass(frozen=True)
class Peak:
    """A compute peak in ops/s (FLOP/s for float, int ops/s for int8), and where it came from."""

    ops_per_s: float
    precision: str
    source: str
    unit_class: str = ""

    def to_dict(self) -> dict:
        return {"gops_per_s": self.ops_per_s / 1e9, "precision": self.precision, "source": self.source,
                "unit_class": self.unit_class}


def cpu_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> list[float] | None:
    """1/5/15-minute load averages: how busy the shared machine was around a measurement."""
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


def gpu_description() -> dict | None:
    """Name, memory and compute capability of GPU 0 via cuda-python, or None when no GPU is usable."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        return None
    try:
        err, count = runtime.cudaGetDeviceCount()
        if int(err) != 0 or count < 1:
            return None
        err, prop = runtime.cudaGetDeviceProperties(0)
        if int(err) != 0:
            return None
        name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        return {"name": name.strip("\x00 "), "count": int(count), "memory_gib": round(prop.totalGlobalMem / 2**30, 1),
                "compute_capability": f"{prop.major}.{prop.minor}"}
    except Exception:  # a broken driver must not break a CPU benchmark
        return None


def unit_class(vendor: str, family: int | None, flags: set[str]) -> str | None:
    """Which :data:`PEAK_TABLE` row this CPU belongs to, or None when unknown (e.g. ARM)."""
    if "amx_int8" in flags:
        return "amx"
    if "avx512f" in flags:
        if vendor == "AuthenticAMD" and family == 0x19:  # Zen 4: 512-bit ops on 256-bit pipes
            return "avx512-256bit"
        return "avx512-2fma"
    if "avx2" in flags and "fma" in flags:
        return "avx2-vnni" if "avx_vnni" in flags else "avx2-fma"
    return None


def _int(value, default=None):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def describe_machine(cpuinfo: dict | None = None, cores: int | None = None, with_gpu: bool = True) -> dict:
    """A JSON-able description: CPU model and ISA flags, cores, clock, memory, load, GPU, OS, Python."""
    info = read_cpuinfo() if cpuinfo is None else cpuinfo
    flags = set(info.get("flags", []))
    vendor = info.get("vendor_id", "")
    family = _int(info.get("cpu family"))
    mhz = _float(info.get("cpu MHz"))
    if mhz is None and vendor and _float(info.get("bogomips")):
        mhz = _float(info["bogomips"]) / 2  # x86 BogoMIPS is twice the TSC clock in MHz
    mem_gib = None
    try:
        meminfo = Path("/proc/meminfo").read_text()
        kb = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1))
        mem_gib = round(kb / 2**20, 1)
    except (OSError, AttributeError):
        pass
    desc = {
        "cpu_model": info.get("model name") or platform.processor() or platform.machine(),
        "vendor": vendor,
        "family": family,
        "model": _int(info.get("model")),
        "arch": platform.machine(),
        "cores": cores if cores is not None else cpu_cores(),
        "nominal_ghz": round(mhz / 1000, 3) if mhz else None,
        "isa": {f: f in flags for f in (X86_ISA_FLAGS if vendor else ARM_ISA_FLAGS)},
        "unit_class": unit_class(vendor, family, flags),
        "memory_gib": mem_gib,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "gpu": gpu_description() if with_gpu else None,
    }
    return desc


def _float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def machine_name(desc: dict) -> str:
    """Short file-name slug: ``<cpu>-<unit class>-<N>c`` (+ ``-<gpu>`` when a GPU is present)."""
    model = desc.get("cpu_model") or "cpu"
    slug = re.sub(r"\((r|tm)\)|cpu|processor|@.*$|\bwith\b.*$", "", model, flags=re.I)
    slug = re.sub(r"[^a-z0-9]+", "-", slug.lower()).strip("-") or "cpu"
    parts = [slug]
    if desc.get("vendor") == "AuthenticAMD" and desc.get("family") in _AMD_FAMILIES:
        parts.append(_AMD_FAMILIES[desc["family"]])
    if desc.get("unit_class"):
        parts.append(desc["unit_class"].split("-")[0])
    parts.append(f"{desc.get('cores', 0)}c")
    gpu = desc.get("gpu")
    if gpu:
        parts.append(re.sub(r"[^a-z0-9]+", "-", gpu["name"].lower().replace("nvidia", "")).strip("-"))
    return "-".join(p for p in parts if p)


_AMD_FAMILIES = {0x17: "zen2", 0x19: "zen4", 0x1A: "zen5"}  # 0x19 also covers Zen 3; avx512f tells them apart


def table_peak(desc: dict, precision: str, ghz: float | None = None) -> Peak | None:
    """Peak ops/s from :data:`PEAK_TABLE` for this machine and precision; None when the CPU is not in it.

    ``ghz`` overrides the nominal clock (e.g. the SKU's all-core boost clock).
    """
    cls = desc.get("unit_class")
    ghz = ghz or desc.get("nominal_ghz")
    if not cls or not ghz or precision not in PEAK_TABLE[cls]:
        return None
    per_cycle = PEAK_TABLE[cls][precision]
    cores = desc.get("cores") or 1
    return Peak(ops_per_s=cores * ghz * 1e9 * per_cycle, precision=precision, unit_class=cls,
                source=f"table: {cores} cores x {ghz:g} GHz x {per_cycle} ops/cycle/core ({cls}); {PEAK_SOURCE}")


def measure_matmul_peak(precision: str, seconds: float = 2.0, size: int = 2048) -> Peak:
    """The best ops/s of a square matrix product in ``precision`` with PyTorch on this machine's cores.

    fp32 and bf16 use ``torch.mm`` (oneDNN/MKL); int8 uses ``torch._int_mm``
    (int8 x int8 -> int32) where the build has it. The best of repeated runs
    is taken: on a shared machine the best is the least disturbed one.
    """
    import torch

    dtypes = {"fp32": torch.float32, "fp16": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}
    if precision not in dtypes:
        raise ValueError(f"no matmul peak for precision {precision!r}; use one of {sorted(dtypes)}")
    if precision == "int8":
        a = torch.randint(-128, 127, (size, size), dtype=torch.int8)
        op = lambda: torch._int_mm(a, a)  # noqa: E731
    else:
        a = torch.randn(size, size).to(dtypes[precision])
        op = lambda: torch.mm(a, a)  # noqa: E731
    op()
    best = float("inf")
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        op()
        best = min(best, time.perf_counter() - t0)
    return Peak(ops_per_s=2 * size**3 / best, precision=precision, unit_class="measured",
                source=f"measured: best torch {'_int_mm' if precision == 'int8' else 'mm'} {size}^3 "
                       f"over {seconds:g} s on {torch.get_num_threads()} threads")


def main(argv=None) -> int:
    """``python -m bench.machine [--json]``: this machine's class name (the baseline folder), or its description."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m bench.machine",
                                description="Print this machine's class name (used for bench/results and "
                                            "bench/baselines folder names), or with --json its full description.")
    p.add_argument("--json", action="store_true", help="print the whole description as JSON")
    args = p.parse_args(argv)
    desc = describe_machine()
    print(json.dumps(desc, indent=2) if args.json else machine_name(desc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
