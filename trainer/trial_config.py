"""What the runner tells a trial and its scorer, and the numbers both sides must agree on.

Kept free of torch so the coordinator (and every `evo` command) can build configs without
paying for a torch import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CONFIG_ENV = "EVO_TRIAL_CONFIG"
ARTIFACT_NAME = "model.evo"  # the hand-over: graph + weights (trainer.artifact)
REPORT_NAME = "trainer.json"  # what the trainer says about itself: shown, never trusted as a score
# A variant whose evaluation call returns its score (autoresearch's evaluate_bpb) hands over while
# still running: it writes this marker next to the artifact, the runner scores the artifact and
# writes the scorer's val_bpb back as SCORE_NAME (a copy for the variant; the runner keeps its own).
HANDOVER_NAME = "handover.json"
SCORE_NAME = "score.json"
# Training seconds per trial unless told otherwise (`evo trial`, `evo run`, a standalone `python train.py`).
CPU_BUDGET = 6.0  # the README's main job (`evo run --population 16 --generations 1`) is timed at this
GPU_BUDGET = 300.0  # autoresearch's

MiB, GiB = 2**20, 2**30
# What one trial may use (`ResourceLimits`; TrialConfig's max_* fields override them). A trial past
# one is stopped and fails with its own outcome (trainer.outcomes.LIMIT_OUTCOMES).
LOG_BYTES = 8 * MiB  # each of stdout.log and stderr.log: the harness prints a line per 5 s
FILE_BYTES = {False: 1 * GiB, True: 8 * GiB}  # the largest file (RLIMIT_FSIZE): model.evo fits (2B fp32 params)
DISK_BYTES = {False: 2 * GiB, True: 16 * GiB}  # everything in the trial directory together
PROCESSES = 256  # at once, threads not counted (torch.compile's worker pool is at most 32)
TMPFS_BYTES = 1 * GiB  # each of the sandbox's private /tmp, /dev/shm and /var/tmp (RAM)


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


def default_memory_bytes() -> int:
    """Half the machine's memory (at least 2 GiB): the resident memory of a trial's processes
    together, with what it keeps in the sandbox's /tmp, /dev/shm and /var/tmp."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 16 * GiB
    return max(2 * GiB, total // 2)


def format_bytes(n: int | float) -> str:
    """1 GiB, 512 MiB, 1.5 KiB, 12 bytes: for messages."""
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.4g} {unit}"
    return f"{int(n)} bytes"


@dataclass(frozen=True)
class ResourceLimits:
    """What one trial may use. The fork server (trainer.forkserver) enforces them: the logs are
    pipes it reads and caps, the file size is the kernel's RLIMIT_FSIZE, the rest it measures
    every 0.1 s and stops the trial past a limit (outcomes `log_flood`, `disk_limit`,
    `process_limit`, `memory_limit`)."""

    log_bytes: int  # each of stdout and stderr
    file_bytes: int  # the largest file a trial's processes may write (RLIMIT_FSIZE)
    disk_bytes: int  # every file in the trial directory together (allocated blocks)
    processes: int  # processes at once (the sandbox's PID namespace; outside it, the server's descendants)
    memory_bytes: int  # resident memory (proportional set size) of them together, plus the private tmpfs
    tmpfs_bytes: int  # each of the sandbox's /tmp, /dev/shm and /var/tmp
    address_space_bytes: int | None  # RLIMIT_AS headroom per process, CPU only (CUDA maps huge ranges)

    def request(self) -> dict:
        """What the fork server is told with a trial's launch."""
        return {"log_bytes": self.log_bytes, "file_bytes": self.file_bytes, "disk_bytes": self.disk_bytes,
                "processes": self.processes, "memory_bytes": self.memory_bytes,
                "address_space_bytes": self.address_space_bytes}


def resource_limits(cfg: "TrialConfig", cuda: bool) -> ResourceLimits:
    """The limits of a trial: its config's max_* fields, else the defaults for its device."""
    file_bytes = cfg.max_file_bytes or FILE_BYTES[cuda]
    memory = cfg.max_memory_bytes or default_memory_bytes()
    return ResourceLimits(
        log_bytes=cfg.max_log_bytes or LOG_BYTES,
        file_bytes=file_bytes,
        disk_bytes=cfg.max_disk_bytes or max(DISK_BYTES[cuda], file_bytes),
        processes=cfg.max_processes or PROCESSES,
        memory_bytes=memory,
        tmpfs_bytes=cfg.tmpfs_bytes or TMPFS_BYTES,
        address_space_bytes=None if cuda else 2 * memory,
    )


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
    # Resource limits (`resource_limits`); None: the defaults above for the device.
    max_log_bytes: int | None = None
    max_file_bytes: int | None = None
    max_disk_bytes: int | None = None
    max_processes: int | None = None
    max_memory_bytes: int | None = None
    tmpfs_bytes: int | None = None
