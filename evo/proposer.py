"""The proposer: parents chosen from the archive, the operator called, the child recorded.

`propose` runs in a proposal thread: it selects parents from the elites (DEAP tournaments plus
uniform picks, `evo.selection`; a crossover with probability `crossover_rate`), assembles what
the operator is shown (`ParentInfo`, `ArchiveContext`: plain data read from the store) and
calls the operator. `record` runs on the coordinator: a valid, new source becomes a pending
individual, anything else a rejected one with its reason, and every LLM call is kept.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from evo.bootstrap import seed_individuals
from evo.config import RunConfig
from evo.operators.base import ArchiveContext, Operator, ParentInfo, Proposal
from evo.selection import select_pair, select_parents
from population.elites import EliteArchive
from population.mapelites import Grid
from population.records import Individual, Run
from population.store import DuplicateSource, Store, source_hash

# What an operator is shown of each of a parent's finished trials (the LLM prompt's trial lines).
PROMPT_TRIAL_FIELDS = ("seed", "outcome", "val_bpb", "training_seconds", "steps", "tokens", "params",
                       "peak_memory_mb", "mfu", "message", "stderr_tail")
CONTEXT_ELITES = 8  # elites shown in a prompt, best first
CONTEXT_FAILURES = 8  # recent failures shown in a prompt, newest first


@dataclass(frozen=True)
class Recorded:
    """What became of a proposal: the new pending child, or the rejected individual and why."""

    individual: Individual
    rejected: str | None


class Proposer:
    def __init__(self, store: Store, run: Run, cfg: RunConfig, operator: Operator):
        self.store = store
        self.run = run
        self.cfg = cfg
        self.operator = operator
        self.archive: EliteArchive | None = None  # set once the bootstrap has built it

    # ------------------------------------------------------------------ in a proposal thread

    def propose(self, rng: random.Random) -> tuple[Proposal, list[int]]:
        """Select parents, read their context, call the operator."""
        pool = self._elite_pool()
        pair = select_pair(pool, rng, self.cfg.tournament_size) if rng.random() < self.cfg.crossover_rate else None
        if pair:
            a, b = (self.parent_info(i) for i in pair)
            return self.operator.crossover(a, b, self._ancestor_source(a, b), self.context(a.id), rng), list(pair)
        (pid,) = select_parents(pool, 1, rng, self.cfg.tournament_size, self.cfg.uniform_share)
        return self.operator.mutate(self.parent_info(pid), self.context(pid), rng), [pid]

    def _elite_pool(self) -> list[tuple[int, str | None, float]]:
        pool = [(i.id, e.cell, i.val_bpb_mean) for e, i in self.store.elites(self.run.id) if i.val_bpb_mean is not None]
        if not pool:  # bootstrap (or the moment after it, before the seeds are placed): the seeds are the parents
            seeds = seed_individuals(self.store, self.run.id)
            pool = [(i.id, None, i.val_bpb_mean if i.val_bpb_mean is not None else 0.0) for i in seeds]
        return pool

    def parent_info(self, individual_id: int) -> ParentInfo:
        ind = self.store.get_individual(individual_id)
        trials = [{k: getattr(t, k) for k in PROMPT_TRIAL_FIELDS}  # results only: a running trial has none yet
                  for t in self.store.trials(individual_id=ind.id, status="done")]
        return ParentInfo(id=ind.id, source=ind.source, hypothesis=ind.hypothesis or "", operator=ind.operator or "",
                          val_bpb=ind.val_bpb_mean, n_ok=ind.n_ok,
                          cell=Grid.parse_key(ind.cell) if ind.cell else None, commit=ind.commit, trials=trials)

    def _ancestor_source(self, a: ParentInfo, b: ParentInfo) -> str | None:
        git = self.store.git
        if git is None or not (a.commit and b.commit):
            return None
        base = git.merge_base(a.commit, b.commit)
        return git.source_at(base) if base else None

    def context(self, parent_id: int) -> ArchiveContext:
        elites = [self.parent_info(i.id) for _, i in self.store.elites(self.run.id)[:CONTEXT_ELITES]]
        return ArchiveContext(
            program=self.run.program_text or "",
            elites=elites,
            failures=self.store.recent_failures(self.run.id, CONTEXT_FAILURES),
            tried_from_parent=[c.hypothesis for c in self.store.children_of(parent_id) if c.hypothesis],
            noise_sd=self.archive.noise_sd if self.archive is not None else None,
        )

    # ------------------------------------------------------------------ on the coordinator

    def record(self, proposal: Proposal, parents: list[int], generation: int) -> Recorded:
        """Store the proposal's child (or the reason there is none) and its LLM calls."""
        recorded = None
        if proposal.source is not None and proposal.rejected is None:
            try:
                child = self.store.add_individual(self.run.id, proposal.source, proposal.parents or parents,
                                                  proposal.operator, proposal.hypothesis, generation)
                recorded = Recorded(child, None)
            except DuplicateSource:
                twin = self.store.get_individual(source_hash(proposal.source), self.run.id, source=False)
                proposal.rejected = f"duplicate of #{twin.id}"
        if recorded is None:
            reason = proposal.rejected or "no source"
            rejected = self.store.add_rejected(self.run.id, proposal.parents or parents, proposal.operator,
                                               proposal.hypothesis, reason, generation)
            recorded = Recorded(rejected, reason)
        for call in proposal.llm_calls:
            self.store.record_llm_call(self.run.id, recorded.individual.id, call)
        return recorded

    def failed(self, error: Exception) -> Proposal:
        """The proposal an operator that raised stands for: an operator bug must not end an
        overnight run, so it is recorded as a rejection naming the error."""
        return Proposal(operator=self.cfg.operator, parents=[], hypothesis="",
                        rejected=f"operator error: {type(error).__name__}: {error}")
