"""Re-validation: which individuals are owed trials on more seeds.

One trial's val_bpb carries seed noise, so a number is only trusted once it rests on several
seeds. Three rules, each asked by the engine at its moment:

- `promising`: a newcomer better than its cell's elite in the mean, but not beyond noise,
  earns another seed (until `champion_seeds`), so a real small gain can still win the cell.
- `rechallenge`: after a re-train moved an elite's mean, the best rival in its cell challenges
  it again under the replace rule.
- `champions_owed`: the run's best individuals are only reported as champions with
  `champion_seeds` ok trials behind them; one that failed on some seed gets no more.
"""

from __future__ import annotations

from collections.abc import Iterable

from population.elites import AddResult, AddStatus, EliteArchive
from population.records import Individual
from population.store import Store


class Revalidation:
    def __init__(self, store: Store, run_id: int, champion_seeds: int):
        self.store = store
        self.run_id = run_id
        self.champion_seeds = champion_seeds

    def promising(self, ind: Individual, added: AddResult) -> bool:
        """Lost its cell but beat the elite's mean: worth another seed."""
        if added.status is not AddStatus.NOT_ADDED or ind.n_ok >= self.champion_seeds:
            return False
        elite = self.store.get_individual(added.elite, source=False)
        return elite.val_bpb_mean is not None and ind.val_bpb_mean < elite.val_bpb_mean

    def rechallenge(self, archive: EliteArchive, elite: Individual) -> None:
        """A re-train moved an elite's mean; let the best rival in its cell challenge it again."""
        rival = self.store.best_in_cell(self.run_id, elite.cell, excluding=elite.id)
        if rival is not None:
            archive.add(rival.id)

    def champions_owed(self, k: int, queued: Iterable[int]) -> list[int]:
        """Seeds the best k individuals still need (one id per missing seed), less those queued."""
        queued = list(queued)
        owed = []
        for ind in self.store.best(self.run_id, k):
            if ind.n_trials > ind.n_ok:  # it failed on some seed: not a champion, no more seeds
                continue
            missing = self.champion_seeds - ind.n_ok - queued.count(ind.id)
            owed += [ind.id] * max(0, missing)
        return owed
