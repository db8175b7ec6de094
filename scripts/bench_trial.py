"""Benchmark one trial: what a fixed-budget run of the seed train.py costs and how noisy its score is.

Runs a train.py (default: the seed, `trainer/train.py`) N times through `trainer.runner.run_trial`,
exactly as `evo trial` / `evo run` do (fresh subprocess, scrubbed environment, hard kill), and prints
for each run and as medians:

  val_bpb, training seconds, total seconds, overhead = total - training, split into
  start-up (process start, imports, data, model build), compile (the un-timed warm-up steps:
  torch.compile on CUDA, the first step on CPU), export (the hand-over: torch.export + save),
  scoring (the scorer process: load, causality check, val_bpb) and the rest (process exit, runner
  bookkeeping, sandbox); the runner's launch -> hand-over clock; overhead as % of the budget;
  tokens/s; MFU (CUDA only); peak memory (CUDA: max allocated; CPU: the trial process's max RSS);

then the spread of val_bpb across runs with the same seed (noise from timing alone: a time budget
trains a different number of steps each run) and/or across different seeds.

  python scripts/bench_trial.py --budget 20 --repeats 2
  python scripts/bench_trial.py --device cuda            # 300 s, autoresearch's size: depth 8, seq 2048
  python scripts/bench_trial.py --seeds both --repeats 3 --json bench.json

The autoresearch-size model needs no option: it is the CUDA default of the seed train.py. Without
prepared data, the embedded stdlib corpus is prepared first (seconds). Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trainer.dataset import DatasetError  # noqa: E402
from trainer.prepare import find_dataset, prepare  # noqa: E402
from trainer.runner import TrialResult, run_trial  # noqa: E402
from trainer.trial_config import CPU_BUDGET, GPU_BUDGET, default_budget  # noqa: E402

SEED_TRAIN = REPO / "trainer" / "train.py"

COLUMNS = [  # header, width, how to get the value from a row dict, format
    ("run", 6, "run", "s"),
    ("seed", 4, "seed", "d"),
    ("outcome", 8, "outcome", "s"),
    ("val_bpb", 8, "val_bpb", ".4f"),
    ("train_s", 7, "training_seconds", ".1f"),
    ("total_s", 7, "total_seconds", ".1f"),
    ("ovh_s", 6, "overhead", ".1f"),
    ("start", 6, "startup_seconds", ".1f"),
    ("compile", 7, "compile_seconds", ".2f"),
    ("export", 6, "export_seconds", ".2f"),
    ("score", 6, "eval_seconds", ".2f"),
    ("hand_s", 6, "handover_seconds", ".1f"),
    ("rest", 5, "rest", ".2f"),
    ("ovh_%", 6, "overhead_pct", ".0f"),
    ("tok/s", 9, "tokens_per_second", ",.0f"),
    ("MFU_%", 6, "mfu_pct", ".1f"),
    ("peak_MB", 8, "peak_memory_mb", ",.0f"),
    ("steps", 6, "steps", "d"),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=None,
                   help=f"training seconds per run [{CPU_BUDGET:g} on CPU, {GPU_BUDGET:g} on GPU]")
    p.add_argument("--repeats", type=int, default=3, help="runs per seed mode [3]")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N [auto]")
    p.add_argument("--data-dir", type=Path, default=None, help="prepared data (a data dir or one dataset) "
                   "[EVO_DATA_DIR or ~/.cache/evo/data; the stdlib corpus is prepared there if missing]")
    p.add_argument("--seeds", choices=("same", "different", "both"), default="same",
                   help="same: every run seed 0 (timing noise); different: seeds 0..N-1; both: N of each [same]")
    p.add_argument("--source", type=Path, default=SEED_TRAIN, help="the train.py to run [the seed]")
    p.add_argument("--threads", type=int, default=None, help="torch threads in the trial (CPU) [torch's default]")
    p.add_argument("--json", type=Path, default=None, help="also write every TrialResult and the medians here")
    p.add_argument("--sandbox", choices=("auto", "strict", "off"), default="auto", help="the trials' sandbox [auto]")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.budget is not None and args.budget <= 0:
        p.error("--budget must be greater than 0")
    if not args.source.is_file():
        p.error(f"--source {args.source}: no such file")
    return args


def cuda_device(device: str) -> bool:
    if device.startswith("cuda"):
        return True
    if device != "auto":
        return False
    import torch

    return torch.cuda.is_available()


def dataset_for(data_dir: Path | None):
    try:
        return find_dataset(data_dir)
    except DatasetError as e:
        print(f"# {e}; preparing the stdlib corpus first", flush=True)
        t0 = time.time()
        ds = prepare("stdlib", data_dir=data_dir)
        print(f"# prepared {ds.path} in {time.time() - t0:.1f}s", flush=True)
        return ds


def row_of(label: str, r: TrialResult) -> dict:
    """The figures of one run, including the derived ones (overhead and its parts)."""
    d = r.to_dict()
    d["run"] = label
    tr, tot = r.training_seconds, r.total_seconds
    d["overhead"] = tot - tr if tot is not None and tr is not None else None
    parts = (r.startup_seconds, r.compile_seconds, r.export_seconds, r.eval_seconds)
    d["rest"] = d["overhead"] - sum(parts) if d["overhead"] is not None and None not in parts else None
    d["overhead_pct"] = 100 * d["overhead"] / r.budget if d["overhead"] is not None else None
    d["mfu_pct"] = 100 * r.mfu if r.mfu is not None else None
    return d


def fmt_row(d: dict) -> str:
    cells = []
    for _, width, key, spec in COLUMNS:
        v = d.get(key)
        if v is None:
            s = "-"
        elif spec == "d":
            s = f"{int(v):d}"
        else:
            s = format(v, spec)
        cells.append(s.rjust(width) if key not in ("run", "outcome") else s.ljust(width))
    return " ".join(cells)


def medians(rows: list[dict]) -> dict:
    out = {"run": "median", "seed": None, "outcome": f"{sum(r['outcome'] == 'ok' for r in rows)}/{len(rows)} ok"}
    for _, _, key, _ in COLUMNS:
        if key in out:
            continue
        values = [r[key] for r in rows if r.get(key) is not None and r["outcome"] == "ok"]
        out[key] = statistics.median(values) if values else None
    return out


def spread(label: str, rows: list[dict]) -> str:
    v = [r["val_bpb"] for r in rows if r["outcome"] == "ok" and r["val_bpb"] is not None]
    if len(v) < 2:
        return f"val_bpb spread, {label}: needs 2+ ok runs (have {len(v)})"
    sd = statistics.stdev(v)
    mean = statistics.fmean(v)
    steps = [r["steps"] for r in rows if r["outcome"] == "ok" and r["steps"] is not None]
    return (f"val_bpb spread, {label} ({len(v)} runs): mean {mean:.4f}  stdev {sd:.4f} ({100 * sd / mean:.2f}%)  "
            f"range {max(v) - min(v):.4f} [{min(v):.4f} .. {max(v):.4f}]  steps {min(steps)}..{max(steps)}")


def main(argv=None) -> int:
    args = parse_args(argv)
    cuda = cuda_device(args.device)
    budget = args.budget or default_budget("cuda" if cuda else "cpu")
    ds = dataset_for(args.data_dir)

    import torch

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    gpu = torch.cuda.get_device_name(0) if cuda and torch.cuda.is_available() else None
    print(f"# bench_trial: {args.source.relative_to(REPO) if args.source.is_relative_to(REPO) else args.source} | "
          f"budget {budget:g}s | device {args.device}{f' ({gpu})' if gpu else ''} | seeds {args.seeds} x {args.repeats}")
    print(f"# data {ds.path.name} (hash {ds.hash}, {ds.manifest['n_train_tokens']:,} train tokens, vocab {ds.vocab_size})")
    print(f"# host {platform.node()} | {os.cpu_count()} CPUs | load avg {load} | torch {torch.__version__} | "
          f"python {platform.python_version()} | trial threads "
          f"{args.threads or os.environ.get('OMP_NUM_THREADS') or torch.get_num_threads()}")
    print("# columns: overhead (ovh) = total - train = start-up + compile/warm-up + eval + rest; ovh_% of the budget")

    modes = ["same", "different"] if args.seeds == "both" else [args.seeds]
    runs: dict[str, list[dict]] = {}
    results = []
    header = " ".join(h.ljust(w) if k in ("run", "outcome") else h.rjust(w) for h, w, k, _ in COLUMNS)
    print(header)
    for mode in modes:
        runs[mode] = []
        for i in range(args.repeats):
            seed = 0 if mode == "same" else i
            label = f"{mode[0]}{i + 1}"
            r = run_trial(args.source, dataset_dir=ds.path, budget=budget, seed=seed, device=args.device,
                          threads=args.threads, sandbox=args.sandbox)
            row = row_of(label, r)
            runs[mode].append(row)
            results.append({"mode": mode, **r.to_dict()})
            print(fmt_row(row) + (f"  <- {r.message}" if not r.ok else ""), flush=True)
    all_rows = [r for rows in runs.values() for r in rows]
    med = medians(all_rows)
    print("-" * len(header))
    print(fmt_row(med))
    print()
    if not cuda:
        print("MFU: n/a on CPU (no peak-FLOPs figure to compare with)")
    elif med.get("mfu_pct") is None:
        print("MFU: n/a (GPU not in trainer.harness.PEAK_FLOPS)")
    if med.get("overhead") is not None:
        print(f"median overhead {med['overhead']:.1f}s = {med['overhead_pct']:.0f}% of the {budget:g}s budget "
              f"(start-up {med['startup_seconds']:.1f}s, compile/warm-up {med['compile_seconds']:.2f}s, "
              f"export {med['export_seconds']:.2f}s, scoring {med['eval_seconds']:.2f}s, rest {med['rest']:.2f}s)")
    for mode, rows in runs.items():
        print(spread("same seed (0)" if mode == "same" else "different seeds", rows))
    if args.json:
        args.json.write_text(json.dumps({"budget": budget, "device": args.device, "dataset": ds.path.name,
                                         "dataset_hash": ds.hash, "load_avg": load, "runs": results,
                                         "median": med}, indent=2))
        print(f"# wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
