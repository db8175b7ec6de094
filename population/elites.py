"""The elite archive of one run: where an individual goes in the MAP-Elites grid, and whether
it takes its cell from the elite there.

This is the policy over the dumb storage (`population.store`), as pyribs keeps the replace rule
in `GridArchive.add` and Optuna keeps its in `study/_tell.py`: `EliteArchive.add` reads the
individual and the cell's elite, applies the noise-aware replace rule (`mapelites.replaces`)
and writes the outcome, all in one store transaction, and returns what happened to the
newcomer as an `AddResult`. Git follows every change: `refs/elites/<run>/<cell>` per cell and
the branch `<run>` on the run's best elite.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from population.gitstore import branch_ref, elite_ref
from population.mapelites import Grid, replaces
from population.store import ArchiveError, Store


class AddStatus(enum.Enum):
    NEW = "new"  # took an empty cell
    IMPROVE = "improve"  # beat the cell's elite by more than seed noise, and replaced it
    HELD = "held"  # already the cell's elite (re-trained), and still is
    NOT_ADDED = "not_added"  # the cell's elite stays: the newcomer is not better beyond noise
    NO_CELL = "no_cell"  # no ok trial, or a descriptor is missing: it has no place in the grid


@dataclass(frozen=True)
class AddResult:
    status: AddStatus
    cell: str | None  # the cell the individual belongs to now
    elite: int | None  # the cell's elite afterwards
    previous: int | None = None  # the elite it replaced (IMPROVE)
    vacated: str | None = None  # the cell it held before re-training moved it elsewhere

    @property
    def placed(self) -> bool:
        """The individual holds its cell after the add."""
        return self.status in (AddStatus.NEW, AddStatus.IMPROVE, AddStatus.HELD)


class EliteArchive:
    """One run's grid of elites, kept in the store. Built once the grid is known (after the
    bootstrap has measured the seed and its noise)."""

    def __init__(self, store: Store, run_id: int, grid: Grid, noise_sd: float | None):
        self.store = store
        self.run_id = run_id
        self.grid = grid
        self.noise_sd = noise_sd

    def __repr__(self) -> str:
        return f"EliteArchive(run {self.run_id}, {self.grid.n_cells} cells, noise_sd={self.noise_sd})"

    def add(self, individual_id: int) -> AddResult:
        """Place an individual by its current mean descriptors and score.

        An individual without ok trials has no cell. If re-training moved an elite's descriptors
        into another cell, the cell it leaves goes to the best other individual placed there, so
        a niche is not lost to measurement drift.
        """
        store = self.store
        with store.transaction():
            ind = store.get_individual(individual_id, source=False)
            if ind.run_id != self.run_id:
                raise ArchiveError(f"individual {individual_id} belongs to run {ind.run_id}, not {self.run_id}")
            where = self.grid.cell(ind.descriptors) if ind.n_ok else None
            cell = self.grid.key(where) if where is not None else None
            store.set_cell(ind.id, cell)
            rows = store.elite_rows(self.run_id, cell=cell, individual_id=ind.id)
            held = next((e.cell for e in rows if e.individual_id == ind.id), None)
            occupant = next((e.individual_id for e in rows if e.cell == cell), None) if cell else None
            vacated = None
            if held is not None and held != cell:
                self._vacate(held, ind.id)
                vacated = held
            if cell is None:
                result = AddResult(AddStatus.NO_CELL, None, None, vacated=vacated)
            elif held == cell:
                result = AddResult(AddStatus.HELD, cell, ind.id)
            elif occupant is None:
                self._seat(cell, ind.id, ind.commit)
                result = AddResult(AddStatus.NEW, cell, ind.id, vacated=vacated)
            else:
                incumbent = store.get_individual(occupant, source=False)
                if replaces(ind.val_bpb_mean, ind.n_ok, incumbent.val_bpb_mean, incumbent.n_ok, self.noise_sd):
                    self._seat(cell, ind.id, ind.commit)
                    result = AddResult(AddStatus.IMPROVE, cell, ind.id, previous=occupant, vacated=vacated)
                else:
                    result = AddResult(AddStatus.NOT_ADDED, cell, occupant, vacated=vacated)
            if result.placed or vacated is not None:
                self._follow_champion()
            return result

    def _seat(self, cell: str, individual_id: int, commit: str | None) -> None:
        self.store.set_elite(self.run_id, cell, individual_id)
        if self.store.git is not None and commit:
            self.store.git.set_ref(elite_ref(self.store.run_name(self.run_id), cell), commit)

    def _vacate(self, cell: str, leaving: int) -> None:
        successor = self.store.best_in_cell(self.run_id, cell, excluding=leaving)
        if successor is not None:
            self._seat(cell, successor.id, successor.commit)
            return
        self.store.delete_elite(self.run_id, cell)
        if self.store.git is not None:
            self.store.git.delete_ref(elite_ref(self.store.run_name(self.run_id), cell))

    def _follow_champion(self) -> None:
        """Keep the branch `<run>` on the run's best elite: `git log <run>` is then the
        champion's lineage and `git show <run>:train.py` its code."""
        if self.store.git is None:
            return
        best = self.store.best_elite_commit(self.run_id)
        if best:
            self.store.git.set_ref(branch_ref(self.store.run_name(self.run_id)), best)
