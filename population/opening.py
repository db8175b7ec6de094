"""Opening an archive: which database a path or URL names, whether it may be written, and
whether it is an evo archive of the schema this code reads.

An archive is only ever created in a missing or empty file: anything else that is not already
an evo archive is refused before a single byte is written to it (the checks read the file with
the `sqlite3` module in read-only mode before SQLAlchemy connects, because a connection with
the writer's pragmas would switch a foreign file to WAL). A new archive gets its tables at
today's schema and is stamped there (`create_all` + Alembic's stamp, as Optuna does). An existing
one is checked against `models.SCHEMA_VERSION`:

- the same: opened;
- older: a writer (`evo run`, `evo run --resume`, `evo migrate`) migrates it in place, in one
  write transaction, before anything else is written (`population.migrations`); a read-only
  opener (the browsing commands) is refused with one line naming `evo migrate`, because it must
  not write and today's tables cannot be read from the old ones;
- newer (written by a later evo): refused with one line saying to upgrade evo; nothing is written.

A URL names a database on a server (PostgreSQL through psycopg 3): the same checks, the same
migrations, writes serialised by an advisory lock as SQLite's are by its file lock, and a git
store that is this host's mirror of what the database records (`mirror_dir`, `Store.sync_git`).
"""

from __future__ import annotations

import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy.exc
from sqlalchemy import URL, Engine, create_engine, event, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from population.errors import ArchiveError
from population.gitstore import GitStore
from population.models import SCHEMA_VERSION, Base, Individual, Meta

SQLITE_HEADER = b"SQLite format 3\x00"
SQLITE_PRAGMAS = ("PRAGMA busy_timeout = 30000", "PRAGMA foreign_keys = ON")
# WAL + synchronous=NORMAL: commits without fsync, safe against a crash of evo itself (a power
# cut may lose the last few trials, which resume re-runs). WAL also lets readers (the web UI,
# `evo show` in a second terminal) run beside the writer without blocking either side.
SQLITE_WRITER_PRAGMAS = ("PRAGMA journal_mode = WAL", "PRAGMA synchronous = NORMAL")


@dataclass(frozen=True)
class OpenedArchive:
    engine: Engine
    name: str  # how the archive is named in messages: the path or URL as given (password hidden)
    git: GitStore | None
    readonly: bool
    migrated: tuple[int, int] | None = None  # (from, to) schema versions when this open migrated it


def open_archive(
    path_or_url: str | Path, *, create: bool, readonly: bool, git_dir: str | Path | None
) -> OpenedArchive:
    """A plain path is an SQLite file, anything with `://` a SQLAlchemy URL (see `Store.open`)."""
    if create and readonly:
        raise ValueError("an archive cannot be created read-only")
    target = str(path_or_url)
    if "://" in target:
        url = make_url(target)
        if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
            return _open_url(url, create=create, readonly=readonly, git_dir=git_dir)
        target = url.database
    return _open_sqlite(target, create=create, readonly=readonly, git_dir=git_dir)


def migrate_archive(path_or_url: str | Path) -> tuple[int, int]:
    """Bring an existing archive to this code's schema (`evo migrate`): the database only, so it
    needs no git store. Returns the (from, to) schema versions; equal when nothing was to do."""
    target = str(path_or_url)
    if "://" in target and not _is_sqlite_file(make_url(target)):
        engine, shown, _ = _url_engine(make_url(target), create=False)
    else:
        shown = make_url(target).database if "://" in target else target
        path = Path(shown).expanduser()
        state = _sqlite_state(path, shown)
        if state != "archive":
            raise ArchiveError(f"archive not found: {shown} (nothing to migrate)" if state == "missing"
                               else f"{shown} is an empty file, not an evo archive")
        engine = _sqlite_engine(path, readonly=False)
    try:
        version = _check_schema(engine, shown, readonly=False)
        migrated = _migrate(engine, shown) if version < SCHEMA_VERSION else None
    finally:
        engine.dispose()
    return migrated or (SCHEMA_VERSION, SCHEMA_VERSION)  # already there (maybe migrated meanwhile by another writer)


def _is_sqlite_file(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")


def _open_sqlite(shown: str, *, create: bool, readonly: bool, git_dir: str | Path | None) -> OpenedArchive:
    path = Path(shown).expanduser()
    state = _sqlite_state(path, shown)
    if state == "missing" and not create:
        raise ArchiveError(f"archive not found: {shown} (run `evo run` to create one, or pass --db)")
    if state == "empty" and not create:
        raise ArchiveError(f"{shown} is an empty file, not an evo archive")
    if state == "missing":
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = _sqlite_engine(path, readonly)
    git_path = Path(git_dir) if git_dir is not None else path.with_suffix(".git")
    return _finish(engine, shown, state == "archive", readonly, git_path)


# The key of the one advisory lock every write transaction on a server takes first (`_server_engine`):
# "evo" in ASCII, so a DBA reading pg_locks can tell whose it is.
WRITE_LOCK_KEY = 0x65766F


def _url_engine(url: URL, *, create: bool, readonly: bool = False) -> tuple[Engine, str, bool]:
    """A server's engine, its name for messages, and whether it holds an archive already."""
    shown = url.render_as_string(hide_password=True)
    engine = _server_engine(url, readonly)
    try:
        tables = set(inspect(engine).get_table_names())
    except sqlalchemy.exc.OperationalError as e:  # no server there, a wrong password, no such database
        engine.dispose()
        raise ArchiveError(f"cannot connect to {shown}: {_connect_reason(e)}") from None
    if tables and Meta.__tablename__ not in tables:
        engine.dispose()
        raise ArchiveError(f"{shown} holds other tables but no evo archive; nothing was written")
    if not tables and not create:
        engine.dispose()
        raise ArchiveError(f"archive not found: {shown} (run `evo run` to create one, or pass --db)")
    return engine, shown, bool(tables)


def _connect_reason(error: Exception) -> str:
    """The driver's reason for a refused connection, short: psycopg says `connection failed:
    connection to server at "127.0.0.1", port 5999 failed: Connection refused` plus hints."""
    line = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
    reason = line.rsplit(" failed: ", 1)[-1].removeprefix("FATAL:").strip()
    return reason[:1].lower() + reason[1:]  # "Connection refused" -> "connection refused"


def _server_engine(url: URL, readonly: bool) -> Engine:
    """An engine for a database server. PostgreSQL goes through psycopg 3 (a bare
    `postgresql://` names psycopg2 on SQLAlchemy 2.0).

    Writes are serialised on every backend the same way: SQLite's write transaction is `BEGIN
    IMMEDIATE`, which holds the file's write lock from the first statement, so a read-decide-write
    inside `Store.transaction()` (the elite replace rule) is atomic. PostgreSQL's READ COMMITTED
    would let two coordinators read the same elite and both replace it; so every write
    transaction there takes one transaction-scoped advisory lock first, and each statement after
    it sees every write committed before. A read-only opener's sessions are read-only on the
    server, so the browser cannot write by mistake."""
    if url.get_backend_name() == "postgresql" and url.get_driver_name() in ("", "psycopg2"):
        url = url.set(drivername="postgresql+psycopg")
    postgres = url.get_backend_name() == "postgresql"
    connect_args = {"options": "-c default_transaction_read_only=on"} if postgres and readonly else {}
    try:
        engine = create_engine(url, connect_args=connect_args, pool_pre_ping=True)
    except (ImportError, sqlalchemy.exc.ArgumentError) as e:
        raise ArchiveError(f"cannot open {url.render_as_string(hide_password=True)}: {e}") from None
    if postgres:
        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            if conn.get_execution_options().get("evo_write"):
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})")

    return engine


def mirror_dir(url: URL) -> Path:
    """Where this host keeps its git mirror of a server's archive: a cache, rebuilt from the
    database (`Store.sync_git`), so every host has one and none must be copied. `EVO_MIRRORS`
    moves the directory (tests do)."""
    root = Path(os.environ.get("EVO_MIRRORS") or Path.home() / ".cache" / "evo" / "mirrors")
    name = f"{url.host or 'local'}-{url.port or 'default'}-{url.database or 'db'}"
    return root / (re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".git")


def _open_url(url: URL, *, create: bool, readonly: bool, git_dir: str | Path | None) -> OpenedArchive:
    """A server's archive. Its git store is a mirror on this host (`mirror_dir` unless `git_dir`
    names one), opened for readers too: `Store.open` brings it up to date from the database."""
    engine, shown, exists = _url_engine(url, create=create, readonly=readonly)
    if git_dir is None and url.get_backend_name() == "sqlite":  # in memory: no host to mirror for
        if readonly:
            return _finish(engine, shown, exists, readonly, None)
        engine.dispose()
        raise ArchiveError(f"{shown} is a database in memory: pass git_dir (where the variants' git repository lives)")
    git_path = Path(git_dir) if git_dir is not None else mirror_dir(url)
    try:
        if git_path.exists() and not (git_path / "objects").is_dir() and any(git_path.iterdir()):
            raise ArchiveError(f"{git_path} exists but is not a git repository; refusing to write into it")
        git = GitStore(git_path)
    except BaseException:
        engine.dispose()
        raise
    opened = _finish(engine, shown, exists, readonly, None)
    return OpenedArchive(opened.engine, shown, git, readonly, opened.migrated)


def _finish(engine: Engine, shown: str, exists: bool, readonly: bool, git_path: Path | None) -> OpenedArchive:
    """Check the schema, open the git store, then write: migrate an older archive, or create a
    new one at the head. Every refusal comes before the first write."""
    migrated = None
    try:
        version = _check_schema(engine, shown, readonly) if exists else None
        git = _open_git(engine, shown, readonly, git_path, exists)
        if version is not None and version < SCHEMA_VERSION:
            migrated = _migrate(engine, shown)
        elif not exists:
            _create(engine)
    except sqlalchemy.exc.DatabaseError as e:  # a page of garbage, a cut-off copy
        engine.dispose()
        raise ArchiveError(damaged(shown, e)) from None
    except BaseException:
        engine.dispose()
        raise
    return OpenedArchive(engine, shown, git, readonly, migrated)


def damaged(shown: str, error: Exception) -> str:
    """The one line for an archive whose database cannot be read. Only an SQLite file can be
    salvaged with `sqlite3 .recover`; a server's error is passed on as the server said it."""
    orig = getattr(error, "orig", None)
    cause = str(orig or error).strip().splitlines()[0]
    if orig is not None and not isinstance(orig, sqlite3.Error):
        return f"{shown}: the database server failed ({cause}); nothing more was written"
    return (f"{shown} is damaged ({cause}); nothing was written to it. Restore it from a copy, or salvage "
            f"what SQLite can read with `sqlite3 {shown} .recover | sqlite3 recovered.db`")


def _write(engine: Engine) -> Any:
    """A connection whose transaction is a write from its first statement (`BEGIN IMMEDIATE`
    on SQLite, see `_sqlite_engine`)."""
    return engine.connect().execution_options(evo_write=True)


def _create(engine: Engine) -> None:
    from population import migrations

    with _write(engine) as conn, conn.begin():
        if inspect(conn).has_table(Meta.__tablename__):  # another writer created it meanwhile
            return
        Base.metadata.create_all(conn)
        conn.execute(Meta.__table__.insert(), {"key": "schema_version", "value": str(SCHEMA_VERSION)})
        migrations.stamp_head(conn)


def _migrate(engine: Engine, shown: str) -> tuple[int, int] | None:
    """Upgrade to SCHEMA_VERSION in one write transaction. The version is read again inside it:
    a writer that opened the archive at the same moment may have migrated it meanwhile (then
    None: nothing was done here). A failure rolls everything back (SQLite's DDL is transactional)."""
    from population import migrations

    version = None
    try:
        with _write(engine) as conn, conn.begin():
            version = _version(conn, shown, lock=True)
            if version >= SCHEMA_VERSION:
                return None
            migrations.upgrade(conn, version, shown)
            reached = _version(conn, shown)
            if reached != SCHEMA_VERSION:  # a revision missing from the package: roll back
                raise ArchiveError(f"{shown}: migrating archive schema {version} ended at {reached}, "
                                   f"not {SCHEMA_VERSION}; nothing was changed")
    except SQLAlchemyError as e:
        reason = str(e.orig if getattr(e, "orig", None) is not None else e).splitlines()[0]
        raise ArchiveError(f"{shown}: migrating archive schema {version} to {SCHEMA_VERSION} failed ({reason}); "
                           "nothing was changed") from None
    return version, reached


def _sqlite_state(path: Path, shown: str) -> str:
    """"missing", "empty" or "archive"; raises for anything else. Reads, never writes: the
    check runs before any connection that could switch a foreign file to WAL or add tables."""
    if not path.exists():
        return "missing"
    if not path.is_file():
        raise ArchiveError(f"{shown} is not a file, so not an evo archive")
    with path.open("rb") as f:
        header = f.read(len(SQLITE_HEADER))
    if not header:
        return "empty"
    if header != SQLITE_HEADER:
        raise ArchiveError(f"{shown} is not an evo archive (not an SQLite database)")
    try:
        conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        raise ArchiveError(f"{shown} is not a readable SQLite database ({e})") from None
    if not tables:
        return "empty"
    if Meta.__tablename__ not in tables:
        raise ArchiveError(f"{shown} is an SQLite database but not an evo archive; nothing was written to it")
    return "archive"


def _sqlite_engine(path: Path, readonly: bool) -> Engine:
    """Every write starts with `BEGIN IMMEDIATE` (the store marks its write sessions with the
    `evo_write` execution option), so a write never fails half-way on a lock upgrade."""
    if readonly:
        target, uri = f"file:{quote(str(path.resolve()))}?mode=ro", True
    else:
        target, uri = str(path), False
    engine = create_engine(
        URL.create("sqlite+pysqlite", database=str(path)),
        # isolation_level=None: the driver's own implicit BEGINs are off; `_begin` emits ours
        creator=lambda: sqlite3.connect(target, uri=uri, check_same_thread=False, isolation_level=None),
    )
    pragmas = SQLITE_PRAGMAS if readonly else SQLITE_PRAGMAS + SQLITE_WRITER_PRAGMAS

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        for pragma in pragmas:
            dbapi_conn.execute(pragma)

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        write = conn.get_execution_options().get("evo_write")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _version(conn: Any, shown: str, lock: bool = False) -> int:
    query = select(Meta.value).where(Meta.key == "schema_version")
    value = conn.scalar(query.with_for_update() if lock else query)  # FOR UPDATE: servers; SQLite locks the file
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ArchiveError(f"{shown} has no readable archive schema version ({value!r}); restore a copy") from None


def _check_schema(engine: Engine, shown: str, readonly: bool) -> int:
    """The archive's schema version, if this code may open it: newer is refused, and older is
    refused to a read-only opener (a writer migrates it)."""
    with engine.connect() as conn:
        version = _version(conn, shown)
    if version > SCHEMA_VERSION:
        raise ArchiveError(
            f"{shown} has archive schema version {version}, newer than this evo reads ({SCHEMA_VERSION}): "
            "upgrade evo to open it (`pip install -U evo`, or `git pull` in its checkout); nothing was written"
        )
    if version < SCHEMA_VERSION and readonly:
        raise ArchiveError(
            f"{shown} has archive schema version {version}; this evo reads {SCHEMA_VERSION}: migrate it once with "
            f"`evo migrate --db {shown}` (or resume a run in it with `evo run --resume`); nothing was written"
        )
    return version


def _open_git(
    engine: Engine, shown: str, readonly: bool, git_path: Path | None, exists: bool
) -> GitStore | None:
    """The archive's git store. A writer refuses to start a fresh repository when the archive
    already has commits: those live in the old one, and new commits could not name their
    parents (the repository was probably left behind when the archive file was copied)."""
    if git_path is None:
        return None
    if not (git_path / "objects").is_dir():
        if readonly:
            return None
        if git_path.exists() and any(git_path.iterdir()):
            raise ArchiveError(f"{git_path} exists but is not a git repository; refusing to write into it")
        if exists and _has_commits(engine):
            raise ArchiveError(
                f"git store {git_path} not found, but {shown} records commits in it (copy it along, or pass git_dir)"
            )
    return GitStore(git_path)


def _has_commits(engine: Engine) -> bool:
    with engine.connect() as conn:
        return conn.scalar(select(Individual.id).where(Individual.commit.is_not(None)).limit(1)) is not None
