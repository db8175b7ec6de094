"""What faults cost a run: kills survived, trials lost and repeated, contaminated elites, resource
bombs contained, seconds from a fault to the next trial, LLM calls per trained child of a model
that repeats itself.

Everything is real: `evo run` subprocesses on a small prepared corpus (40 stdlib modules, a
512-token BPE, 1 s trials on CPU), SIGKILLed at random points of a fixed seed and resumed; the
bombs are trials of hostile variants through `trainer.runner.run_trial`; the repeating model is
the loopback Messages API server answering from three fixed edits.

    python scripts/bench_faults.py                  # all three parts (~6 min on 2 cores)
    python scripts/bench_faults.py --kills 20 --only kills
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.faults import kill_loop  # noqa: E402
from trainer.corpus import stdlib_files, stdlib_root  # noqa: E402
from trainer.prepare import prepare  # noqa: E402

FAST_TOML = "eval_tokens = 4096\neval_seq_len = 64\nnoise_seeds = 2\nchampion_seeds = 2\n"


def small_dataset(work: Path):
    root = stdlib_root()
    corpus = work / "corpus"
    corpus.mkdir()
    for path in stdlib_files(root)[100:140]:
        shutil.copy(path, corpus / path.relative_to(root).as_posix().replace("/", "__"))
    return prepare("files", paths=[str(corpus)], data_dir=work / "data", vocab_size=512, val_fraction=0.2)


def kills(args, work: Path, dataset) -> None:
    toml = work / "evo.toml"
    toml.write_text(FAST_TOML)
    db = work / "kills" / "archive.db"
    db.parent.mkdir()
    run_args = ["run", "--db", db, "--name", "k", "--population", 3, "--trials", args.trials, "--budget", 1,
                "--config", toml, "--data-dir", dataset.path, "--operator", "offline"]
    t0 = time.time()
    report = kill_loop(db, run_args, "k", trials=args.trials, kills=args.kills, seed=args.seed, cwd=db.parent)
    contaminated = [p for p in report.problems if "elite" in p]
    gaps = report.fault_to_next_trial_s
    print(f"kills survived: {report.kills} of {report.kills} (SIGKILL at random points, seed {args.seed}, "
          f"{args.trials} trials, {time.time() - t0:.0f}s)")
    print(f"trials lost: {len(report.lost)}")
    print(f"trials repeated: {report.repeated}")
    print(f"contaminated elites: {len(contaminated)}")
    print(f"other inconsistencies seen (integrity, git, {report.reads} reader snapshots): "
          f"{len(report.problems) - len(contaminated)}")
    print(f"processes outliving a killed coordinator: {len(report.survivors)}")
    if gaps:
        print(f"seconds from a fault to the next trial start: median {statistics.median(gaps):.1f}, "
              f"max {max(gaps):.1f} (from `evo run --resume` to its first trial, over the {len(gaps)} resumes that got "
              f"that far before the next kill; evo's start-up included)")
    for p in report.problems[:10]:
        print(f"  problem: {p}")


def bombs(args, work: Path, dataset) -> None:
    from tests.support.bombs import run_bombs  # the resource-bomb variants and their expected outcomes

    results = run_bombs(dataset.path, work / "bombs")
    contained = [r for r in results if r.contained]
    print(f"resource bombs contained: {len(contained)}/{len(results)}")
    for r in results:
        print(f"  {r.line()}")


def repeating(args, work: Path, dataset) -> None:
    from tests.support.repeating_model import run_repeating

    result = run_repeating(work / "repeating", data_dir=dataset.path)
    print(f"LLM calls per trained child for a repeating model: {result.calls_per_trained_child:.1f} (target <= 3)")
    print(f"  {result.line()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["kills", "bombs", "repeating"])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--seed", type=int, default=14)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "repeating").mkdir()
        print("preparing a small corpus …", flush=True)
        dataset = small_dataset(work)
        for name, part in (("kills", kills), ("bombs", bombs), ("repeating", repeating)):
            if args.only in (None, name):
                part(args, work, dataset)


if __name__ == "__main__":
    main()
