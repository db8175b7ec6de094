"""The bootstrap: what the first trials of a run measure before any child is judged.

The seed program is trained with `noise_seeds` seeds (each extra seed program of a
`--seed-from` run once). Their spread is the noise every later comparison is judged against,
and their median descriptors centre the MAP-Elites grid, because absolute parameter and token
counts depend on the hardware and budget while the seed's own measurements do not. The engine
dispatches the trials (`owed_trials`), and once they are in, `measure` turns them into the run's
`EliteArchive`. Everything is read back from the archive, so a bootstrap cut off half-way
resumes with the trials it did not get to.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence

from evo.config import RunConfig
from evo.defaults import SEED_OPERATORS
from evo.errors import EvoError
from population.elites import EliteArchive
from population.mapelites import Grid
from population.noise import noise_sd
from population.records import Individual, Run, Trial
from population.store import Store
from trainer.dataset import MANIFEST_NAME

MEMORISING_EPOCHS = 10  # more passes over the train split than this and the score measures memory


def seed_individuals(store: Store, run_id: int) -> list[Individual]:
    """The run's starting programs, the first one being the one whose noise is measured."""
    return [i for i in store.individuals(run_id, generation=0) if i.operator in SEED_OPERATORS]


def owed_trials(store: Store, run_id: int, noise_seeds: int) -> list[tuple[int, int]]:
    """(individual id, seed) pairs the bootstrap still needs trained."""
    seeds = seed_individuals(store, run_id)
    owed = []
    for ind in seeds:
        used = store.used_seeds(ind.id)
        want = noise_seeds if ind.id == seeds[0].id else 1
        owed += [(ind.id, seed) for seed in range(want) if seed not in used]
    return owed


def measure(store: Store, run: Run, cfg: RunConfig, say: Callable[[str], None]) -> tuple[EliteArchive, Run]:
    """The noise and the grid from the seed's finished trials; every seed program is placed."""
    seeds = seed_individuals(store, run.id)
    done = store.trials(individual_id=seeds[0].id, status="done")
    trials = [t for t in done if t.ok]
    if not trials:
        why = done[-1].message if done else "no trial finished"
        raise EvoError(f"the seed program does not train: {why} (try `evo trial` on it to see the error)")
    sd = noise_sd([t.val_bpb for t in trials])
    center = {name: _median_high(getattr(t, name) for t in trials) for name in cfg.grid["descriptors"]}
    grid = Grid.around(center, decades=cfg.grid.get("decades", 2.0), bins=cfg.grid.get("bins", 10))
    run = store.update_run(run.id, noise_sd=sd, config=dict(run.config, grid_bounds=grid.to_config()))
    archive = EliteArchive(store, run.id, grid, sd)
    for ind in seeds:
        archive.add(ind.id)
    shown = f"{sd:.4f}" if sd is not None else "n/a"
    say(f"bootstrap: seed val_bpb {statistics.fmean(t.val_bpb for t in trials):.4f}, noise sd {shown} "
        f"over {len(trials)} seeds; grid {grid.n_cells} cells around the seed")
    warn_if_memorising(cfg.dataset_dir, trials, say)
    return archive, run


def resumed_archive(store: Store, run: Run) -> EliteArchive | None:
    """The archive of a run whose bootstrap is done (its grid is in its config), else None."""
    bounds = run.config.get("grid_bounds")
    return EliteArchive(store, run.id, Grid.from_config(bounds), run.noise_sd) if bounds else None


def warn_if_memorising(dataset_dir: str, trials: Sequence[Trial], say: Callable[[str], None]) -> None:
    """Say so when a trial sees its corpus many times over: on an H100 the 300 s budget runs
    ~175 epochs of the 2.5M-token stdlib corpus and val_bpb then rewards training *less*
    (1.13 after 20 s, 1.87 after 300 s), so the search would optimise the wrong thing."""
    from pathlib import Path

    try:
        n_train = json.loads((Path(dataset_dir) / MANIFEST_NAME).read_text())["n_train_tokens"]
    except (OSError, KeyError, ValueError, TypeError):
        return
    tokens = _median_high(t.tokens for t in trials if t.tokens)
    if n_train and tokens and tokens / n_train > MEMORISING_EPOCHS:
        say(f"warning: a trial trains {tokens / n_train:.0f} epochs of this {n_train / 1e6:.1f}M-token corpus, so "
            f"val_bpb will reward memorising less; prepare a larger one (`evo prepare climbmix --shards N` "
            f"or `evo prepare files PATH...`) and pass it with --data-dir")


def _median_high(values) -> float | None:
    """The median, the higher middle one of an even count (a measured value, not an average)."""
    present = [v for v in values if v is not None]
    return statistics.median_high(present) if present else None
