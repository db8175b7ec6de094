"""Throughput of an executor: experiments per hour per slot, beside the ideal 3600/budget.

A run's worth is how many experiments it gets through, and a trial spends its wall time on more than
its training budget: process start-up, the un-timed warm-up/compile steps, the export that hands the
model over, the scorer, and the gaps in which a slot has no trial at all (the coordinator's dispatch,
Ray's scheduling). This submits the seed program (`trainer/train.py`) `--trials` times through each
executor exactly as `evo run` does (`size` trials in flight, a new one the moment one finishes),
times first submit to last result, and prints

  experiments/h = trials / wall x 3600, per slot (GPU, or CPU slot) = that / slots, beside the ideal
  3600 / budget per slot and their ratio; and the slots' wall time (slots x wall) split into the
  training budget (the sum of the trials' training_seconds), start-up, compile, export, scoring, the
  rest of each trial (total - the parts: the fork server's start on a cold slot, torch imported once
  per slot on CPU and per trial on CUDA; the sandbox, runner bookkeeping, process exit) and waiting
  (slots x wall - the trials' total_seconds: no trial on the slot; clamped at 0, said when it is).

    python scripts/bench_throughput.py --budget 3 --trials 2                 # a quick check
    python scripts/bench_throughput.py --budget 30 --trials 4 --executors local,ray
    python scripts/bench_throughput.py --device cuda --trials 8              # 300 s; target >= 0.95 of ideal

Ray without --ray-address: on CPU a real local cluster (`tests/support/ray_cluster.py`: a head with no
CPUs and `--workers` nodes of `--cpus` CPUs, one trial per node, as the local executor gives each slot
cores / workers threads); on CUDA a local Ray instance with `--workers` GPUs. Each executor is made
once; `--repeat K` measures K rounds on it (the first includes its cold start) and prints the medians.
Progress, one line per finished trial, goes to stderr. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from evo.datasets import resolve_dataset  # noqa: E402

from bench_trial import SEED_TRAIN, cuda_device  # noqa: E402  (scripts/ is on sys.path: this file's dir)

PHASES = [  # share of slot time: label, TrialResult field (None: derived)
    ("train", "training_seconds"),
    ("start", "startup_seconds"),
    ("compile", "compile_seconds"),
    ("export", "export_seconds"),
    ("score", "eval_seconds"),
    ("rest", None),
    ("wait", None),
]
COLUMNS = [("executor", 10), ("slots", 5), ("trials", 6), ("ok", 3), ("wall_s", 7), ("exp/h", 6), ("/slot", 6),
           ("ideal", 6), ("ratio", 5)] + [(f"{p}%", 7) for p, _ in PHASES]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=None, help="training seconds per trial [30 on CPU, 300 on CUDA]")
    p.add_argument("--trials", type=int, default=4, help="trials per executor and round [4]")
    p.add_argument("--executors", default="local,ray", help="comma-separated: local, ray [local,ray]")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="[auto]")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="prepared data [EVO_DATA_DIR or ~/.cache/evo/data; the stdlib corpus is prepared if missing]")
    p.add_argument("--workers", type=int, default=None, help="slots [1 on CPU, every GPU on CUDA]")
    p.add_argument("--cpus", type=int, default=None,
                   help="CPUs per slot on CPU: the local slot's threads, each Ray node's CPUs and a Ray trial's [cores / workers]")
    p.add_argument("--ray-address", default=None, help="an existing Ray cluster [start a local one]")
    p.add_argument("--repeat", type=int, default=1, help="rounds per executor; the medians are printed [1]")
    args = p.parse_args(argv)
    args.executors = [e.strip() for e in args.executors.split(",") if e.strip()]
    if not args.executors or set(args.executors) - {"local", "ray"}:
        p.error("--executors: a comma-separated list of local, ray")
    for name in ("trials", "repeat", "workers", "cpus"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.budget is not None and args.budget <= 0:
        p.error("--budget must be greater than 0")
    return args


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def make_executor(name: str, args, cuda: bool):
    """(executor, slots): the executor as `evo run` makes it, stopped (and its cluster) on exit."""
    if name == "local":
        from evo.executors import LocalExecutor, local_slots

        slots = local_slots("cuda" if cuda else "cpu", args.workers)
        if not cuda and args.cpus:
            slots = [dataclasses.replace(s, threads=args.cpus) for s in slots]
        ex = LocalExecutor(slots)
        try:
            yield ex, ex.size
        finally:
            ex.shutdown()
        return
    from evo.ray_executor import RayExecutor

    with contextlib.ExitStack() as stack:
        address = args.ray_address
        if address is None and cuda:  # the test cluster's nodes have no GPUs: a local Ray instance with them
            import ray
            import torch

            ray.init(address="local", num_gpus=args.workers or torch.cuda.device_count(), log_to_driver=False,
                     include_dashboard=False, logging_level="ERROR")
        elif address is None:
            from tests.support.ray_cluster import local_cluster

            say(f"# starting a local Ray cluster: a head with no CPUs + {args.workers or 1} node(s) of {args.cpus} CPU(s)")
            address = stack.enter_context(local_cluster(workers=args.workers or 1, cpus=args.cpus, head_cpus=0)).address
        ex = RayExecutor(address, device="cuda" if cuda else "cpu", cpus_per_trial=args.cpus or 1, say=say)
        try:
            yield ex, ex.slots
        finally:
            ex.shutdown()


def measure(name: str, ex, slots: int, args, budget: float, data: Path, round_: int) -> dict:
    """One round: `trials` seed-program trials, `ex.size` in flight, timed first submit -> last result."""
    results, pending, submitted = [], set(), 0
    t0 = time.monotonic()
    while submitted < args.trials or pending:
        while submitted < args.trials and len(pending) < ex.size:
            pending.add(ex.submit(SEED_TRAIN.read_text(), seed=submitted, dataset_dir=str(data), budget=budget))
            submitted += 1
        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
        for fut in finished:
            where, r = fut.result()
            results.append(r)
            f = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
            say(f"[{name} round {round_} {len(results)}/{args.trials}] seed {r.seed} on {where or '?'}: {r.outcome}"
                f"{f' val_bpb {r.val_bpb:.4f}' if r.val_bpb is not None else ''} train {f(r.training_seconds)}s "
                f"total {f(r.total_seconds)}s (start {f(r.startup_seconds)}, compile {f(r.compile_seconds)}, "
                f"export {f(r.export_seconds)}, score {f(r.eval_seconds)}) at +{time.monotonic() - t0:.1f}s"
                f"{'  <- ' + r.message if not r.ok else ''}")
    wall = time.monotonic() - t0
    slot_time = slots * wall
    total = sum(r.total_seconds or 0 for r in results)
    seconds = {p: sum(getattr(r, key) or 0 for r in results) for p, key in PHASES if key}
    seconds["rest"] = total - sum(seconds.values())
    seconds["wait"] = max(0.0, slot_time - total)
    per_slot = len(results) / wall * 3600 / slots
    return {"slots": slots, "trials": len(results), "ok": sum(r.ok for r in results), "wall": wall,
            "exp_h": per_slot * slots, "per_slot": per_slot, "ideal": 3600 / budget, "ratio": per_slot * budget / 3600,
            **{f"{p}%": 100 * s / slot_time for p, s in seconds.items()}, "overrun": max(0.0, total - slot_time)}


def median_of(rows: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def fmt_row(label: str, d: dict) -> str:
    values = [label, f"{d['slots']:g}", f"{d['trials']:g}", f"{d['ok']:g}", f"{d['wall']:.1f}", f"{d['exp_h']:.1f}",
              f"{d['per_slot']:.1f}", f"{d['ideal']:.1f}", f"{d['ratio']:.2f}"] + [f"{d[f'{p}%']:.1f}" for p, _ in PHASES]
    return " ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, (_, w)) in enumerate(zip(values, COLUMNS)))


def main(argv=None) -> int:
    args = parse_args(argv)
    cuda = cuda_device(args.device)
    budget = args.budget or (300.0 if cuda else 30.0)
    if not cuda and args.cpus is None:
        args.cpus = max(1, (os.cpu_count() or 1) // (args.workers or 1))
    ds = resolve_dataset(args.data_dir, prepare_if_missing=True)
    unit = "GPU" if cuda else "CPU slot"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"# bench_throughput: seed train.py | budget {budget:g}s | device {'cuda' if cuda else 'cpu'} | "
          f"{args.trials} trials x {args.repeat} round(s) per executor | ideal {3600 / budget:.1f} experiments/{unit}-hour")
    print(f"# data {ds.path.name} (hash {ds.hash}) | host {platform.node()} | {os.cpu_count()} CPUs | load avg {load}"
          f"{f' | {args.cpus} CPU(s) per slot' if not cuda else ''}")
    print("# %: shares of slot time (slots x wall); rest = total - (train + start + compile + export + score) per trial; "
          "wait = slots x wall - the trials' total seconds")
    header = " ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(COLUMNS))
    summary, table = [], []
    for name in args.executors:
        with make_executor(name, args, cuda) as (ex, slots):
            print(f"# {name}: {ex.describe()}, {ex.size} trial(s) in flight", flush=True)
            rows = [measure(name, ex, slots, args, budget, ds.path, k + 1) for k in range(args.repeat)]
        table += [(f"{name} #{k + 1}", r) for k, r in enumerate(rows)] if args.repeat > 1 else []
        med = median_of(rows)
        table.append((name if args.repeat == 1 else f"{name} med", med))
        note = f" (waiting clamped at 0: trials' seconds exceed slots x wall by {med['overrun']:.1f}s)" if med["overrun"] else ""
        summary.append(f"{name}: {med['per_slot']:.1f} experiments/h per {unit} (ideal {med['ideal']:.1f} at {budget:g} s "
                       f"budget) = {med['ratio']:.2f} of ideal; {med['train%'] / 100:.2f} of worker time in the budget"
                       f"{' (medians of ' + str(args.repeat) + ' rounds)' if args.repeat > 1 else ''}{note}")
    print(header)
    for label, row in table:
        print(fmt_row(label, row))
    print()
    for line in summary:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
