"""What the runner tells a trial and its scorer, and the numbers both sides must agree on.

Kept free of torch so the coordinator (and every `evo` command) can build configs without
paying for a torch import.
"""

from __future__ import annotations

from dataclasses import dataclass

CONFIG_ENV = "EVO_TRIAL_CONFIG"
ARTIFACT_NAME = "model.evo"  # the hand-over: graph + weights (trainer.artifact)
REPORT_NAME = "trainer.json"  # what the trainer says about itself: shown, never trusted as a score
# Training seconds per trial unless told otherwise (`evo trial`, `evo run`, a standalone `python train.py`).
CPU_BUDGET = 6.0  # the README's main job (`evo run --population 16 --generations 1`) is timed at this
GPU_BUDGET = 300.0  # autoresearch's


def default_budget(device: str) -> float:
    return GPU_BUDGET if device.startswith("cuda") else CPU_BUDGET


def handover_allowance(budget: float, cuda: bool) -> float:
    """Seconds a trial may take from launch to hand-over beyond its training budget.

    The runner, not the variant, measures launch → hand-over; past budget + this it is
    `over_budget`, not a score. The allowance pays for what the in-process clock leaves out:
    setting up, the first (compiling) steps, the export. It is also the most extra training a
    variant that cheats the in-process clock on purpose can get. On CUDA torch.compile of the seed
    takes ~35 s of it on an H100 and bigger variants take longer; on CPU trials are forked from a
    warm process and start in milliseconds, but a loaded 2-core machine can take a second or two
    to export, so the allowance is what keeps honest trials scored there.
    """
    return 60.0 + 0.1 * budget if cuda else 2.5 + 0.15 * budget


def handover_reserve(cuda: bool) -> float:
    """Seconds the harness keeps for the export: training stops this long before the limit."""
    return 10.0 if cuda else 1.5


@dataclass(frozen=True)
class EvalPlan:
    """The evaluation's shape: `rows` rows of `seq_len` tokens of the validation split, scored in
    batches of `batch` rows. The trainer exports its model at (batch, seq_len) and the scorer calls
    it at no other shape, so the causality check runs at exactly the evaluation's shape."""

    rows: int
    seq_len: int
    batch: int


def eval_plan(eval_tokens: int | None, eval_seq_len: int | None, n_val_tokens: int, cuda: bool,
              batch: int | None = None) -> EvalPlan:
    tokens = eval_tokens or (40 * 524_288 if cuda else 32_768)
    T = eval_seq_len or (2048 if cuda else 128)
    rows = max(1, min(tokens, n_val_tokens - 1) // T)
    B = max(1, min(batch or (8 if cuda else 16), rows))
    return EvalPlan(rows=(rows // B) * B, seq_len=T, batch=B)


@dataclass
class TrialConfig:
    """What the runner passes to a trial (as JSON, path in $EVO_TRIAL_CONFIG)."""

    dataset_dir: str
    artifact_path: str | None = None  # where h.finish hands the model over; None: a standalone run
    report_path: str | None = None
    seed: int = 0
    device: str = "auto"
    budget: float = CPU_BUDGET
    warmup_steps: int | None = None  # None: 3 on CUDA (compilation), 1 on CPU
    eval_tokens: int | None = None  # None: 20,971,520 on CUDA (autoresearch), 32,768 on CPU
    eval_seq_len: int | None = None  # None: 2048 on CUDA, 128 on CPU
    eval_batch: int | None = None  # None: 8 on CUDA, 16 on CPU
    threads: int | None = None
    launch_time: float | None = None  # wall clock when the runner started the process
    max_steps: int | None = None  # also stop after this many steps: makes a trial reproducible bit for bit
