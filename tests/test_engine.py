"""The real loop on CPU: archive and git agree, kill/resume loses nothing, seeding from a prior run."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from population.noise import is_improvement
from population.store import Store
from tests.conftest import evo, start_evo


def _git(repo, *args) -> str:
    return subprocess.run(["git", "--git-dir", str(repo), *args], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_short_run_leaves_an_archive_and_git_store_that_agree(any_short_run):
    """On PostgreSQL the archive is a copy of the run's rows and its git store this host's
    mirror, rebuilt from them: it must agree just the same."""
    name = any_short_run[1]
    store = Store.open(any_short_run[0], readonly=True)
    repo = store.git.path
    run = store.get_run(name)
    assert run.status == "finished" and run.noise_sd is not None
    inds = store.individuals(run.id)
    trained = [i for i in inds if i.status != "rejected" and i.n_trials]
    assert len([i for i in trained if i.generation == 0]) == 3  # the population
    assert len([i for i in trained if i.generation == 1]) == 3  # one generation of children
    seed = inds[0]
    assert seed.operator == "seed" and seed.n_trials >= 2  # noise measured on 2 seeds
    by_id = {i.id: i for i in inds}
    for ind in trained:
        ind = store.get_individual(ind.id)  # the source column loads on demand
        assert _git(repo, "show", f"{ind.commit}:train.py") == ind.source.rstrip("\n")
        parents = _git(repo, "rev-list", "--parents", "-n1", ind.commit).split()[1:]
        assert parents == [by_id[p].commit for p in ind.parents]
        assert hashlib.sha256(ind.source.encode()).hexdigest() == ind.source_hash
        message = _git(repo, "log", "-1", "--format=%B", ind.commit)
        assert (ind.hypothesis or "") in message and "Outcome:" in message
    # each elite is the best in its cell by the noise-aware rule, and git's elite refs point at it
    elites = store.elites(run.id)
    assert elites
    for elite, holder in elites:  # a cell here may hold no rival: the one-cell run below always has
        rivals = [i for i in trained if i.cell == elite.cell and i.n_ok and i.id != holder.id]
        for r in rivals:
            assert not is_improvement(r.val_bpb_mean, r.n_ok, holder.val_bpb_mean, holder.n_ok, run.noise_sd)
        assert _git(repo, "rev-parse", f"refs/elites/{name}/{elite.cell}") == holder.commit
    # each individual trained on the lowest free seeds, 0, 1, ... (the schema's unique (individual,
    # seed) pair already rules out a seed trained twice); every trial finished; generations recorded
    trials = store.trials(run.id)
    seeds = {}
    for t in trials:
        seeds.setdefault(t.individual_id, []).append(t.seed)
    assert seeds and all(sorted(s) == list(range(len(s))) for s in seeds.values()), seeds
    assert all(t.status == "done" for t in trials)
    assert [g.generation for g in store.generations(run.id)] == [0, 1]
    # the champions (the top 3 as the run ends) were re-validated on new seeds before being reported
    assert all(i.n_ok >= 2 or i.n_trials > i.n_ok for i in store.best(run.id, 3))  # a failed seed: no champion
    store.close()


def test_the_noise_rule_decides_a_cell_every_individual_shares(dataset, fast_toml, tmp_path):
    """A one-cell grid: every scored individual is a rival of the cell's elite, so the rule is
    always exercised (in the shared short run a cell may happen to hold no rival at all)."""
    cfg = tmp_path / "evo.toml"
    cfg.write_text(fast_toml.read_text() + "\n[grid]\nbins = 1\n")
    db = tmp_path / "archive.db"
    evo("run", "--db", db, "--name", "one-cell", "--population", 3, "--generations", 1, "--budget", 1,
        "--config", cfg, "--data-dir", dataset.path, "--operator", "offline", cwd=tmp_path)
    with Store.open(db, readonly=True) as store:
        run = store.get_run("one-cell")
        scored = [i for i in store.individuals(run.id) if i.n_ok]
        [(elite, holder)] = store.elites(run.id)
    rivals = [i for i in scored if i.id != holder.id]
    assert rivals and {i.cell for i in scored} == {elite.cell}
    for r in rivals:
        assert not is_improvement(r.val_bpb_mean, r.n_ok, holder.val_bpb_mean, holder.n_ok, run.noise_sd), r


def _done_trials(db, name):
    with Store.open(db, readonly=True) as store:
        run = store.get_run(name)
        return {(t.individual_id, t.seed): t.val_bpb for t in store.trials(run.id, status="done")}


def _start(args, cwd):
    return start_evo(*args, cwd=cwd)


def _wait_for_trials(db, name, n, proc, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if isinstance(db, str) or db.exists():  # a server's URL: the archive appears with the run
            try:
                if len(_done_trials(db, name)) >= n:
                    return
            except Exception:
                pass  # the run may not exist yet
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.5)
    raise AssertionError("run made no progress")


def test_ctrl_c_then_sigkill_then_resume_loses_and_repeats_nothing(dataset, fast_toml, tmp_path, archive_url):
    """On each backend. On PostgreSQL the git store is this host's mirror; another host's, made
    from the database afterwards, must hold the same commits under the same refs."""
    db = Path(archive_url) if "://" not in archive_url else archive_url
    args = ["run", "--db", db, "--name", "r", "--population", 4, "--trials", 7, "--budget", 1,
            "--config", fast_toml, "--data-dir", dataset.path, "--operator", "offline"]
    proc = _start(args, tmp_path)
    _wait_for_trials(db, "r", 2, proc)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: a clean stop
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "evo run --resume" in err
    first = _done_trials(db, "r")
    with Store.open(db, readonly=True) as store:
        assert store.get_run("r").status == "stopped"
        assert not store.running_trials(store.get_run("r").id)

    proc = _start(["run", "--db", db, "--name", "r", "--resume"], tmp_path)
    _wait_for_trials(db, "r", len(first) + 2, proc)
    proc.send_signal(signal.SIGKILL)  # the coordinator dies mid-trial: no chance to clean up
    proc.wait()
    second = _done_trials(db, "r")
    assert all(second[k] == v for k, v in first.items())

    evo("run", "--db", db, "--name", "r", "--resume", cwd=tmp_path)
    final = _done_trials(db, "r")
    assert all(final[k] == v for k, v in second.items())  # nothing finished was lost or re-run
    assert len(final) == 7  # exactly what the uninterrupted run asked for
    with Store.open(db, readonly=True) as store:
        run = store.get_run("r")
        trials = store.trials(run.id)
        assert run.status == "finished" and all(t.status == "done" for t in trials)
        assert len(trials) == 7  # each (individual, seed) once: the cut-off trial was re-run, not added
        commits = {i.commit for i in store.individuals(run.id) if i.commit}
        graph = _git(store.git.path, "log", "--graph", "--all", "--format=%H")
        assert commits and commits <= set(re.findall(r"[0-9a-f]{40}", graph))
        refs = _git(store.git.path, "for-each-ref")
    if isinstance(db, str):
        with Store.open(db, readonly=True, git_dir=tmp_path / "other-host.git") as other:
            assert _git(other.git.path, "for-each-ref") == refs


def test_seed_from_a_prior_archive_starts_from_its_top_elites(short_run, fast_toml, dataset, tmp_path):
    prior_db, prior_name = short_run
    with Store.open(prior_db, readonly=True) as prior:
        top = [prior.get_individual(ind.id) for _, ind in prior.elites(prior.get_run(prior_name).id)[:2]]
    db = tmp_path / "next.db"
    evo("run", "--db", db, "--name", "next", "--seed-from", f"{prior_db}:{prior_name}", "--top", 2,
        "--trials", 3, "--budget", 1, "--config", fast_toml, "--data-dir", dataset.path, cwd=tmp_path)
    with Store.open(db, readonly=True) as store:
        gen0 = store.individuals(store.get_run("next").id, generation=0)
        seeded = [store.get_individual(i.id) for i in gen0 if i.operator == "seed-from"]
        assert [i.source for i in seeded] == [t.source for t in top]
        assert all(prior_name in i.hypothesis for i in seeded)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--population", 0], "--population"),
        (["--seed-file", "missing_train.py"], "seed file not found"),
        (["--resume", "--name", "nope"], "unknown run 'nope'"),
        (["--operator", "llm"], "ANTHROPIC_API_KEY"),
        (["--seed-from", "other.db"], "not found"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(short_run, tmp_path, args, needle):
    src_db, _ = short_run
    db = tmp_path / "archive.db"
    db.write_bytes(src_db.read_bytes())
    shutil.copytree(src_db.with_suffix(".git"), db.with_suffix(".git"))
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    env = {"ANTHROPIC_API_KEY": ""}
    proc = evo("run", "--db", db, "--trials", 1, *args, cwd=tmp_path, check=False, env=env)
    assert proc.returncode != 0
    err_lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len([ln for ln in err_lines if ln.startswith("Error")]) == 1
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_a_file_that_is_not_an_archive_is_refused_untouched(tmp_path):
    db = tmp_path / "notes.db"
    db.write_text("these are my notes, not an archive\n")
    proc = evo("run", "--db", db, "--trials", 1, cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "notes.db" in proc.stderr
    assert db.read_text() == "these are my notes, not an archive\n"


def test_a_corpus_seen_many_times_per_trial_is_warned_about(dataset):
    """The stdlib corpus under a 300 s H100 budget is ~175 epochs: the run must say so."""
    import json
    from types import SimpleNamespace

    from evo.bootstrap import MEMORISING_EPOCHS, warn_if_memorising

    n_train = json.loads((dataset.path / "manifest.json").read_text())["n_train_tokens"]
    said = []
    few = [SimpleNamespace(tokens=n_train * 2)] * 3
    warn_if_memorising(str(dataset.path), few, said.append)
    assert said == []
    many = [SimpleNamespace(tokens=n_train * (MEMORISING_EPOCHS + 5))] * 3
    warn_if_memorising(str(dataset.path), many, said.append)
    assert len(said) == 1 and "15 epochs" in said[0] and "climbmix" in said[0]
