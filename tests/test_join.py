"""Several coordinators on one run of a shared PostgreSQL archive (`evo run --join`): their
trials enter one archive, the elite rule holds under their concurrent writes, no (individual,
seed) is trained twice, and when one is SIGKILLed the other reclaims its cut-off trials and
finishes the run."""

from __future__ import annotations

import os
import signal
import time

from population.noise import is_improvement
from population.store import Store
from tests.conftest import evo, start_evo

TRIALS = 10


def _run(url, name):
    with Store.open(url, readonly=True) as store:
        return store.get_run(name)


def _wait(predicate, proc, what, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:
            pass  # the run may not exist yet
        assert proc.poll() is None, f"{what}: the coordinator ended first:\n{proc.stderr.read()[-2000:]}"
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _trials_by(url, name, pid):
    with Store.open(url, readonly=True) as store:
        run = store.get_run(name)
        return [t for t in store.trials(run.id) if (t.coordinator or "").endswith(f":{pid}")]


def test_two_joined_coordinators_share_a_run_and_one_finishes_it_after_the_other_is_killed(
        postgres_server, dataset, fast_toml, tmp_path):
    url = postgres_server.fresh_database()
    common = ["--budget", 1, "--data-dir", dataset.path]
    a = start_evo("run", "--db", url, "--name", "j", "--population", 3, "--trials", TRIALS, "--config", fast_toml,
                  "--operator", "offline", *common, cwd=tmp_path)
    # joining before the grid exists is refused in one line
    early = evo("run", "--db", url, "--join", "j", cwd=tmp_path, check=False)
    assert early.returncode != 0 and "Traceback" not in early.stderr
    _wait(lambda: "grid_bounds" in _run(url, "j").config, a, "the first coordinator's bootstrap")
    b = start_evo("run", "--db", url, "--join", "j", cwd=tmp_path)
    _wait(lambda: any(t.status == "done" for t in _trials_by(url, "j", b.pid)), b, "a trial of the joined one")
    _wait(lambda: any(t.status == "running" for t in _trials_by(url, "j", a.pid)), a, "a running trial of the first")
    os.killpg(a.pid, signal.SIGKILL)
    a.wait(30)
    cut_off = {(t.individual_id, t.seed) for t in _trials_by(url, "j", a.pid) if t.status == "running"}
    _, err = b.communicate(timeout=400)
    assert b.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    assert "joining run 'j'" in err
    assert cut_off and "reclaim: re-running cut-off trial" in err  # the survivor took the killed one's trials

    with Store.open(url, readonly=True) as store:
        run = store.get_run("j")
        trials = store.trials(run.id)
        assert not store.running_trials(run.id)
        done = [t for t in trials if t.status == "done"]
        assert len(done) >= TRIALS
        coordinators = {t.coordinator for t in done}
        assert len(coordinators) == 2  # both trained trials of this run
        individuals = store.individuals(run.id)
        for ind in individuals:  # the cached counts add up to the trials on record
            mine = [t for t in done if t.individual_id == ind.id]
            assert ind.n_trials == len(mine) and ind.n_ok == sum(t.ok for t in mine), ind
        for elite, holder in store.elites(run.id):  # the noise rule holds in every cell
            rivals = [i for i in individuals if i.cell == elite.cell and i.n_ok and i.id != holder.id]
            for r in rivals:
                assert not is_improvement(r.val_bpb_mean, r.n_ok, holder.val_bpb_mean, holder.n_ok, run.noise_sd), r
