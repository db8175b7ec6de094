"""What the runner tells a trial, as JSON in a file named by $EVO_TRIAL_CONFIG.

Kept free of torch so the coordinator (and every `evo` command) can build configs without
paying for a torch import.
"""

from __future__ import annotations

from dataclasses import dataclass

CONFIG_ENV = "EVO_TRIAL_CONFIG"


@dataclass
class TrialConfig:
    """What the runner passes to a trial (as JSON, path in $EVO_TRIAL_CONFIG)."""

    dataset_dir: str
    result_path: str | None = None
    seed: int = 0
    device: str = "auto"
    budget: float = 10.0
    warmup_steps: int | None = None  # None: 3 on CUDA (compilation), 1 on CPU
    eval_tokens: int | None = None  # None: 20,971,520 on CUDA (autoresearch), 65,536 on CPU
    eval_seq_len: int | None = None  # None: 2048 on CUDA, 128 on CPU
    threads: int | None = None
    launch_time: float | None = None  # wall clock when the runner started the process
    max_steps: int | None = None  # also stop after this many steps: makes a trial reproducible bit for bit
