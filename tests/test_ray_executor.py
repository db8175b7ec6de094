"""Trials on a real Ray cluster on 127.0.0.1 (`ray start` nodes the test starts): the archive a
Ray run fills is the archive a local run fills, a node without the run's data is left out, and a
worker node killed mid-trial becomes a recorded `lost` trial that is trained again."""

from __future__ import annotations

import sqlite3
import time

import pytest

from population.store import Store
from tests.conftest import FAST, evo, start_evo
from tests.support.faults import git_problems, integrity, snapshot_problems

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    """A head that runs no trial (0 CPUs: the coordinator's driver lives there) and two 1-CPU
    worker nodes, so every trial runs on a node the test may kill."""
    from tests.support.ray_cluster import local_cluster

    with local_cluster(workers=2, cpus=1, head_cpus=0) as c:
        yield c


def _run_args(db, name, cluster, fast_toml, dataset, *more):
    return ["run", "--db", db, "--name", name, "--executor", "ray", "--ray-address", cluster.address,
            "--population", 2, "--budget", 1.5, "--config", fast_toml, "--data-dir", dataset.path,
            "--operator", "offline", *more]


def _resume_args(db, name, cluster, *more):
    return ["run", "--db", db, "--name", name, "--resume", "--executor", "ray", "--ray-address", cluster.address,
            *more]


def _ray_env():
    from tests.support.ray_cluster import FAST_FAILURE

    return FAST_FAILURE


def test_a_ray_run_fills_and_resumes_an_archive_like_a_local_run(cluster, dataset, fast_toml, tmp_path):
    db = tmp_path / "archive.db"
    out = evo(*_run_args(db, "r", cluster, fast_toml, dataset, "--trials", 4), cwd=tmp_path, env=_ray_env())
    assert "Ray: 2 1-CPU slot(s) on 2 node(s), 2 trial(s) queued ahead" in out.stderr.replace("\n", " ")
    evo(*_resume_args(db, "r", cluster, "--trials", 6), cwd=tmp_path, env=_ray_env())
    assert integrity(db) == "ok" and snapshot_problems(db) == [] and git_problems(db, "r") == []
    with Store.open(db, readonly=True) as store:
        run = store.get_run("r")
        trials = store.trials(run.id)
        assert run.status == "finished" and len(trials) == 6
        assert all(t.status == "done" for t in trials)
        # two trials at once on a loaded 2-core machine may overrun a 1.5 s budget: most must not
        assert sum(t.ok for t in trials) >= 4, [(t.outcome, t.message) for t in trials]
        assert len({t.worker for t in trials}) == 2  # both worker nodes trained, the head none
        assert all(t.worker.endswith(" cpu") for t in trials)
        assert store.elites(run.id)  # placed in the grid as on the local executor
        assert all(i.commit for i in store.individuals(run.id) if i.n_trials)  # lineage in git


def test_a_node_without_the_runs_data_refuses_and_is_left_out(cluster, dataset):
    from evo.ray_executor import RayExecutor

    said: list[str] = []
    executor = RayExecutor(cluster.address, device="cpu", say=said.append)
    try:
        executor._data_hashes[str(dataset.path)] = "0" * 16  # the coordinator's data differs from every node's
        fut = executor.submit("print('never runs')", seed=0, dataset_dir=str(dataset.path), budget=1.0, **FAST)
        with pytest.raises(Exception, match="no node of the Ray cluster can run this run's trials") as err:
            fut.result(timeout=60)
        assert "manifest hash" in str(err.value) and "prepare it with the same inputs" in str(err.value)
        assert len(said) == 2 and all("refused a trial" in s and "leaving it out" in s for s in said)
        assert len(executor._refused) == 2  # each node asked once, then excluded by its node id
        # a trial with the right data runs
        executor._data_hashes.clear()
        executor._refused.clear()
        where, result = executor.submit(_seed_source(), seed=0,
                                        dataset_dir=str(dataset.path), budget=1.0, **FAST).result(timeout=180)
        assert result.ok, result.message
        assert "(" in where and where.endswith(" cpu")
    finally:
        executor.shutdown()


def _seed_source() -> str:
    from tests.conftest import SEED_TRAIN

    return SEED_TRAIN.read_text()


def _done(db) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT count(*) FROM trials WHERE status = 'done'").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_a_worker_node_killed_mid_trial_is_recorded_and_its_trial_trained_again(cluster, dataset, fast_toml,
                                                                                 tmp_path):
    db = tmp_path / "archive.db"
    proc = start_evo(*_run_args(db, "k", cluster, fast_toml, dataset, "--trials", 7), cwd=tmp_path, env=_ray_env())
    deadline = time.monotonic() + 180
    def training() -> bool:  # twice, 0.5 s apart: the same trial goes on, not one that just ended
        return cluster.is_training(1) and not time.sleep(0.5) and cluster.is_training(1)

    while (_done(db) < 2 or not training()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before node 1 trained a trial after the bootstrap"
    cluster.kill_node(1)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    with Store.open(db, readonly=True) as store:
        run = store.get_run("k")
        trials = store.trials(run.id)
        assert run.status == "finished" and len(trials) == 7 and all(t.status == "done" for t in trials)
        lost = [t for t in trials if t.outcome == "lost"]
        assert lost, [(t.outcome, t.worker) for t in trials]
        assert all("NodeDiedError" in t.message or "WorkerCrashedError" in t.message for t in lost)
        for t in lost:  # each individual that lost a trial was trained again, on another seed
            again = [u for u in trials if u.individual_id == t.individual_id and u.id > t.id]
            assert again and again[0].ok, [(u.outcome, u.message) for u in again]
        survivors = {t.worker for t in trials if t.ok and t.id > lost[-1].id}
        assert len(survivors) == 1  # the rest of the run on the node that was left
    assert integrity(db) == "ok" and snapshot_problems(db) == []


def test_a_ray_address_nothing_answers_on_is_one_line(tmp_path):
    from tests.support.ports import free_port

    address = f"127.0.0.1:{free_port()}"
    proc = evo("run", "--db", tmp_path / "archive.db", "--executor", "ray", "--ray-address", address,
               "--operator", "offline", cwd=tmp_path, check=False, timeout=60)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    [line] = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error")]
    assert f"--ray-address {address}: cannot reach a Ray cluster" in line
    assert not (tmp_path / "archive.db").exists()  # refused before anything was written
