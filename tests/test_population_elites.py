"""The elite archive over a real archive (SQLite and PostgreSQL) and git store: placement, the noise-aware
replace rule, what `add` says happened, and git following every change."""

import subprocess
import threading

import pytest

from population.elites import AddStatus, EliteArchive
from population.mapelites import Dim, Grid
from population.store import ArchiveError, Store
from tests.support.archive import GRID, result, trained


def refs(store, *names):
    return subprocess.run(["git", f"--git-dir={store.git.path}", "rev-parse", *names],
                          capture_output=True, text=True, check=True).stdout.split()


def test_elite_replace_rule_respects_noise(store, run):
    sigma = 0.01  # threshold for one trial each: 1.645 * 0.01 * sqrt(2) ≈ 0.023
    archive = EliteArchive(store, run.id, GRID, sigma)
    incumbent = trained(store, run, "x = 1\n", 1.00)
    first = archive.add(incumbent.id)
    assert (first.status, first.cell, first.elite, first.placed) == (AddStatus.NEW, "1,2", incumbent.id, True)
    lucky = trained(store, run, "x = 2\n", 0.99)  # better, but by less than noise
    kept = archive.add(lucky.id)
    assert (kept.status, kept.cell, kept.elite, kept.placed) == (AddStatus.NOT_ADDED, "1,2", incumbent.id, False)
    assert store.get_individual(lucky.id).cell == store.get_individual(incumbent.id).cell == "1,2"
    [(elite, holder)] = store.elites(run.id)
    assert holder.id == incumbent.id and elite.cell == "1,2"
    better = trained(store, run, "x = 3\n", 0.95)  # better by more than noise
    replaced = archive.add(better.id)
    assert (replaced.status, replaced.previous, replaced.elite) == (AddStatus.IMPROVE, incumbent.id, better.id)
    assert [i.id for _, i in store.elites(run.id)] == [better.id]
    assert refs(store, "r1", "refs/elites/r1/1,2") == [better.commit, better.commit]
    # with no noise estimate a strict < decides: 0.001 better is enough, equal is not
    tiny = trained(store, run, "x = 4\n", 0.949)
    assert EliteArchive(store, run.id, GRID, None).add(tiny.id).status is AddStatus.IMPROVE
    same = trained(store, run, "x = 5\n", 0.949)
    assert EliteArchive(store, run.id, GRID, None).add(same.id).status is AddStatus.NOT_ADDED


def test_elites_in_different_cells_coexist(store, run):
    archive = EliteArchive(store, run.id, GRID, 0.01)
    small = trained(store, run, "x = 1\n", 1.3, params=2_000)
    big = trained(store, run, "x = 2\n", 1.0, params=2_000_000)
    assert archive.add(small.id).status is AddStatus.NEW
    assert archive.add(big.id).status is AddStatus.NEW
    assert [(e.cell, i.id) for e, i in store.elites(run.id)] == [("3,2", big.id), ("0,2", small.id)]
    assert [i.id for i in store.best(run.id, 5)] == [big.id, small.id]
    assert GRID.qd_score(i.val_bpb_mean for _, i in store.elites(run.id)) == pytest.approx(6.7 + 7.0)
    assert refs(store, "r1") == [big.commit]  # the branch is on the best elite of all cells


def test_retrained_elite_keeps_or_moves_its_cell(store, run):
    archive = EliteArchive(store, run.id, GRID, None)
    elite = trained(store, run, "x = 1\n", 1.0, params=20_000)
    runner_up = trained(store, run, "x = 2\n", 1.1, params=20_000)
    assert archive.add(elite.id).status is AddStatus.NEW
    assert archive.add(runner_up.id).status is AddStatus.NOT_ADDED
    # a new seed in the same cell: still the elite
    store.finish_trial(store.start_trial(elite.id, 1).id, result(1.02, params=20_000))
    assert archive.add(elite.id).status is AddStatus.HELD
    # more seeds drag its mean descriptors into the next cell: the runner-up inherits the old one
    for seed in (2, 3, 4):
        store.finish_trial(store.start_trial(elite.id, seed).id, result(1.0, params=1_000_000))
    moved = archive.add(elite.id)
    assert (moved.status, moved.cell, moved.vacated) == (AddStatus.NEW, "2,2", "1,2")
    cells = {e.cell: i.id for e, i in store.elites(run.id)}
    assert cells == {"1,2": runner_up.id, "2,2": elite.id}
    assert refs(store, "refs/elites/r1/1,2", "refs/elites/r1/2,2") == [runner_up.commit, elite.commit]


def test_an_individual_that_leaves_the_grid_takes_no_cell_and_frees_its_own(store, run):
    lonely = trained(store, run, "x = 1\n", 1.0)
    assert EliteArchive(store, run.id, GRID, None).add(lonely.id).status is AddStatus.NEW
    # placed on a grid that needs a measurement it lacks, it has no cell, and nobody inherits its old one
    wider = Grid(list(GRID.dims) + [Dim("never_measured", 1, 10, 2)])
    gone = EliteArchive(store, run.id, wider, None).add(lonely.id)
    assert (gone.status, gone.cell, gone.vacated, gone.placed) == (AddStatus.NO_CELL, None, "1,2", False)
    assert store.elites(run.id) == [] and store.get_individual(lonely.id).cell is None
    probe = subprocess.run(["git", f"--git-dir={store.git.path}", "rev-parse", "--verify", "-q", "refs/elites/r1/1,2"],
                           capture_output=True, text=True)
    assert probe.returncode != 0


def test_add_refuses_an_individual_of_another_run(store, run):
    other = store.create_run("r2", {})
    ind = trained(store, other, "x = 1\n", 1.0)
    with pytest.raises(ArchiveError, match="belongs to run"):
        EliteArchive(store, run.id, GRID, None).add(ind.id)
    assert store.elites(other.id) == [] and store.get_individual(ind.id).cell is None


def test_add_is_one_transaction(store, run):
    """A failure half-way through placing leaves the archive's rows as they were (git refs
    already moved are not rolled back: the next add of that cell rewrites them)."""
    archive = EliteArchive(store, run.id, GRID, None)
    ind = trained(store, run, "x = 1\n", 1.0)

    class Boom(Exception):
        pass

    def broken(*args, **kwargs):
        raise Boom

    archive._follow_champion = broken  # fails after the cell and the elite row are written
    with pytest.raises(Boom):
        archive.add(ind.id)
    assert store.get_individual(ind.id).cell is None and store.elites(run.id) == []


def test_two_archives_of_one_run_keep_its_branch_on_the_best_elite(store, run):
    """Each add moves the branch to the run's best elite, whichever archive object made the
    last move (no archive may trust its own memory of where the branch points)."""
    first, second = EliteArchive(store, run.id, GRID, None), EliteArchive(store, run.id, GRID, None)
    a = trained(store, run, "x = 1\n", 1.0, params=2_000)
    b = trained(store, run, "x = 2\n", 0.9, params=2_000_000)
    first.add(a.id)
    assert refs(store, "r1") == [a.commit]
    second.add(b.id)
    assert refs(store, "r1") == [b.commit]
    # b's second seed is much worse: its mean (1.2) falls behind a, and the branch goes back to a
    store.finish_trial(store.start_trial(b.id, 1).id, result(1.5, params=2_000_000))
    assert first.add(b.id).status is AddStatus.HELD
    assert refs(store, "r1") == [a.commit]


def test_concurrent_writers_lose_no_elite_update(archive_url, tmp_path):
    """Four coordinators (each its own Store: its own connections, no shared process lock) race
    challengers into one cell. Each add reads the cell's elite, decides and writes in one
    transaction; were those not serialised across connections (PostgreSQL's READ COMMITTED
    without the advisory write lock), two adds would read the same incumbent and the worse
    challenger could be seated last. The cell must end with the best challenger of all."""
    git = tmp_path / "archive.git"
    with Store.open(archive_url, create=True, git_dir=git) as s:
        run = s.create_run("r1", {})
    writers, barrier, errors = 4, threading.Barrier(4), []

    def challenge(k):
        try:
            with Store.open(archive_url, git_dir=git) as s:
                archive = EliteArchive(s, run.id, GRID, None)
                mine = [trained(s, run, f"writer {k} try {i}\n", 2.0 - (i * writers + k) / 1000) for i in range(8)]
                barrier.wait()
                for ind in mine:
                    archive.add(ind.id)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=challenge, args=(k,)) for k in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    with Store.open(archive_url, readonly=True, git_dir=git) as s:
        [(elite, holder)] = s.elites(run.id)
        best = s.best(run.id)[0]
    assert (elite.cell, holder.id, holder.val_bpb_mean) == ("1,2", best.id, pytest.approx(2.0 - 31 / 1000))
