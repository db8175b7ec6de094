"""Baseline: the archive's tables as schema 1 made them (evo before migrations existed).

Revision ID: 0001
Revises:
Create Date: 2026-01-01

Archives of schema 1 carry no alembic_version; upgrading one stamps it with this revision first,
so this script only runs on an empty database (tests check that it reproduces the tables of
tests/assets/archive-v1.db exactly). It spells the tables out instead of reading
population.models, which moves on with later revisions.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TABLES = ("llm_calls", "generation_stats", "elites", "trials", "individuals", "runs", "evo_meta")


def upgrade() -> None:
    op.create_table(
        "evo_meta",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("data_manifest_hash", sa.String(64), nullable=True),
        sa.Column("program_text", sa.Text(), nullable=True),
        sa.Column("noise_sd", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "individuals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("source_hash", sa.String(64), nullable=True),
        sa.Column("commit", sa.String(40), nullable=True),
        sa.Column("parent1_id", sa.Integer(), nullable=True),
        sa.Column("parent2_id", sa.Integer(), nullable=True),
        sa.Column("operator", sa.String(64), nullable=False),
        sa.Column("hypothesis", sa.Text(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("rejected_reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("val_bpb_mean", sa.Float(), nullable=True),
        sa.Column("val_bpb_sd", sa.Float(), nullable=True),
        sa.Column("n_ok", sa.Integer(), nullable=False),
        sa.Column("n_trials", sa.Integer(), nullable=False),
        sa.Column("descriptors", sa.JSON(), nullable=True),
        sa.Column("cell", sa.String(64), nullable=True),
        sa.Column("source", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "source_hash", name="uq_individuals_run_source"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"]),
        sa.ForeignKeyConstraint(["parent1_id"], ["individuals.id"]),
        sa.ForeignKeyConstraint(["parent2_id"], ["individuals.id"]),
    )
    op.create_table(
        "trials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("individual_id", sa.Integer(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("worker", sa.String(100), nullable=False),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("outcome", sa.String(32), nullable=True),
        sa.Column("val_bpb", sa.Float(), nullable=True),
        sa.Column("budget", sa.Float(), nullable=True),
        sa.Column("training_seconds", sa.Float(), nullable=True),
        sa.Column("total_seconds", sa.Float(), nullable=True),
        sa.Column("startup_seconds", sa.Float(), nullable=True),
        sa.Column("compile_seconds", sa.Float(), nullable=True),
        sa.Column("eval_seconds", sa.Float(), nullable=True),
        sa.Column("peak_memory_mb", sa.Float(), nullable=True),
        sa.Column("params", sa.BigInteger(), nullable=True),
        sa.Column("tokens", sa.BigInteger(), nullable=True),
        sa.Column("steps", sa.BigInteger(), nullable=True),
        sa.Column("mfu", sa.Float(), nullable=True),
        sa.Column("tokens_per_second", sa.Float(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("stderr_tail", sa.Text(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("extra", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("individual_id", "seed", name="uq_trials_individual_seed"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"]),
        sa.ForeignKeyConstraint(["individual_id"], ["individuals.id"]),
    )
    op.create_table(
        "elites",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("cell", sa.String(64), nullable=False),
        sa.Column("individual_id", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "cell", name="uq_elites_run_cell"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"]),
        sa.ForeignKeyConstraint(["individual_id"], ["individuals.id"]),
    )
    op.create_table(
        "generation_stats",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("trials", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("best_val_bpb", sa.Float(), nullable=True),
        sa.Column("best_individual_id", sa.Integer(), nullable=True),
        sa.Column("coverage", sa.Float(), nullable=True),
        sa.Column("qd_score", sa.Float(), nullable=True),
        sa.Column("record", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "generation", name="uq_generation_stats"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"]),
        sa.ForeignKeyConstraint(["best_individual_id"], ["individuals.id"]),
    )
    op.create_table(
        "llm_calls",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("individual_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("cache_read_tokens", sa.Integer(), nullable=False),
        sa.Column("cache_write_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("latency_s", sa.Float(), nullable=True),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"]),
        sa.ForeignKeyConstraint(["individual_id"], ["individuals.id"]),
    )
    for name, table, columns in (
        ("ix_individuals_run_score", "individuals", ["run_id", "val_bpb_mean"]),
        ("ix_individuals_run_generation", "individuals", ["run_id", "generation"]),
        ("ix_individuals_source_hash", "individuals", ["source_hash"]),
        ("ix_individuals_run_status", "individuals", ["run_id", "status"]),
        ("ix_individuals_commit", "individuals", ["commit"]),
        ("ix_individuals_parent1", "individuals", ["parent1_id"]),
        ("ix_individuals_parent2", "individuals", ["parent2_id"]),
        ("ix_individuals_run_cell", "individuals", ["run_id", "cell"]),
        ("ix_trials_run_outcome", "trials", ["run_id", "outcome"]),
        ("ix_trials_run_status", "trials", ["run_id", "status"]),
        ("ix_elites_individual", "elites", ["individual_id"]),
        ("ix_llm_calls_run", "llm_calls", ["run_id"]),
    ):
        op.create_index(name, table, columns)


def downgrade() -> None:
    for table in TABLES:
        op.drop_table(table)
