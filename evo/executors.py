"""Where trials run: one worker per visible GPU, or one on the CPU.

A worker is a thread that launches `trainer.runner.run_trial` (a subprocess) on its own device
slot, so the coordinator process never touches CUDA and a crashing variant takes nothing down.
Several machines would use a Ray executor behind the same `Executor` protocol; it is not built yet.
"""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from trainer.runner import TrialResult, run_trial


class Executor(Protocol):
    """Where the engine's trials run: at most `size` at once, each a future of
    (where it ran, TrialResult). `shutdown(cancel=True)` stops the trials in flight (their
    results come back `cancelled`, which the engine drops so a resume runs them again)."""

    @property
    def size(self) -> int: ...

    def describe(self) -> str: ...

    def submit(self, source: str, *, seed: int, **options) -> Future[tuple[str, TrialResult]]: ...

    def shutdown(self, cancel: bool = False) -> None: ...


@dataclass(frozen=True)
class Slot:
    name: str  # "cuda:0", "cpu"
    device: str  # what the trial's harness is told
    env: dict = field(default_factory=dict)  # e.g. CUDA_VISIBLE_DEVICES pinning
    threads: int | None = None


def local_slots(device: str = "auto", workers: int | None = None) -> list[Slot]:
    import torch

    n_gpu = torch.cuda.device_count() if device in ("auto", "cuda") else 0
    if device.startswith("cuda:"):
        return [Slot(device, "cuda", {"CUDA_VISIBLE_DEVICES": device.split(":", 1)[1]})]
    if n_gpu:
        ids = list(range(n_gpu))[: workers or n_gpu]
        return [Slot(f"cuda:{i}", "cuda", {"CUDA_VISIBLE_DEVICES": str(i)}) for i in ids]
    n = workers or 1
    cores = os.cpu_count() or 1
    return [Slot(f"cpu{i}" if n > 1 else "cpu", "cpu", {}, max(1, cores // n)) for i in range(n)]


class LocalExecutor:
    """Runs trials on the local slots, at most one per slot at a time."""

    def __init__(self, slots: list[Slot]):
        self.slots = slots
        self._free: queue.Queue[Slot] = queue.Queue()
        for s in slots:
            self._free.put(s)
        self._pool = ThreadPoolExecutor(max_workers=len(slots), thread_name_prefix="evo-worker")
        self.cancel = threading.Event()

    @property
    def size(self) -> int:
        return len(self.slots)

    def describe(self) -> str:
        return f"{self.size} worker(s) on {self.slots[0].name}"

    def submit(self, source: str, *, seed: int, **options) -> Future:
        """Future of (slot name, TrialResult)."""

        def work() -> tuple[str, TrialResult]:
            slot = self._free.get()
            try:
                result = run_trial(source, seed=seed, device=slot.device, threads=slot.threads,
                                   env=slot.env, cancel=self.cancel, **options)
                return slot.name, result
            finally:
                self._free.put(slot)

        return self._pool.submit(work)

    def shutdown(self, cancel: bool = False) -> None:
        if cancel:
            self.cancel.set()
        self._pool.shutdown(wait=True, cancel_futures=cancel)
