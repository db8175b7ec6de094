"""A generation's record: once all its children have trained, what the browser plots for it.

Scores are summarised with DEAP's `Statistics` over the generation's ok trials; coverage and
the QD score come from the grid over the run's elites at that moment.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from deap import tools

from population.elites import EliteArchive
from population.records import Individual
from population.store import Store


def _scores() -> tools.Statistics:
    stats = tools.Statistics(key=lambda t: t.val_bpb)
    stats.register("avg", statistics.fmean)
    stats.register("std", lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0)
    stats.register("min", min)
    stats.register("max", max)
    return stats


def record_generation(store: Store, archive: EliteArchive, generation: int, members: Sequence[Individual]) -> dict:
    """Compute and store generation `generation`'s record; returns it (what the reporter shows)."""
    run_id = archive.run_id
    trials = [t for m in members for t in store.trials(individual_id=m.id, status="done")]
    ok = [t for t in trials if t.ok]
    elites = store.elites(run_id)
    best = store.best(run_id, 1)
    grid = archive.grid
    record = dict(gen=generation, trials=len(trials), failures=len(trials) - len(ok), elites=len(elites),
                  coverage=grid.coverage(len(elites)),
                  qd_score=grid.qd_score(i.val_bpb_mean for _, i in elites if i.val_bpb_mean is not None),
                  best=best[0].val_bpb_mean if best else None, **(_scores().compile(ok) if ok else {}))
    store.record_generation(run_id, generation, dict(
        trials=record["trials"], failures=record["failures"], best_val_bpb=record["best"],
        best_individual_id=best[0].id if best else None, coverage=record["coverage"],
        qd_score=record["qd_score"], record=record))
    return record
