"""The fixed harness every variant imports: device, seeding, time budget, training data, hand-over.

The variant owns the model and the optimisation; the harness serves the honest variant: the
training batches, a clock for schedules and `h.done`, seeding, and `h.finish(model)`, which
hands the trained model over. It does not score: everything in this process runs next to the
variant's code and could be patched by it. Scores come from `trainer.scorer`, in another process
that never runs variant code:

- `h.finish(model)` exports the model in eval mode with `torch.export` at the evaluation's input
  shape and writes the graph plus weights (`trainer.artifact`) where the runner collects it; a
  forward pass that cannot be exported ends the trial as `unexportable`, with the exporter's error;
- the time budget counts training steps only (the first `warmup_steps`, where torch.compile
  works, are excluded as in autoresearch); the runner's own clock bounds launch → hand-over at
  budget + `handover_allowance`, and `h.done` also turns true shortly before that bound;
- the harness exposes the training split only (`h.data` is a `TrainSplit`: no validation tokens).

Usage (see trainer/train.py):

    h = harness.setup()
    batches = h.train_batches(batch_size, seq_len)
    while not h.done:
        ...                              # one optimiser step
        h.step(tokens=B * T, loss=loss)  # lr schedules read h.progress
    h.finish(model, flops_per_token=...)

Run directly (`python train.py`, e.g. after `evo export`), the harness uses the default prepared
data, seed 0 and the device's default budget, scores the exported model itself in this process
(your own file on your own machine) and prints the summary.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from trainer.dataset import Dataset
from trainer.trial_config import (
    CONFIG_ENV,
    HANDOVER_NAME,
    SCORE_NAME,
    TrialConfig,
    default_budget,
    eval_plan,
    handover_allowance,
    handover_reserve,
)

NAN_EXIT_CODE = 3
UNEXPORTABLE_EXIT_CODE = 5
LOSS_DIVERGED = 100.0  # autoresearch's guard: a loss this high is a failed run, not a slow one

# Peak dense bf16 tensor throughput, for MFU. Unknown devices report no MFU rather than a guess.
PEAK_FLOPS = {"H100": 989.5e12, "H200": 989.5e12, "H800": 989.5e12, "B200": 2250e12, "A100": 312e12,
              "L40S": 362e12, "A10G": 125e12, "RTX 4090": 165e12}


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
        ds = Dataset(cfg.dataset_dir)
        self.data = ds.train_split()
        self.vocab_size = self.data.vocab_size
        self.bos_id = self.data.bos_id
        self.seed = cfg.seed
        self.budget = float(cfg.budget)
        self.warmup_steps = cfg.warmup_steps if cfg.warmup_steps is not None else (3 if self.is_cuda else 1)
        # The shape the scorer evaluates at (CPU: 32k tokens in ~1.5 s on 2 cores): the model is
        # exported at exactly (eval_batch, eval_seq_len).
        self.eval = eval_plan(cfg.eval_tokens, cfg.eval_seq_len, ds.manifest["n_val_tokens"], self.is_cuda, cfg.eval_batch)
        self.eval_seq_len = self.eval.seq_len
        del ds
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
        # The runner's bound on launch → hand-over, less the time the export needs.
        self._wall_stop = self._launch + self.budget + handover_allowance(self.budget, self.is_cuda) \
            - handover_reserve(self.is_cuda)
        self._setup_done = time.time()
        self._first_batch: float | None = None
        self._warm_at: float | None = None
        self._last = 0.0
        self._last_step_seconds = 0.0
        self.steps = 0
        self.tokens = 0
        self.training_seconds = 0.0
        self._timed_tokens = 0  # tokens of the counted steps: throughput excludes the warmup
        self._last_loss: float | None = None
        self._last_log = 0.0
        self._loader_batches = 0  # batches of trainer.autoresearch's loader (variants that never call h.step)

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

    def _count_loader_batch(self, tokens: int) -> None:
        """The account of an autoresearch-style variant, which keeps its own clock and never calls
        `step`: its tokens are those its data loader served, its training time runs from the first
        batch to the hand-over."""
        now = time.time()
        if self._first_batch is None:
            self._first_batch = self._last = now
        self._loader_batches += 1
        self.steps += 1
        self.tokens += tokens
        self._timed_tokens += tokens

    # --- the time budget ----------------------------------------------------------------------

    @property
    def done(self) -> bool:
        if self.cfg.max_steps is not None and self.steps >= self.cfg.max_steps:
            return True
        if self.cfg.max_steps is None and time.time() + self._last_step_seconds >= self._wall_stop:
            return True  # slow start-up, compile or steps: stop in time to hand over within the runner's bound
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
        if self.steps > 1:
            self._last_step_seconds = now - self._last  # the next one will likely take as long
        self._last = now
        if loss is not None:
            value = float(loss.detach().float().item() if torch.is_tensor(loss) else loss)
            self._last_loss = value
            if not math.isfinite(value) or value > LOSS_DIVERGED:
                self._report({"outcome": "nan", "message": f"loss {value} at step {self.steps}"})
                print(f"harness: loss is {value} at step {self.steps}; aborting", file=sys.stderr)
                sys.exit(NAN_EXIT_CODE)
        if now - self._last_log > 5 or self.done:
            self._last_log = now
            loss_s = f"{self._last_loss:.4f}" if self._last_loss is not None else "-"
            print(f"step {self.steps:5d} | loss {loss_s} | {100 * self.progress:5.1f}% of "
                  f"{self.budget:.0f}s | {self.tokens:,} tokens", flush=True)

    # --- the hand-over ------------------------------------------------------------------------

    def finish(self, model, flops_per_token: float | None = None, extra: dict | None = None) -> dict:
        """Export the trained model for the scorer. The last call a variant makes.

        Returns what the trainer reports about itself (steps, tokens, timings); the score is the
        scorer's. In a standalone run (no runner) the model is scored right here and printed.
        """
        self.sync()
        t0 = time.time()
        if self._loader_batches and not self.training_seconds and self._first_batch is not None:
            self.training_seconds = t0 - self._first_batch
        params = sum(p.numel() for p in model.parameters()) if hasattr(model, "parameters") else None
        # Export the eager module behind a torch.compile wrapper.
        model = getattr(model, "_orig_mod", model)
        if hasattr(model, "eval"):
            model.eval()
        from trainer import artifact

        path = Path(self.cfg.artifact_path) if self.cfg.artifact_path else Path(tempfile.mkdtemp()) / "model.evo"
        rows = np.asarray(self.data.train_tokens[: self.eval.batch * self.eval.seq_len]).astype(np.int64)
        example = torch.from_numpy(rows).view(self.eval.batch, self.eval.seq_len).to(self.device)
        try:
            with self.autocast():
                ep = artifact.export(model, example)
            artifact.save(ep, path, autocast=torch.bfloat16 if self.is_cuda else None)
        except Exception as e:
            tail = "".join(traceback.format_exception_only(type(e), e)).strip()
            message = f"torch.export failed: {tail.splitlines()[0][:300] if tail else type(e).__name__}"
            self._report({"outcome": "unexportable", "params": params, "message": message})
            print(f"harness: the model cannot be exported for scoring:\n{tail[-2000:]}", file=sys.stderr)
            sys.exit(UNEXPORTABLE_EXIT_CODE)
        tps = self._timed_tokens / self.training_seconds if self.training_seconds > 0 else None
        report = {"params": params, "tokens_per_second": tps, "mfu": self._mfu(flops_per_token, tps),
                  "export_seconds": time.time() - t0, "extra": extra or {}}
        if (extra or {}).get("attention"):
            report["attention"] = str(extra["attention"])
        self._report(report)
        if not self.cfg.artifact_path:
            self._score_here(path, report)
        return report

    def hand_over(self, model, flops_per_token: float | None = None, extra: dict | None = None,
                  wait: float = 3600.0) -> float | None:
        """`finish`, then wait for the scorer's val_bpb of the model handed over (None if it was not
        scored). For interfaces whose evaluation call returns the score (autoresearch's
        `evaluate_bpb`): the runner sees the hand-over marker, scores the artifact in its own
        scorer process and writes back only the number. One hand-over per trial: the runner
        ignores any later one, and the trial ends shortly after."""
        report = self.finish(model, flops_per_token=flops_per_token, extra=extra)
        if not self.cfg.artifact_path:
            return report.get("val_bpb")  # standalone: scored right here
        slot = Path(self.cfg.artifact_path).parent
        answer = slot / SCORE_NAME
        with contextlib.suppress(OSError):
            answer.unlink()
        marker = slot / (HANDOVER_NAME + ".tmp")
        marker.write_text("{}")
        os.replace(marker, slot / HANDOVER_NAME)
        deadline = time.time() + wait
        while time.time() < deadline:
            try:
                verdict = json.loads(answer.read_text())
            except (OSError, ValueError):
                time.sleep(0.02)
                continue
            value = verdict.get("val_bpb") if isinstance(verdict, dict) else None
            if verdict.get("outcome") not in (None, "ok"):
                print(f"harness: the scorer did not score the model: {verdict.get('outcome')} "
                      f"({verdict.get('message', '')})", file=sys.stderr, flush=True)
            return float(value) if isinstance(value, (int, float)) else None
        return None

    def _score_here(self, path: Path, report: dict) -> None:
        from trainer.runner import TrialResult, format_summary
        from trainer.scorer import score

        result = score(path, self.cfg.dataset_dir, self.eval, str(self.device))
        report["val_bpb"] = result.get("val_bpb") if result.get("outcome") == "ok" else None
        print(format_summary(TrialResult.from_dict({**self._timings(), **report, **result, "seed": self.seed})))

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

    def _report(self, fields: dict) -> None:
        """What the trainer says about its own run (the runner shows it; the score is not in it)."""
        if not self.cfg.report_path:
            return
        path = Path(self.cfg.report_path)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**self._timings(), **fields}))
        os.replace(tmp, path)


def setup() -> Harness:
    """Read the runner's config, choose the device, seed everything. Call once, first."""
    return Harness(_load_config())
