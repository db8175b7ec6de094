"""The proposer: parents chosen from the archive, the operator called, the child recorded.

`propose` runs in a proposal thread: it selects parents from the elites (DEAP tournaments plus
uniform picks, `evo.selection`; a crossover with probability `crossover_rate`), assembles what
the operator is shown (`ParentInfo`, `ArchiveContext`: plain data read from the store, the
children that came back as duplicates among it, with their edits) and calls the operator. A pair
whose free merge is already in the archive is not merged again. `record` runs on the
coordinator: a valid, new source becomes a pending individual, anything else a rejected one with
its reason, and every LLM call is kept. `Pace` decides how fast a paid operator's proposals go
out and when they stop: the engine asks it.
"""

from __future__ import annotations

import difflib
import math
import random
import re
import threading
import time
from dataclasses import dataclass

from evo.bootstrap import seed_individuals
from evo.config import RunConfig
from evo.defaults import PROPOSAL_BACKOFF_MAX_S, PROPOSAL_BACKOFF_S
from evo.operators.base import FREE_MERGE, ArchiveContext, Operator, ParentInfo, Proposal
from evo.selection import select_pair, select_parents
from population.elites import EliteArchive
from population.errors import ArchiveError
from population.mapelites import Grid
from population.records import Individual, Run
from population.store import DuplicateSource, Store, source_hash

# What an operator is shown of each of a parent's finished trials (the LLM prompt's trial lines).
PROMPT_TRIAL_FIELDS = ("seed", "outcome", "val_bpb", "training_seconds", "steps", "tokens", "params",
                       "peak_memory_mb", "mfu", "message", "stderr_tail")
CONTEXT_ELITES = 8  # elites shown in a prompt, best first
CONTEXT_FAILURES = 8  # recent failures shown in a prompt, newest first (a repeated duplicate once)
FAILURES_READ = 32  # recent failures read to find those 8: a model that repeats itself repeats its duplicates
EDIT_LINES = 12  # changed lines of a duplicate's edit shown in a prompt
PAIR_TRIES = 4  # pair selections before a crossover whose pairs all merge to known children becomes a mutation
DUPLICATE_OF = re.compile(r"^duplicate of #(\d+)")
# Proposals that got no answer (the API failed, the budget refused): the circuit breaker's and the
# budget's business; they say nothing about a model repeating itself.
UNANSWERED = ("api_error", "timeout", "rate_limited", "overloaded", "budget")


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
        self._merged_pairs: set[frozenset[int]] = set()  # pairs whose free merge is a known child
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ in a proposal thread

    def propose(self, rng: random.Random) -> tuple[Proposal, list[int]]:
        """Select parents, read their context, call the operator. A crossover of a pair whose
        clean merge is already in the archive would only repeat it: another pair is picked, or
        the first parent is mutated instead."""
        pool = self._elite_pool()
        pair = self._pair(pool, rng) if rng.random() < self.cfg.crossover_rate else None
        if pair:
            a, b = (self.parent_info(i) for i in pair)
            ctx = self.context(a.id)
            proposal = self.operator.crossover(a, b, self._ancestor_source(a, b), ctx, rng)
            if not (proposal.operator == FREE_MERGE and proposal.source and self._known(proposal.source)):
                return proposal, list(pair)
            self._remember_merge(pair)  # the merge made no call: nothing to record
            return self.operator.mutate(a, ctx, rng), [a.id]
        (pid,) = select_parents(pool, 1, rng, self.cfg.tournament_size, self.cfg.uniform_share)
        return self.operator.mutate(self.parent_info(pid), self.context(pid), rng), [pid]

    def _pair(self, pool: list[tuple[int, str | None, float]], rng: random.Random) -> tuple[int, int] | None:
        for _ in range(PAIR_TRIES):
            pair = select_pair(pool, rng, self.cfg.tournament_size)
            if pair is None or frozenset(pair) not in self._merged_pairs:
                return pair
        return None

    def _known(self, source: str) -> bool:
        try:
            self.store.get_individual(source_hash(source), self.run.id, source=False)
        except ArchiveError:
            return False
        return True

    def _remember_merge(self, parents) -> None:
        with self._lock:
            self._merged_pairs.add(frozenset(parents))

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
        if git.missing([a.commit, b.commit]):  # written by another coordinator into its own mirror
            self.store.sync_git()
        base = git.merge_base(a.commit, b.commit)
        return git.source_at(base) if base else None

    def context(self, parent_id: int) -> ArchiveContext:
        elites = [self.parent_info(i.id) for _, i in self.store.elites(self.run.id)[:CONTEXT_ELITES]]
        return ArchiveContext(
            program=self.run.program_text or "",
            elites=elites,
            failures=self._failures(),
            tried_from_parent=[c.hypothesis for c in self.store.children_of(parent_id) if c.hypothesis],
            noise_sd=self.archive.noise_sd if self.archive is not None else None,
        )

    def _failures(self) -> list[dict]:
        """The recent failures a prompt shows, newest first. A rejected duplicate gains
        `duplicate_of` (the individual it repeats), `parent_id`, `edit` (its changed lines against
        that parent) and `times` (how often it came back lately), and is listed once."""
        failures: list[dict] = []
        duplicates: dict[int, dict] = {}
        sources: dict[int, str | None] = {}
        for f in self.store.recent_failures(self.run.id, FAILURES_READ):
            match = DUPLICATE_OF.match(f.get("message") or "") if f.get("outcome") == "rejected" else None
            if match is None:
                if len(failures) < CONTEXT_FAILURES:
                    failures.append(f)
                continue
            twin = int(match.group(1))
            if twin in duplicates:
                duplicates[twin]["times"] += 1
                continue
            if len(failures) >= CONTEXT_FAILURES:
                continue
            parents = self.store.get_individual(f["individual_id"], source=False).parents
            parent = parents[0] if parents else None
            f = {**f, "duplicate_of": twin, "parent_id": parent, "times": 1,
                 "edit": self._edit(self._source(parent, sources), self._source(twin, sources))}
            duplicates[twin] = f
            failures.append(f)
        return failures

    def _source(self, individual_id: int | None, cache: dict[int, str | None]) -> str | None:
        if individual_id is None:
            return None
        if individual_id not in cache:
            try:
                cache[individual_id] = self.store.get_individual(individual_id).source
            except ArchiveError:
                cache[individual_id] = None
        return cache[individual_id]

    @staticmethod
    def _edit(old: str | None, new: str | None) -> str:
        """The changed lines from `old` to `new` (`-`/`+`), at most EDIT_LINES of them."""
        if old is None or new is None:
            return ""
        lines = [ln for ln in difflib.unified_diff(old.splitlines(), new.splitlines(), n=0, lineterm="")
                 if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
        if len(lines) > EDIT_LINES:
            lines = lines[:EDIT_LINES] + [f"... ({len(lines) - EDIT_LINES} more changed lines)"]
        return "\n".join(lines)

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
                if proposal.operator == FREE_MERGE:  # two threads merged the same pair at once
                    self._remember_merge(proposal.parents or parents)
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


class Pace:
    """How fast a paid operator's proposals go out, and when they stop for good.

    A proposal the model answered without a new child (a duplicate of an individual the archive
    has; an edit that does not apply or fails validation, after its repair round) lengthens a
    streak; a new child ends it. While a streak lasts, fewer proposals are in flight (half as
    many for each in the streak, at least one) and the next waits `PROPOSAL_BACKOFF_S *
    2**(streak-1)` (at most `PROPOSAL_BACKOFF_MAX_S`) after the last one that failed.

    Proposing stops (`stopped` says why) when the model plainly repeats itself: this session has
    made at least 4 * per_child proposals and more than `per_child` per new child (more than
    per_child * max(children, 1)), and its last 2 * per_child all made none, at least per_child
    of them duplicates.
    Past its average a child thus costs at most 2 * per_child proposals; a model that errs
    without repeating itself is left to the cap of 10 * per_child proposals in a row without a
    child. Proposals that got no answer (API failures, the budget's refusals) are the circuit
    breaker's and the budget's: they do not count. `per_child` None (an operator that costs
    nothing): no pacing. Counts are per session: a resumed run starts a new allowance.
    """

    # In units of per_child:
    GRACE = 4  # proposals before the first stop (a few early failures are not a trend)
    STREAK = 2  # the streak that stops a model past its average...
    DUPLICATES = 1  # ...when this many of it are duplicates
    MAX_STREAK = 10  # the streak that stops it whatever came before

    def __init__(self, per_child: float | None, clock=time.monotonic):
        self.per_child = per_child
        self.clock = clock
        self.proposals = 0  # answered proposals this session
        self.children = 0  # new children among them
        self.streak = 0  # answered proposals in a row that made no child
        self.duplicates = 0  # of the streak: duplicates (the rest were rejected)
        self.stopped: str | None = None
        self._failed_at = 0.0

    def note(self, proposal: Proposal, rejected: str | None) -> None:
        """What became of a finished proposal (`rejected`: the reason it made no child)."""
        if self.per_child is None:
            return
        if rejected is not None and proposal.llm_calls and proposal.llm_calls[-1].get("outcome") in UNANSWERED:
            return
        self.proposals += 1
        if rejected is None:
            self.children += 1
            self.streak = self.duplicates = 0
            return
        self.streak += 1
        self.duplicates += DUPLICATE_OF.match(rejected) is not None
        self._failed_at = self.clock()
        if self.stopped is None and (self._repeating() or self.streak >= math.ceil(self.MAX_STREAK * self.per_child)):
            what = "keeps repeating itself" if self.duplicates else "makes no new children"
            self.stopped = (f"the LLM {what}: its last {self.streak} proposals made no new child ({self.duplicates} "
                            f"duplicates, {self.streak - self.duplicates} rejected; {self.proposals} proposals for "
                            f"{self.children} children, max_proposals_per_child {self.per_child:g})")

    def _repeating(self) -> bool:
        n = self.per_child
        return (self.proposals >= self.GRACE * n and self.proposals > n * max(self.children, 1)
                and self.streak >= math.ceil(self.STREAK * n) and self.duplicates >= math.ceil(self.DUPLICATES * n))

    def in_flight(self, threads: int) -> int:
        """How many proposals may be in flight now."""
        return max(1, threads >> min(self.streak, 30))

    def wait_s(self) -> float:
        """Seconds before the next proposal may go out (0: now)."""
        if self.per_child is None or self.streak == 0:
            return 0.0
        delay = min(PROPOSAL_BACKOFF_MAX_S, PROPOSAL_BACKOFF_S * 2 ** min(self.streak - 1, 30))
        return max(0.0, self._failed_at + delay - self.clock())
