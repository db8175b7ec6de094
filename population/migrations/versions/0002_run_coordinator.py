"""Runs record the coordinator driving them: `coordinator` ("host:pid"), `claimed_at`, `heartbeat_at`.

Revision ID: 0002
Revises: 0001
Create Date: 2026-01-01

Schema 2. `evo run` claims its run (population.coordinator), so a second `evo run --resume` of a
run a live process still drives is refused, and a killed one's stale claim is taken over. The
columns are nullable and start empty: no run of an older archive is claimed. ADD COLUMN of a
nullable column without a default rewrites no row, on SQLite as on PostgreSQL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

COLUMNS = ("coordinator", "claimed_at", "heartbeat_at")


def upgrade() -> None:
    op.add_column("runs", sa.Column("coordinator", sa.String(255), nullable=True))
    op.add_column("runs", sa.Column("claimed_at", sa.DateTime(), nullable=True))
    op.add_column("runs", sa.Column("heartbeat_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    # SQLite >= 3.35 drops a plain column in place (no table copy, which the archive's foreign
    # keys would refuse with rows in it)
    for name in reversed(COLUMNS):
        op.drop_column("runs", name)
