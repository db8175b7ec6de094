"""`evo run` drives its run as a claimed coordinator: a second `--resume` of a run a live process
drives is refused with one line and writes nothing; a SIGKILLed coordinator's stale claim is taken
over; the claim is released when the run finishes, is stopped with Ctrl-C, or fails."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import time

from population.store import Store
from tests.conftest import evo, start_evo

HOST = socket.gethostname()


def dump(db) -> list[str]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return list(con.iterdump())
    finally:
        con.close()


def claim_of(db, name):
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = con.execute("SELECT coordinator, claimed_at, heartbeat_at, status FROM runs WHERE name = ?",
                          (name,)).fetchone()
        return row or (None, None, None, None)  # no such run (yet)
    finally:
        con.close()


def done_trials(db, name) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT count(*) FROM trials JOIN runs ON runs.id = trials.run_id "
                           "WHERE runs.name = ? AND trials.status = 'done'", (name,)).fetchone()[0]
    finally:
        con.close()


def wait_until(check, proc, what, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            if check():
                return
        except sqlite3.Error:
            pass  # the archive or the run may not exist yet
        assert proc.poll() is None, f"evo exited while waiting for {what}: {proc.stderr.read()[-3000:]}"
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def refusal(pid: int, name: str) -> re.Pattern:
    return re.compile(rf"Error: run '{name}' is being driven by pid {pid} on host {re.escape(HOST)} "
                      r"\(claimed \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC, last heartbeat \d+ s ago\); stop it first or wait")


def test_resume_is_refused_while_a_live_coordinator_drives_the_run(tmp_path):
    """The holder is this test's own process: alive, on this host, as a running `evo run` would be."""
    db = tmp_path / "archive.db"
    with Store.open(db, create=True) as store:
        run = store.create_run("r", {"operator": "offline"})
        store.add_individual(run.id, "x = 1\n", [], "seed", "seed")
        store.claim_run(run.id)
    before = dump(db)
    proc = evo("run", "--resume", "--db", db, "--name", "r", cwd=tmp_path, check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and refusal(os.getpid(), "r").fullmatch(lines[0]), proc.stderr
    assert dump(db) == before  # nothing written
    assert claim_of(db, "r")[0] == f"{HOST}:{os.getpid()}"


def test_a_failing_resume_releases_its_claim(tmp_path):
    db = tmp_path / "archive.db"
    with Store.open(db, create=True) as store:
        run = store.create_run("r", {"operator": "offline", "sandbox": "off", "dataset_dir": str(tmp_path / "gone")})
        store.add_individual(run.id, "x = 1\n", [], "seed", "seed")
    proc = evo("run", "--resume", "--db", db, "--name", "r", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "is gone (run `evo prepare` again)" in proc.stderr, proc.stderr
    assert claim_of(db, "r")[:3] == (None, None, None)


def test_a_killed_coordinator_is_taken_over_and_each_stop_releases_the_claim(dataset, fast_toml, tmp_path):
    db = tmp_path / "archive.db"
    proc = start_evo("run", "--db", db, "--name", "k", "--population", 2, "--generations", 1, "--budget", 1,
                     "--config", fast_toml, "--data-dir", dataset.path, "--operator", "offline", cwd=tmp_path)
    try:
        # a new run is claimed at creation, by the `evo run` process itself
        wait_until(lambda: claim_of(db, "k")[0] == f"{HOST}:{proc.pid}" and done_trials(db, "k") >= 1, proc,
                   "the first trial of the claimed run")

        # a second coordinator is refused while the first one is alive and driving
        busy = evo("run", "--resume", "--db", db, "--name", "k", cwd=tmp_path, check=False)
        assert busy.returncode == 1 and len(busy.stderr.strip().splitlines()) == 1, busy.stderr
        assert refusal(proc.pid, "k").fullmatch(busy.stderr.strip()), busy.stderr
        assert claim_of(db, "k")[0] == f"{HOST}:{proc.pid}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # no chance to release anything
        proc.communicate()
    assert claim_of(db, "k")[0] == f"{HOST}:{proc.pid}"  # the stale claim of a dead pid

    # the next resume sees the pid is gone, takes the run over and releases it at the end
    resumed = evo("run", "--resume", "--db", db, "--name", "k", cwd=tmp_path)
    assert f"run 'k' was left claimed by pid {proc.pid} on host {HOST}, which is gone: taking it over" in resumed.stderr
    assert claim_of(db, "k") == (None, None, None, "finished")

    # Ctrl-C: a clean stop releases it too
    trained = done_trials(db, "k")
    proc = start_evo("run", "--resume", "--db", db, "--name", "k", "--generations", 2, cwd=tmp_path)
    try:
        wait_until(lambda: claim_of(db, "k")[0] == f"{HOST}:{proc.pid}" and done_trials(db, "k") > trained, proc,
                   "a trial of the resumed run")
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, err
    assert claim_of(db, "k") == (None, None, None, "stopped")
