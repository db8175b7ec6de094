"""Schema migrations (population/migrations, Alembic): a real schema-1 archive
(tests/assets/archive-v1.db) upgraded in place without losing a row, to the same tables a new
archive gets; older archives refused to read-only openers, newer ones to everybody, with one line
naming the command to run.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
import tomllib
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from population import migrations
from population.gitstore import GitStore
from population.models import SCHEMA_VERSION, Base
from population.opening import migrate_archive
from population.store import ArchiveError, Store
from tests.conftest import REPO, evo
from tests.support.archive import result

ASSET = Path(__file__).resolve().parent / "assets" / "archive-v1.db"
TABLES = ("evo_meta", "runs", "individuals", "trials", "elites", "generation_stats", "llm_calls")
NEW_RUN_COLUMNS = ("coordinator", "claimed_at", "heartbeat_at")


@pytest.fixture
def v1(tmp_path) -> Path:
    """A copy of the schema-1 asset (the committed file must never change)."""
    path = tmp_path / "archive.db"
    shutil.copyfile(ASSET, path)
    return path


def rows(path: Path) -> dict[str, list[dict]]:
    """Every row of every archive table, by table, in rowid order."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        return {t: [dict(r) for r in con.execute(f"SELECT * FROM {t} ORDER BY rowid")] for t in TABLES}
    finally:
        con.close()


def scalar(path: Path, sql: str):
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = con.execute(sql).fetchone()
        return row[0] if row else None
    finally:
        con.close()


def tables_of(path: Path) -> set[str]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        con.close()


def schema(path: Path) -> dict[str, tuple]:
    """Each table's columns (name, type, not null, default, pk), indexes and foreign keys: the
    schema as SQLite sees it, whatever the CREATE statement's text."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        out = {}
        for table in sorted(tables_of(path) - {"alembic_version"}):
            columns = tuple(r[1:] for r in con.execute(f"PRAGMA table_info({table})"))
            indexes = tuple(sorted(
                (r[1], r[2], tuple(c[2] for c in con.execute(f"PRAGMA index_info({r[1]})")))
                for r in con.execute(f"PRAGMA index_list({table})")))
            fks = tuple(sorted(r[2:5] for r in con.execute(f"PRAGMA foreign_key_list({table})")))
            out[table] = (columns, indexes, fks)
        return out
    finally:
        con.close()


def test_the_v1_asset_migrates_in_place_without_losing_a_row(v1):
    before = rows(v1)
    assert before["runs"] and before["individuals"] and before["trials"] and before["elites"]
    GitStore(v1.with_suffix(".git")).close()  # the asset ships without its git store; a writer needs one

    with Store.open(v1) as store:  # a writer's open migrates
        assert store.migrated == (1, SCHEMA_VERSION)
    after = rows(v1)
    for table in TABLES[1:]:  # evo_meta's one row is the version, which changes
        assert len(after[table]) == len(before[table]), table
        for old, new in zip(before[table], after[table]):
            assert {k: new[k] for k in old} == old, table  # every value of every row, as it was
    assert all(set(new) - set(old) == set(NEW_RUN_COLUMNS) for old, new in zip(before["runs"], after["runs"]))
    assert all(run[c] is None for run in after["runs"] for c in NEW_RUN_COLUMNS)  # no run is claimed
    assert {r["key"]: r["value"] for r in after["evo_meta"]} == {"schema_version": str(SCHEMA_VERSION)}
    assert scalar(v1, "SELECT version_num FROM alembic_version") == migrations.revision(SCHEMA_VERSION)
    assert scalar(v1, "PRAGMA integrity_check") == "ok"

    # and the store writes to it as to a new archive: a run, an individual, a trial, a claim
    with Store.open(v1) as store:
        assert store.migrated is None  # once is enough
        [old] = store.list_runs()
        run = store.create_run("after-migration", {"budget": 1})
        ind = store.add_individual(run.id, "x = 1\n", [], "seed", "the first of schema 2")
        trial = store.start_trial(ind.id, 0, "cpu", "w0")
        store.finish_trial(trial.id, result(0.9))
        assert store.claim_run(old.id) is None and store.get_run(old.id).coordinator
        assert store.release_run(old.id)
        assert store.get_individual(ind.id).val_bpb_mean == 0.9 and store.get_individual(ind.id).commit
        assert len(store.trials(old.id)) == len(before["trials"])
    with Store.open(v1, readonly=True) as reader:
        assert [r.name for r in reader.list_runs()] == [old.name, "after-migration"]


def test_a_migrated_archive_has_the_tables_of_a_new_one(v1, tmp_path):
    migrate_archive(v1)
    fresh = tmp_path / "fresh.db"
    Store.open(fresh, create=True).close()
    assert schema(v1) == schema(fresh)
    assert tables_of(v1) == tables_of(fresh) == set(TABLES) | {"alembic_version"}
    assert scalar(fresh, "SELECT version_num FROM alembic_version") == migrations.head()
    assert scalar(fresh, "SELECT value FROM evo_meta WHERE key = 'schema_version'") == str(SCHEMA_VERSION)

    # Alembic's own comparison of the migrated tables with the models: nothing to add or drop
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = create_engine(f"sqlite:///{v1}")
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    finally:
        engine.dispose()


def test_the_head_revision_is_the_schema_version():
    assert migrations.head() == migrations.revision(SCHEMA_VERSION)
    assert migrations.version_of(migrations.head()) == SCHEMA_VERSION
    revisions = {r.revision: r for r in migrations.script().walk_revisions()}
    assert sorted(revisions) == [migrations.revision(v) for v in range(1, SCHEMA_VERSION + 1)]
    assert all(r.down_revision == (migrations.revision(int(k) - 1) if int(k) > 1 else None)
               for k, r in revisions.items())  # one straight line, no branches


def test_the_baseline_revision_is_the_schema_of_the_v1_asset(v1, tmp_path):
    """Revision 0001 spells out the schema-1 tables; from an empty database it must make exactly
    the tables the v1 asset has, so v1 archives are stamped 0001 truthfully."""
    empty = tmp_path / "baseline.db"
    engine = create_engine(f"sqlite:///{empty}")
    try:
        with engine.begin() as conn:
            from alembic import command

            command.upgrade(migrations.config(conn), migrations.revision(1))
    finally:
        engine.dispose()
    assert schema(empty) == schema(v1)
    assert scalar(empty, "SELECT value FROM evo_meta WHERE key = 'schema_version'") == "1"


def test_downgrade_gives_back_the_v1_archive(v1):
    """For going back to an older evo: schema 2 -> 1 keeps every row and the v1 tables."""
    before, tables = rows(v1), schema(v1)
    migrate_archive(v1)
    engine = create_engine(f"sqlite:///{v1}")
    try:
        with engine.begin() as conn:
            migrations.downgrade(conn, 1)
    finally:
        engine.dispose()
    assert rows(v1) == before and schema(v1) == tables
    assert scalar(v1, "SELECT version_num FROM alembic_version") == "0001"
    assert migrate_archive(v1) == (1, SCHEMA_VERSION)  # and up again


def test_a_read_only_open_of_an_older_archive_is_refused_untouched(v1):
    before = v1.read_bytes()
    with pytest.raises(ArchiveError) as e:
        Store.open(v1, readonly=True)
    message = str(e.value)
    assert message == (
        f"{v1} has archive schema version 1; this evo reads {SCHEMA_VERSION}: migrate it once with "
        f"`evo migrate --db {v1}` (or resume a run in it with `evo run --resume`); nothing was written")
    assert "\n" not in message and v1.read_bytes() == before
    assert "alembic_version" not in tables_of(v1)


def test_an_archive_of_a_newer_evo_is_refused_to_everybody(tmp_path):
    path = tmp_path / "archive.db"
    Store.open(path, create=True).close()
    con = sqlite3.connect(path)
    con.execute("UPDATE evo_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    con.commit()
    con.close()
    before = rows(path)
    for opening in (lambda: Store.open(path), lambda: Store.open(path, readonly=True),
                    lambda: Store.open(path, create=True), lambda: migrate_archive(path)):
        with pytest.raises(ArchiveError) as e:
            opening()
        assert str(e.value) == (
            f"{path} has archive schema version {SCHEMA_VERSION + 1}, newer than this evo reads ({SCHEMA_VERSION}): "
            "upgrade evo to open it (`pip install -U evo`, or `git pull` in its checkout); nothing was written")
    assert rows(path) == before


def test_a_failed_migration_leaves_the_archive_as_it_was(v1):
    """Schema 1 with a column of schema 2 already there (changed by hand): ADD COLUMN fails half-way
    through the revision, and the whole transaction, stamp included, is rolled back."""
    con = sqlite3.connect(v1)
    con.execute("ALTER TABLE runs ADD COLUMN heartbeat_at DATETIME")
    con.commit()
    con.close()
    before, tables = rows(v1), schema(v1)
    with pytest.raises(ArchiveError, match=r"migrating archive schema 1 to 3 failed \(duplicate column name: "
                                           r"heartbeat_at\); nothing was changed"):
        migrate_archive(v1)
    assert rows(v1) == before and schema(v1) == tables
    assert "alembic_version" not in tables_of(v1)


def test_two_writers_opening_an_old_archive_at_once_migrate_it_once(v1):
    GitStore(v1.with_suffix(".git")).close()
    barrier, outcomes = threading.Barrier(2), []

    def open_it():
        barrier.wait()
        try:
            with Store.open(v1) as store:
                outcomes.append(store.migrated)
        except Exception as e:  # the failure is the assertion below
            outcomes.append(e)

    threads = [threading.Thread(target=open_it) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(outcomes) == 2 and None in outcomes and (1, SCHEMA_VERSION) in outcomes, outcomes
    assert scalar(v1, "SELECT count(*) FROM alembic_version") == 1


def test_evo_migrate_then_browse(v1, tmp_path):
    refused = evo("runs", "--db", v1, cwd=tmp_path, check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"Error: {v1} has archive schema version 1; this evo reads {SCHEMA_VERSION}: migrate it once with "
        f"`evo migrate --db {v1}` (or resume a run in it with `evo run --resume`); nothing was written"]

    done = evo("migrate", "--db", v1, cwd=tmp_path)  # the database only: the asset has no git store
    assert done.stderr.strip() == f"{v1}: migrated from archive schema 1 to {SCHEMA_VERSION}"
    again = evo("migrate", "--db", v1, cwd=tmp_path)
    assert again.stderr.strip() == f"{v1}: archive schema {SCHEMA_VERSION}, already this evo's; nothing to do"
    assert "v1" in evo("runs", "--db", v1, cwd=tmp_path).stdout
    assert not v1.with_suffix(".git").exists()

    missing = evo("migrate", "--db", tmp_path / "nope.db", cwd=tmp_path, check=False)
    assert missing.returncode == 1 and "archive not found" in missing.stderr


def test_the_revisions_ship_as_package_data():
    """`population/migrations/versions/` is no package, so the wheel carries its files only if
    pyproject's package-data names them (an editable install would not notice)."""
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["population"]
    root = REPO / "population"
    needed = [p for p in (root / "migrations").rglob("*")
              if p.is_file() and "__pycache__" not in p.parts and not (p.parent / "__init__.py").is_file()]
    needed += [root / "migrations" / "script.py.mako"]
    assert needed and {p.name for p in needed} >= {"0001_baseline.py", "0002_run_coordinator.py"}
    for path in needed:
        assert any(path.relative_to(root).match(g) for g in globs), path


@pytest.fixture
def v1_on_postgres(postgres_server, v1) -> str:
    """The schema-1 asset's rows in a fresh PostgreSQL database at schema 1: the baseline revision's
    tables, no alembic_version (schema 1 predates Alembic), every row copied. Its individuals'
    commits are left out: the asset ships without its git store, and an evo of schema 1 stamped
    commits with the wall clock, so no mirror could be made of them."""
    from sqlalchemy import MetaData, select, text

    url = postgres_server.fresh_database()
    source = create_engine(f"sqlite:///{v1}")
    target = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with target.begin() as conn:
            from alembic import command

            command.upgrade(migrations.config(conn), migrations.revision(1))
            conn.execute(text("DROP TABLE alembic_version"))
        old, new = MetaData(), MetaData()
        old.reflect(source)
        new.reflect(target)
        with source.connect() as src, target.begin() as dst:
            for table in new.sorted_tables:
                if table.name != "evo_meta":
                    rows = [dict(r) for r in src.execute(select(old.tables[table.name])).mappings()]
                    if rows:
                        dst.execute(table.insert(), rows)
                    dst.execute(text(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                                     f"coalesce((SELECT max(id) FROM {table.name}), 0) + 1, false)"))
            dst.execute(text('UPDATE individuals SET "commit" = NULL'))
    finally:
        source.dispose()
        target.dispose()
    return url


def test_a_schema_1_archive_on_postgresql_migrates_with_evo_migrate(v1_on_postgres, tmp_path):
    """The same revisions run on a server, in one transaction there too; then it is written and read."""
    url = v1_on_postgres
    with pytest.raises(ArchiveError, match=f"has archive schema version 1; .* `evo migrate --db {url}`"):
        Store.open(url, readonly=True, git_dir=tmp_path / "mirror.git")
    done = evo("migrate", "--db", url, cwd=tmp_path)
    assert done.stderr.replace("\n", " ").strip() == f"{url}: migrated from archive schema 1 to {SCHEMA_VERSION}"
    with Store.open(url, git_dir=tmp_path / "mirror.git") as store:
        assert store.migrated is None
        [old] = store.list_runs()
        assert store.claim_run(old.id) is None and store.release_run(old.id)
        run = store.create_run("after-migration", {"budget": 1})
        ind = store.add_individual(run.id, "x = 1\n", [], "seed", "the first of schema 2")
        store.finish_trial(store.start_trial(ind.id, 0, "cpu", "w0").id, result(0.9))
        assert store.get_individual(ind.id).commit
        assert len(store.trials(old.id)) == len(rows(ASSET)["trials"])
    assert "after-migration" in evo("runs", "--db", url, cwd=tmp_path).stdout

    # Alembic's own comparison of the migrated tables with the models: nothing to add or drop
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    finally:
        engine.dispose()
