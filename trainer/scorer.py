"""The scorer: val_bpb of a handed-over model, computed where no variant code runs.

It is harness code only. It never imports or executes a variant: it reads the graph the trainer
exported (`trainer.artifact`, checked op by op), the validation split and the byte lengths from
the data directory (which the trainer's sandbox never shows), and computes bits per byte with its
own loss. Only what it writes, to a directory no trial can reach, becomes a score.

The causality check is part of the evaluation, not a separate probe a graph could recognise:

- it runs at the evaluation's own shape (the graph accepts no other) on the evaluation's own rows;
- for a random quarter of the evaluation batches, but at least 128 rows (chosen here, from
  os.urandom, after the hand-over), every row gets its own random cut point and everything after
  it is replaced by other real validation text; the logits before each cut must equal the scoring
  pass's;
- the graph is a pure function (no mutated buffer, no random op: `trainer.artifact`), so it
  cannot count calls or behave differently the second time it sees a batch.

A graph that peeks at the next token at a fraction f of positions is caught with probability
1 - (1 - f)^N for N checked rows (each row tests one cut); one that peeks everywhere is caught by
the first row. N is 128 on the CPU defaults (256 rows of 128) and 2,560 on CUDA's (10,240 rows of
2,048): a peeker that hides in 1% of positions is caught with probability 72% and ~100%, and
the most it can hide in unseen is about 1/N of the loss. Log-probabilities over the vocabulary are compared (extra logit columns
are dropped, so they can neither hold information nor widen anything), with an absolute tolerance
of 1e-4 plus the float noise measured by running one batch twice, capped at 1e-3. The rows are
scored in a secret order and each checked batch is re-run in another order, with a quarter of its
rows left whole (compared at every position), so a row cannot read another row of the batch.

Run as `python -m trainer.scorer REQUEST.json RESULT.json` (forked from a warm scorer server by
`trainer.runner`), or call `score()` directly.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainer import artifact
from trainer.dataset import Dataset
from trainer.trial_config import EvalPlan

CHECK_FRACTION = 0.25  # of the evaluation batches, each row cut at its own random point...
MIN_CHECK_ROWS = 128  # ...but at least this many rows (all of a short evaluation)
LATE_CUTS = 0.5  # of the cut rows: cut within the last eighth of the row, where a suffix-triggered peek lives
WHOLE_ROWS = 0.25  # of the checked rows: not cut, only moved to another place in the batch
MAX_ARTIFACT_BYTES = 16 << 30


class _NonFinite(Exception):
    pass


def _resolve(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def score(artifact_path: str | Path, dataset_dir: str | Path, plan: EvalPlan, device: str = "cpu",
          check_fraction: float = CHECK_FRACTION, rng_seed: int | None = None) -> dict:
    """{"outcome": ok | cheated | unexportable | nan, "val_bpb", "params", "eval_seconds", "message",
    "check": {...}} for the model in `artifact_path`. Never raises for anything in the file."""
    t0 = time.time()
    dev = _resolve(device)
    data = Dataset(dataset_dir)
    B, T = plan.batch, plan.seq_len
    example = torch.zeros(B, T, dtype=torch.long)
    try:
        graph = artifact.load(artifact_path, example, max_bytes=MAX_ARTIFACT_BYTES)
        model = graph.module(dev)
    except artifact.Refused as e:
        return {"outcome": "unexportable", "message": f"refused: {e}", "eval_seconds": time.time() - t0}
    params = graph.params
    V = data.vocab_size
    rows = torch.from_numpy(np.asarray(data.val_tokens[: plan.rows * T + 1]).astype(np.int64))
    gen = torch.Generator().manual_seed(rng_seed if rng_seed is not None else int.from_bytes(os.urandom(7), "little"))
    # Rows in a secret order: a batch's neighbouring rows are not neighbouring text, so a row
    # cannot read its own continuation from the next row of the batch.
    order = torch.randperm(plan.rows, generator=gen)
    x_all = rows[:-1].view(plan.rows, T)[order]
    y_all = rows[1:].view(plan.rows, T)[order]
    # Other real text for the future after each cut: the eval rows half the slice away (a
    # lone row: itself, rotated by half its length).
    donors = torch.roll(x_all, shifts=plan.rows // 2, dims=0) if plan.rows > 1 else torch.roll(x_all, T // 2, dims=1)
    token_bytes = torch.from_numpy(data.token_bytes.astype(np.int64)).to(dev)
    n_batches = plan.rows // B
    n_check = min(n_batches, max(math.ceil(n_batches * check_fraction), math.ceil(MIN_CHECK_ROWS / B)))
    checked = set(torch.randperm(n_batches, generator=gen)[:n_check].tolist())
    nats = torch.zeros((), dtype=torch.float64, device=dev)
    nbytes = torch.zeros((), dtype=torch.int64, device=dev)
    worst, noise = 0.0, None
    check = {"batches": n_check, "rows": n_check * B}

    def run(x):
        """Log-probabilities over the vocabulary (columns past it are dropped: they can only
        hold what the scorer ignores, and must not widen anything)."""
        out = model(x.to(dev))
        if not isinstance(out, torch.Tensor) or out.dim() != 3 or tuple(out.shape[:2]) != (B, T) or out.size(-1) < V:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise artifact.Refused(f"model(idx) must return logits of shape ({B}, {T}, >= {V}); got {shape}")
        logp = F.log_softmax(out[..., :V].float(), dim=-1)
        if not torch.isfinite(logp).all():
            raise _NonFinite()
        return logp

    try:
        for i in range(n_batches):
            x, y = x_all[i * B:(i + 1) * B], y_all[i * B:(i + 1) * B].to(dev)
            logp = run(x)
            if i in checked:
                if noise is None:  # float noise of this graph on this device: the same batch twice
                    noise = (run(x) - logp).abs().max().item()
                cuts = torch.randint(1, T, (B,), generator=gen)
                # Half the cut rows are cut in the last eighth of the row: a peek that fires only on a
                # short future (a condition on "everything after t") is switched there, not mid-row.
                late = torch.rand(B, generator=gen) < LATE_CUTS
                cuts[late] = torch.randint(max(1, T - max(2, T // 8)), T, (int(late.sum()),), generator=gen)
                # A quarter of the rows are kept whole: compared at every position (the last one
                # too) after the batch's rows are put in another order.
                cuts[torch.rand(B, generator=gen) < WHOLE_ROWS] = T
                before = torch.arange(T)[None, :] < cuts[:, None]
                spliced = torch.where(before, x, donors[i * B:(i + 1) * B])
                # ...and in another order: a row whose logits read another row of the batch changes
                perm = torch.randperm(B, generator=gen)
                again = run(spliced[perm])[torch.argsort(perm).to(dev)]
                diff = (again - logp).abs().amax(-1).cpu()
                worst = max(worst, float(diff[before].max()))
            loss = -logp.gather(-1, y[..., None]).squeeze(-1).reshape(-1)
            b = token_bytes[y.reshape(-1)]
            nats += (loss * (b > 0)).sum(dtype=torch.float64)
            nbytes += b.sum()
    except _NonFinite:
        return {"outcome": "nan", "params": params, "eval_seconds": time.time() - t0,
                "message": "the model's logits are not finite (nan or inf) on validation text"}
    except artifact.Refused as e:
        return {"outcome": "unexportable", "params": params, "message": f"refused: {e}", "eval_seconds": time.time() - t0}
    except Exception as e:  # the graph fails at run time (a shape guard, an op on the wrong device)
        return {"outcome": "unexportable", "params": params, "eval_seconds": time.time() - t0,
                "message": f"the exported model fails when called: {type(e).__name__}: {str(e)[:300]}"}
    # Log-probabilities, compared absolutely: a graph cannot widen the tolerance with large logits.
    tol = 1e-4 + min(4 * (noise or 0.0), 1e-3)
    check.update(max_change=worst, tolerance=tol, noise=noise or 0.0)
    if not worst <= tol:
        return {"outcome": "cheated", "params": params, "eval_seconds": time.time() - t0, "check": check,
                "message": f"causality check failed: other text after a cut changed earlier log-probabilities by "
                           f"{worst:.3g} (tolerance {tol:.2g}; {n_check * B} rows checked)"}
    val_bpb = (nats / (math.log(2) * nbytes)).item()
    if not math.isfinite(val_bpb):
        return {"outcome": "nan", "params": params, "message": f"val_bpb is {val_bpb}", "eval_seconds": time.time() - t0}
    return {"outcome": "ok", "val_bpb": val_bpb, "params": params, "eval_seconds": time.time() - t0,
            "message": f"val_bpb {val_bpb:.6f}", "check": check}


def main(argv: list[str]) -> int:
    """Child of the scorer server: REQUEST.json in, RESULT.json out (atomically)."""
    request_path, result_path = Path(argv[0]), Path(argv[1])
    req = json.loads(request_path.read_text())
    if req.get("threads"):
        torch.set_num_threads(int(req["threads"]))
    try:
        result = score(req["artifact"], req["dataset_dir"], EvalPlan(**req["plan"]), req.get("device", "cpu"))
    except Exception as e:  # a bug here, or a broken data directory: a failed score, said plainly
        result = {"outcome": "crash", "message": f"scorer: {type(e).__name__}: {str(e)[:300]}"}
    tmp = result_path.with_name(result_path.name + ".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, result_path)
    if __name__ == "__main__":  # a forked child: the result is written, skip the interpreter's teardown
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
