"""GPU facts and telemetry through NVML, with a clean no-GPU fallback."""

from __future__ import annotations

import pynvml


def gpu_names() -> list[str]:
    """Names of the visible NVIDIA GPUs; empty where NVML or a driver is missing."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        count = pynvml.nvmlDeviceGetCount()
        return [_decode(pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))) for i in range(count)]
    finally:
        pynvml.nvmlShutdown()


def gpu_utilization() -> list[dict[str, float]]:
    """Per-GPU utilization (%) and memory used and total (GiB); empty without NVML."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        stats = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            util = pynvml.nvmlDeviceGetUtilizationRates(handle)
            used, total = memory.used / 2**30, memory.total / 2**30
            stats.append({"index": i, "util_pct": float(util.gpu), "mem_used_gib": used})
            stats[-1]["mem_total_gib"] = total
        return stats
    finally:
        pynvml.nvmlShutdown()


def _decode(name: str | bytes) -> str:
    return name.decode() if isinstance(name, bytes) else name
