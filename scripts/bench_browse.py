"""Benchmark the archive browser on a 10,000-individual archive: is every command and endpoint fast?

Builds (once, then reuses) a synthetic archive through the real `Store` API exactly as the engine
writes one — add_individual / start_trial / finish_trial (which commits each variant to git) /
EliteArchive.add, plus rejected proposals, failed trials of every kind, re-trained champions and generation
records — with sources that are real edits of the seed `train.py`. Then times (median and best of
several runs; the best is the figure where the machine is shared):

  the CLI through the real `evo` console script (process start included, as a user waits for it):
  evo runs, evo elites, evo show, evo lineage, evo diff, evo export ID, evo export --results-tsv,
  evo plot;
  the web page's JSON endpoints over HTTP against a running `evo ui` server, cold (first request
  after a change to the archive) and warm (the page's polling, answered from the cache), one at
  a time and as the page asks for them after a write (the run, progress and trials at once).

  python scripts/bench_browse.py                       # 10,000 individuals in /tmp/evo-bench-10000
  python scripts/bench_browse.py --n 2000 --repeats 3 --dir /tmp/b2k --rebuild

Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from population.elites import EliteArchive  # noqa: E402
from population.mapelites import Grid  # noqa: E402
from population.store import DuplicateSource, Store  # noqa: E402

SEED = (REPO / "trainer" / "train.py").read_text()
CONSTANTS = ("EMBED_LR", "UNEMBED_LR", "MATRIX_LR", "SCALAR_LR", "WEIGHT_DECAY", "MUON_MOMENTUM",
             "WARMUP_RATIO", "WARMDOWN_RATIO", "FINAL_LR_FRAC", "LOGIT_SOFTCAP")
FAILURES = ("crash", "oom", "timeout", "nan", "syntax_error")


def _set_constant(source: str, name: str, value: float) -> str:
    return re.sub(rf"(?m)^{name} = [^\s#]+", f"{name} = {value:.6g}", source, count=1)


def _constant(source: str, name: str) -> str:
    return re.search(rf"(?m)^{name} = ([^\s#]+)", source).group(1)


def build(db: Path, n: int, rng: random.Random) -> None:
    """A run of `n` individuals (a few percent rejected, ~8% failing) and a small earlier run."""
    store = Store.open(db, create=True)
    try:
        _build_run(store, "warmup-run", max(20, n // 50), rng)
        _build_run(store, "main-run", n, rng)
    finally:
        store.close()


def _build_run(store: Store, name: str, n: int, rng: random.Random) -> None:
    grid = Grid.around({"params": 1e6, "tokens": 1e5}, decades=2.0, bins=10)
    config = {"population": 16, "budget": 300.0, "operator": "offline", "grid": {"descriptors": ["params", "tokens"]},
              "grid_bounds": grid.to_config()}
    noise = 0.004
    run = store.create_run(name, config, data_manifest_hash="0" * 64, program_text="")
    store.update_run(run.id, noise_sd=noise)
    pool: list[tuple[int, str, float, float, float]] = []  # (id, source, skill, log params, log tokens)
    seed_id = store.add_individual(run.id, SEED, [], "seed", "seed: train.py").id
    pool.append((seed_id, SEED, 0.0, 6.0, 5.0))
    _train(store, grid, noise, seed_id, 0.0, 6.0, 5.0, rng, seeds=3)
    trial_seed = 10
    for i in range(1, n):
        gen = 1 + i // 16
        p1 = max(rng.sample(pool[-400:], min(3, len(pool))), key=lambda p: p[2])  # a tournament among recent
        if rng.random() < 0.2 and len(pool) > 1:
            p2 = rng.choice(pool[-400:])
            source = p1[1]
            for c in rng.sample(CONSTANTS, 3):
                source = _set_constant(source, c, float(_constant(p2[1], c)))
            parents, op, hyp = [p1[0], p2[0]], "crossover", f"cross #{p1[0]} × #{p2[0]}: take 3 constants from #{p2[0]}"
        else:
            c = rng.choice(CONSTANTS)
            old = float(_constant(p1[1], c))
            new = (old or 0.01) * rng.choice((0.5, 0.8, 1.25, 2.0)) * (1 + rng.random() * 1e-3)
            source = _set_constant(p1[1], c, new)
            parents, op, hyp = [p1[0]], "offline", f"{c} {old:.4g} → {new:.4g}: {rng.choice(HYPOTHESES)}"
        if rng.random() < 0.04:
            store.add_rejected(run.id, parents, op, hyp, "duplicate of an earlier child", generation=gen)
            continue
        try:
            ind = store.add_individual(run.id, source + f"# variant {name}-{i}\n", parents, op, hyp, generation=gen)
        except DuplicateSource:
            continue
        skill = p1[2] + rng.gauss(0.0, 0.05)
        lp, lt = p1[3] + rng.gauss(0, 0.15), p1[4] + rng.gauss(0, 0.15)
        failed = rng.random() < 0.08
        _train(store, grid, noise, ind.id, skill, lp, lt, rng, seeds=3 if rng.random() < 0.03 else 1,
               fail=rng.choice(FAILURES) if failed else None, seed0=trial_seed)
        trial_seed += 1
        if not failed:
            pool.append((ind.id, source, skill, lp, lt))
        if i % 16 == 0:
            best = store.best(run.id, 1)
            store.record_generation(run.id, gen, {"trials": 16, "failures": 1, "best_val_bpb": best[0].val_bpb_mean,
                                                  "best_individual_id": best[0].id})
    store.update_run(run.id, status="finished")


def _train(store, grid, noise, ind_id, skill, lp, lt, rng, seeds=1, fail=None, seed0=0) -> None:
    """Trials of one individual; its val_bpb falls from 1.0 towards 0.9 as its skill grows."""
    for k in range(seeds):
        trial = store.start_trial(ind_id, seed0 + 1000 * k, device="cuda:0", worker="gpu0")
        if fail:
            result = {"outcome": fail, "val_bpb": None, "exit_code": 1, "message": f"{fail} in step 12",
                      "stderr_tail": "Traceback (most recent call last):\n  ...\nRuntimeError: boom",
                      "peak_memory_mb": 900.0 + rng.random() * 100, "training_seconds": 3.0}
        else:
            result = {"outcome": "ok", "val_bpb": 0.9 + 0.1 * math.exp(-max(skill, 0.0)) + rng.gauss(0, noise), "exit_code": 0,
                      "params": int(10 ** (lp + rng.gauss(0, 0.01))), "tokens": int(10 ** (lt + rng.gauss(0, 0.01))),
                      "steps": 900, "peak_memory_mb": 40000.0 + rng.random() * 5000, "training_seconds": 300.0,
                      "total_seconds": 330.0, "message": "ok"}
        store.finish_trial(trial.id, result)
        EliteArchive(store, store.get_individual(ind_id, source=False).run_id, grid, noise).add(ind_id)


HYPOTHESES = (
    "a lower learning rate should stabilise the late steps",
    "more momentum smooths Muon's updates at this batch size",
    "a longer warmdown spends more of the budget near the minimum",
    "softer logit capping lets the model commit earlier",
    "weight decay regularises the embedding at this data size",
)


# ---------------------------------------------------------------------- timing


def _time(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _fmt(times: list[float]) -> str:
    """median and best: on a shared machine the best run is the one nothing else slowed down."""
    return f"{statistics.median(times):7.3f} {min(times):7.3f}"


def _evo(*args: str) -> None:
    proc = subprocess.run(["evo", *args], capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"})
    if proc.returncode != 0:
        raise SystemExit(f"evo {' '.join(args)} failed:\n{proc.stderr}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read()


def bench(db: Path, repeats: int) -> None:
    store = Store.open(db, readonly=True)
    run = store.latest_run()
    best = store.best(run.id, 1)[0]
    other = store.individuals(run.id, status="trained", limit=5)[-1]
    n_ind = len(store.individuals(run.id))
    n_trials = len(store.trials(run.id))
    store.close()
    ref, ref2 = (best.commit or best.source_hash)[:8], (other.commit or other.source_hash)[:8]
    print(f"archive {db}: run '{run.name}' with {n_ind} individuals, {n_trials} trials; "
          f"{repeats} runs each, seconds\n")
    tmp = db.parent / "bench-out"
    tmp.mkdir(exist_ok=True)
    cli = {
        "evo runs": ("runs",),
        "evo elites": ("elites",),
        "evo show (best)": ("show", ref),
        "evo lineage (best)": ("lineage", ref),
        "evo diff": ("diff", ref2, ref),
        "evo export ID -o": ("export", ref, "-o", str(tmp / "train.py")),
        "evo export --results-tsv": ("export", "--results-tsv", str(tmp / "results.tsv")),
        "evo plot (progress + heatmap, PNG + SVG)": ("plot", "-o", str(tmp)),
    }
    print(f"{'CLI (real console script, process start included)':52s} {'median':>7s} {'best':>7s}")
    _evo("--version")
    print(f"  {'evo --version (start-up floor)':50s} {_fmt(_time(lambda: _evo('--version'), repeats))}")
    for label, args in cli.items():
        print(f"  {label:50s} {_fmt(_time(lambda: _evo(*args, '--db', str(db)), repeats))}")

    port = _free_port()
    server = subprocess.Popen(["evo", "ui", "--db", str(db), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                _get(base + "/api/version")
                break
            except OSError:
                time.sleep(0.1)
        endpoints = ["/", "/api/runs", "/api/run", "/api/progress", f"/api/individual/{ref}",
                     f"/api/lineage/{ref}", "/api/trials?limit=200", "/api/trials?outcome=crash&limit=200",
                     "/api/version"]
        print(f"\n{'web (HTTP to evo ui)':38s} {'cold: median':>12s} {'best':>7s} {'warm: median':>12s} {'best':>7s}"
              f" {'bytes':>8s}")

        def cold(fn):
            def run():
                os.utime(db)  # a new archive version, as after a write: the answers are computed afresh
                return fn()
            return run

        for path in endpoints:
            body = _get(base + path)
            print(f"  {path:36s}      {_fmt(_time(cold(lambda: _get(base + path)), repeats))}      "
                  f"{_fmt(_time(lambda: _get(base + path), repeats))} {len(body):8d}")

        def refresh() -> None:  # what the page asks for when the archive has changed
            _get(base + "/api/runs")
            with ThreadPoolExecutor(3) as pool:
                list(pool.map(_get, [base + "/api/run", base + "/api/progress", base + "/api/trials?limit=100"]))

        print(f"  {'page refresh (see below)':36s}      {_fmt(_time(cold(refresh), repeats))}      "
              f"{_fmt(_time(refresh, repeats))}")
        print("\npage refresh: /api/runs, then /api/run, /api/progress and /api/trials at once, as the page asks")
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="individuals in the main run")
    ap.add_argument("--dir", type=Path, default=None, help="where the archive lives [/tmp/evo-bench-N]")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rebuild", action="store_true", help="build the archive again even if it exists")
    args = ap.parse_args()
    folder = args.dir or Path(f"/tmp/evo-bench-{args.n}")
    db = folder / "archive.db"
    if args.rebuild and folder.exists():
        subprocess.run(["rm", "-rf", str(folder)], check=True)
    if not db.exists():
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        build(db, args.n, random.Random(0))
        print(f"built {db} through the Store API in {time.perf_counter() - start:.0f} s")
    bench(db, args.repeats)


if __name__ == "__main__":
    main()
