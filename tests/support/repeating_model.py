"""A model that repeats itself, and a real `evo run` against it: LLM calls per trained child.

`RepeatingModel` is a handler for the loopback Messages server (`tests.support.messages_server`)
that answers every request — mutation, crossover or repair, whatever the prompt says — with the
next edit of a small fixed set, round and round. Its edits combine into only a handful of distinct
children; from then on everything it says is a duplicate (or an edit that no longer applies), which
is what a real model stuck in a rut costs: `run_repeating` runs the real `evo run --operator llm`
in a subprocess against it and counts what the run paid for each child it trained.

    from tests.support.repeating_model import run_repeating
    result = run_repeating(workdir, data_dir=None)          # evo's default data, the packaged seed
    print(result.line())   # "31 LLM calls (34 requests) for 10 trained children: 3.1 per child ..."

Used by tests/test_llm_pacing.py and scripts/bench_faults.py; standard library and evo only (no
pytest), so a benchmark can import it.
"""

from __future__ import annotations

import collections
import itertools
import os
import signal
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.messages_server import MessagesServer, Reply

REPO = Path(__file__).resolve().parents[2]
PROBE_SEED = REPO / "tests" / "variants" / "env_probe.py"
TRAINER_SEED = REPO / "trainer" / "train.py"
KEY = "sk-ant-evotest-repeating-0123456789abcdef"
TIMED_OUT = 124  # RepeatingResult.returncode of a run killed at its timeout


def edit(old: str, new: str, hypothesis: str) -> str:
    return f"Hypothesis: {hypothesis}\n\n<<<<<<< SEARCH\n{old}\n=======\n{new}\n>>>>>>> REPLACE\n"


# Three edits of each seed: two set the same line (so they conflict), one another line. From the
# seed they make at most five distinct children (a, b, c, a+b, c+b).
PROBE_EDITS = (
    edit("MATRIX_LR = 0.1", "MATRIX_LR = 0.05", "a lower learning rate is steadier"),
    edit("batches = h.train_batches(8, 32)", "batches = h.train_batches(16, 32)", "bigger batches, less noise"),
    edit("MATRIX_LR = 0.1", "MATRIX_LR = 0.2", "a higher learning rate learns faster"),
)
TRAINER_EDITS = (
    edit("MATRIX_LR = 0.04", "MATRIX_LR = 0.05", "a higher matrix learning rate learns faster"),
    edit("WARMDOWN_RATIO = 0.5", "WARMDOWN_RATIO = 0.3", "a shorter warmdown trains longer at full rate"),
    edit("MATRIX_LR = 0.04", "MATRIX_LR = 0.03", "a lower matrix learning rate is steadier"),
)
EDITS_FOR_SEED = {PROBE_SEED: PROBE_EDITS, TRAINER_SEED: TRAINER_EDITS}

# Settings of a short CPU run (tests/conftest.py FAST_TOML), written to the run's evo.toml.
FAST_TOML = """
eval_tokens = 4096
eval_seq_len = 64
noise_seeds = 2
champion_seeds = 2
"""


class RepeatingModel:
    """The server's handler: the next of `edits`, in turn, for every request; the prompts it was
    sent are kept (`prompts`: the last user message of each request)."""

    def __init__(self, edits=PROBE_EDITS):
        self.edits = tuple(edits)
        self._turn = itertools.cycle(self.edits)
        self._lock = threading.Lock()
        self.prompts: list[str] = []

    def __call__(self, request) -> Reply:
        with self._lock:
            self.prompts.append(request.user_text)
            return Reply(next(self._turn))


@dataclass
class RepeatingResult:
    """What a run against the repeating model cost."""

    returncode: int
    stderr: str
    seconds: float
    requests: int  # HTTP requests the server answered (SDK retries included)
    calls: int  # LLM calls the archive recorded
    trained_children: int  # the run's children (not its seeds) with at least one finished trial
    children: int  # children made, trained or not
    rejected: collections.Counter = field(default_factory=collections.Counter)  # reason kind -> count
    trials: int = 0
    merge_duplicates: int = 0  # free merges (no LLM call) rejected as duplicates
    prompts: list[str] = field(default_factory=list)  # the last user message of every request

    @property
    def calls_per_trained_child(self) -> float:
        return self.calls / self.trained_children if self.trained_children else float("inf")

    def line(self) -> str:
        kinds = ", ".join(f"{n} {k}" for k, n in self.rejected.most_common()) or "none"
        return (f"{self.calls} LLM calls ({self.requests} requests) for {self.trained_children} trained children: "
                f"{self.calls_per_trained_child:.1f} per child; {self.trials} trials, rejected: {kinds}; "
                f"{self.seconds:.0f} s")


def run_repeating(workdir: Path, *, data_dir: Path | None = None, seed_file: Path = PROBE_SEED, edits=None,
                  population: int = 4, trials: int = 16, budget: float = 1, toml: str = FAST_TOML,
                  extra_args: tuple = (), timeout: float = 600, latency: float = 0.0,
                  evo: tuple = ("evo",), env: dict | None = None) -> RepeatingResult:
    """`evo run --operator llm` in `workdir` (a new archive there) against a `RepeatingModel`
    answering from `edits` (by default the fixed set for `seed_file`), on the data in `data_dir`
    (evo's default data when None). Returns what it cost; `returncode` != 0 is the run's failure
    (TIMED_OUT: still running after `timeout` seconds, killed, and counted as far as it got).
    `evo` is the command that runs evo (another checkout's, say), `env` more environment for it."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "archive.db"
    if db.exists():
        raise FileExistsError(f"{db} exists: give run_repeating a fresh directory")
    cfg = workdir / "evo.toml"
    cfg.write_text(toml)
    model = RepeatingModel(edits if edits is not None else EDITS_FOR_SEED.get(Path(seed_file), PROBE_EDITS))
    args = [*evo, "run", "--db", str(db), "--name", "repeating", "--operator", "llm", "--config", str(cfg),
            "--seed-file", str(seed_file), "--population", str(population), "--trials", str(trials),
            "--budget", str(budget), *map(str, extra_args)]
    if data_dir is not None:
        args += ["--data-dir", str(data_dir)]
    with MessagesServer(handler=model, latency=latency) as server:
        env = {**os.environ, "COLUMNS": "200", **(env or {}), "ANTHROPIC_API_KEY": KEY,
               "ANTHROPIC_BASE_URL": server.url}
        start = time.monotonic()
        proc = subprocess.Popen(args, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)
        try:
            _, stderr = proc.communicate(timeout=timeout)
            returncode = proc.returncode
        except subprocess.TimeoutExpired:  # a run that never ends: stopped, and what it did so far counted
            os.killpg(proc.pid, signal.SIGKILL)
            _, stderr = proc.communicate()
            returncode = TIMED_OUT
        seconds = time.monotonic() - start
        requests = len(server.requests)
    return _read(db, returncode, stderr, seconds, requests, model.prompts)


def _read(db: Path, returncode: int, stderr: str, seconds: float, requests: int, prompts: list[str]) -> RepeatingResult:
    result = RepeatingResult(returncode, stderr, seconds, requests, 0, 0, 0, prompts=prompts)
    if not db.exists():
        return result
    con = sqlite3.connect(db)
    try:
        result.calls = con.execute("SELECT count(*) FROM llm_calls").fetchone()[0]
        result.trials = con.execute("SELECT count(*) FROM trials WHERE status = 'done'").fetchone()[0]
        rows = con.execute("SELECT operator, status, n_trials, rejected_reason FROM individuals").fetchall()
    finally:
        con.close()
    for operator, status, n_trials, reason in rows:
        if operator in ("seed", "seed-from"):
            continue
        if status == "rejected":
            kind = "duplicate" if (reason or "").startswith("duplicate of") else (reason or "no reason").split(":")[0]
            result.rejected[kind[:40]] += 1
            result.merge_duplicates += operator == "merge" and kind == "duplicate"
        else:
            result.children += 1
            result.trained_children += bool(n_trials)
    return result


if __name__ == "__main__":
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description="LLM calls per trained child for a model that repeats itself")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--population", type=int, default=4)
    ap.add_argument("--budget", type=float, default=1)
    ap.add_argument("--seed-file", type=Path, default=PROBE_SEED)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("extra", nargs="*", help="more `evo run` arguments (after --)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="evo-repeating-") as tmp:
        r = run_repeating(Path(tmp), data_dir=a.data_dir, seed_file=a.seed_file, population=a.population,
                          trials=a.trials, budget=a.budget, extra_args=tuple(a.extra))
        print(r.stderr[-3000:] if r.returncode else "\n".join(r.stderr.splitlines()[-6:]))
        print(r.line())
