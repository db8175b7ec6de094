"""What the browser reads from an archive, as plain data shared by the CLI tables, the plots,
results.tsv and the web page, so all of them agree on what a run's history was.

Everything goes through a read-only `Store`: the browser is often opened while `evo run` is
writing, and a read-only SQLite connection in WAL mode never blocks that writer. Whole-run views
read light rows (`Store.individual_rows` / `trial_rows`), never ORM objects, so they stay fast
at 10,000 individuals.
"""

from __future__ import annotations

import difflib
import heapq
from collections import namedtuple
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evo.autoresearch_import import imported_rows
from evo.browse.fmt import label
from population.mapelites import Grid, replaces
from population.records import Individual, Run
from population.store import ArchiveError, Store

# The individual columns the whole-run views and lineages read: no more (each costs 10,000
# values to decode), and never the source.
IND_COLUMNS = (
    "id", "commit", "source_hash", "parent1_id", "parent2_id", "operator", "hypothesis",
    "val_bpb_mean", "val_bpb_sd", "n_ok", "cell",
)
TRIAL_COLUMNS = ("id", "individual_id", "seed", "outcome", "val_bpb", "peak_memory_mb", "params", "tokens",
                 "training_seconds", "message")
# Rows as namedtuples: reading a field is ~20x cheaper than on SQLAlchemy's Row, which a replay
# of 10,000 trials notices (a third of a second).
IndividualRow = namedtuple("IndividualRow", IND_COLUMNS)
TrialRow = namedtuple("TrialRow", TRIAL_COLUMNS)


def open_archive(db: str | Path) -> Store:
    return Store.open(db, readonly=True)


def pick_run(store: Store, name: str | None) -> Run:
    """The run named, or the latest: the one a user browsing in the morning means."""
    if name:
        return store.get_run(name)
    run = store.latest_run()
    if run is None:
        raise ArchiveError(f"{store.name} has no runs yet (start one with `evo run`)")
    return run


def individual_rows(store: Store, run_id: int) -> dict[int, IndividualRow]:
    return {r[0]: IndividualRow._make(r) for r in store.individual_rows(run_id, IND_COLUMNS)}


def trial_rows(store: Store, run_id: int) -> list[TrialRow]:
    """The run's finished trials, in the order they finished."""
    return [TrialRow._make(r) for r in store.trial_rows(run_id, TRIAL_COLUMNS)]


def grid_of(run: Run) -> Grid | None:
    """The run's MAP-Elites grid; None until the engine has measured the seed and centred it."""
    bounds = (run.config or {}).get("grid_bounds")
    return Grid.from_config(bounds) if bounds else None


# ---------------------------------------------------------------------- runs


@dataclass
class RunSummary:
    run: Run
    counts: dict[str, int]
    best: Individual | None
    elites: int
    cells: int | None  # None while the grid does not exist yet
    imported_best: float | None = None  # an imported run's best recorded (not measured) val_bpb

    @property
    def coverage(self) -> float | None:
        return self.elites / self.cells if self.cells else None


def summarize(store: Store, run: Run) -> RunSummary:
    grid = grid_of(run)
    best = store.best(run.id, 1)
    recorded = [r["val_bpb"] for r in imported_rows(run).values() if r["status"] == "keep" and r["val_bpb"]]
    return RunSummary(run, store.counts(run.id), best[0] if best else None, len(store.elites(run.id)),
                      grid.n_cells if grid else None, min(recorded) if recorded else None)


# ---------------------------------------------------------------------- history


@dataclass
class Point:
    """One finished trial, in the order trials finished; `best` is the running best after it."""

    order: int
    trial_id: int
    individual_id: int
    seed: int
    outcome: str
    val_bpb: float | None
    memory_mb: float | None
    best: float | None


@dataclass
class Improvement:
    """A trial after which a new individual held the running best, at a lower value."""

    order: int
    individual_id: int
    val_bpb: float


@dataclass
class History:
    points: list[Point]
    improvements: list[Improvement]
    kept: set[int]  # individuals that were an elite at some point, or the running best
    individuals: dict[int, IndividualRow]
    trials: list[TrialRow] = field(repr=False)  # in finishing order


def history(store: Store, run: Run) -> History:
    """Replay a run's finished trials in order: the running best, its improvements, and which
    individuals were ever kept (what autoresearch calls keep, and what the progress chart marks).

    The archive stores only today's elites, so "was an elite" is recomputed: each trial updates
    its individual's mean, which challenges its cell's holder with the same noise-aware rule
    the engine applies (`mapelites.replaces`). Cells are the individuals' final ones; a
    re-trained elite whose descriptors drifted into another cell is the one case this replay
    simplifies. The running best is the best mean so far, not the best single trial, so a
    lucky seed that re-training exposes lets the line rise again rather than stand as progress.
    """
    inds = individual_rows(store, run.id)
    trials = trial_rows(store, run.id)
    kept = {e.individual_id for e, _ in store.elites(run.id)}
    noise = run.noise_sd
    scores: dict[int, list[float]] = {}
    means: dict[int, float] = {}
    holders: dict[str, int] = {}
    heap: list[tuple[float, int]] = []  # (mean, individual), stale entries dropped lazily
    points, improvements = [], []
    best_id, best = None, None
    for order, t in enumerate(trials):
        ident, value = t.individual_id, t.val_bpb
        if value is not None and t.outcome == "ok":
            xs = scores.setdefault(ident, [])
            xs.append(value)
            mean = means[ident] = sum(xs) / len(xs)
            heapq.heappush(heap, (mean, ident))
            row = inds.get(ident)
            cell = row.cell if row is not None else None
            if cell:
                holder = holders.get(cell)
                if holder is None or holder == ident or replaces(
                        mean, len(xs), means[holder], len(scores[holder]), noise):
                    holders[cell] = ident
                    kept.add(ident)
            while means[heap[0][1]] != heap[0][0]:  # drop means that re-training has replaced
                heapq.heappop(heap)
            lowest, leader = heap[0]
            if leader != best_id and (best is None or lowest < best):
                improvements.append(Improvement(order, leader, lowest))
                kept.add(leader)
            best_id, best = leader, lowest
        points.append(Point(order, t.id, ident, t.seed, t.outcome, value, t.peak_memory_mb, best))
    return History(points, improvements, kept, inds, trials)


# ---------------------------------------------------------------------- lineage


@dataclass
class Step:
    """One individual of a lineage, with the parent the lineage continues through."""

    ind: IndividualRow
    parent: IndividualRow | None  # the first parent: what the operator edited
    other: IndividualRow | None  # a crossover's second parent
    delta: float | None  # ind's mean val_bpb − parent's: negative is progress


def lineage(store: Store, ind: Individual) -> list[Step]:
    """The ancestry of `ind` along first parents, oldest (a seed) first, into earlier runs
    when a run was seeded from another's winners.

    A crossover's second parent is named on its step, not followed: the full ancestry of a
    run with crossovers is a DAG that soon covers most of the run, which no one can read as a
    tree; its own lineage is one command (or click) away.
    """
    rows = {r[0]: IndividualRow._make(r) for r in store.ancestry_rows(ind.id, IND_COLUMNS)}
    steps, seen = [], set()
    current = rows.get(ind.id)
    while current is not None and current.id not in seen:
        seen.add(current.id)
        parent = rows.get(current.parent1_id)
        steps.append(Step(current, parent, rows.get(current.parent2_id), _delta(current, parent)))
        current = parent
    return steps[::-1]


def _delta(ind: Any, parent: Any | None) -> float | None:
    if parent is None or ind.val_bpb_mean is None or parent.val_bpb_mean is None:
        return None
    return ind.val_bpb_mean - parent.val_bpb_mean


# ---------------------------------------------------------------------- diffs


def diff(a: Individual, b: Individual) -> str:
    """A unified diff from `a`'s source to `b`'s (both loaded by `get_individual`)."""
    return "\n".join(difflib.unified_diff(
        (a.source or "").splitlines(), (b.source or "").splitlines(),
        fromfile=f"a/train.py ({label(a)})", tofile=f"b/train.py ({label(b)})", lineterm="",
    ))
