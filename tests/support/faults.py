"""Fault injection shared by the crash-safety tests and `scripts/bench_faults.py`: kill the
coordinator of a real `evo run` at random points, resume it, and check after every kill that
the archive is whole.

"Whole" is checked on one read snapshot of the SQLite file (WAL gives a reader a consistent
view while the writer goes on), so the same check serves a reader polling during writes:
every trained individual's cached aggregates match its finished trials, every individual with a
finished trial has its git commit, every elite is an individual with an ok trial in that cell.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tests.conftest import evo, start_evo


def snapshot_problems(db: Path) -> list[str]:
    """What is inconsistent in one read snapshot of the archive (empty when whole)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        conn.execute("BEGIN")
        inds = conn.execute('SELECT id, status, n_trials, n_ok, val_bpb_mean, "commit", cell FROM individuals').fetchall()
        trials = conn.execute("SELECT individual_id, status, outcome, val_bpb FROM trials").fetchall()
        elites = conn.execute("SELECT cell, individual_id FROM elites").fetchall()
        conn.execute("COMMIT")
    finally:
        conn.close()
    done: dict[int, list[tuple[str, float | None]]] = {}
    for ind_id, status, outcome, val_bpb in trials:
        if status == "done":
            done.setdefault(ind_id, []).append((outcome, val_bpb))
    problems = []
    by_id = {}
    for ind_id, status, n_trials, n_ok, mean, commit, cell in inds:
        by_id[ind_id] = (n_ok, cell)
        mine = done.get(ind_id, [])
        ok = [v for o, v in mine if o == "ok" and v is not None]
        if status == "trained" or mine:
            if (n_trials, n_ok) != (len(mine), len(ok)):
                problems.append(f"#{ind_id}: n_trials/n_ok {n_trials}/{n_ok}, trials say {len(mine)}/{len(ok)}")
            if ok and (mean is None or abs(mean - statistics.fmean(ok)) > 1e-9):
                problems.append(f"#{ind_id}: mean {mean} but its ok trials average {statistics.fmean(ok)}")
            if mine and commit is None:
                problems.append(f"#{ind_id}: a finished trial but no git commit")
    for cell, ind_id in elites:
        n_ok, its_cell = by_id.get(ind_id, (0, None))
        if not n_ok or its_cell != cell:
            problems.append(f"elite of {cell} is #{ind_id} with {n_ok} ok trials in cell {its_cell}")
    return problems


def integrity(db: Path) -> str:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def git_problems(db: Path, run_name: str) -> list[str]:
    """Every committed individual's ref points at its commit, and the commit holds its source."""
    git_dir = db.with_suffix(".git")
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute('SELECT i.id, i."commit", i.source FROM individuals i JOIN runs r ON r.id = i.run_id '
                            'WHERE r.name = ? AND i."commit" IS NOT NULL', (run_name,)).fetchall()
    finally:
        conn.close()
    refs = dict(line.split()[::-1] for line in subprocess.run(
        ["git", "--git-dir", str(git_dir), "for-each-ref", "--format=%(objectname) %(refname)",
         f"refs/individuals/{run_name}/"], capture_output=True, text=True, check=True).stdout.splitlines())
    problems = []
    for ind_id, commit, source in rows:
        if refs.get(f"refs/individuals/{run_name}/{ind_id}") != commit:
            problems.append(f"#{ind_id}: ref does not point at commit {commit[:8]}")
            continue
        shown = subprocess.run(["git", "--git-dir", str(git_dir), "show", f"{commit}:train.py"],
                               capture_output=True, text=True)
        if shown.returncode != 0 or shown.stdout != source:
            problems.append(f"#{ind_id}: commit {commit[:8]} does not hold its source")
    return problems


def done_trials(db: Path, run_name: str) -> dict[tuple[int, int], float | None]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return {(i, s): v for i, s, v in conn.execute(
            "SELECT t.individual_id, t.seed, t.val_bpb FROM trials t JOIN runs r ON r.id = t.run_id "
            "WHERE r.name = ? AND t.status = 'done'", (run_name,))}
    except sqlite3.OperationalError:  # not created yet
        return {}
    finally:
        conn.close()


def _run_exists(db: Path, run_name: str) -> bool:
    """Whether a kill came late enough for the run to exist (else the next start is a new run)."""
    if not db.exists():
        return False
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute("SELECT 1 FROM runs WHERE name = ?", (run_name,)).fetchone() is not None
    except sqlite3.OperationalError:  # killed before the tables were made
        return False
    finally:
        conn.close()


def _first_start(db: Path, run_name: str, start: float, end: float) -> float | None:
    """Seconds from `start` (epoch) to the first trial started before `end`, if any."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        stamps = [datetime.fromisoformat(s).replace(tzinfo=timezone.utc).timestamp() for (s,) in conn.execute(
            "SELECT t.started_at FROM trials t JOIN runs r ON r.id = t.run_id WHERE r.name = ?", (run_name,))]
    finally:
        conn.close()
    within = [s - start for s in stamps if start < s < end]
    return min(within) if within else None


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


@dataclass
class KillReport:
    kills: int = 0
    lost: list = field(default_factory=list)  # (individual, seed) finished before a kill, gone or changed after
    repeated: int = 0  # finished trials beyond what the run asked for
    problems: list = field(default_factory=list)  # snapshot, integrity and git findings, after any kill or read
    survivors: list = field(default_factory=list)  # processes of a killed coordinator still alive 10 s on
    fault_to_next_trial_s: list = field(default_factory=list)  # a resume's start to its first trial's start
    reads: int = 0  # snapshots a concurrent reader took


def kill_loop(db: Path, run_args: list, run_name: str, trials: int, kills: int, seed: int, cwd: Path,
              max_delay: float = 6.0) -> KillReport:
    """Start the run, SIGKILL its coordinator after a random delay, check, resume; `kills` times,
    then let it finish. A reader thread checks snapshots the whole time."""
    rng = random.Random(seed)
    report = KillReport()
    stop = threading.Event()

    def read_while_writing() -> None:
        while not stop.is_set():
            if db.exists():
                try:
                    found = snapshot_problems(db)
                except sqlite3.OperationalError:  # no tables yet
                    found = []
                report.reads += 1
                report.problems += [f"reader: {p}" for p in found]
            time.sleep(0.05)

    reader = threading.Thread(target=read_while_writing, daemon=True)
    reader.start()
    before: dict = {}
    lives: list[tuple[float, float]] = []  # (start, kill) of each resumed coordinator
    resume = ["run", "--db", db, "--name", run_name, "--resume"]
    try:
        for k in range(kills):
            resuming = _run_exists(db, run_name)
            started = time.time()
            proc = start_evo(*(resume if resuming else run_args), cwd=cwd)
            deadline = time.time() + rng.uniform(0.3, max_delay)
            while time.time() < deadline and proc.poll() is None:
                time.sleep(0.02)
            if proc.poll() is not None:  # it finished (or failed) before the kill
                out, err = proc.communicate()
                if proc.returncode != 0:
                    report.problems.append(f"run exited {proc.returncode} before kill {k}: {err[-500:]}")
                break
            tree = descendants(proc.pid)
            proc.send_signal(signal.SIGKILL)
            killed_at = time.time()
            proc.communicate()
            report.kills += 1
            until = time.time() + 10
            while _alive(tree) and time.time() < until:
                time.sleep(0.1)
            report.survivors += sorted(_alive(tree))
            for pid in _alive(tree):  # do not leave them to the next round
                os.kill(pid, signal.SIGKILL)
            if db.exists():
                if (verdict := integrity(db)) != "ok":
                    report.problems.append(f"integrity_check after kill {k}: {verdict}")
                report.problems += [f"after kill {k}: {p}" for p in snapshot_problems(db) + git_problems(db, run_name)]
            now = done_trials(db, run_name) if db.exists() else {}
            report.lost += [key for key, v in before.items() if key not in now or now[key] != v]
            before = now
            if resuming:
                lives.append((started, killed_at))
        resuming, started = _run_exists(db, run_name), time.time()
        proc = evo(*(resume if resuming else run_args), cwd=cwd, check=False)
        if resuming:
            lives.append((started, time.time()))
        if proc.returncode != 0:
            report.problems.append(f"the final resume exited {proc.returncode}: {proc.stderr[-500:]}")
    finally:
        stop.set()
        reader.join()
    final = done_trials(db, run_name)
    report.lost += [key for key, v in before.items() if key not in final or final[key] != v]
    report.repeated = max(0, len(final) - trials)
    report.problems += snapshot_problems(db) + git_problems(db, run_name)
    if (verdict := integrity(db)) != "ok":
        report.problems.append(f"integrity_check at the end: {verdict}")
    report.fault_to_next_trial_s = [s for s in (_first_start(db, run_name, a, b) for a, b in lives) if s is not None]
    return report
