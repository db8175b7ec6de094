"""The interface every variation operator implements.

Operators are pure producers of children: they read parents and archive context (plain data the
engine assembles from the store) and return a `Proposal`. They never write the archive and never
run trials, so the offline and LLM operators are interchangeable and testable on their own.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol

# The operator name of a crossover made without a model (a clean three-way merge): the same two
# parents always merge to the same child, so a pair whose merge is already known is not merged again.
FREE_MERGE = "merge"


@dataclass
class ParentInfo:
    """An individual as an operator sees it."""

    id: int
    source: str
    hypothesis: str = ""
    operator: str = ""
    val_bpb: float | None = None  # mean over its ok trials; None when it has none
    n_ok: int = 0  # the ok trials that mean rests on
    cell: tuple[int, ...] | None = None
    commit: str | None = None
    trials: list[dict] = field(default_factory=list)  # finished trials: evo.proposer.PROMPT_TRIAL_FIELDS


@dataclass
class ArchiveContext:
    """What the archive has learned, chosen by the proposer for a prompt."""

    program: str = ""  # the research program text (program.md)
    elites: list[ParentInfo] = field(default_factory=list)  # best first
    failures: list[dict] = field(default_factory=list)  # {hypothesis, outcome, stderr_tail}
    tried_from_parent: list[str] = field(default_factory=list)  # hypotheses of the parent's children
    noise_sd: float | None = None  # measured seed-to-seed sd of val_bpb


@dataclass
class Proposal:
    """A child, or the reason there is none.

    `source` is None exactly when `rejected` is set; the engine records rejected proposals as
    individuals-that-never-trained so the archive remembers dead ends.
    """

    operator: str
    parents: list[int]
    hypothesis: str
    source: str | None = None
    rejected: str | None = None  # one-line reason (malformed answer, SEARCH not found, ...)
    llm_calls: list[dict] = field(default_factory=list)  # see population.models.LLMCall columns


class Operator(Protocol):
    """What the engine needs of an operator. The two verbs run in proposal threads, several at
    once; the three states are read by the coordinator between proposals."""

    name: str

    @property
    def exhausted(self) -> bool:
        """No more proposals because a budget is spent: the run trains what it has and ends."""

    @property
    def broken(self) -> str | None:
        """Why proposing stopped for good (the API keeps failing): the run stops with this."""

    @property
    def spent_usd(self) -> float | None:
        """What the run's calls cost so far; None for an operator that costs nothing."""

    def mutate(self, parent: ParentInfo, ctx: ArchiveContext, rng: random.Random) -> Proposal: ...

    def crossover(
        self,
        a: ParentInfo,
        b: ParentInfo,
        ancestor_source: str | None,
        ctx: ArchiveContext,
        rng: random.Random,
    ) -> Proposal: ...
