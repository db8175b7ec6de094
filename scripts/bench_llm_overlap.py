"""Do slow LLM calls keep the workers waiting? And what does a run's LLM traffic cost?

The real `Engine` runs with the real `LLMOperator` (the anthropic SDK) against the loopback
Messages server of the tests (`tests/support/messages_server.py`), which answers every request
after `--latency` seconds with a good, distinct edit: the parent's `MATRIX_LR` line set to a new
value, so every child is a new program that trains. Trials are real (`--budget` seconds each).

Idle time. The executor's `run_trial` is wrapped to stamp each trial's start and end. Within the
window from the end of the bootstrap (the seed's noise trials, which need no proposal) to the
last trial's dispatch (after it, the trial cap, not a missing proposal, leaves workers empty),
idle = worker-seconds in which a worker slot had no trial running:

    idle = workers x window - sum over trials of (their running time inside the window)

It is an upper bound on the time spent waiting for a proposal: the coordinator's bookkeeping
between one trial's end and the next one's start counts too. It is reported as a share of the
trial time after the bootstrap (the summed durations of the trials that started in the window),
target < 2%, and as a share of the window's worker-time.

The cost lines are `Store.llm_spend` over the run: calls, tokens in and out, cache reads and
writes, dollars at the model's list price (the server counts tokens as characters / 4 and
simulates the prompt cache).

    python scripts/bench_llm_overlap.py --latency 20 --budget 5 --trials 12
"""

from __future__ import annotations

import argparse
import itertools
import re
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import evo.executors  # noqa: E402
from evo.config import RunConfig  # noqa: E402
from evo.engine import Engine  # noqa: E402
from evo.executors import LocalExecutor, local_slots  # noqa: E402
from evo.operators.llm import DEFAULT_MODEL, LLMOperator, price_for  # noqa: E402
from evo.reporting import Reporter  # noqa: E402
from population.store import Store  # noqa: E402
from tests.support.messages_server import MessagesServer, Reply  # noqa: E402
from trainer.prepare import DatasetError, find_dataset, prepare  # noqa: E402

SEED = (Path(__file__).resolve().parent.parent / "trainer" / "train.py").read_text()
_LR_LINE = re.compile(r"^MATRIX_LR = .*$", re.M)


class DistinctEdits:
    """Answers each request with a new MATRIX_LR for the parent in its prompt."""

    def __init__(self):
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def __call__(self, request) -> Reply:
        with self._lock:
            k = next(self._counter)
        # The first MATRIX_LR line of the prompt is the parent's (parent A's for a crossover).
        old = _LR_LINE.search(request.user_text).group(0)
        value = f"{0.03 + 0.0001 * k:.4f}"
        return Reply(f"Hypothesis: MATRIX_LR {value} trains the matrices at a better pace\n\n"
                     f"<<<<<<< SEARCH\n{old}\n=======\nMATRIX_LR = {value}\n>>>>>>> REPLACE\n")


class TrialClock:
    """Wraps the executor's run_trial to stamp every trial's start and end (time.monotonic)."""

    def __init__(self):
        self.spans: list[tuple[float, float]] = []  # in dispatch order of the worker threads
        self._lock = threading.Lock()
        self._inner = evo.executors.run_trial

    def __enter__(self):
        def timed(*args, **kwargs):
            start = time.monotonic()
            try:
                return self._inner(*args, **kwargs)
            finally:
                with self._lock:
                    self.spans.append((start, time.monotonic()))

        evo.executors.run_trial = timed
        return self

    def __exit__(self, *exc):
        evo.executors.run_trial = self._inner


class Log(Reporter):
    def __init__(self, t0: float):
        self.t0 = t0

    def message(self, text: str) -> None:
        print(f"  {time.monotonic() - self.t0:6.1f}s  {text}", flush=True)

    def trial_done(self, ind, result, placed, kind) -> None:
        score = f"{result.val_bpb:.4f}" if result.val_bpb is not None else result.outcome
        self.message(f"#{ind.id} {kind:7s} seed {result.seed} {score}  {ind.hypothesis[:60]}")


def idle_figures(spans: list[tuple[float, float]], bootstrap_trials: int, workers: int) -> dict:
    spans = sorted(spans)
    boot = spans[:bootstrap_trials]
    rest = spans[bootstrap_trials:]
    if not rest:
        return {}
    w0 = max(end for _, end in boot) if boot else rest[0][0]
    w1 = max(start for start, _ in rest)
    busy = sum(max(0.0, min(end, w1) - max(start, w0)) for start, end in spans)
    window = max(0.0, w1 - w0)
    idle = max(0.0, workers * window - busy)
    trial_seconds = sum(end - start for start, end in rest)
    gaps = []  # one worker: the stretches between consecutive trials inside the window
    if workers == 1:
        gaps = [b[0] - a[1] for a, b in zip(spans[bootstrap_trials - 1:], rest) if bootstrap_trials]
    return dict(window=window, idle=idle, trial_seconds=trial_seconds, n=len(rest),
                share_of_trials=idle / trial_seconds if trial_seconds else 0.0,
                share_of_window=idle / (workers * window) if window else 0.0, max_gap=max(gaps, default=None))


def dataset_for(data_dir: Path | None):
    try:
        return find_dataset(data_dir)
    except DatasetError as e:
        print(f"# {e}; preparing the stdlib corpus first", flush=True)
        return prepare("stdlib", data_dir=data_dir)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latency", type=float, default=20.0, help="seconds the server takes per call [20]")
    p.add_argument("--budget", type=float, default=5.0, help="training seconds per trial [5]")
    p.add_argument("--trials", type=int, default=12, help="trials in the run, bootstrap included [12]")
    p.add_argument("--population", type=int, default=16, help="children per generation [16]")
    p.add_argument("--noise-seeds", type=int, default=3, help="bootstrap trials of the seed [3]")
    p.add_argument("--workers", type=int, default=1, help="parallel trials on the CPU [1]")
    p.add_argument("--concurrency", type=int, default=None, help="proposal threads [the engine's default]")
    p.add_argument("--data-dir", type=Path, default=None, help="prepared data [EVO_DATA_DIR or ~/.cache/evo/data; "
                   "the stdlib corpus is prepared there if missing]")
    p.add_argument("--eval-tokens", type=int, default=None, help="evaluation tokens per trial [the harness's]")
    args = p.parse_args(argv)
    if args.trials <= args.noise_seeds:
        p.error("--trials must exceed --noise-seeds: the bootstrap needs no proposals")

    dataset = dataset_for(args.data_dir)
    cfg = RunConfig(population=args.population, budget=args.budget, trials=args.trials, noise_seeds=args.noise_seeds,
                    operator="llm", device="cpu", workers=args.workers, dataset_dir=str(dataset.path),
                    eval_tokens=args.eval_tokens, llm_concurrency=args.concurrency)
    with tempfile.TemporaryDirectory() as tmp, MessagesServer(handler=DistinctEdits(), latency=args.latency) as server:
        store = Store.open(Path(tmp) / "archive.db", create=True)
        run = store.create_run("bench", cfg.to_dict(), dataset.hash, "")
        store.add_individual(run.id, SEED, [], "seed", "seed", generation=0)
        operator = LLMOperator(api_key="bench-key", base_url=server.url, timeout=args.latency * 3 + 60, max_retries=0,
                               seed_source=SEED, failure_limit=cfg.llm_failure_limit(args.workers))
        executor = LocalExecutor(local_slots("cpu", args.workers))
        t0 = time.monotonic()
        engine = Engine(store, run, cfg, operator, executor, Log(t0))
        print(f"bench: latency {args.latency:g}s, budget {args.budget:g}s, {args.trials} trials "
              f"({args.noise_seeds} bootstrap), {executor.size} worker(s), "
              f"{engine._proposal_threads} proposal threads, model {DEFAULT_MODEL} prices", flush=True)
        with TrialClock() as clock:
            engine.run_loop()
        wall = time.monotonic() - t0
        spend = store.llm_spend(run.id)
        counts = store.counts(run.id)
        con = sqlite3.connect(Path(tmp) / "archive.db")
        outcomes = dict(con.execute("SELECT outcome, COUNT(*) FROM llm_calls GROUP BY outcome").fetchall())
        latency = con.execute("SELECT AVG(latency_s) FROM llm_calls").fetchone()[0]
        con.close()
        fig = idle_figures(clock.spans, args.noise_seeds, executor.size)
        store.close()

    print(f"\nrun: {wall:.1f}s wall, {len(clock.spans)} trials, {counts['trained'] + counts['pending']} programs "
          f"({counts['rejected']} rejected proposals), server saw {len(server.requests)} requests, "
          f"at most {server.max_in_flight} at once")
    if fig:
        gap = f", longest gap between trials {fig['max_gap']:.2f}s" if fig["max_gap"] is not None else ""
        print(f"idle: {fig['idle']:.2f} worker-s over a {fig['window']:.1f}s window (bootstrap end .. last dispatch); "
              f"{fig['n']} post-bootstrap trials, {fig['trial_seconds']:.1f} trial-s{gap}")
        print(f"idle share of trial time: {fig['share_of_trials']:.2%} (target < 2%); "
              f"of the window's worker time: {fig['share_of_window']:.2%}")
    price = price_for(DEFAULT_MODEL)
    saved = spend["cache_read_tokens"] * (price.input - price.cache_read) / 1e6
    children = counts["trained"] + counts["pending"] - 1  # less the seed
    print(f"LLM: {spend['calls']} calls ({', '.join(f'{n} {o}' for o, n in sorted(outcomes.items()))}), "
          f"mean latency {latency or 0:.1f}s; {spend['input_tokens']:,} tokens in, {spend['output_tokens']:,} out, "
          f"{spend['cache_read_tokens']:,} cache reads, {spend['cache_write_tokens']:,} cache writes")
    print(f"cost: ${spend['cost_usd']:.4f} at {DEFAULT_MODEL} list prices, ${spend['cost_usd'] / max(1, children):.4f} "
          f"per child program; the prompt cache saved ${saved:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
