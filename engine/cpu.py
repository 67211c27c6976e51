"""What this CPU is, as the runtimes' kernel choice sees it (read from ``/proc/cpuinfo``).

OpenVINO's INT8 convolutions are accurate and fast where the CPU has an
int8 dot-product instruction (AVX-512 VNNI, AVX-VNNI, AMX): without one
(AVX2 only) they multiply u8 x s8 pairs with a saturating 16-bit add, and
the second bundled model's INT8 file drifted by up to 0.66 in similarity
there. The third (12 sensitive layers kept FP32) agrees with FP32 there
(worst cosine 0.9920 on 64 LFW photos) but runs at 0.92x the FP32 kernels'
speed on an AVX2-only EPYC (bench/results/avx2-only), so it buys nothing.
The automatic precision choice asks :func:`has_int8_dot`.
"""
from __future__ import annotations

import functools
import platform
from pathlib import Path

INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def read_cpuinfo(text: str | None = None) -> dict:
    """The first processor block of /proc/cpuinfo as a dict (``flags`` as a list); {} where unreadable."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return {}
    info: dict = {}
    for line in text.splitlines():
        if not line.strip():
            if info:
                break
            continue
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key in ("flags", "Features"):
            info["flags"] = value.split()
        else:
            info.setdefault(key, value)
    return info


@functools.lru_cache(maxsize=1)
def cpu_info() -> tuple[str, frozenset]:
    """(model name, ISA flags) of this CPU; flags empty where ``/proc/cpuinfo`` cannot be read."""
    info = read_cpuinfo()
    name = info.get("model name") or f"{platform.machine()} {platform.processor()}".strip()
    return name, frozenset(info.get("flags", ()))


def machine_identity() -> str:
    """The CPU's model name and ISA flags (what decides which kernels a runtime picks)."""
    name, flags = cpu_info()
    return f"{name} | {' '.join(sorted(flags))}"


def has_int8_dot(flags=None) -> bool | None:
    """True/False on x86 (an int8 dot-product instruction or not); None elsewhere or when unknown."""
    flags = cpu_info()[1] if flags is None else frozenset(flags)
    if "avx2" not in flags:
        return None  # not x86 with AVX2 (ARM, or flags unreadable): no rule here
    return any(f in flags for f in INT8_DOT_FLAGS)
