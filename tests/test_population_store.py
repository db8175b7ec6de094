import hashlib
import itertools
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from population.elites import AddStatus, EliteArchive
from population.store import ArchiveError, DuplicateSource, DuplicateTrial, Store
from tests.conftest import sqlite_only
from tests.support.archive import GRID, result, trained

# ---------------------------------------------------------------- opening


def test_create_then_reopen(tmp_path):
    path = tmp_path / "archive.db"
    with Store.open(path, create=True) as s:
        s.create_run("a", {"x": 1})
    assert (tmp_path / "archive.git" / "objects").is_dir()
    with Store.open(str(path)) as s:
        assert s.get_run("a").config == {"x": 1}
    with Store.open(f"sqlite:///{path}") as s:
        assert [r.name for r in s.list_runs()] == ["a"]


def test_missing_archive(tmp_path):
    with pytest.raises(ArchiveError, match=r"archive not found: .*nope\.db \(run `evo run` to create one, or pass --db\)"):
        Store.open(tmp_path / "nope.db")
    with pytest.raises(ArchiveError, match="archive not found"):
        Store.open(tmp_path / "nope.db", readonly=True)
    assert not (tmp_path / "nope.db").exists()


def test_foreign_sqlite_file_is_refused_untouched(tmp_path):
    path = tmp_path / "notes.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    conn.execute("INSERT INTO notes (text) VALUES ('keep me')")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    for kwargs in ({}, {"create": True}, {"readonly": True}):
        with pytest.raises(ArchiveError, match="notes.db is an SQLite database but not an evo archive"):
            Store.open(path, **kwargs)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]  # no -wal, no notes.git


def test_non_sqlite_file_is_refused_untouched(tmp_path):
    path = tmp_path / "archive.db"
    path.write_text("name,score\na,1\n")
    before = path.read_bytes()
    with pytest.raises(ArchiveError, match=r"archive.db is not an evo archive \(not an SQLite database\)"):
        Store.open(path, create=True)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive.db"]


def test_empty_file_becomes_an_archive_only_when_asked(tmp_path):
    path = tmp_path / "archive.db"
    path.touch()
    with pytest.raises(ArchiveError, match="empty file"):
        Store.open(path)
    with Store.open(path, create=True) as s:
        s.create_run("a", {})


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "archive.db"
    Store.open(path, create=True).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE evo_meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(ArchiveError, match="schema version 99"):
        Store.open(path)


def test_missing_git_store_is_refused_once_commits_exist(tmp_path):
    path = tmp_path / "archive.db"
    with Store.open(path, create=True) as s:
        trained(s, s.create_run("a", {}), "x = 1\n")
    (tmp_path / "archive.git").rename(tmp_path / "elsewhere.git")
    with pytest.raises(ArchiveError, match="archive.git not found"):
        Store.open(path)
    with Store.open(path, git_dir=tmp_path / "elsewhere.git") as s:
        assert s.get_individual(1).commit


def test_database_url_without_a_file(tmp_path):
    with pytest.raises(ArchiveError, match="archive not found: sqlite://"):
        Store.open("sqlite://")
    with pytest.raises(ArchiveError, match="pass git_dir"):
        Store.open("sqlite://", create=True)
    with Store.open("sqlite://", create=True, git_dir=tmp_path / "variants.git") as s:
        trained(s, s.create_run("a", {}), "x = 1\n")
        assert s.get_individual(1).commit
    assert (tmp_path / "variants.git" / "objects").is_dir()


def test_foreign_git_dir_is_refused(tmp_path):
    (tmp_path / "archive.git").mkdir()
    (tmp_path / "archive.git" / "notes.txt").write_text("mine")
    with pytest.raises(ArchiveError, match="archive.git exists but is not a git repository"):
        Store.open(tmp_path / "archive.db", create=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive.git"]
    assert sorted(p.name for p in (tmp_path / "archive.git").iterdir()) == ["notes.txt"]


@sqlite_only
def test_reader_is_not_blocked_by_a_writer_holding_the_lock(tmp_path, store, run):
    reader = Store.open(tmp_path / "archive.db", readonly=True)
    writer = sqlite3.connect(tmp_path / "archive.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE runs SET status = 'stopped'")
    t0 = time.monotonic()
    assert reader.get_run("r1").status == "running"  # sees the last committed state
    assert time.monotonic() - t0 < 2.0  # busy_timeout is 30 s: it did not wait
    writer.execute("COMMIT")
    writer.close()
    assert reader.get_run("r1").status == "stopped"
    with pytest.raises(ArchiveError, match="read-only"):
        reader.create_run("r2", {})
    reader.close()


def test_reader_and_writer_concurrently(archive_url, store, run):
    reader = Store.open(archive_url, readonly=True)
    errors = []

    def read():
        try:
            for _ in range(50):
                reader.individuals(run.id, order="val_bpb")
                reader.best(run.id, 3)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    thread = threading.Thread(target=read)
    thread.start()
    for i in range(30):
        trained(store, run, f"x = {i}\n", 1.0 + i / 100)
    thread.join()
    assert errors == []
    assert len(reader.individuals(run.id)) == 30
    reader.close()


def test_engine_threads_write_concurrently(store, run):
    errors = []

    def work(k):
        try:
            for i in range(10):
                ind = trained(store, run, f"worker {k} step {i}\n", 1.0 + i / 10)
                EliteArchive(store, run.id, GRID, 0.01).add(ind.id)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.individuals(run.id, status="trained")) == 40
    assert len(store.trials(run.id, status="done")) == 40


# ---------------------------------------------------------------- runs


def test_runs(store):
    a = store.create_run("a", {"population": 16}, "manifest", "program")
    b = store.create_run("b.2", {})
    assert store.get_run("a").id == a.id
    assert store.get_run(b.id).name == "b.2"
    assert store.get_run(str(b.id)).name == "b.2"
    assert store.latest_run().name == "b.2"
    assert [r.name for r in store.list_runs()] == ["a", "b.2"]
    assert a.status == "running" and a.data_manifest_hash == "manifest" and a.program_text == "program"
    updated = store.update_run(a.id, status="finished", noise_sd=0.004, config={"population": 8})
    assert (updated.status, updated.noise_sd, updated.config) == ("finished", 0.004, {"population": 8})
    assert store.get_run("a").status == "finished"
    with pytest.raises(TypeError):
        store.update_run(a.id, name="c")
    with pytest.raises(ValueError):
        store.update_run(a.id, status="paused")


def test_run_errors(store):
    assert store.latest_run() is None
    with pytest.raises(ArchiveError, match=r"\(runs: none yet\)"):
        store.get_run("x")
    store.create_run("a", {})
    store.create_run("b", {})
    with pytest.raises(ArchiveError) as err:
        store.get_run("x")
    assert str(err.value) == f"unknown run 'x' in {store.name} (runs: a, b)"
    with pytest.raises(ArchiveError, match="run 'a' already exists"):
        store.create_run("a", {})
    for bad in ("has space", "a/b", "..", "x..y", "x.lock", "-x", ""):
        with pytest.raises(ArchiveError, match="bad run name"):
            store.create_run(bad, {})


# ---------------------------------------------------------------- individuals


def test_add_individual_and_duplicate_source(store, run):
    seed = store.add_individual(run.id, "x = 1\n", [], "seed", "the seed", 0)
    assert seed.status == "pending" and seed.commit is None and seed.parents == []
    assert seed.source_hash == hashlib.sha256(b"x = 1\n").hexdigest()
    child = store.add_individual(run.id, "x = 2\n", [seed.id], "offline", "x up", 1)
    assert child.parents == [seed.id]
    with pytest.raises(DuplicateSource) as dup:
        store.add_individual(run.id, "x = 1\n", [child.id], "offline", "back to 1", 2)
    assert dup.value.individual.id == seed.id
    assert len(store.individuals(run.id)) == 2
    other = store.create_run("r2", {})
    assert store.add_individual(other.id, "x = 1\n", [seed.id], "seed", "yesterday's seed", 0).id != seed.id
    with pytest.raises(ValueError):
        store.add_individual(run.id, "x = 3\n", [1, 2, 3], "offline", "", 1)


def test_rejected_proposals(store, run):
    seed = store.add_individual(run.id, "x = 1\n", [], "seed", "", 0)
    rej = store.add_rejected(run.id, [seed.id], "llm", "use flash attn", "SEARCH block not found", 1, source="x = 2\n")
    assert rej.status == "rejected" and rej.source_hash is None and rej.source == "x = 2\n"
    # a rejected text does not block a later valid proposal of the same text
    assert store.add_individual(run.id, "x = 2\n", [seed.id], "llm", "again", 2).status == "pending"
    with pytest.raises(ArchiveError, match="was rejected .*nothing to train"):
        store.start_trial(rej.id, 0)


def test_individual_queries(store, run):
    seed = trained(store, run, "x = 1\n", 1.2)
    a = trained(store, run, "x = 2\n", 1.0, parents=[seed.id])
    b = store.add_individual(run.id, "x = 3\n", [seed.id, a.id], "crossover", "mix", 2)
    assert [c.id for c in store.children_of(seed.id)] == [a.id, b.id]
    assert [c.id for c in store.children_of(a.id)] == [b.id]
    assert [i.id for i in store.individuals(run.id, order="val_bpb")] == [a.id, seed.id, b.id]
    assert [i.id for i in store.individuals(run.id, status="pending")] == [b.id]
    assert [i.id for i in store.individuals(run.id, operator="crossover")] == [b.id]
    assert [i.id for i in store.individuals(run.id, generation=1)] == [seed.id, a.id]
    assert len(store.individuals(run.id, limit=2)) == 2
    with pytest.raises(ValueError):
        store.individuals(run.id, order="name")


def test_only_get_individual_loads_the_source(store, run):
    ind = trained(store, run, "x = 1\n")
    assert store.get_individual(ind.id).source == "x = 1\n"
    assert store.get_individual(ind.commit[:8]).source == "x = 1\n"
    [listed] = store.individuals(run.id)
    with pytest.raises(Exception, match="source"):
        listed.source


def test_recent_failures(store, run):
    seed = trained(store, run, "x = 1\n")
    crash = trained(store, run, "x = 2\n", outcome="crash")
    store.add_rejected(run.id, [seed.id], "llm", "bigger lr", "malformed answer", 1)
    failures = store.recent_failures(run.id, 10)
    assert [f["outcome"] for f in failures] == ["rejected", "crash"]
    assert failures[0]["message"] == "malformed answer" and failures[0]["hypothesis"] == "bigger lr"
    assert failures[1]["individual_id"] == crash.id and "RuntimeError: boom" in failures[1]["stderr_tail"]
    assert len(store.recent_failures(run.id, 1)) == 1


def test_prefix_resolution(store, run):
    ind = trained(store, run, "x = 1\n")
    assert store.get_individual(ind.id).id == ind.id
    assert store.get_individual(str(ind.id)).id == ind.id
    assert store.get_individual(ind.source_hash[:4]).id == ind.id
    assert store.get_individual(ind.source_hash[:10].upper()).id == ind.id
    assert store.get_individual(ind.commit[:7]).id == ind.id
    assert store.get_individual(ind.commit).id == ind.id
    with pytest.raises(ArchiveError, match="no individual 999"):
        store.get_individual(999)
    with pytest.raises(ArchiveError, match="no individual matches"):
        store.get_individual("ffff" if not ind.source_hash.startswith("ffff") else "0000")
    with pytest.raises(ArchiveError, match="neither an individual id nor a hex prefix"):
        store.get_individual("ab")
    with pytest.raises(ArchiveError, match="neither"):
        store.get_individual("xyz12")
    # the same source in two runs shares its hash: ambiguous until a run is named
    other = store.create_run("r2", {})
    twin = store.add_individual(other.id, "x = 1\n", [], "seed", "", 0)
    with pytest.raises(ArchiveError, match=f"ambiguous: individuals {ind.id}, {twin.id} match"):
        store.get_individual(ind.source_hash[:8])
    assert store.get_individual(ind.source_hash[:8], run_id=other.id).id == twin.id


def test_prefix_ambiguous_between_different_sources(store, run):
    seen = {}
    for i in itertools.count():
        src = f"x = {i}\n"
        prefix = hashlib.sha256(src.encode()).hexdigest()[:4]
        if prefix in seen:
            break
        seen[prefix] = src
    first = store.add_individual(run.id, seen[prefix], [], "seed", "", 0)
    second = store.add_individual(run.id, src, [], "seed", "", 0)
    with pytest.raises(ArchiveError, match="give more characters"):
        store.get_individual(prefix)
    assert store.get_individual(first.source_hash[:12]).id == first.id
    assert store.get_individual(second.source_hash[:12]).id == second.id


# ---------------------------------------------------------------- trials


def test_trial_lifecycle(store, run):
    ind = store.add_individual(run.id, "x = 1\n", [], "seed", "the seed", 0)
    trial = store.start_trial(ind.id, 3, "cuda:0", "gpu0")
    assert (trial.status, trial.seed, trial.worker, trial.run_id) == ("running", 3, "gpu0", run.id)
    assert [t.id for t in store.running_trials(run.id)] == [trial.id]
    assert store.used_seeds(ind.id) == {3}
    with pytest.raises(DuplicateTrial, match="already has a trial with seed 3"):
        store.start_trial(ind.id, 3)
    done = store.finish_trial(trial.id, result(1.25, seed=3, device="NVIDIA H100", kv_heads=4))
    assert done.status == "done" and done.finished_at is not None
    assert (done.val_bpb, done.device, done.params, done.extra) == (1.25, "NVIDIA H100", 20_000, {"kv_heads": 4})
    assert done.seed == 3 and done.ok
    assert store.running_trials(run.id) == []
    with pytest.raises(ArchiveError, match="already finished"):
        store.finish_trial(trial.id, result())
    with pytest.raises(DuplicateTrial):  # finished or not, a (source, seed) pair is trained once
        store.start_trial(ind.id, 3)
    with pytest.raises(ArchiveError, match="never deleted"):
        store.delete_trial(trial.id)
    assert [t.id for t in store.trials(individual_id=ind.id)] == [trial.id]


def test_cut_off_trial_can_be_deleted_and_rerun(store, run):
    ind = store.add_individual(run.id, "x = 1\n", [], "seed", "", 0)
    trial = store.start_trial(ind.id, 0)
    store.delete_trial(trial.id)
    assert store.used_seeds(ind.id) == set()
    again = store.start_trial(ind.id, 0)
    store.finish_trial(again.id, result())
    assert store.get_individual(ind.id).n_trials == 1


def test_aggregates(store, run):
    ind = store.add_individual(run.id, "x = 1\n", [], "seed", "", 0)
    for seed, res in enumerate([
        result(1.0, params=1000, tokens=100),
        result(1.2, params=1000, tokens=300),
        result(outcome="crash"),
    ]):
        store.finish_trial(store.start_trial(ind.id, seed).id, res)
    ind = store.get_individual(ind.id)
    assert ind.status == "trained"
    assert (ind.n_trials, ind.n_ok) == (3, 2)
    assert ind.val_bpb_mean == pytest.approx(1.1)
    assert ind.val_bpb_sd == pytest.approx(0.1414, abs=1e-4)
    assert ind.descriptors["params"] == 1000 and ind.descriptors["tokens"] == 200
    assert "val_bpb" not in ind.descriptors


def test_failed_only_individual_has_no_score(store, run):
    ind = trained(store, run, "x = 1\n", outcome="oom")
    assert (ind.status, ind.n_trials, ind.n_ok, ind.val_bpb_mean, ind.descriptors) == ("trained", 1, 0, None, None)
    assert ind.commit is not None  # failures are part of the genealogy too
    assert EliteArchive(store, run.id, GRID, 0.01).add(ind.id).status is AddStatus.NO_CELL
    assert store.get_individual(ind.id).cell is None
    assert store.best(run.id, 5) == []


# ---------------------------------------------------------------- run records


def test_generations(store, run):
    store.record_generation(run.id, 0, {"trials": 3, "failures": 0, "record": {"gen": 0, "min": 1.2}})
    store.record_generation(run.id, 1, {"trials": 16, "best_val_bpb": 1.1, "coverage": 0.1, "qd_score": 20.0})
    store.record_generation(run.id, 1, {"trials": 17, "best_val_bpb": 1.05})  # a resumed generation
    gens = store.generations(run.id)
    assert [(g.generation, g.trials, g.best_val_bpb) for g in gens] == [(0, 3, None), (1, 17, 1.05)]
    assert gens[0].record == {"gen": 0, "min": 1.2}
    with pytest.raises(TypeError):
        store.record_generation(run.id, 2, {"bogus": 1})


def test_llm_calls(store, run):
    assert store.llm_spend(run.id) == {
        "calls": 0, "cost_usd": 0.0, "input_tokens": 0, "output_tokens": 0,
        "cache_read_tokens": 0, "cache_write_tokens": 0,
    }
    ind = store.add_individual(run.id, "x = 1\n", [], "llm", "", 0)
    store.record_llm_call(run.id, ind.id, dict(model="claude", role="mutate", input_tokens=1000,
                                               output_tokens=200, cost_usd=0.01, latency_s=3.0))
    store.record_llm_call(run.id, None, dict(model="claude", role="crossover", input_tokens=500,
                                             cache_read_tokens=400, cost_usd=0.005, outcome="error",
                                             error="overloaded"))
    spend = store.llm_spend(run.id)
    assert spend["calls"] == 2 and spend["input_tokens"] == 1500 and spend["cache_read_tokens"] == 400
    assert spend["cost_usd"] == pytest.approx(0.015)
    with pytest.raises(TypeError):
        store.record_llm_call(run.id, None, {"price": 1})
    with pytest.raises(ValueError):
        store.record_llm_call(run.id, None, {"role": "judge"})


def test_population_imports_neither_evo_nor_trainer():
    code = "import sys, population; print(sorted({m.split('.')[0] for m in sys.modules} & {'evo', 'trainer'}))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
