"""The archive's schema migrations (Alembic), the way Optuna upgrades its RDB storage.

An archive's schema is `evo_meta.schema_version` (what `population.opening` checks) and, from
schema 2 on, Alembic's `alembic_version` table beside it; revision `"0002"` is schema 2, and the
migration environment (`env.py`) writes `evo_meta.schema_version` from the revision it ends at,
so the two always agree. Schema 1 archives predate Alembic and carry no `alembic_version`:
upgrading one first stamps it `"0001"` (the baseline revision, the schema-1 tables as they were).

- A new archive is created at the head directly: `create_all` + `stamp_head`, no revision run.
- An older archive is upgraded by its first writer (`population.opening`), or by `evo migrate`,
  inside one write transaction of the caller's: on SQLite DDL is transactional, so a migration
  that fails leaves the file as it was, and a second writer opening the archive at the same
  moment waits on the lock and then finds it migrated.
- Everything is configured in code (`alembic.config.Config()`, `script_location` pointing here):
  no `alembic.ini` exists or is needed. This directory ships as package data.

Making a revision (the schema in `population.models` changed): bump `models.SCHEMA_VERSION` to
N, then, on an archive of schema N-1 (a copy),

    python -c "from population.migrations import revise; revise('ARCHIVE.db', 'what changed')"

writes `versions/000N_*.py` from the difference between the tables and the models (Alembic's
autogenerate); read it, add what it cannot see (data changes), give it a `downgrade()`, and test
the upgrade from `tests/assets/archive-v1.db` (tests/test_population_migrations.py).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from population.errors import ArchiveError

SCRIPT_LOCATION = Path(__file__).resolve().parent


def revision(version: int) -> str:
    """The Alembic revision of a schema version: 2 -> "0002"."""
    return f"{version:04d}"


def version_of(revision_id: str) -> int:
    """The schema version of an Alembic revision: "0002" -> 2."""
    return int(revision_id)


def config(connection: Connection | None = None) -> Any:
    """The Alembic configuration, all in code: the scripts here, migrations run on `connection`."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["connection"] = connection
    return cfg


@cache
def script() -> Any:
    """The revisions (read once per process)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(config())


def head() -> str:
    return script().get_current_head()


def current_revision(connection: Connection) -> str | None:
    """The revision an archive is stamped with (None: no `alembic_version`, i.e. schema 1)."""
    from alembic.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def stamp_head(connection: Connection) -> None:
    """Mark a freshly created archive (`create_all` at today's models) as being at the head."""
    from alembic.migration import MigrationContext

    MigrationContext.configure(connection).stamp(script(), "head")


def upgrade(connection: Connection, from_version: int, shown: str, to: str = "head") -> None:
    """Run every revision after `from_version` (the archive's `evo_meta.schema_version`) inside
    the transaction open on `connection`; the caller commits."""
    from alembic import command
    from alembic.migration import MigrationContext

    context = MigrationContext.configure(connection)
    current = context.get_current_revision()
    if current is None:
        if from_version != 1:
            raise ArchiveError(f"{shown} says schema {from_version} but has no alembic_version: not migrated by evo")
        context.stamp(script(), revision(1))  # schema 1 predates Alembic: its baseline revision
    elif current != revision(from_version):
        raise ArchiveError(f"{shown} says schema {from_version} but Alembic revision {current}: "
                           "the archive was changed by hand; restore a copy")
    command.upgrade(config(connection), to)


def downgrade(connection: Connection, to_version: int) -> None:
    """Go back to schema `to_version` (for an older evo) inside the transaction open on `connection`."""
    from alembic import command

    command.downgrade(config(connection), revision(to_version))


def revise(path: str, message: str) -> None:
    """A developer's tool: autogenerate the next revision from an SQLite archive at today's head
    (the models already changed, the archive not yet)."""
    from alembic import command
    from sqlalchemy import create_engine

    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            rev_id = revision(version_of(head()) + 1)
            command.revision(config(conn), message=message, autogenerate=True, rev_id=rev_id)
    finally:
        engine.dispose()
