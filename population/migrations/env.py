"""Alembic's migration environment for the archive (see population/migrations/__init__.py).

Migrations only ever run on a connection evo opened, already inside the caller's transaction
(`config.attributes["connection"]`), so Alembic opens no transaction of its own and the whole
upgrade commits or rolls back as one. After the revisions, `evo_meta.schema_version` is set to
the revision reached: the version `population.opening` checks always agrees with Alembic's.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from population.models import Base, Meta


def _record_version(connection: Connection, revision_id: str | None) -> None:
    if revision_id is None:  # below the baseline: no archive tables left to describe
        return
    table = Meta.__table__
    version = str(int(revision_id))
    done = connection.execute(table.update().where(table.c.key == "schema_version").values(value=version))
    if done.rowcount == 0:
        connection.execute(table.insert().values(key="schema_version", value=version))


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("evo's migrations run on a connection evo opened: use `evo migrate --db ARCHIVE`")
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
        _record_version(connection, context.get_context().get_current_revision())


if context.is_offline_mode():
    raise RuntimeError("evo's migrations run online only: use `evo migrate --db ARCHIVE`")
run_migrations_online()
