"""`Store`: opening an archive and every read and write the engine and the browser need.

The archive is a database (an SQLite file by default, any SQLAlchemy URL otherwise) plus a git
repository of the variants (`archive.db` → `archive.git/` next to it). Rules the methods keep:

- Every write is one short transaction. On SQLite it starts with `BEGIN IMMEDIATE`, so a
  write never fails half-way on a lock upgrade, and the file runs in WAL mode, so readers (the
  web UI, `evo show` in a second terminal, a read-only `Store`) never block the writer and are
  never blocked by it. Writes from the engine's threads are also serialised by a process lock,
  so they queue on that rather than on SQLite's sleep-and-retry busy handler.
- Objects returned are detached snapshots (plain attribute access works, nothing lazy-loads).
  An individual's `source` is only loaded by `get_individual`: lists never need it, and it is
  most of the archive's bytes.
- An archive is only ever created in a missing or empty file: anything else that is not
  already an evo archive is refused before a single byte is written to it.
- Errors a user can cause are `ArchiveError` with a one-line message.
"""

from __future__ import annotations

import hashlib
import math
import re
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import URL, Engine, Row, create_engine, event, func, inspect, or_, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, sessionmaker, undefer

from population.gitstore import GitStore
from population.mapelites import Grid, replaces
from population.models import (
    INDIVIDUAL_STATUSES,
    LLM_ROLES,
    RESULT_COLUMNS,
    RUN_STATUSES,
    SCHEMA_VERSION,
    TRIAL_STATUSES,
    Base,
    Elite,
    GenerationStat,
    Individual,
    LLMCall,
    Meta,
    Run,
    Trial,
    utcnow,
)
from population.noise import noise_sd

SQLITE_HEADER = b"SQLite format 3\x00"
SQLITE_PRAGMAS = ("PRAGMA busy_timeout = 30000", "PRAGMA foreign_keys = ON")
# WAL + synchronous=NORMAL: commits without fsync, safe against a crash of evo itself (a power
# cut may lose the last few trials, which resume re-runs).
SQLITE_WRITER_PRAGMAS = ("PRAGMA journal_mode = WAL", "PRAGMA synchronous = NORMAL")
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_HEX = re.compile(r"[0-9a-f]+")
# numeric TrialResult fields that are not measurements of the variant's behaviour
_NOT_DESCRIPTORS = {"val_bpb", "exit_code", "budget"}
_RUN_FIELDS = {"status", "config", "noise_sd", "program_text", "data_manifest_hash"}
_GENERATION_FIELDS = {
    "trials", "failures", "best_val_bpb", "best_individual_id", "coverage", "qd_score", "record",
}
_LLM_FIELDS = {
    "model", "role", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
    "cost_usd", "latency_s", "outcome", "error",
}


class ArchiveError(Exception):
    """A problem with the archive the user can fix; the message is one line, ready to print."""


class DuplicateSource(ArchiveError):
    """`add_individual` was given a source this run already holds; `.individual` is that one.

    Raised rather than returned so a duplicate child can never be mistaken for a new one: the
    engine usually records the proposal as rejected ("duplicate of individual N") and moves on.
    """

    def __init__(self, individual: Individual):
        self.individual = individual
        super().__init__(f"same source as individual {individual.id} of run {individual.run_id}")


class DuplicateTrial(ArchiveError):
    """The (individual, seed) pair has been trained already."""


def source_hash(source: str) -> str:
    """The identity of a variant: sha256 (hex) of its exact text."""
    return hashlib.sha256(source.encode()).hexdigest()


class Store:
    """The archive. Open with `Store.open`; safe to share between a few threads."""

    def __init__(self, engine: Engine, name: str, *, readonly: bool, git: GitStore | None):
        self.engine = engine
        self.name = name  # how the archive is named in messages: the path or URL as given
        self.readonly = readonly
        self.git = git
        self._lock = threading.RLock()
        self._run_names: dict[int, str] = {}  # run names never change; refs need them per trial
        self._champions: dict[int, str] = {}  # where each run's branch points, to skip rewrites
        self._reader = sessionmaker(engine, expire_on_commit=False)
        self._writer = sessionmaker(
            engine, expire_on_commit=False, execution_options={"evo_write": True}
        )

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        path_or_url: str | Path,
        *,
        create: bool = False,
        readonly: bool = False,
        git_dir: str | Path | None = None,
    ) -> Store:
        """Open an archive: a plain path is an SQLite file, anything with `://` a SQLAlchemy URL.

        `create=True` makes a new archive when the file is missing (or empty). `readonly=True`
        opens SQLite with `mode=ro`, for browsers that must never disturb a running engine.
        The git repository defaults to the file's name with `.git` (`archive.git/`); a server
        URL has no file to sit next to, so a writer must pass `git_dir`.
        """
        if create and readonly:
            raise ValueError("an archive cannot be created read-only")
        target = str(path_or_url)
        if "://" in target:
            url = make_url(target)
            if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
                return cls._open_url(url, create=create, readonly=readonly, git_dir=git_dir)
            target = url.database
        return cls._open_sqlite(target, create=create, readonly=readonly, git_dir=git_dir)

    @classmethod
    def _open_sqlite(
        cls, shown: str, *, create: bool, readonly: bool, git_dir: str | Path | None
    ) -> Store:
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
        return cls._finish_open(engine, shown, state == "archive", readonly, git_path)

    @classmethod
    def _open_url(
        cls, url: URL, *, create: bool, readonly: bool, git_dir: str | Path | None
    ) -> Store:
        shown = url.render_as_string(hide_password=True)
        engine = create_engine(url)
        tables = set(inspect(engine).get_table_names())
        if tables and Meta.__tablename__ not in tables:
            engine.dispose()
            raise ArchiveError(f"{shown} holds other tables but no evo archive; nothing was written")
        if not tables and not create:
            engine.dispose()
            raise ArchiveError(f"archive not found: {shown} (run `evo run` to create one, or pass --db)")
        if git_dir is None and not readonly:
            engine.dispose()
            raise ArchiveError(f"{shown} is a database server: pass git_dir (where the variants' git repository lives)")
        git_path = Path(git_dir) if git_dir is not None else None
        return cls._finish_open(engine, shown, bool(tables), readonly, git_path)

    @classmethod
    def _finish_open(
        cls, engine: Engine, shown: str, exists: bool, readonly: bool, git_path: Path | None
    ) -> Store:
        try:
            if exists:
                _check_schema(engine, shown)
            git = _open_git(engine, shown, readonly, git_path, exists)
            if not exists:
                with engine.begin() as conn:
                    Base.metadata.create_all(conn)
                    conn.execute(Meta.__table__.insert(), {"key": "schema_version", "value": str(SCHEMA_VERSION)})
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, shown, readonly=readonly, git=git)

    def close(self) -> None:
        self.engine.dispose()
        if self.git is not None:
            self.git.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.name!r}{', readonly' if self.readonly else ''})"

    @contextmanager
    def _write(self) -> Iterator[Session]:
        if self.readonly:
            raise ArchiveError(f"{self.name} is open read-only")
        with self._lock, self._writer() as s, s.begin():
            yield s

    # ------------------------------------------------------------------ runs

    def create_run(
        self,
        name: str,
        config: Mapping[str, Any],
        data_manifest_hash: str | None = None,
        program_text: str | None = None,
    ) -> Run:
        """A new run. Its name also names its git branch and refs, hence the restricted alphabet."""
        if not _RUN_NAME.fullmatch(name) or ".." in name or name.endswith((".", ".lock")):
            raise ArchiveError(
                f"bad run name {name!r}: use letters, digits, '.', '_' and '-' (at most 100)"
            )
        with self._write() as s:
            if s.scalar(select(Run.id).where(Run.name == name)) is not None:
                raise ArchiveError(f"run '{name}' already exists in {self.name} (pick another name, or resume it)")
            run = _add(s, Run(
                name=name, config=dict(config), data_manifest_hash=data_manifest_hash,
                program_text=program_text,
            ))
            if self.git is not None:  # plain `git log` in the repository follows the newest run
                self.git.set_head(f"refs/heads/{name}")
            return run

    def get_run(self, name_or_id: str | int) -> Run:
        """A run by name, or by id (an int, or a string of digits no run is named)."""
        with self._reader() as s:
            run = None
            if isinstance(name_or_id, str):
                run = s.scalar(select(Run).where(Run.name == name_or_id))
            if run is None and str(name_or_id).isdigit():
                run = s.get(Run, int(name_or_id))
            if run is not None:
                return run
            names = s.scalars(select(Run.name).order_by(Run.id)).all()
        known = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "") if names else "none yet"
        raise ArchiveError(f"unknown run '{name_or_id}' in {self.name} (runs: {known})")

    def latest_run(self) -> Run | None:
        with self._reader() as s:
            return s.scalar(select(Run).order_by(Run.id.desc()).limit(1))

    def list_runs(self) -> list[Run]:
        with self._reader() as s:
            return list(s.scalars(select(Run).order_by(Run.id)))

    def update_run(self, run_id: int, **fields: Any) -> Run:
        """Change a run's status, config, noise_sd, program_text or data_manifest_hash."""
        unknown = set(fields) - _RUN_FIELDS
        if unknown:
            raise TypeError(f"update_run cannot set {sorted(unknown)}")
        if "status" in fields and fields["status"] not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {RUN_STATUSES}, not {fields['status']!r}")
        with self._write() as s:
            run = _get(s, Run, run_id)
            for key, value in fields.items():
                setattr(run, key, dict(value) if key == "config" else value)
            return run

    # ------------------------------------------------------------------ individuals

    def add_individual(
        self,
        run_id: int,
        source: str,
        parents: list[int],
        operator: str,
        hypothesis: str,
        generation: int = 0,
    ) -> Individual:
        """A new pending individual. Raises `DuplicateSource` if this run already holds `source`
        (a different run may hold it: a new run re-trains yesterday's winners)."""
        digest = source_hash(source)
        with self._write() as s:
            existing = s.scalar(
                select(Individual).where(Individual.run_id == run_id, Individual.source_hash == digest)
            )
            if existing is None:
                return _add(s, Individual(
                    run_id=run_id, source=source, source_hash=digest, operator=operator,
                    hypothesis=hypothesis, generation=generation, status="pending",
                    **_parent_columns(parents),
                ))
        raise DuplicateSource(existing)  # raised out here: a rollback would expire `existing`

    def add_rejected(
        self,
        run_id: int,
        parents: list[int],
        operator: str,
        hypothesis: str,
        reason: str,
        generation: int = 0,
        source: str | None = None,
    ) -> Individual:
        """Record a proposal that will never train, so prompts and the browser see dead ends.
        It gets no source hash: a rejected text must not block a later valid identical one."""
        with self._write() as s:
            return _add(s, Individual(
                run_id=run_id, source=source, source_hash=None, operator=operator,
                hypothesis=hypothesis, generation=generation, status="rejected",
                rejected_reason=reason, **_parent_columns(parents),
            ))

    def get_individual(self, ref: int | str, run_id: int | None = None) -> Individual:
        """An individual, source included, by id or by a prefix (at least 4 hex characters) of
        its source hash or git commit, like git's short shas. Digits are tried as an id first."""
        text = str(ref).strip().lower()
        with self._reader() as s:
            if isinstance(ref, int) or text.isdigit():
                ind = s.get(Individual, int(text), options=[undefer(Individual.source)])
                if ind is not None and (run_id is None or ind.run_id == run_id):
                    return ind
                if isinstance(ref, int) or len(text) < 4:
                    raise ArchiveError(f"no individual {ref} in {self.name}" + _in_run(run_id))
            if len(text) < 4 or not _HEX.fullmatch(text):
                raise ArchiveError(f"'{ref}' is neither an individual id nor a hex prefix of 4+ characters")
            query = select(Individual).options(undefer(Individual.source)).where(
                or_(_prefix(Individual.source_hash, text), _prefix(Individual.commit, text))
            )
            if run_id is not None:
                query = query.where(Individual.run_id == run_id)
            found = list(s.scalars(query.order_by(Individual.id).limit(6)))
        if not found:
            raise ArchiveError(f"no individual matches '{ref}' in {self.name}" + _in_run(run_id))
        if len(found) > 1:
            ids = ", ".join(str(i.id) for i in found[:5]) + (", ..." if len(found) > 5 else "")
            raise ArchiveError(f"'{ref}' is ambiguous: individuals {ids} match; give more characters or a run")
        return found[0]

    def individuals(
        self,
        run_id: int,
        *,
        status: str | None = None,
        generation: int | None = None,
        operator: str | None = None,
        cell: str | None = None,
        order: str = "id",
        limit: int | None = None,
    ) -> list[Individual]:
        """A run's individuals (without source), filtered; `order` is "id" (oldest first) or
        "val_bpb" (best first, unscored last)."""
        if status is not None and status not in INDIVIDUAL_STATUSES:
            raise ValueError(f"status must be one of {INDIVIDUAL_STATUSES}, not {status!r}")
        orders = {
            "id": (Individual.id,),
            "val_bpb": (Individual.val_bpb_mean.is_(None), Individual.val_bpb_mean, Individual.id),
        }
        if order not in orders:
            raise ValueError(f"order must be one of {sorted(orders)}, not {order!r}")
        query = select(Individual).where(Individual.run_id == run_id)
        for column, value in (
            (Individual.status, status),
            (Individual.generation, generation),
            (Individual.operator, operator),
            (Individual.cell, cell),
        ):
            if value is not None:
                query = query.where(column == value)
        with self._reader() as s:
            return list(s.scalars(query.order_by(*orders[order]).limit(limit)))

    def children_of(self, individual_id: int) -> list[Individual]:
        with self._reader() as s:
            return list(s.scalars(
                select(Individual)
                .where(or_(Individual.parent1_id == individual_id, Individual.parent2_id == individual_id))
                .order_by(Individual.id)
            ))

    def recent_failures(self, run_id: int, limit: int = 10) -> list[dict[str, Any]]:
        """The run's latest failed trials and rejected proposals, newest first, as dicts with
        individual_id, hypothesis, operator, outcome ("rejected" for proposals), stderr_tail,
        message and at: what a mutation prompt shows so the LLM stops repeating them."""
        with self._reader() as s:
            trials = s.execute(
                select(Trial, Individual)
                .join(Individual, Trial.individual_id == Individual.id)
                .where(Trial.run_id == run_id, Trial.status == "done", Trial.outcome != "ok")
                .order_by(Trial.finished_at.desc(), Trial.id.desc())
                .limit(limit)
            ).all()
            rejected = s.scalars(
                select(Individual)
                .where(Individual.run_id == run_id, Individual.status == "rejected")
                .order_by(Individual.created_at.desc(), Individual.id.desc())
                .limit(limit)
            ).all()
        rows = [
            _failure(ind, t.outcome, t.stderr_tail or "", t.message or "", t.finished_at)
            for t, ind in trials
        ] + [_failure(ind, "rejected", "", ind.rejected_reason or "", ind.created_at) for ind in rejected]
        rows.sort(key=lambda r: r["at"], reverse=True)
        return rows[:limit]

    # ------------------------------------------------------------------ trials

    def start_trial(self, individual_id: int, seed: int, device: str = "", worker: str = "") -> Trial:
        """Claim (individual, seed) for training. Raises `DuplicateTrial` if that pair exists:
        the same source is never trained twice under the same seed."""
        with self._write() as s:
            ind = s.execute(
                select(Individual.run_id, Individual.status, Individual.rejected_reason)
                .where(Individual.id == individual_id)
            ).one_or_none()
            if ind is None:
                raise ArchiveError(f"no individual {individual_id} in {self.name}")
            if ind.status == "rejected":
                raise ArchiveError(f"individual {individual_id} was rejected ({ind.rejected_reason}): nothing to train")
            trial = Trial(
                run_id=ind.run_id, individual_id=individual_id, seed=seed, device=device,
                worker=worker, status="running",
            )
            try:
                return _add(s, trial)
            except IntegrityError:
                raise DuplicateTrial(
                    f"individual {individual_id} already has a trial with seed {seed}"
                ) from None

    def finish_trial(self, trial_id: int, result: Mapping[str, Any]) -> Trial:
        """Record a trial's result (a `TrialResult.to_dict()`), refresh its individual's cached
        aggregates and, on the individual's first finished trial, commit it to git.

        The commit waits for a result so its message can carry one (`Val-bpb`, `Outcome`,
        `Seed` trailers from that first trial); the archive, not git, holds later trials.
        Keys the Trial table has no column for are kept in `Trial.extra`.
        """
        if "outcome" not in result:
            raise ValueError("a trial result needs an 'outcome'")
        # no autoflush: the trial and the individual are written once, at commit
        with self._write() as s, s.no_autoflush:
            trial = _get(s, Trial, trial_id)
            if trial.status == "done":
                raise ArchiveError(f"trial {trial_id} is already finished")
            extra = {}
            for key, value in result.items():
                if key in RESULT_COLUMNS or (key == "device" and value):
                    setattr(trial, key, value)
                elif key not in ("seed", "device", "ok"):
                    extra[key] = value
            trial.extra = extra or None
            trial.status = "done"
            trial.finished_at = utcnow()
            ind = s.get(Individual, trial.individual_id, options=[undefer(Individual.source)])
            _refresh_aggregates(s, ind)
            if ind.commit is None and self.git is not None:
                ind.commit = self._commit(s, ind, trial)
            return trial

    def _commit(self, s: Session, ind: Individual, trial: Trial) -> str:
        commits = dict(s.execute(
            select(Individual.id, Individual.commit).where(Individual.id.in_(ind.parents))
        ).all())
        run_name = self._run_name(s, ind.run_id)
        trailers: dict[str, object] = {}
        if trial.val_bpb is not None:
            trailers["Val-bpb"] = f"{trial.val_bpb:.4f}"
        trailers.update({
            "Outcome": trial.outcome, "Seed": trial.seed, "Operator": ind.operator or "seed",
            "Evo-run": run_name, "Evo-individual": ind.id,
        })
        sha = self.git.commit(
            ind.source or "",
            [commits[p] for p in ind.parents if commits.get(p)],
            ind.hypothesis or f"individual {ind.id}",
            trailers,
        )
        self.git.set_ref(f"refs/individuals/{run_name}/{ind.id}", sha)
        return sha

    def _run_name(self, s: Session, run_id: int) -> str:
        if run_id not in self._run_names:
            self._run_names[run_id] = _get(s, Run, run_id).name
        return self._run_names[run_id]

    def trials(
        self,
        run_id: int | None = None,
        *,
        individual_id: int | None = None,
        status: str | None = None,
    ) -> list[Trial]:
        """Trials of a run and/or an individual, oldest first."""
        if run_id is None and individual_id is None:
            raise TypeError("trials() needs a run_id or an individual_id")
        if status is not None and status not in TRIAL_STATUSES:
            raise ValueError(f"status must be one of {TRIAL_STATUSES}, not {status!r}")
        query = select(Trial)
        if run_id is not None:
            query = query.where(Trial.run_id == run_id)
        if individual_id is not None:
            query = query.where(Trial.individual_id == individual_id)
        if status is not None:
            query = query.where(Trial.status == status)
        with self._reader() as s:
            return list(s.scalars(query.order_by(Trial.id)))

    def running_trials(self, run_id: int) -> list[Trial]:
        """Trials started but never finished: on resume, these were cut off mid-way."""
        return self.trials(run_id, status="running")

    def delete_trial(self, trial_id: int) -> None:
        """Drop a cut-off trial so resume can run its (individual, seed) again. Finished trials
        are the record and cannot be deleted."""
        # no autoflush: the trial and the individual are written once, at commit
        with self._write() as s, s.no_autoflush:
            trial = _get(s, Trial, trial_id)
            if trial.status == "done":
                raise ArchiveError(f"trial {trial_id} is finished; finished trials are never deleted")
            s.delete(trial)

    def used_seeds(self, individual_id: int) -> set[int]:
        """Seeds already claimed for an individual, running trials included."""
        with self._reader() as s:
            return set(s.scalars(select(Trial.seed).where(Trial.individual_id == individual_id)))

    # ------------------------------------------------------------------ elites

    def tell(self, individual_id: int, grid: Grid, noise_sd: float | None) -> bool:
        """Place an individual in the grid by its current mean descriptors and score, applying
        the noise-aware replace rule (`mapelites.replaces`) against the cell's elite.

        Returns True when the individual holds its cell afterwards (new cell, replaced the
        elite, or a re-trained elite still there). An individual without ok trials has no cell.
        If re-training moved an elite's descriptors into another cell, the cell it leaves goes
        to the best other individual placed there, so a niche is not lost to measurement drift.
        Git follows: `refs/elites/<run>/<cell>` per cell, and the branch `<run>` at the best elite.
        """
        with self._write() as s:
            ind = _get(s, Individual, individual_id)
            run_name = self._run_name(s, ind.run_id)
            cell = grid.cell(ind.descriptors) if ind.n_ok else None
            ind.cell = grid.key(cell) if cell is not None else None
            # the cell it held, if any, and the one it now belongs to (often the same row)
            rows = s.scalars(select(Elite).where(
                Elite.run_id == ind.run_id, or_(Elite.individual_id == ind.id, Elite.cell == ind.cell)
            )).all()
            held = next((e for e in rows if e.individual_id == ind.id), None)
            elite = next((e for e in rows if e.cell == ind.cell), None)
            placed = held is not None and held is elite
            if held is not None and not placed:
                self._vacate(s, run_name, held)
            if not placed and ind.cell is not None:
                placed = self._challenge(s, run_name, ind, elite, noise_sd)
            if placed or held is not None:
                self._follow_champion(s, ind.run_id, run_name)
            return placed

    def _challenge(
        self, s: Session, run_name: str, ind: Individual, elite: Elite | None, noise_sd: float | None
    ) -> bool:
        """The replace rule for a newcomer to `ind.cell`, whose current elite is `elite`."""
        if elite is None:
            elite = _add(s, Elite(run_id=ind.run_id, cell=ind.cell, individual_id=ind.id))
        else:
            incumbent = s.execute(
                select(Individual.val_bpb_mean, Individual.n_ok).where(Individual.id == elite.individual_id)
            ).one()
            if not replaces(ind.val_bpb_mean, ind.n_ok, incumbent.val_bpb_mean, incumbent.n_ok, noise_sd):
                return False
            elite.individual_id = ind.id
        self._set_elite_ref(run_name, elite.cell, ind.commit)
        return True

    def _follow_champion(self, s: Session, run_id: int, run_name: str) -> None:
        """Keep the branch `<run>` on the run's best elite: `git log <run>` is then the
        champion's lineage and `git show <run>:train.py` its code."""
        if self.git is None:
            return
        best = s.scalar(
            select(Individual.commit)
            .join(Elite, Elite.individual_id == Individual.id)
            .where(Elite.run_id == run_id)
            .order_by(Individual.val_bpb_mean, Individual.id)
            .limit(1)
        )
        if best and self._champions.get(run_id) != best:
            self.git.set_ref(f"refs/heads/{run_name}", best)
            self._champions[run_id] = best

    def _vacate(self, s: Session, run_name: str, elite: Elite) -> None:
        successor = s.execute(
            select(Individual.id, Individual.commit)
            .where(
                Individual.run_id == elite.run_id,
                Individual.cell == elite.cell,
                Individual.id != elite.individual_id,
                Individual.n_ok > 0,
            )
            .order_by(Individual.val_bpb_mean, Individual.id)
            .limit(1)
        ).one_or_none()
        if successor is None:
            s.delete(elite)
            if self.git is not None:
                self.git.delete_ref(_elite_ref(run_name, elite.cell))
        else:
            elite.individual_id = successor.id
            self._set_elite_ref(run_name, elite.cell, successor.commit)

    def _set_elite_ref(self, run_name: str, cell: str, commit: str | None) -> None:
        if self.git is not None and commit:
            self.git.set_ref(_elite_ref(run_name, cell), commit)

    def elites(self, run_id: int) -> list[tuple[Elite, Individual]]:
        """The run's elites with their individuals, best first."""
        with self._reader() as s:
            rows = s.execute(
                select(Elite, Individual)
                .join(Individual, Elite.individual_id == Individual.id)
                .where(Elite.run_id == run_id)
                .order_by(Individual.val_bpb_mean, Individual.id)
            ).all()
        return [(e, i) for e, i in rows]

    def best(self, run_id: int, k: int = 1) -> list[Individual]:
        """The k individuals with the lowest mean val_bpb over their ok trials."""
        with self._reader() as s:
            return list(s.scalars(
                select(Individual)
                .where(Individual.run_id == run_id, Individual.n_ok > 0)
                .order_by(Individual.val_bpb_mean, Individual.id)
                .limit(k)
            ))

    # ------------------------------------------------------------------ run records

    def record_generation(self, run_id: int, generation: int, stats: Mapping[str, Any]) -> GenerationStat:
        """Store (or overwrite, on a resumed generation) one generation's statistics: keys are
        trials, failures, best_val_bpb, best_individual_id, coverage, qd_score and record
        (the engine's DEAP Logbook record)."""
        unknown = set(stats) - _GENERATION_FIELDS
        if unknown:
            raise TypeError(f"record_generation got unknown stats {sorted(unknown)}")
        with self._write() as s:
            row = s.scalar(select(GenerationStat).where(
                GenerationStat.run_id == run_id, GenerationStat.generation == generation
            ))
            if row is None:
                row = GenerationStat(run_id=run_id, generation=generation)
                s.add(row)
            for key, value in stats.items():
                setattr(row, key, value)
            row.created_at = utcnow()
            s.flush()
            return row

    def generations(self, run_id: int) -> list[GenerationStat]:
        with self._reader() as s:
            return list(s.scalars(
                select(GenerationStat).where(GenerationStat.run_id == run_id).order_by(GenerationStat.generation)
            ))

    def record_llm_call(self, run_id: int, individual_id: int | None, call: Mapping[str, Any]) -> LLMCall:
        """Record one LLM request; `call` holds LLMCall columns (model, role, tokens, cost...)."""
        unknown = set(call) - _LLM_FIELDS
        if unknown:
            raise TypeError(f"record_llm_call got unknown fields {sorted(unknown)}")
        if call.get("role", "mutate") not in LLM_ROLES:
            raise ValueError(f"LLM call role must be one of {LLM_ROLES}, not {call['role']!r}")
        with self._write() as s:
            return _add(s, LLMCall(run_id=run_id, individual_id=individual_id, **call))

    def llm_spend(self, run_id: int) -> dict[str, Any]:
        """Totals over a run's LLM calls: calls, cost_usd and the four token counts."""
        sums = {
            name: func.coalesce(func.sum(getattr(LLMCall, name)), 0)
            for name in ("cost_usd", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
        }
        with self._reader() as s:
            row = s.execute(
                select(func.count(LLMCall.id), *sums.values()).where(LLMCall.run_id == run_id)
            ).one()
        totals = dict(zip(sums, row[1:]))
        return {"calls": row[0], **totals, "cost_usd": float(totals["cost_usd"])}

    # ------------------------------------------------------------------ browsing (read-only)

    def counts(self, run_id: int) -> dict[str, int]:
        """A run's sizes without loading its rows: individuals by status (`pending`, `trained`,
        `rejected`), finished `trials`, `failed` ones among them, and trials `running` now.
        `evo runs` and the web page show these for every run on every refresh."""
        with self._reader() as s:
            by_status = dict(s.execute(
                select(Individual.status, func.count()).where(Individual.run_id == run_id).group_by(Individual.status)
            ).all())
            trials = s.execute(
                select(Trial.status, Trial.outcome == "ok", func.count())
                .where(Trial.run_id == run_id)
                .group_by(Trial.status, Trial.outcome == "ok")
            ).all()
        sizes = {status: by_status.get(status, 0) for status in INDIVIDUAL_STATUSES}
        sizes["trials"] = sum(n for status, _, n in trials if status == "done")
        sizes["failed"] = sum(n for status, ok, n in trials if status == "done" and not ok)
        sizes["running"] = sum(n for status, _, n in trials if status == "running")
        return sizes

    def individual_rows(self, run_id: int, columns: Sequence[str]) -> list[Row]:
        """A run's individuals as plain rows of the named columns, oldest first.

        For whole-run views (progress chart, results.tsv, lineage, the page's trial table):
        building no ORM objects makes this several times faster than `individuals()` at
        10,000 individuals. `source` cannot be asked for; `get_individual` reads it.
        """
        with self.engine.connect() as conn:  # Core, not the ORM session: no per-row ORM loading
            return conn.execute(
                select(*_columns(Individual, columns)).where(Individual.run_id == run_id).order_by(Individual.id)
            ).all()

    def ancestry_rows(self, individual_id: int, columns: Sequence[str]) -> list[Row]:
        """An individual, its ancestors along first parents (into earlier runs too) and the
        second parents met on the way, as plain rows of the named columns, oldest first: what
        a lineage shows, in one recursive query instead of reading the whole run."""
        chain = select(Individual.id, Individual.parent1_id, Individual.parent2_id).where(
            Individual.id == individual_id).cte("chain", recursive=True)
        parent = aliased(Individual)
        # UNION, not UNION ALL: it ends even on a (corrupt) cycle
        chain = chain.union(select(parent.id, parent.parent1_id, parent.parent2_id)
                            .join(chain, parent.id == chain.c.parent1_id))
        wanted = or_(Individual.id.in_(select(chain.c.id)), Individual.id.in_(select(chain.c.parent2_id)))
        with self.engine.connect() as conn:
            return conn.execute(select(*_columns(Individual, columns)).where(wanted).order_by(Individual.id)).all()

    def trial_rows(self, run_id: int, columns: Sequence[str]) -> list[Row]:
        """A run's finished trials as plain rows of the named columns, in the order they
        finished (the order of the progress chart; with several workers it is not id order)."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(*_columns(Trial, columns))
                .where(Trial.run_id == run_id, Trial.status == "done")
                .order_by(Trial.finished_at, Trial.id)
            ).all()


# ---------------------------------------------------------------------- helpers


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


def _check_schema(engine: Engine, shown: str) -> None:
    with engine.connect() as conn:
        version = conn.scalar(select(Meta.value).where(Meta.key == "schema_version"))
    if version != str(SCHEMA_VERSION):
        raise ArchiveError(
            f"{shown} has archive schema version {version}; this evo reads version {SCHEMA_VERSION}"
        )


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


def _get(s: Session, model: type, ident: int) -> Any:
    obj = s.get(model, ident)
    if obj is None:
        raise ArchiveError(f"no {model.__name__.lower()} {ident} in the archive")
    return obj


def _add(s: Session, obj: Any) -> Any:
    s.add(obj)
    s.flush()
    return obj


def _parent_columns(parents: list[int]) -> dict[str, int | None]:
    if len(parents) > 2:
        raise ValueError(f"an individual has at most two parents, got {parents}")
    padded = list(parents) + [None, None]
    return {"parent1_id": padded[0], "parent2_id": padded[1]}


def _prefix(column: Any, prefix: str) -> Any:
    """`column LIKE 'prefix%'` as a range, which a plain index serves on every backend
    (SQLite's LIKE is case-insensitive and skips the index)."""
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    return (column >= prefix) & (column < upper)


def _columns(model: type, names: Sequence[str]) -> list[Any]:
    table = model.__table__.columns
    unknown = [n for n in names if n not in table or n == "source"]
    if unknown:
        raise ValueError(f"{model.__name__} rows cannot hold {unknown}")
    return [getattr(model, n) for n in names]


def _in_run(run_id: int | None) -> str:
    return f" (run {run_id})" if run_id is not None else ""


def _failure(ind: Individual, outcome: str | None, stderr_tail: str, message: str, at: Any) -> dict[str, Any]:
    return {
        "individual_id": ind.id, "hypothesis": ind.hypothesis, "operator": ind.operator,
        "outcome": outcome, "stderr_tail": stderr_tail, "message": message, "at": at,
    }


def _refresh_aggregates(s: Session, ind: Individual) -> None:
    """Recompute the individual's cached scores from its finished trials (a handful of rows).
    Filters in Python so that a trial finished in this session but not yet flushed counts."""
    trials = s.scalars(select(Trial).where(Trial.individual_id == ind.id))
    done = [t for t in trials if t.status == "done"]
    ok = [t for t in done if t.ok and t.val_bpb is not None]
    scores = [t.val_bpb for t in ok]
    ind.status = "trained"
    ind.n_trials = len(done)
    ind.n_ok = len(ok)
    ind.val_bpb_mean = sum(scores) / len(scores) if scores else None
    ind.val_bpb_sd = noise_sd(scores)
    ind.descriptors = _mean_measurements(ok) or None


def _mean_measurements(trials: list[Trial]) -> dict[str, float]:
    """Per-key mean of every numeric measurement over the trials: the descriptor candidates a
    grid can be built on (params, tokens, peak_memory_mb, ... and numeric extras)."""
    values: dict[str, list[float]] = {}
    for t in trials:
        measured = {k: getattr(t, k) for k in RESULT_COLUMNS if k not in _NOT_DESCRIPTORS}
        measured.update(t.extra or {})
        for key, value in measured.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                values.setdefault(key, []).append(float(value))
    return {k: sum(v) / len(v) for k, v in values.items()}


def _elite_ref(run_name: str, cell: str) -> str:
    return f"refs/elites/{run_name}/{cell}"
