"""Benchmark the trial seal: every hostile variant in tests/variants/hostile through the real runner.

Each variant (a train.py written to cheat: forged results, models that peek past the causality
check, patched evaluation, tampered byte counts, validation data, unmetered time, stolen keys,
writes outside its directory, network, attacks on the runner) is trained once, exactly as
`evo run` trains a child (`trainer.runner.run_trial`), with the sandbox as chosen, inside the
canaries of tests/support/hostile.py: a canary key where the coordinator's would be (its
environment, a fake HOME, a decoy coordinator process), a loopback listener, snapshots of the
trees a trial must not change, a watch for processes that outlive the trial. The stash variant is
run twice, so what one trial leaves behind is offered to the next.

Prints one line per variant (class, name, outcome, scored, honest, leaks, writes outside, notes),
then the summary

  N tried, M scored, L leaks, W writes outside

where M counts dishonest scores only (below half the uniform bpb, any score of a variant whose
header says `expect: refused`, and with --time-slack, a trial that took longer than that), L
counts canary leaks (the key in the trial's output, any connection the listener got) plus
markers that fail by themselves (a key found, validation tokens read, a route out, an earlier
trial's stash), and W the changes found in the watched trees. Exits 1 if M, L or W, or the
count of processes that escaped or of signs of tampering, is not zero.

  python scripts/bench_integrity.py                         # --sandbox strict, 2 s budget, CPU
  python scripts/bench_integrity.py --sandbox off           # the unsealed runner, for comparison
  python scripts/bench_integrity.py --only probe_batch val_file --json integrity.json

Every variant trains on a private copy of the data (attacks overwrite dataset files). Without
prepared data, the embedded stdlib corpus is prepared first, as scripts/bench_trial.py does.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.hostile import CLASSES, Canaries, copy_dataset, header, hostile_variants, options, verdict  # noqa: E402
from trainer.runner import run_trial  # noqa: E402

from bench_trial import dataset_for  # noqa: E402  (scripts/ is on sys.path when run)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sandbox", choices=("strict", "auto", "off"), default="strict",
                   help="the runner's sandbox [strict]")
    p.add_argument("--budget", type=float, default=2.0, help="training seconds per trial [2]")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto [cpu]")
    p.add_argument("--data-dir", type=Path, default=None, help="prepared data (a data dir or one dataset) "
                   "[EVO_DATA_DIR or ~/.cache/evo/data; the stdlib corpus is prepared there if missing]")
    p.add_argument("--eval-tokens", type=int, default=None, help="scored val tokens [the harness's default]")
    p.add_argument("--eval-seq-len", type=int, default=None, help="scored context [the harness's default]")
    p.add_argument("--time-slack", type=float, default=None,
                   help="also call a score dishonest when launch to end took longer than budget + this "
                        "[off: the runner's over_budget judges time]")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME", help="only these variants (file stems)")
    p.add_argument("--json", type=Path, default=None, help="also write every verdict here")
    args = p.parse_args(argv)
    if args.budget <= 0:
        p.error("--budget must be greater than 0")
    return args


def sandbox_kwargs(sandbox: str) -> dict:
    """run_trial's sandbox argument; the unsealed runner (no such argument) only as --sandbox off."""
    if "sandbox" in inspect.signature(run_trial).parameters:
        return {"sandbox": sandbox}
    if sandbox != "off":
        raise SystemExit(f"this runner (trainer/runner.py) has no sandbox; --sandbox {sandbox} cannot be measured "
                         "(--sandbox off measures it unsealed)")
    return {}


def judge(name: str, cls: str, source: str, ds, args, run_kw: dict) -> list[dict]:
    """Train one variant (the stash variant twice) inside fresh canaries; its verdicts."""
    opts = {k: v for k, v in (("eval_tokens", args.eval_tokens), ("eval_seq_len", args.eval_seq_len)) if v}
    opts.update(options(source))
    root = Path(tempfile.mkdtemp(prefix="evo-integrity-"))
    saved = dict(os.environ)
    try:
        data = copy_dataset(ds, root / "data")
        works = [root / "trial", root / "trial2"][: 2 if name == "unmetered_stash" else 1]
        rows = []
        with Canaries(root, dataset=data, workdir=works[0], exclude=tuple(works[1:]),
                      eval_tokens=opts.get("eval_tokens"), eval_seq_len=opts.get("eval_seq_len")) as canaries:
            os.environ.update(canaries.env)
            for work in works:
                canaries.workdir = work
                result = run_trial(canaries.prepare(source), dataset_dir=data.path, budget=args.budget, seed=0,
                                   device=args.device, workdir=work, **run_kw, **opts)
                out = work / "stdout.log"
                stdout = out.read_text(errors="replace") if out.exists() else ""
                limit = args.budget + args.time_slack if args.time_slack is not None else None
                rows.append(verdict(result, stdout, canaries, name=name, cls=cls,
                                    expect=header(source).get("expect", ""), time_limit=limit))
        return rows
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(root, ignore_errors=True)


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


def line(row: dict) -> str:
    notes = []
    if row["val_bpb"] is not None:
        notes.append(f"val_bpb {row['val_bpb']:.4f} (floor {row['floor']:.3f})")
    if row["over_time"]:
        notes.append(f"took {row['total_seconds']:.1f}s")
    if row["fatal"]:
        notes.append("got: " + "; ".join(m[:80] for m in row["fatal"][:2]))
    if row["writes"]:
        notes.append("wrote: " + ", ".join(w.split(" ", 1)[1] for w in row["writes"][:3])
                     + (" ..." if len(row["writes"]) > 3 else ""))
    if row["network"]:
        notes.append(f"listener got {len(row['network'])}")
    if row["survivors"]:
        notes.append(f"{len(row['survivors'])} process(es) outlived the trial")
    if row["tampered"]:
        notes.append("tampered: " + row["tampered"][0][:80])
    if not row["scored"] and row["message"]:
        notes.append(row["message"][:80])
    run = f"#{row['run'] + 1}" if row.get("runs", 1) > 1 else ""
    return (f"{row['cls']:15} {row['name'] + run:28} {row['outcome'] or '-':13} scored {yes(row['scored']):3} "
            f"honest {yes(row['honest']):3} leaks {row['leaks'] + len(row['fatal']):2d} "
            f"writes {row['writes_outside']:2d}  " + " | ".join(notes))


def main(argv=None) -> int:
    args = parse_args(argv)
    run_kw = sandbox_kwargs(args.sandbox)
    ds = dataset_for(args.data_dir)
    variants = hostile_variants(args.only)
    if not variants:
        raise SystemExit(f"no hostile variant matches {args.only}")
    limit = f"budget + {args.time_slack:g}s" if args.time_slack is not None else "the runner's"
    print(f"# bench_integrity: {len(variants)} hostile variants | sandbox {args.sandbox} | budget {args.budget:g}s | "
          f"device {args.device} | time limit {limit}")
    print(f"# data {ds.path.name} (hash {ds.hash}, vocab {ds.vocab_size}), a private copy per variant")
    rows, t0 = [], time.time()
    for name, cls, source in variants:
        got = judge(name, cls, source, ds, args, run_kw)
        for i, row in enumerate(got):
            row.update(run=i, runs=len(got))
            print(line(row), flush=True)
        rows += got
    dishonest = sum(r["scored"] and not r["honest"] for r in rows)
    leaks = sum(r["leaks"] + len(r["fatal"]) for r in rows)
    writes = sum(r["writes_outside"] for r in rows)
    escaped = sum(len(r["survivors"]) for r in rows)
    tampered = sum(len(r["tampered"]) for r in rows)
    print()
    print(f"{'class':15} {'tried':>5} {'refused':>7} {'scored_honest':>13} {'scored_dishonest':>16} {'leaks':>5} "
          f"{'writes':>6}")
    for cls in CLASSES:
        mine = [r for r in rows if r["cls"] == cls]
        if mine:
            print(f"{cls:15} {len({r['name'] for r in mine}):5d} {sum(not r['scored'] for r in mine):7d} "
                  f"{sum(r['scored'] and r['honest'] for r in mine):13d} "
                  f"{sum(r['scored'] and not r['honest'] for r in mine):16d} "
                  f"{sum(r['leaks'] + len(r['fatal']) for r in mine):5d} {sum(r['writes_outside'] for r in mine):6d}")
    print(f"# {time.time() - t0:.0f}s")
    print(f"{len(variants)} tried, {dishonest} scored, {leaks} leaks, {writes} writes outside")
    if escaped or tampered:
        print(f"also: {escaped} processes outlived their trial, "
              f"{tampered} signs of tampering with the decoy coordinator")
    if args.json:
        args.json.write_text(json.dumps({"sandbox": args.sandbox, "budget": args.budget, "dataset": ds.path.name,
                                         "verdicts": rows}, indent=2, default=str))
        print(f"# wrote {args.json}")
    return 1 if (dishonest or leaks or writes or escaped or tampered) else 0


if __name__ == "__main__":
    sys.exit(main())
