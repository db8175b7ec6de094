"""The archive's tables (SQLAlchemy 2.x declarative).

Everything a run learns lives here, so a run can be resumed, browsed and continued from another
process or machine. Two design choices shape the columns:

These are the storage's own classes: `population.store` never hands them out (it returns the
frozen `population.records` built from them), so only the store, `records`, `opening` and the
migrations' `env.py` import this.

- An `Individual` caches the aggregates of its finished trials (mean, sd, counts, descriptors,
  cell). They are derivable from `Trial` rows, but selection, the elite table and the browser
  read them for every individual, so the store keeps them current when a trial finishes.
- A `Trial` has one column per `TrialResult` field (`trainer/runner.py`) so the browser can sort
  and filter on any measurement; fields the trainer adds later land in `Trial.extra` instead of
  being dropped.

Timestamps are naive UTC (SQLite has no time zones; PostgreSQL would silently shift aware ones).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# The archive's schema, `evo_meta.schema_version`; Alembic revision "000N" (population/migrations)
# moves an archive from N-1 to N. Bump it with a new revision whenever a table here changes.
SCHEMA_VERSION = 3

RUN_STATUSES = ("running", "stopped", "finished")
INDIVIDUAL_STATUSES = ("pending", "trained", "rejected")
TRIAL_STATUSES = ("running", "done")
LLM_ROLES = ("mutate", "crossover", "repair")


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON}


class Meta(Base):
    """Key/value facts about the archive file itself; `schema_version` is what opening checks
    (population/migrations keeps it equal to Alembic's revision).

    Its presence is also how `Store.open` tells an evo archive from someone else's SQLite file.
    """

    __tablename__ = "evo_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Run(Base):
    """One `evo run`: its config is everything needed to resume it (budget, population size,
    grid, operator, seeds), so resuming a run needs none of its flags repeated."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    status: Mapped[str] = mapped_column(String(16), default="running")
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    data_manifest_hash: Mapped[str | None] = mapped_column(String(64))
    program_text: Mapped[str | None] = mapped_column(Text)
    # seed-to-seed sd of val_bpb, measured from the seed's replicate trials
    noise_sd: Mapped[float | None] = mapped_column(Float)
    # Schema 2: the `evo run` process driving the run ("host:pid"), since when, and its last sign
    # of life; all None while no process drives it (population.coordinator says who is alive).
    coordinator: Mapped[str | None] = mapped_column(String(255))
    claimed_at: Mapped[datetime | None] = mapped_column()
    heartbeat_at: Mapped[datetime | None] = mapped_column()


class Individual(Base):
    """A `train.py` variant: its source, where it came from, and its cached trial aggregates.

    Rejected proposals (the operator produced no valid child) are individuals too, so the archive
    and the LLM's prompts remember dead ends; they have no source hash and never train.
    """

    __tablename__ = "individuals"
    __table_args__ = (
        UniqueConstraint("run_id", "source_hash", name="uq_individuals_run_source"),
        Index("ix_individuals_run_cell", "run_id", "cell"),
        Index("ix_individuals_run_status", "run_id", "status"),
        Index("ix_individuals_run_score", "run_id", "val_bpb_mean"),
        Index("ix_individuals_run_generation", "run_id", "generation"),
        Index("ix_individuals_source_hash", "source_hash"),
        Index("ix_individuals_commit", "commit"),
        Index("ix_individuals_parent1", "parent1_id"),
        Index("ix_individuals_parent2", "parent2_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    source_hash: Mapped[str | None] = mapped_column(String(64))
    commit: Mapped[str | None] = mapped_column(String(40))
    parent1_id: Mapped[int | None] = mapped_column(ForeignKey("individuals.id"))
    parent2_id: Mapped[int | None] = mapped_column(ForeignKey("individuals.id"))
    operator: Mapped[str] = mapped_column(String(64), default="")
    hypothesis: Mapped[str] = mapped_column(Text, default="")
    generation: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    rejected_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    val_bpb_mean: Mapped[float | None] = mapped_column(Float)
    val_bpb_sd: Mapped[float | None] = mapped_column(Float)
    n_ok: Mapped[int] = mapped_column(Integer, default=0)
    n_trials: Mapped[int] = mapped_column(Integer, default=0)
    descriptors: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    cell: Mapped[str | None] = mapped_column(String(64))
    # Last, so SQLite keeps the small columns before it in the row's first page and scans never
    # walk a source's overflow pages; deferred, so listing 10,000 individuals does not read
    # 10,000 files: only `Store.get_individual` loads it (elsewhere reading it raises).
    source: Mapped[str | None] = mapped_column(Text, deferred=True, deferred_raiseload=True)

    @property
    def parents(self) -> list[int]:
        return [p for p in (self.parent1_id, self.parent2_id) if p is not None]

    def __repr__(self) -> str:
        return f"<Individual {self.id} run={self.run_id} {self.status} val_bpb={self.val_bpb_mean}>"


# TrialResult fields stored as columns, with their types; `seed` and `device` are set by start_trial.
RESULT_COLUMNS: dict[str, type] = {
    "outcome": str,
    "val_bpb": float,
    "budget": float,
    "training_seconds": float,
    "total_seconds": float,
    "startup_seconds": float,
    "compile_seconds": float,
    "eval_seconds": float,
    "peak_memory_mb": float,
    "params": int,
    "tokens": int,
    "steps": int,
    "mfu": float,
    "tokens_per_second": float,
    "exit_code": int,
    "stderr_tail": str,
    "message": str,
}


class Trial(Base):
    """One training of one individual under one seed; the unique (individual, seed) pair is the
    archive's guarantee that the same source is never trained twice under the same seed."""

    __tablename__ = "trials"
    __table_args__ = (
        UniqueConstraint("individual_id", "seed", name="uq_trials_individual_seed"),
        Index("ix_trials_run_status", "run_id", "status"),
        Index("ix_trials_run_outcome", "run_id", "outcome"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    individual_id: Mapped[int] = mapped_column(ForeignKey("individuals.id"))
    seed: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="running")
    worker: Mapped[str] = mapped_column(String(100), default="")
    device: Mapped[str] = mapped_column(String(64), default="")
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()

    outcome: Mapped[str | None] = mapped_column(String(32))
    val_bpb: Mapped[float | None] = mapped_column(Float)
    budget: Mapped[float | None] = mapped_column(Float)
    training_seconds: Mapped[float | None] = mapped_column(Float)
    total_seconds: Mapped[float | None] = mapped_column(Float)
    startup_seconds: Mapped[float | None] = mapped_column(Float)
    compile_seconds: Mapped[float | None] = mapped_column(Float)
    eval_seconds: Mapped[float | None] = mapped_column(Float)
    peak_memory_mb: Mapped[float | None] = mapped_column(Float)
    params: Mapped[int | None] = mapped_column(BigInteger)
    tokens: Mapped[int | None] = mapped_column(BigInteger)
    steps: Mapped[int | None] = mapped_column(BigInteger)
    mfu: Mapped[float | None] = mapped_column(Float)
    tokens_per_second: Mapped[float | None] = mapped_column(Float)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    stderr_tail: Mapped[str | None] = mapped_column(Text)
    message: Mapped[str | None] = mapped_column(Text)
    extra: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # schema 3 (last, where migration 0003 adds them): who runs it ("host:pid"), its last heartbeat
    coordinator: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None] = mapped_column()


class Elite(Base):
    """The current occupant of one MAP-Elites cell of a run."""

    __tablename__ = "elites"
    __table_args__ = (
        UniqueConstraint("run_id", "cell", name="uq_elites_run_cell"),
        Index("ix_elites_individual", "individual_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    cell: Mapped[str] = mapped_column(String(64))
    individual_id: Mapped[int] = mapped_column(ForeignKey("individuals.id"))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class GenerationStat(Base):
    """One row per generation of a run: the curves the browser plots."""

    __tablename__ = "generation_stats"
    __table_args__ = (UniqueConstraint("run_id", "generation", name="uq_generation_stats"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    generation: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    trials: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    best_val_bpb: Mapped[float | None] = mapped_column(Float)
    best_individual_id: Mapped[int | None] = mapped_column(ForeignKey("individuals.id"))
    coverage: Mapped[float | None] = mapped_column(Float)
    qd_score: Mapped[float | None] = mapped_column(Float)
    record: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the full record evo.generations computed


class LLMCall(Base):
    """One request to an LLM backend, kept so a run's spend and failure modes are auditable."""

    __tablename__ = "llm_calls"
    __table_args__ = (Index("ix_llm_calls_run", "run_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    individual_id: Mapped[int | None] = mapped_column(ForeignKey("individuals.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    model: Mapped[str] = mapped_column(String(100), default="")
    role: Mapped[str] = mapped_column(String(16), default="mutate")
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    latency_s: Mapped[float | None] = mapped_column(Float)
    outcome: Mapped[str] = mapped_column(String(32), default="ok")
    error: Mapped[str | None] = mapped_column(Text)
