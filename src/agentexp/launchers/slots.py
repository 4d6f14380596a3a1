"""Training slots: one GPU each where there are GPUs, else an equal share of the CPU cores."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Literal

from agentexp import gpu

THREADS_ENV = "OMP_NUM_THREADS"
"""torch sizes its intra-op thread pool from this at start-up."""
DEVICES_ENV = "CUDA_VISIBLE_DEVICES"

Gpus = Literal["auto"] | list[int]


def cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0))


class Slots:
    """How many trainings run at once, which GPU a new one gets, and how many threads each may use."""

    def __init__(self, count: int, gpus: list[int], threads: int) -> None:
        self.count, self.gpus, self.threads = count, gpus, threads

    @classmethod
    def here(
        cls,
        max_concurrent: int,
        gpus: Gpus,
        cpu_threads: int | None,
        find_gpus: Callable[[], list[str]] = gpu.gpu_names,
    ) -> Slots:
        """This machine's slots: with GPUs (found by NVML for `auto`, else the list), one GPU per slot and
        at most as many slots as GPUs; without, max_concurrent slots sharing the cores."""
        found = list(range(len(find_gpus()))) if gpus == "auto" else list(gpus)
        count = min(max_concurrent, len(found)) if found else max_concurrent
        return cls(count, found, cpu_threads or max(1, cores() // count))

    def gpu_for(self, taken: Iterable[int | None]) -> int | None:
        """The GPU for a new training: a free one, else the least shared (a repair retry may exceed the
        slots); None without GPUs."""
        busy = list(taken)
        return min(self.gpus, key=busy.count, default=None)

    def env(self, device: int | None) -> dict[str, str]:
        """The environment that binds a training to its GPU and its share of the cores."""
        env = {THREADS_ENV: str(self.threads)}
        if device is not None:
            env[DEVICES_ENV] = str(device)
        return env

    def view(self, holders: dict[int, str], readings: list[dict]) -> list[dict]:
        """Each slot's GPU as the agents see it: index, its run, utilisation and memory (empty on CPU)."""
        by_index = {r["index"]: r for r in readings}
        return [
            {"gpu": g, "run": holders.get(g)} | {k: v for k, v in by_index.get(g, {}).items() if k != "index"}
            for g in self.gpus
        ]
