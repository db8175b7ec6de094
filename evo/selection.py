"""Parent selection over the elites, with DEAP.

Tournament selection pushes towards low val_bpb; a share of uniform picks keeps every cell in
play, which is the point of MAP-Elites: a stepping stone in a poor cell today may lead to the
best cell tomorrow (pure exploitation is the greedy chain evo exists to replace).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from deap import base, tools


class _MinFitness(base.Fitness):
    weights = (-1.0,)  # lower val_bpb is better


@dataclass
class _Candidate:
    id: int
    cell: str | None
    fitness: _MinFitness


def _candidates(elites: list[tuple[int, str | None, float]]) -> list[_Candidate]:
    out = []
    for ident, cell, score in elites:
        f = _MinFitness()
        f.values = (score,)
        out.append(_Candidate(ident, cell, f))
    return out


def select_parents(
    elites: list[tuple[int, str | None, float]],
    k: int,
    rng: random.Random,
    tournament_size: int = 3,
    uniform_share: float = 0.3,
) -> list[int]:
    """k parent ids from (id, cell, mean val_bpb) elites: tournaments, or uniform picks."""
    if not elites:
        return []
    pool = _candidates(elites)
    state = random.getstate()
    random.seed(rng.random())  # DEAP draws from the global `random`; keep runs reproducible
    try:
        out = []
        for _ in range(k):
            if rng.random() < uniform_share:
                out.append(tools.selRandom(pool, 1)[0].id)
            else:
                out.append(tools.selTournament(pool, 1, tournsize=min(tournament_size, len(pool)))[0].id)
        return out
    finally:
        random.setstate(state)


def select_pair(
    elites: list[tuple[int, str | None, float]], rng: random.Random, tournament_size: int = 3
) -> tuple[int, int] | None:
    """Two parents from different cells (crossover mixes kinds), or None if there is one cell."""
    cells = {cell for _, cell, _ in elites}
    if len(cells) < 2:
        return None
    first = select_parents(elites, 1, rng, tournament_size, uniform_share=0.0)[0]
    first_cell = next(c for i, c, _ in elites if i == first)
    others = [e for e in elites if e[1] != first_cell]
    second = select_parents(others, 1, rng, tournament_size, uniform_share=0.5)[0]
    return first, second
