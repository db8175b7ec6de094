"""Trials record the coordinator running them: `coordinator` ("host:pid") and `heartbeat_at`.

Revision ID: 0003
Revises: 0002
Create Date: 2026-02-01

Schema 3. Several coordinators may drive one run (`evo run --join`), so a running trial names the
process that dispatched it, and that process refreshes the trial's heartbeat while it runs. A
trial whose coordinator is gone (population.coordinator: a dead pid on the same host, a stale
heartbeat from another) is reclaimed by any live coordinator of the run or by a resume; the
trials of a live one are left alone. Nullable, starting empty: an older archive's running trials
name nobody and are reclaimed as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

COLUMNS = ("coordinator", "heartbeat_at")


def upgrade() -> None:
    op.add_column("trials", sa.Column("coordinator", sa.String(255), nullable=True))
    op.add_column("trials", sa.Column("heartbeat_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    for name in reversed(COLUMNS):
        op.drop_column("trials", name)
