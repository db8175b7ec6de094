"""tests/assets/archive-v1.db: an archive of schema version 1 written by a short real `evo run`
(tests/assets/README.md says which commit and how). It stays at schema 1: it is the "previous
schema" file every migration starts from. Today's code must migrate it to `SCHEMA_VERSION` and then
read its run, individuals, trials and elites (tests/test_population_migrations.py checks every
row). Most checks read the file with sqlite3 directly, so they hold while the Store's API is
reshaped; the Store is only asked for what any version of it must answer.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from population.models import SCHEMA_VERSION
from population.opening import migrate_archive
from population.store import ArchiveError, Store

ASSET = Path(__file__).resolve().parent / "assets" / "archive-v1.db"


@pytest.fixture
def archive(tmp_path) -> Path:
    """A copy of the asset: even a read-only open of a WAL archive creates -shm/-wal files beside
    it, and the committed file must never change."""
    path = tmp_path / "archive.db"
    shutil.copyfile(ASSET, path)
    return path


def query(path: Path, sql: str, *args) -> list[dict]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in con.execute(sql, args)]
    finally:
        con.close()


def test_the_asset_is_a_small_sqlite_file_of_schema_version_1(archive):
    head = ASSET.read_bytes()[:100]
    assert head[:16] == b"SQLite format 3\x00" and ASSET.stat().st_size < 200_000
    assert query(archive, "PRAGMA integrity_check") == [{"integrity_check": "ok"}]
    [meta] = query(archive, "SELECT value FROM evo_meta WHERE key = 'schema_version'")
    assert meta["value"] == "1"
    tables = {r["name"] for r in query(archive, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "alembic_version" not in tables  # schema 1 predates the migrations
    assert hashlib.sha256(ASSET.read_bytes()).hexdigest() == (
        "25d26890434cf5d07c26d45314ba1ba16e9e89b2f2b23fc7309dc93ff481bd50")  # as committed, never migrated
    assert SCHEMA_VERSION > 1 and migrate_archive(archive) == (1, SCHEMA_VERSION)  # a copy migrates to today's


def test_the_run_and_its_individuals_trials_and_elites_are_real(archive):
    [run] = query(archive, "SELECT * FROM runs")
    config = json.loads(run["config"])
    assert run["name"] == "v1" and run["status"] == "finished" and run["noise_sd"] > 0
    assert (config["population"], config["generations"], config["operator"]) == (2, 1, "offline")
    assert config["noise_seeds"] == 2 and config["grid_bounds"]["dims"]

    inds = {i["id"]: i for i in query(archive, "SELECT * FROM individuals WHERE run_id = ?", run["id"])}
    trials = query(archive, "SELECT * FROM trials WHERE run_id = ?", run["id"])
    [seed] = [i for i in inds.values() if i["operator"] == "seed"]
    assert seed["parent1_id"] is None and seed["n_ok"] >= 2  # the noise was measured on two seeds
    children = [i for i in inds.values() if i["parent1_id"] is not None]
    assert len(children) >= 2 and all(i["parent1_id"] in inds for i in children)
    assert {i["generation"] for i in inds.values()} == {0, 1}
    for ind in inds.values():
        assert hashlib.sha256(ind["source"].encode()).hexdigest() == ind["source_hash"]
        assert len(ind["commit"]) == 40 and "h.finish(" in ind["source"]
        ok = [t["val_bpb"] for t in trials if t["individual_id"] == ind["id"] and t["outcome"] == "ok"]
        assert ind["n_ok"] == len(ok) >= 1 and ind["val_bpb_mean"] == pytest.approx(sum(ok) / len(ok))
        assert ind["cell"] is not None and json.loads(ind["descriptors"])["params"] > 0
    assert all(t["status"] == "done" and t["finished_at"] for t in trials)
    assert all(0 < t["val_bpb"] < 9 and t["params"] > 0 and t["tokens"] > 0 for t in trials if t["outcome"] == "ok")

    elites = query(archive, "SELECT * FROM elites WHERE run_id = ?", run["id"])
    assert elites and len({e["cell"] for e in elites}) == len(elites)
    assert all(inds[e["individual_id"]]["cell"] == e["cell"] for e in elites)
    assert {e["cell"] for e in elites} == {i["cell"] for i in inds.values()}  # every occupied cell has its elite
    gens = query(archive, "SELECT generation FROM generation_stats WHERE run_id = ? ORDER BY generation", run["id"])
    assert [g["generation"] for g in gens] == [0, 1]


def test_read_only_it_is_refused_and_once_migrated_the_store_reads_what_the_file_holds(archive):
    before = archive.read_bytes()
    with pytest.raises(ArchiveError, match=r"has archive schema version 1; .* `evo migrate --db "):
        Store.open(archive, readonly=True)
    assert archive.read_bytes() == before  # refused: the file itself is untouched
    migrate_archive(archive)
    migrated = archive.read_bytes()
    [run_row] = query(archive, "SELECT id, name FROM runs")
    individuals = {r["id"]: r for r in query(archive, "SELECT id, n_ok, val_bpb_mean, cell FROM individuals")}
    trials = {r["id"]: r for r in query(archive, "SELECT id, individual_id, seed, val_bpb FROM trials")}
    elites = {(r["cell"], r["individual_id"]) for r in query(archive, "SELECT cell, individual_id FROM elites")}

    with Store.open(archive, readonly=True) as store:
        [run] = store.list_runs()
        inds = store.individuals(run.id)
        ts = store.trials(run.id)
        els = store.elites(run.id)
    assert (run.id, run.name) == (run_row["id"], run_row["name"])
    assert {i.id: (i.n_ok, i.val_bpb_mean, i.cell) for i in inds} == {
        k: (r["n_ok"], r["val_bpb_mean"], r["cell"]) for k, r in individuals.items()}
    assert {t.id: (t.individual_id, t.seed, t.val_bpb) for t in ts} == {
        k: (r["individual_id"], r["seed"], r["val_bpb"]) for k, r in trials.items()}
    assert {(e.cell, ind.id) for e, ind in els} == elites
    assert run.coordinator is None  # nobody drives a run of an old archive
    assert archive.read_bytes() == migrated  # read-only: the file itself is untouched
