"""Crash safety as a loop: the coordinator of a real run is killed with SIGKILL at random points
(a fixed seed, so CI sees the same points every time), resumed, killed again; a reader checks
the archive the whole time. Then two coordinators write one archive file at once."""

from __future__ import annotations

import time

from population.store import Store
from tests.conftest import evo, start_evo
from tests.support.faults import done_trials, git_problems, integrity, kill_loop, snapshot_problems

TRIALS = 8


def test_sigkill_at_random_points_loses_nothing_and_leaves_nothing_running(dataset, fast_toml, tmp_path):
    db = tmp_path / "archive.db"
    args = ["run", "--db", db, "--name", "k", "--population", 3, "--trials", TRIALS, "--budget", 1,
            "--config", fast_toml, "--data-dir", dataset.path, "--operator", "offline"]
    report = kill_loop(db, args, "k", trials=TRIALS, kills=4, seed=14, cwd=tmp_path, max_delay=7.0)
    assert report.kills >= 3, report  # the fixed delays land inside the run, not after it
    assert report.problems == []
    assert report.lost == [] and report.repeated == 0
    assert report.survivors == []  # no trainer, scorer or server outlives its coordinator
    assert report.reads > 20  # the reader really read while the run wrote
    with Store.open(db, readonly=True) as store:
        run = store.get_run("k")
        trials = store.trials(run.id)
        assert run.status == "finished" and len(trials) == TRIALS and all(t.status == "done" for t in trials)


def test_two_coordinators_write_one_archive_at_once(dataset, fast_toml, tmp_path):
    db = tmp_path / "archive.db"
    evo("run", "--db", db, "--name", "first", "--population", 2, "--trials", 2, "--budget", 1,
        "--config", fast_toml, "--data-dir", dataset.path, "--operator", "offline", cwd=tmp_path)  # the archive exists
    common = ["--population", 2, "--trials", 4, "--budget", 1, "--config", fast_toml, "--data-dir", dataset.path,
              "--operator", "offline"]
    a = start_evo("run", "--db", db, "--name", "a", *common, cwd=tmp_path)
    b = start_evo("run", "--db", db, "--name", "b", *common, cwd=tmp_path)
    time.sleep(6)
    if a.poll() is None:  # a live coordinator's run cannot be resumed by another process
        busy = evo("run", "--db", db, "--name", "a", "--resume", cwd=tmp_path, check=False)
        assert busy.returncode != 0 and "Traceback" not in busy.stderr
        [line] = [ln for ln in busy.stderr.splitlines() if ln.startswith("Error")]
        assert str(a.pid) in line, line
    results = [p.communicate(timeout=600) for p in (a, b)]
    for proc, (_, err) in zip((a, b), results):
        assert proc.returncode == 0, err[-2000:]
        assert "locked" not in err and "Traceback" not in err
    assert integrity(db) == "ok" and snapshot_problems(db) == []
    for name in ("first", "a", "b"):
        assert git_problems(db, name) == []
    assert len(done_trials(db, "a")) == 4 and len(done_trials(db, "b")) == 4
