"""The fixed harness every variant imports: device, seeding, time budget, data, evaluation.

The variant owns the model and the optimisation; the harness owns everything that makes scores
comparable and hard to game. In autoresearch the timing loop and the "don't touch the eval" rule
lived in the edited file and in the prompt; here they live in code the variant cannot edit:

- the time budget counts training steps only (the first `warmup_steps`, where torch.compile
  works, are excluded as in autoresearch), and the runner enforces a hard wall-clock kill too;
- val_bpb is computed here from the model's logits on a fixed slice of held-out tokens;
- a causality check (changing future tokens must not change earlier logits) runs first, and a
  model that fails it is refused a score;
- the result goes as JSON to a path the runner gave; stdout is only a log.

Usage (see trainer/train.py):

    h = harness.setup()
    batches = h.train_batches(batch_size, seq_len)
    while not h.done:
        ...                              # one optimiser step
        h.step(tokens=B * T, loss=loss)  # lr schedules read h.progress
    h.finish(model, flops_per_token=...)

Run directly (`python train.py`, e.g. after `evo export`), the harness uses the default prepared
data, seed 0 and the device's default budget, and prints the summary instead of writing a file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainer.dataset import Dataset
from trainer.trial_config import CONFIG_ENV, TrialConfig

NAN_EXIT_CODE = 3
CHEAT_EXIT_CODE = 4
LOSS_DIVERGED = 100.0  # autoresearch's guard: a loss this high is a failed run, not a slow one

# Peak dense bf16 tensor throughput, for MFU. Unknown devices report no MFU rather than a guess.
PEAK_FLOPS = {"H100": 989.5e12, "H200": 989.5e12, "H800": 989.5e12, "B200": 2250e12, "A100": 312e12,
              "L40S": 362e12, "A10G": 125e12, "RTX 4090": 165e12}


def default_budget(device: str) -> float:
    return 300.0 if device.startswith("cuda") else 10.0


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"harness: device '{name}' requested but CUDA is not available")
    return dev


def _load_config() -> TrialConfig:
    path = os.environ.get(CONFIG_ENV)
    if path:
        return TrialConfig(**json.loads(Path(path).read_text()))
    from trainer.prepare import find_dataset  # standalone run: the default prepared data

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return TrialConfig(dataset_dir=str(find_dataset().path), budget=default_budget(device))


class Harness:
    def __init__(self, cfg: TrialConfig):
        self.cfg = cfg
        self.device = _resolve_device(cfg.device)
        self.is_cuda = self.device.type == "cuda"
        self.data = Dataset(cfg.dataset_dir)
        self.vocab_size = self.data.vocab_size
        self.bos_id = self.data.bos_id
        self.seed = cfg.seed
        self.budget = float(cfg.budget)
        self.warmup_steps = cfg.warmup_steps if cfg.warmup_steps is not None else (3 if self.is_cuda else 1)
        # CPU: 32k tokens score in ~1.5 s on 2 cores, a fifth of a default trial; the slice is fixed, so
        # every variant is scored on the same tokens whatever its size.
        self.eval_tokens = cfg.eval_tokens or (40 * 524_288 if self.is_cuda else 32_768)
        self.eval_seq_len = cfg.eval_seq_len or (2048 if self.is_cuda else 128)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        if self.is_cuda:
            torch.cuda.manual_seed_all(cfg.seed)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.cuda.reset_peak_memory_stats(self.device)
        self._launch = cfg.launch_time or time.time()
        self._setup_done = time.time()
        self._first_batch: float | None = None
        self._warm_at: float | None = None
        self._last = 0.0
        self.steps = 0
        self.tokens = 0
        self.training_seconds = 0.0
        self._timed_tokens = 0  # tokens of the counted steps: throughput excludes the warmup
        self._last_loss: float | None = None
        self._last_log = 0.0

    # --- context for the variant -----------------------------------------------------------

    def autocast(self):
        """bf16 autocast on CUDA, nothing on CPU (CPU bf16 is slow and not what we measure)."""
        if self.is_cuda:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def sync(self):
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    # --- data -------------------------------------------------------------------------------

    def train_batches(self, batch_size: int, seq_len: int):
        """Endless (x, y) batches of random windows from the train tokens, seeded by the trial seed.

        Windows are gathered from the memory-mapped token file with one numpy fancy-index per
        batch; on CUDA the copy is pinned and non-blocking so it overlaps the previous step.
        """
        tokens = self.data.train_tokens
        n = len(tokens) - seq_len - 1
        if n <= 0:
            raise ValueError(f"train split has {len(tokens)} tokens, fewer than seq_len+1={seq_len + 1}")
        rng = np.random.default_rng(self.seed)
        offsets = np.arange(seq_len + 1)
        if self._first_batch is None:
            self._first_batch = time.time()
            self._last = self._first_batch
        while True:
            starts = rng.integers(0, n, size=batch_size)
            rows = torch.from_numpy(tokens[starts[:, None] + offsets].astype(np.int64))
            if self.is_cuda:
                rows = rows.pin_memory().to(self.device, non_blocking=True)
            yield rows[:, :-1], rows[:, 1:]

    # --- the time budget ----------------------------------------------------------------------

    @property
    def done(self) -> bool:
        if self.cfg.max_steps is not None and self.steps >= self.cfg.max_steps:
            return True
        return self.training_seconds >= self.budget

    @property
    def progress(self) -> float:
        """Fraction of the training budget used, for learning-rate schedules."""
        if self.cfg.max_steps:
            return min(1.0, self.steps / self.cfg.max_steps)
        return min(1.0, self.training_seconds / self.budget)

    def step(self, tokens: int, loss: torch.Tensor | float | None = None) -> None:
        """Call once per optimiser step. Aborts the trial with outcome "nan" on a non-finite loss."""
        self.sync()
        now = time.time()
        if self._first_batch is None:
            self._first_batch = self._last = self._setup_done
        self.steps += 1
        self.tokens += tokens
        if self.steps > self.warmup_steps:
            self.training_seconds += now - self._last
            self._timed_tokens += tokens
        elif self.steps == self.warmup_steps:
            self._warm_at = now
        self._last = now
        if loss is not None:
            value = float(loss.detach().float().item() if torch.is_tensor(loss) else loss)
            self._last_loss = value
            if not math.isfinite(value) or value > LOSS_DIVERGED:
                self._write({"outcome": "nan", "message": f"loss {value} at step {self.steps}"})
                print(f"harness: loss is {value} at step {self.steps}; aborting", file=sys.stderr)
                sys.exit(NAN_EXIT_CODE)
        if now - self._last_log > 5 or self.done:
            self._last_log = now
            loss_s = f"{self._last_loss:.4f}" if self._last_loss is not None else "-"
            print(f"step {self.steps:5d} | loss {loss_s} | {100 * self.progress:5.1f}% of "
                  f"{self.budget:.0f}s | {self.tokens:,} tokens", flush=True)

    # --- evaluation ---------------------------------------------------------------------------

    @torch.no_grad()
    def causality_ok(self, model) -> tuple[bool, float]:
        """Does changing tokens after position t leave the logits before t unchanged?

        A model that peeks at the next token (or pools over the whole sequence) scores absurdly
        well; this is the check that refuses it. Returns (ok, max abs change before t).
        """
        T = min(self.eval_seq_len, 64)
        x = torch.from_numpy(np.asarray(self.data.val_tokens[: 2 * T]).astype(np.int64)).view(2, T).to(self.device)
        t = T // 2
        g = torch.Generator().manual_seed(1234)
        x2 = x.clone()
        x2[:, t:] = torch.randint(0, self.vocab_size, (2, T - t), generator=g).to(self.device)
        with self.autocast():
            a = model(x).float()
            b = model(x2).float()
        if a.shape[:2] != (2, T):
            raise ValueError(f"model(idx) must return logits of shape (B, T, vocab); got {tuple(a.shape)}")
        diff = (a[:, :t] - b[:, :t]).abs().max().item()
        tol = (2e-2 if self.is_cuda else 1e-3) * (1.0 + a[:, :t].abs().max().item())
        return diff <= tol, diff

    @torch.no_grad()
    def evaluate_bpb(self, model, batch_size: int | None = None) -> float:
        """Bits per byte of the model on the fixed val slice, from its logits.

        Sum of cross-entropy (nats) over target tokens that carry bytes, divided by ln 2 times
        their summed UTF-8 byte length: independent of vocabulary size, so tokenizers compare.
        """
        T = self.eval_seq_len
        n_rows = max(1, min(self.eval_tokens, len(self.data.val_tokens) - 1) // T)
        val = torch.from_numpy(np.asarray(self.data.val_tokens[: n_rows * T + 1]).astype(np.int64))
        token_bytes = torch.from_numpy(self.data.token_bytes.astype(np.int64)).to(self.device)
        batch_size = batch_size or (8 if self.is_cuda else 16)
        nats = torch.zeros((), dtype=torch.float64, device=self.device)
        nbytes = torch.zeros((), dtype=torch.int64, device=self.device)
        for r0 in range(0, n_rows, batch_size):
            r1 = min(n_rows, r0 + batch_size)
            x = val[r0 * T : r1 * T].view(r1 - r0, T).to(self.device)
            y = val[r0 * T + 1 : r1 * T + 1].view(r1 - r0, T).to(self.device)
            with self.autocast():
                logits = model(x)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none")
            b = token_bytes[y.reshape(-1)]
            nats += (loss * (b > 0)).sum(dtype=torch.float64)
            nbytes += b.sum()
        return (nats / (math.log(2) * nbytes)).item()

    def finish(self, model, flops_per_token: float | None = None, extra: dict | None = None) -> dict:
        """Check causality, compute val_bpb, write the result. The last call a variant makes."""
        self.sync()
        t_eval = time.time()
        params = sum(p.numel() for p in model.parameters()) if hasattr(model, "parameters") else None
        # Score the eager module behind a torch.compile wrapper: a compiled model recompiles for
        # every new shape and for no_grad (the check's 2x64 batch, the eval batch), which cost
        # ~25 s per trial on an H100, more than an eager pass over the val slice.
        model = getattr(model, "_orig_mod", model)
        was_training = getattr(model, "training", False)
        if hasattr(model, "eval"):
            model.eval()
        ok, diff = self.causality_ok(model)
        if not ok:
            self._write({"outcome": "cheated", "params": params,
                         "message": f"causality check failed: future tokens changed earlier logits by {diff:.3g}"})
            print(f"harness: causality check failed (max change {diff:.3g}); no score", file=sys.stderr)
            sys.exit(CHEAT_EXIT_CODE)
        val_bpb = self.evaluate_bpb(model)
        if was_training:
            model.train()
        self.sync()
        now = time.time()
        if not math.isfinite(val_bpb):
            self._write({"outcome": "nan", "params": params, "message": f"val_bpb is {val_bpb}"})
            sys.exit(NAN_EXIT_CODE)
        tps = self._timed_tokens / self.training_seconds if self.training_seconds > 0 else None
        result = {
            "outcome": "ok",
            "val_bpb": val_bpb,
            "params": params,
            "eval_seconds": now - t_eval,
            "tokens_per_second": tps,
            "mfu": self._mfu(flops_per_token, tps),
            "message": f"val_bpb {val_bpb:.6f}",
            "extra": extra or {},
        }
        self._write(result)
        if not self.cfg.result_path:
            from trainer.runner import TrialResult, format_summary

            print(format_summary(TrialResult.from_dict({**self._timings(), **result, "seed": self.seed})))
        return result

    # --- reporting ----------------------------------------------------------------------------

    def _mfu(self, flops_per_token: float | None, tps: float | None) -> float | None:
        if not (self.is_cuda and flops_per_token and tps):
            return None
        name = torch.cuda.get_device_name(self.device)
        peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
        return flops_per_token * tps / peak if peak else None

    def _peak_memory_mb(self) -> float:
        if self.is_cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB

    def _timings(self) -> dict:
        first = self._first_batch or self._setup_done
        warm = self._warm_at or first
        return {
            "device": str(self.device),
            "budget": self.budget,
            "training_seconds": self.training_seconds,
            "startup_seconds": first - self._launch,
            "compile_seconds": warm - first,
            "steps": self.steps,
            "tokens": self.tokens,
            "peak_memory_mb": self._peak_memory_mb(),
        }

    def _write(self, fields: dict) -> None:
        if not self.cfg.result_path:
            return
        path = Path(self.cfg.result_path)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**self._timings(), **fields}))
        os.replace(tmp, path)


def setup() -> Harness:
    """Read the runner's config, choose the device, seed everything. Call once, first."""
    return Harness(_load_config())
