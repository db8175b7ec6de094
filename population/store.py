"""`Store`: the archive's storage. Every read and write the engine and the browser need, and
nothing about MAP-Elites: which individual holds a cell is decided in `population.elites`.

The archive is a database (an SQLite file by default, any SQLAlchemy URL otherwise; opened and
checked by `population.opening`) plus a git repository of the variants (`archive.db` →
`archive.git/` next to it). Rules the methods keep, as Optuna's storages do:

- One transaction scope. Every method is one short transaction of its own, unless it runs inside
  `with store.transaction():`, where every call in that thread joins the one transaction (so a
  read-decide-write policy such as the elite replace rule is atomic). On SQLite a write starts
  with `BEGIN IMMEDIATE` and the file runs in WAL mode, so readers (the web UI, `evo show` in a
  second terminal, a read-only `Store`) never block the writer and are never blocked by it. On
  PostgreSQL a write starts by taking one advisory lock (`opening._server_engine`): writers of
  every host queue on it the same way, and readers never wait.
  Writes from the engine's threads are also serialised by a process lock, so they queue on that
  rather than on SQLite's sleep-and-retry busy handler.
- ORM rows never leave the store: methods return the frozen records of `population.records`.
  An individual's `source` is only loaded by `get_individual`: lists never need it, and it is
  most of the archive's bytes.
- Errors a user can cause are `ArchiveError` with a one-line message.
- A run is driven by one coordinator at a time: `claim_run` records "host:pid" on the run (and
  refuses while another live process holds it), `heartbeat` refreshes it, `release_run` ends it;
  who counts as alive is `population.coordinator`'s rule.
"""

from __future__ import annotations

import calendar
import hashlib
import math
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Row, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, sessionmaker, undefer

from population import coordinator as coordinators, records
from population.errors import ArchiveError, ClaimLost, DuplicateSource, DuplicateTrial, RunBusy
from population.gitstore import GitStore, branch_ref, elite_ref, individual_ref
from population.models import (
    INDIVIDUAL_STATUSES,
    LLM_ROLES,
    RESULT_COLUMNS,
    RUN_STATUSES,
    TRIAL_STATUSES,
    Elite,
    GenerationStat,
    Individual,
    LLMCall,
    Run,
    Trial,
    utcnow,
)
from population.noise import noise_sd
from population.opening import open_archive
from population.records import freeze

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

__all__ = ["ArchiveError", "ClaimLost", "DuplicateSource", "DuplicateTrial", "RunBusy", "Store", "source_hash"]


def source_hash(source: str) -> str:
    """The identity of a variant: sha256 (hex) of its exact text."""
    return hashlib.sha256(source.encode()).hexdigest()


class Store:
    """The archive's storage. Open with `Store.open`; safe to share between a few threads."""

    def __init__(self, engine: Engine, name: str, *, readonly: bool, git: GitStore | None):
        self.engine = engine
        self.name = name  # how the archive is named in messages: the path or URL as given
        self.readonly = readonly
        self.git = git
        self._lock = threading.RLock()
        self._local = threading.local()  # .session: this thread's open transaction, if any
        self._run_names: dict[int, str] = {}  # run names never change; refs need them per trial
        self._heartbeats: dict[tuple[int, str], float] = {}  # (run, coordinator) -> monotonic time of the last one
        self.migrated: tuple[int, int] | None = None  # (from, to) schema versions, when opening migrated it
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
        A writer migrates an archive of an older schema first (`self.migrated` says so); a
        read-only open of one is refused (`population.opening`).
        The git repository defaults to the file's name with `.git` (`archive.git/`); a server
        URL has no file to sit next to, so its git store is a mirror on this host
        (`opening.mirror_dir`, or `git_dir`), synced from the database here (`sync_git`).
        """
        opened = open_archive(path_or_url, create=create, readonly=readonly, git_dir=git_dir)
        store = cls(opened.engine, opened.name, readonly=opened.readonly, git=opened.git)
        store.migrated = opened.migrated
        if store.git is not None and store.engine.url.get_backend_name() != "sqlite":
            try:  # a server's archive: this host's git store is a mirror, brought up to date now
                store.sync_git()
            except BaseException:
                store.close()
                raise
        return store

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

    # ------------------------------------------------------------------ the transaction scope

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction for every store call this thread makes inside the block; it
        commits at the end, or rolls back entirely on an exception. Nested blocks join it."""
        if getattr(self._local, "session", None) is not None:
            yield
            return
        if self.readonly:
            raise ArchiveError(f"{self.name} is open read-only")
        with self._lock, self._writer() as s, s.begin():
            try:
                self._local.session = s
                yield
            finally:
                self._local.session = None

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        """A Core connection for the plain-row reads: the open transaction's, else a fresh one."""
        current = getattr(self._local, "session", None)
        if current is not None:
            yield current.connection()
        else:
            with self.engine.connect() as conn:
                yield conn

    @contextmanager
    def _session(self, write: bool = False) -> Iterator[Session]:
        """The session of the open transaction, else a fresh one: a write transaction of its own,
        or a read-only session."""
        current = getattr(self._local, "session", None)
        if current is not None:
            yield current
        elif write:
            with self.transaction():
                yield self._local.session
        else:
            with self._reader() as s:
                yield s

    # ------------------------------------------------------------------ runs

    def create_run(
        self,
        name: str,
        config: Mapping[str, Any],
        data_manifest_hash: str | None = None,
        program_text: str | None = None,
        coordinator: str | None = None,
    ) -> records.Run:
        """A new run. Its name also names its git branch and refs, hence the restricted alphabet.
        With `coordinator` ("host:pid", see `claim_run`) the run is claimed by it from the start."""
        if not _RUN_NAME.fullmatch(name) or ".." in name or name.endswith((".", ".lock")):
            raise ArchiveError(
                f"bad run name {name!r}: use letters, digits, '.', '_' and '-' (at most 100)"
            )
        with self._session(write=True) as s:
            if s.scalar(select(Run.id).where(Run.name == name)) is not None:
                raise ArchiveError(f"run '{name}' already exists in {self.name} (pick another name, or resume it)")
            now = utcnow()
            claim = {"coordinator": coordinator, "claimed_at": now, "heartbeat_at": now} if coordinator else {}
            run = _add(s, Run(
                name=name, config=dict(config), data_manifest_hash=data_manifest_hash,
                program_text=program_text, **claim,
            ))
            if self.git is not None:  # plain `git log` in the repository follows the newest run
                self.git.set_head(branch_ref(name))
            return freeze(run)

    def get_run(self, name_or_id: str | int) -> records.Run:
        """A run by name, or by id (an int, or a string of digits no run is named)."""
        with self._session() as s:
            run = None
            if isinstance(name_or_id, str):
                run = s.scalar(select(Run).where(Run.name == name_or_id))
            if run is None and str(name_or_id).isdigit():
                run = s.get(Run, int(name_or_id))
            if run is not None:
                return freeze(run)
            names = s.scalars(select(Run.name).order_by(Run.id)).all()
        known = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "") if names else "none yet"
        raise ArchiveError(f"unknown run '{name_or_id}' in {self.name} (runs: {known})")

    def run_name(self, run_id: int) -> str:
        """A run's name (cached: names never change, and every commit and ref names its run)."""
        if run_id not in self._run_names:
            with self._session() as s:
                self._run_names[run_id] = _get(s, Run, run_id).name
        return self._run_names[run_id]

    def latest_run(self) -> records.Run | None:
        with self._session() as s:
            run = s.scalar(select(Run).order_by(Run.id.desc()).limit(1))
            return freeze(run) if run is not None else None

    def list_runs(self) -> list[records.Run]:
        with self._session() as s:
            return [freeze(r) for r in s.scalars(select(Run).order_by(Run.id))]

    def update_run(self, run_id: int, **fields: Any) -> records.Run:
        """Change a run's status, config, noise_sd, program_text or data_manifest_hash."""
        unknown = set(fields) - _RUN_FIELDS
        if unknown:
            raise TypeError(f"update_run cannot set {sorted(unknown)}")
        if "status" in fields and fields["status"] not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {RUN_STATUSES}, not {fields['status']!r}")
        with self._session(write=True) as s:
            run = _get(s, Run, run_id)
            for key, value in fields.items():
                setattr(run, key, dict(value) if key == "config" else value)
            s.flush()
            return freeze(run)

    # ------------------------------------------------------------------ the coordinator's claim

    def claim_run(self, run_id: int, coordinator: str | None = None, *,
                  stale_after: float = coordinators.STALE_AFTER_S) -> str | None:
        """Make `coordinator` ("host:pid"; this process by default) the run's driver, in one write
        transaction: the holder is read and replaced under the write lock, so of two processes
        claiming at once one gets `RunBusy`. Raises `RunBusy`, writing nothing, while another
        live coordinator holds the run (`population.coordinator.is_alive`). Returns the stale
        holder this claim took over from, or None when the run was free (or already ours)."""
        me = coordinator or coordinators.this_process()
        with self._session(write=True) as s:
            run = _get(s, Run, run_id)
            now = utcnow()
            previous = run.coordinator if run.coordinator != me else None
            if previous and coordinators.is_alive(previous, run.claimed_at, run.heartbeat_at, now, stale_after):
                holder = coordinators.describe(previous, run.claimed_at, run.heartbeat_at, now)
                raise RunBusy(f"run '{run.name}' is being driven by {holder}; stop it first or wait", previous)
            s.execute(update(Run).where(Run.id == run_id).values(
                coordinator=me, claimed_at=now, heartbeat_at=now, updated_at=Run.updated_at))
        self._heartbeats[(run_id, me)] = time.monotonic()
        return previous

    def heartbeat(self, run_id: int, coordinator: str | None = None, *,
                  every: float = coordinators.HEARTBEAT_EVERY_S, claim: bool = True) -> bool:
        """Refresh the heartbeat of `coordinator`'s (this process by default) running trials and,
        with `claim`, of its claim on the run, in one transaction, and only if the last one from
        this store is `every` seconds old or more, so a loop may call it on every pass. Returns
        whether it wrote. Raises `ClaimLost` when the run is no longer claimed by `coordinator`:
        another coordinator took it over, and this one must stop. A coordinator that joined a run
        (`evo run --join`) holds no claim: `claim=False`."""
        me = coordinator or coordinators.this_process()
        now = time.monotonic()
        if now - self._heartbeats.get((run_id, me), -math.inf) < every:
            return False
        with self._session(write=True) as s:
            beat = utcnow()
            s.execute(update(Trial).where(Trial.run_id == run_id, Trial.coordinator == me,
                                          Trial.status == "running").values(heartbeat_at=beat))
            held = not claim or s.execute(update(Run).where(Run.id == run_id, Run.coordinator == me).values(
                heartbeat_at=beat, updated_at=Run.updated_at)).rowcount
            if not held:
                run = _get(s, Run, run_id)
                now_utc = utcnow()
                holder = (coordinators.describe(run.coordinator, run.claimed_at, run.heartbeat_at, now_utc)
                          if run.coordinator else "nobody")
                raise ClaimLost(f"run '{run.name}' is no longer driven by this process ({me}) but by {holder}; "
                                "stopping here")
        self._heartbeats[(run_id, me)] = now
        return True

    def release_run(self, run_id: int, coordinator: str | None = None) -> bool:
        """End `coordinator`'s claim (this process by default) when it stops driving the run:
        finished, stopped or failed. A claim another coordinator holds is left alone. Returns
        whether there was one to release."""
        me = coordinator or coordinators.this_process()
        self._heartbeats.pop((run_id, me), None)
        with self._session(write=True) as s:
            return bool(s.execute(update(Run).where(Run.id == run_id, Run.coordinator == me).values(
                coordinator=None, claimed_at=None, heartbeat_at=None, updated_at=Run.updated_at)).rowcount)

    # ------------------------------------------------------------------ individuals

    def add_individual(
        self,
        run_id: int,
        source: str,
        parents: list[int],
        operator: str,
        hypothesis: str,
        generation: int = 0,
    ) -> records.Individual:
        """A new pending individual. Raises `DuplicateSource` if this run already holds `source`
        (a different run may hold it: a new run re-trains yesterday's winners)."""
        digest = source_hash(source)
        with self._session(write=True) as s:
            existing = s.scalar(
                select(Individual).where(Individual.run_id == run_id, Individual.source_hash == digest)
            )
            if existing is not None:
                raise DuplicateSource(freeze(existing))
            return freeze(_add(s, Individual(
                run_id=run_id, source=source, source_hash=digest, operator=operator,
                hypothesis=hypothesis, generation=generation, status="pending",
                **_parent_columns(parents),
            )))

    def add_imported(self, run_id: int, source: str, parents: list[int], operator: str, hypothesis: str,
                     generation: int = 0) -> records.Individual:
        """An individual brought in from another tool's record (`evo import`), status "imported":
        never trained here, so it has no trial, no measured score and no cell; what the other tool
        recorded is kept with its run (run.config["imported"]) and shown, never compared. A source
        already in the run is returned as it is (a tool may log one file twice)."""
        digest = source_hash(source)
        with self._session(write=True) as s:
            existing = s.scalar(select(Individual).where(Individual.run_id == run_id, Individual.source_hash == digest))
            if existing is not None:
                return freeze(existing)
            return freeze(_add(s, Individual(
                run_id=run_id, source=source, source_hash=digest, operator=operator, hypothesis=hypothesis,
                generation=generation, status="imported", **_parent_columns(parents),
            )))

    def add_rejected(
        self,
        run_id: int,
        parents: list[int],
        operator: str,
        hypothesis: str,
        reason: str,
        generation: int = 0,
        source: str | None = None,
    ) -> records.Individual:
        """Record a proposal that will never train, so prompts and the browser see dead ends.
        It gets no source hash: a rejected text must not block a later valid identical one."""
        with self._session(write=True) as s:
            return freeze(_add(s, Individual(
                run_id=run_id, source=source, source_hash=None, operator=operator,
                hypothesis=hypothesis, generation=generation, status="rejected",
                rejected_reason=reason, **_parent_columns(parents),
            )))

    def get_individual(self, ref: int | str, run_id: int | None = None, *, source: bool = True) -> records.Individual:
        """An individual, source included unless `source=False`, by id or by a prefix (at least
        4 hex characters) of its source hash or git commit, like git's short shas. Digits are
        tried as an id first."""
        text = str(ref).strip().lower()
        options = [undefer(Individual.source)] if source else []
        with self._session() as s:
            if isinstance(ref, int) or text.isdigit():
                ind = s.get(Individual, int(text), options=options)
                if ind is not None and (run_id is None or ind.run_id == run_id):
                    if source and "source" not in ind.__dict__:  # met earlier in this transaction
                        s.refresh(ind, ["source"])
                    return freeze(ind)
                if isinstance(ref, int) or len(text) < 4:
                    raise ArchiveError(f"no individual {ref} in {self.name}" + _in_run(run_id))
            if len(text) < 4 or not _HEX.fullmatch(text):
                raise ArchiveError(f"'{ref}' is neither an individual id nor a hex prefix of 4+ characters")
            query = select(Individual).options(*options).where(
                or_(_prefix(Individual.source_hash, text), _prefix(Individual.commit, text))
            )
            if run_id is not None:
                query = query.where(Individual.run_id == run_id)
            found = [freeze(i) for i in s.scalars(query.order_by(Individual.id).limit(6))]
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
    ) -> list[records.Individual]:
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
        with self._session() as s:
            return [freeze(i) for i in s.scalars(query.order_by(*orders[order]).limit(limit))]

    def children_of(self, individual_id: int) -> list[records.Individual]:
        with self._session() as s:
            return [freeze(i) for i in s.scalars(
                select(Individual)
                .where(or_(Individual.parent1_id == individual_id, Individual.parent2_id == individual_id))
                .order_by(Individual.id)
            )]

    def set_cell(self, individual_id: int, cell: str | None) -> None:
        """Record which grid cell an individual's measurements place it in (None: no cell)."""
        with self._session(write=True) as s:
            _get(s, Individual, individual_id).cell = cell

    def recent_failures(self, run_id: int, limit: int = 10) -> list[dict[str, Any]]:
        """The run's latest failed trials and rejected proposals, newest first, as dicts with
        individual_id, hypothesis, operator, outcome ("rejected" for proposals), stderr_tail,
        message and at: what a mutation prompt shows so the LLM stops repeating them."""
        with self._session() as s:
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

    def start_trial(self, individual_id: int, seed: int, device: str = "", worker: str = "",
                    coordinator: str | None = None) -> records.Trial:
        """Claim (individual, seed) for training, by `coordinator` (this process by default).
        Raises `DuplicateTrial` if that pair exists: the same source is never trained twice under
        the same seed, whichever coordinator asks."""
        with self._session(write=True) as s:
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
                worker=worker, status="running", coordinator=coordinator or coordinators.this_process(),
                heartbeat_at=utcnow(),
            )
            try:
                return freeze(_add(s, trial))
            except IntegrityError:
                raise DuplicateTrial(
                    f"individual {individual_id} already has a trial with seed {seed}"
                ) from None

    def finish_trial(self, trial_id: int, result: Mapping[str, Any]) -> records.Trial:
        """Record a trial's result (a `TrialResult.to_dict()`), refresh its individual's cached
        aggregates and, on the individual's first finished trial, commit it to git.

        The commit waits for a result so its message can carry one (`Val-bpb`, `Outcome`,
        `Seed` trailers from that first trial); the archive, not git, holds later trials.
        Keys the Trial table has no column for are kept in `Trial.extra`.
        """
        if "outcome" not in result:
            raise ValueError("a trial result needs an 'outcome'")
        # no autoflush: the trial and the individual are written once, at commit
        with self._session(write=True) as s, s.no_autoflush:
            trial = _get(s, Trial, trial_id)
            if trial.status == "done":
                raise ArchiveError(f"trial {trial_id} is already finished")
            extra = {}
            for key, value in result.items():
                if key in RESULT_COLUMNS or (key in ("device", "worker") and value):
                    setattr(trial, key, value)
                elif key not in ("seed", "device", "worker", "ok"):
                    extra[key] = value
            trial.extra = extra or None
            trial.status = "done"
            trial.finished_at = utcnow()
            ind = s.get(Individual, trial.individual_id, options=[undefer(Individual.source)])
            if "source" not in ind.__dict__:  # met earlier in this transaction
                s.refresh(ind, ["source"])
            _refresh_aggregates(s, ind)
            if ind.commit is None and self.git is not None:
                ind.commit = self._commit(s, ind, trial)
            s.flush()
            return freeze(trial)

    def _commit(self, s: Session, ind: Individual, trial: Trial) -> str:
        commits = dict(s.execute(
            select(Individual.id, Individual.commit).where(Individual.id.in_(ind.parents))
        ).all())
        sha = self._write_commit(ind, trial, commits)
        self.git.set_ref(individual_ref(self.run_name(ind.run_id), ind.id), sha)
        return sha

    def _write_commit(self, ind: Individual, trial: Trial, commits: Mapping[int, str | None]) -> str:
        """An individual's commit, made from what the database holds and nothing else: its source
        and hypothesis, the commits of its parents (`commits`: id -> sha), and its first finished
        trial (the result trailers and the time stamp: `finished_at`). So `sync_git` on any host
        writes the same commit, with the same sha, as the writer did."""
        trailers: dict[str, object] = {}
        if trial.val_bpb is not None:
            trailers["Val-bpb"] = f"{trial.val_bpb:.4f}"
        trailers.update({
            "Outcome": trial.outcome, "Seed": trial.seed, "Operator": ind.operator or "seed",
            "Evo-run": self.run_name(ind.run_id), "Evo-individual": ind.id,
        })
        return self.git.commit(
            ind.source or "",
            [commits[p] for p in ind.parents if commits.get(p)],
            ind.hypothesis or f"individual {ind.id}",
            trailers,
            at=calendar.timegm(trial.finished_at.timetuple()),  # naive UTC, as every stored time
        )

    def sync_git(self) -> int:
        """Bring the git store up to date with the database: for every individual with a recorded
        commit, the commit and its `refs/individuals/...` ref; the elite refs of every cell (and
        none for a cell no longer held); each run's branch on its best elite; HEAD on the newest
        run's branch. This is how each host gets its own mirror of a server's archive (`Store.open`
        calls it there), and how a lost `archive.git` is rebuilt. A commit the store lacks is made
        from the database and must come out with the sha recorded, or this raises `ArchiveError`
        naming the individual (one already there, e.g. written by an evo that stamped commits
        with the wall clock, only gets its ref). Returns how many commits were written; an
        up-to-date store costs one query and one `git for-each-ref`."""
        if self.git is None:
            raise ArchiveError(f"{self.name} has no git store to sync")
        have = self.git.refs("refs/individuals/", "refs/elites/", "refs/heads/")
        written = 0
        with self._reader() as s:
            runs = dict(s.execute(select(Run.id, Run.name)).all())
            rows = s.execute(select(Individual.id, Individual.run_id, Individual.commit)
                             .where(Individual.commit.is_not(None)).order_by(Individual.id)).all()
            commits = {r.id: r.commit for r in rows}
            stale = [r for r in rows if have.get(individual_ref(runs[r.run_id], r.id)) != r.commit]
            absent = self.git.missing([r.commit for r in stale])
            for row in stale:
                if row.commit in absent:  # a commit this host has never seen: made from the database
                    self._rebuild_commit(s, row.id, commits)
                    written += 1
                self.git.set_ref(individual_ref(runs[row.run_id], row.id), row.commit)
            elites = s.execute(select(Elite.run_id, Elite.cell, Individual.commit)
                               .join(Individual, Elite.individual_id == Individual.id)).all()
        wanted = {elite_ref(runs[e.run_id], e.cell): e.commit for e in elites if e.commit}
        for run_id, name in runs.items():
            best = self.best_elite_commit(run_id)
            if best:
                wanted[branch_ref(name)] = best
        for ref, sha in wanted.items():
            if have.get(ref) != sha:
                self.git.set_ref(ref, sha)
        for ref in have:
            if ref.startswith("refs/elites/") and ref not in wanted:
                self.git.delete_ref(ref)
        if runs:
            self.git.set_head(branch_ref(runs[max(runs)]))
        return written

    def _rebuild_commit(self, s: Session, individual_id: int, commits: Mapping[int, str | None]) -> None:
        """Write an individual's commit again from the database and check it has the recorded sha.
        Its first finished trial is the earliest by `finished_at`; should clocks of several hosts
        disagree, the next ones are tried too."""
        ind = s.get(Individual, individual_id, options=[undefer(Individual.source)])
        trials = s.scalars(select(Trial).where(Trial.individual_id == ind.id, Trial.status == "done")
                           .order_by(Trial.finished_at, Trial.id)).all()
        first = None
        for trial in trials:
            sha = self._write_commit(ind, trial, commits)
            if sha == ind.commit:
                return
            first = first or sha
        got = f"makes {first[:12]}" if first else "has no finished trial to make it from"
        raise ArchiveError(f"{self.name}: individual {ind.id} of run '{self.run_name(ind.run_id)}' records "
                           f"commit {ind.commit[:12]}, but its data {got}; the git store was not updated "
                           "past it (was the archive changed by hand?)")

    def trials(
        self,
        run_id: int | None = None,
        *,
        individual_id: int | None = None,
        status: str | None = None,
    ) -> list[records.Trial]:
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
        with self._session() as s:
            return [freeze(t) for t in s.scalars(query.order_by(Trial.id))]

    def running_trials(self, run_id: int) -> list[records.Trial]:
        """Trials started but never finished: on resume, these were cut off mid-way."""
        return self.trials(run_id, status="running")

    def orphaned_trials(self, run_id: int, *, stale_after: float = coordinators.STALE_AFTER_S) -> list[records.Trial]:
        """Running trials of the run whose coordinator is gone (`population.coordinator.is_alive`
        on the trial's own start and heartbeat), or that name none (written before schema 3):
        cut off, to be deleted and trained again by whichever live coordinator finds them."""
        now = utcnow()
        return [t for t in self.running_trials(run_id)
                if not t.coordinator or not coordinators.is_alive(t.coordinator, t.started_at, t.heartbeat_at, now,
                                                                  stale_after)]

    def delete_trial(self, trial_id: int) -> None:
        """Drop a cut-off trial so resume can run its (individual, seed) again. Finished trials
        are the record and cannot be deleted."""
        with self._session(write=True) as s:
            trial = _get(s, Trial, trial_id)
            if trial.status == "done":
                raise ArchiveError(f"trial {trial_id} is finished; finished trials are never deleted")
            s.delete(trial)

    def used_seeds(self, individual_id: int) -> set[int]:
        """Seeds already claimed for an individual, running trials included."""
        with self._session() as s:
            return set(s.scalars(select(Trial.seed).where(Trial.individual_id == individual_id)))

    # ------------------------------------------------------------------ elites (rows only: the rule is population.elites)

    def elites(self, run_id: int) -> list[tuple[records.Elite, records.Individual]]:
        """The run's elites with their individuals, best first."""
        with self._session() as s:
            rows = s.execute(
                select(Elite, Individual)
                .join(Individual, Elite.individual_id == Individual.id)
                .where(Elite.run_id == run_id)
                .order_by(Individual.val_bpb_mean, Individual.id)
            ).all()
            return [(freeze(e), freeze(i)) for e, i in rows]

    def elite_rows(self, run_id: int, *, cell: str | None, individual_id: int) -> list[records.Elite]:
        """The elite rows of a run that sit in `cell` or are held by `individual_id` (at most
        two): what placing one individual reads."""
        with self._session() as s:
            return [freeze(e) for e in s.scalars(select(Elite).where(
                Elite.run_id == run_id, or_(Elite.individual_id == individual_id, Elite.cell == cell)
            ))]

    def set_elite(self, run_id: int, cell: str, individual_id: int) -> None:
        """Make `individual_id` the elite of `cell` (creating the cell's row if it has none)."""
        with self._session(write=True) as s:
            row = s.scalar(select(Elite).where(Elite.run_id == run_id, Elite.cell == cell))
            if row is None:
                _add(s, Elite(run_id=run_id, cell=cell, individual_id=individual_id))
            else:
                row.individual_id = individual_id

    def delete_elite(self, run_id: int, cell: str) -> None:
        with self._session(write=True) as s:
            row = s.scalar(select(Elite).where(Elite.run_id == run_id, Elite.cell == cell))
            if row is not None:
                s.delete(row)

    def best_in_cell(self, run_id: int, cell: str, *, excluding: int | None = None) -> records.Individual | None:
        """The individual with ok trials placed in `cell` with the lowest mean val_bpb."""
        query = select(Individual).where(Individual.run_id == run_id, Individual.cell == cell, Individual.n_ok > 0)
        if excluding is not None:
            query = query.where(Individual.id != excluding)
        with self._session() as s:
            ind = s.scalar(query.order_by(Individual.val_bpb_mean, Individual.id).limit(1))
            return freeze(ind) if ind is not None else None

    def best(self, run_id: int, k: int = 1) -> list[records.Individual]:
        """The k individuals with the lowest mean val_bpb over their ok trials."""
        with self._session() as s:
            return [freeze(i) for i in s.scalars(
                select(Individual)
                .where(Individual.run_id == run_id, Individual.n_ok > 0)
                .order_by(Individual.val_bpb_mean, Individual.id)
                .limit(k)
            )]

    def best_elite_commit(self, run_id: int) -> str | None:
        """The commit of the run's best elite (where the run's branch points)."""
        with self._session() as s:
            return s.scalar(
                select(Individual.commit)
                .join(Elite, Elite.individual_id == Individual.id)
                .where(Elite.run_id == run_id)
                .order_by(Individual.val_bpb_mean, Individual.id)
                .limit(1)
            )

    # ------------------------------------------------------------------ run records

    def record_generation(self, run_id: int, generation: int, stats: Mapping[str, Any]) -> records.GenerationStat:
        """Store (or overwrite, on a resumed generation) one generation's statistics: keys are
        trials, failures, best_val_bpb, best_individual_id, coverage, qd_score and record
        (the full record `evo.generations` computed)."""
        unknown = set(stats) - _GENERATION_FIELDS
        if unknown:
            raise TypeError(f"record_generation got unknown stats {sorted(unknown)}")
        with self._session(write=True) as s:
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
            return freeze(row)

    def generations(self, run_id: int) -> list[records.GenerationStat]:
        with self._session() as s:
            return [freeze(g) for g in s.scalars(
                select(GenerationStat).where(GenerationStat.run_id == run_id).order_by(GenerationStat.generation)
            )]

    def record_llm_call(self, run_id: int, individual_id: int | None, call: Mapping[str, Any]) -> records.LLMCall:
        """Record one LLM request; `call` holds LLMCall columns (model, role, tokens, cost...)."""
        unknown = set(call) - _LLM_FIELDS
        if unknown:
            raise TypeError(f"record_llm_call got unknown fields {sorted(unknown)}")
        if call.get("role", "mutate") not in LLM_ROLES:
            raise ValueError(f"LLM call role must be one of {LLM_ROLES}, not {call['role']!r}")
        with self._session(write=True) as s:
            return freeze(_add(s, LLMCall(run_id=run_id, individual_id=individual_id, **call)))

    def llm_spend(self, run_id: int) -> dict[str, Any]:
        """Totals over a run's LLM calls: calls, cost_usd and the four token counts."""
        sums = {
            name: func.coalesce(func.sum(getattr(LLMCall, name)), 0)
            for name in ("cost_usd", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
        }
        with self._session() as s:
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
        with self._session() as s:
            by_status = dict(s.execute(
                select(Individual.status, func.count()).where(Individual.run_id == run_id).group_by(Individual.status)
            ).all())
            # grouped by the outcome itself: a server binds the two `outcome = 'ok'` of a grouped
            # comparison as two parameters and refuses to see them as one expression
            trials = s.execute(
                select(Trial.status, Trial.outcome, func.count())
                .where(Trial.run_id == run_id)
                .group_by(Trial.status, Trial.outcome)
            ).all()
        sizes = {status: by_status.get(status, 0) for status in INDIVIDUAL_STATUSES}
        sizes["trials"] = sum(n for status, _, n in trials if status == "done")
        sizes["failed"] = sum(n for status, outcome, n in trials if status == "done" and outcome != "ok")
        sizes["running"] = sum(n for status, _, n in trials if status == "running")
        return sizes

    def individual_rows(self, run_id: int, columns: Sequence[str]) -> list[Row]:
        """A run's individuals as plain rows of the named columns, oldest first.

        For whole-run views (progress chart, results.tsv, lineage, the page's trial table):
        building no ORM objects makes this several times faster than `individuals()` at
        10,000 individuals. `source` cannot be asked for; `get_individual` reads it.
        """
        with self._connection() as conn:  # Core, not the ORM session: no per-row ORM loading
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
        with self._connection() as conn:
            return conn.execute(select(*_columns(Individual, columns)).where(wanted).order_by(Individual.id)).all()

    def trial_rows(self, run_id: int, columns: Sequence[str]) -> list[Row]:
        """A run's finished trials as plain rows of the named columns, in the order they
        finished (the order of the progress chart; with several workers it is not id order)."""
        with self._connection() as conn:
            return conn.execute(
                select(*_columns(Trial, columns))
                .where(Trial.run_id == run_id, Trial.status == "done")
                .order_by(Trial.finished_at, Trial.id)
            ).all()


# ---------------------------------------------------------------------- helpers


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
    ok = [t for t in done if t.outcome == "ok" and t.val_bpb is not None]
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
