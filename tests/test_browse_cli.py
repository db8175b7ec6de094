"""The browsing commands through the real `evo` console script, against the real archive of a
short `evo run` (the `any_short_run` fixture: on SQLite and on PostgreSQL): the right ids, hypotheses, diffs and files come out,
and what a user can get wrong ends in one `Error:` line."""

from __future__ import annotations

import difflib

import pytest

from population.elites import EliteArchive
from population.mapelites import Grid
from population.store import Store
from tests.conftest import evo
from tests.support.archive import child_elite


@pytest.fixture(scope="module")
def archive(any_short_run):
    """(db, run name, a read-only Store) for reading what the commands should print, on each
    backend (an SQLite file, a PostgreSQL URL)."""
    db, name = any_short_run
    store = Store.open(db, readonly=True)
    yield db, name, store
    store.close()


def test_runs_and_elites_list_the_archive(archive):
    db, name, store = archive
    run = store.get_run(name)
    runs = evo("runs", "--db", db).stdout
    assert name in runs and str(len(store.trials(run.id, status="done"))) in runs
    assert store.best(run.id, 1)[0].commit[:8] in runs
    elites = evo("elites", "--db", db, "--run", name).stdout
    for elite, ind in store.elites(run.id):
        row = next(line for line in elites.splitlines() if line.strip().startswith(ind.commit[:8]))
        assert elite.cell in row and f"{ind.val_bpb_mean:.4f}" in row and f" {ind.n_ok} " in row
        assert ind.hypothesis.splitlines()[0][:20] in row


def test_show_gives_scores_hypothesis_parents_and_diff(archive):
    db, name, store = archive
    ind = child_elite(store, name)
    parent = store.get_individual(ind.parents[0])
    out = evo("show", ind.commit[:8], "--db", db).stdout  # a commit prefix
    assert f"#{ind.id} {ind.commit[:8]}" in out and ind.hypothesis in out
    assert f"{ind.val_bpb_mean:.4f}" in out and f"#{parent.id} {parent.commit[:8]}" in out
    changed = [ln for ln in difflib.unified_diff(parent.source.splitlines(), ind.source.splitlines(), lineterm="")
               if ln.startswith(("+", "-")) and not ln.startswith(("+++", "---"))]
    assert changed and all(ln[:60] in out for ln in changed)
    for t in store.trials(individual_id=ind.id):
        assert f"{t.val_bpb:.4f}" in out


def test_lineage_walks_back_to_the_seed(archive):
    db, name, store = archive
    run = store.get_run(name)
    ind = max((i for i in store.individuals(run.id, status="trained")), key=lambda i: (len(i.parents) > 0, i.id))
    out = evo("lineage", ind.source_hash[:10], "--db", db).stdout  # a source-hash prefix
    chain, current = [], ind
    while current is not None:
        chain.append(current)
        current = store.get_individual(current.parent1_id) if current.parent1_id else None
    steps = out.split("\n", 1)[1]  # below the title, which names the individual too
    positions = [steps.index(f"#{i.id} {i.commit[:8]}") for i in reversed(chain)]
    assert positions == sorted(positions), "oldest first"
    assert chain[-1].operator == "seed" and ind.hypothesis.splitlines()[0][:30] in out
    if len(chain) > 1:
        delta = ind.val_bpb_mean - chain[1].val_bpb_mean
        assert f"{delta:+.4f}".replace("-", "−") in out


def test_diff_is_a_real_unified_diff(archive):
    db, name, store = archive
    ind = child_elite(store, name)
    parent = store.get_individual(ind.parents[0])
    out = evo("diff", parent.id, ind.commit[:8], "--db", db).stdout
    expected = list(difflib.unified_diff(parent.source.splitlines(), ind.source.splitlines(), lineterm=""))[2:]
    assert out.splitlines()[0].startswith("--- a/train.py") and out.splitlines()[2:] == expected


def test_export_writes_exactly_the_source(archive, tmp_path):
    db, name, store = archive
    ind = child_elite(store, name)
    target = tmp_path / "train.py"
    proc = evo("export", ind.id, "-o", target, "--db", db)
    assert target.read_bytes() == ind.source.encode()
    assert "evo trial" in proc.stderr


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """An archive written through the real Store as the engine writes one: run `b` continues
    from run `a`'s winner with a crossover, and holds a rejected proposal."""
    db = tmp_path_factory.mktemp("two-runs") / "archive.db"
    grid = Grid.around({"params": 1e6, "tokens": 1e4})
    with Store.open(db, create=True) as store:
        def trained(run, source, parents, operator, hypothesis, val_bpb):
            ind = store.add_individual(run.id, source, parents, operator, hypothesis)
            trial = store.start_trial(ind.id, seed=0)
            store.finish_trial(trial.id, {"outcome": "ok", "val_bpb": val_bpb, "params": 10**6, "tokens": 10**4})
            EliteArchive(store, run.id, grid, 0.001).add(ind.id)
            return store.get_individual(ind.id)

        a = store.create_run("a", {"grid_bounds": grid.to_config()})
        seed = trained(a, "lr = 1\n", [], "seed", "seed: train.py", 1.0)
        winner = trained(a, "lr = 2\n", [seed.id], "offline", "LR 1 → 2", 0.9)
        b = store.create_run("b", {"grid_bounds": grid.to_config()})
        other = trained(b, "depth = 3\n", [seed.id], "offline", "DEPTH 2 → 3", 0.95)
        child = trained(b, "lr = 2\ndepth = 3\n", [winner.id, other.id], "crossover", "DEPTH from the other", 0.85)
        rejected = store.add_rejected(b.id, [child.id], "offline", "LR 2 → 200", "validation: lr is not finite")
        crashed = store.add_individual(b.id, "lr = 2\ndepth = 300\n", [child.id], "offline", "DEPTH 3 → 300")
        trial = store.start_trial(crashed.id, seed=4)
        store.finish_trial(trial.id, {"outcome": "oom", "val_bpb": None, "message": "CUDA out of memory",
                                      "stderr_tail": "".join(f"frame {k}\n" for k in range(30))
                                                     + "torch.OutOfMemoryError: CUDA out of memory\n"})
    return db, seed, winner, other, child, rejected, crashed


def test_lineage_follows_first_parents_into_the_earlier_run(two_runs):
    db, seed, winner, other, child, *_ = two_runs
    out = evo("lineage", child.commit[:8], "--db", db, env={"COLUMNS": "80"}).stdout
    lines = out.splitlines()[1:]
    assert len(lines) == 4, out  # seed, winner (run a), child (run b), and the crossover's other parent
    steps = [next(k for k, ln in enumerate(lines) if f"#{i.id} {i.commit[:8]}" in ln) for i in (seed, winner, child)]
    assert steps == [0, 1, 2] and lines[3].strip().startswith(f"└── × also from #{other.id} {other.commit[:8]}")
    assert "−0.0500" in lines[2] and "−0.1000" in lines[1] and all(len(ln) <= 80 for ln in out.splitlines())


def test_a_rejected_proposal_shows_but_does_not_export(two_runs):
    db, *_, child, rejected, _ = two_runs
    out = evo("show", rejected.id, "--db", db).stdout
    assert f"#{rejected.id}" in out and "rejected: validation: lr is not finite" in out
    assert f"#{child.id} {child.commit[:8]}" in out and "LR 2 → 200" in out
    proc = evo("export", rejected.id, "--db", db, check=False)
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr == f"Error: individual #{rejected.id} was rejected before it had a source " \
                          "(validation: lr is not finite)\n"


def test_show_ends_with_what_broke_a_failed_trial(two_runs):
    db, *_, child, _, crashed = two_runs
    lines = evo("show", crashed.id, "--db", db, env={"COLUMNS": "80"}).stdout.splitlines()
    at = lines.index("stderr of seed 4 (oom), last lines")
    assert lines[at + 1:at + 13] == [f"frame {k}" for k in range(19, 30)] + ["torch.OutOfMemoryError: CUDA out of memory"]
    assert lines[at + 14] == f"diff against parent #{child.id} {child.commit[:8]}" and "+depth = 300" in lines


@pytest.mark.parametrize("args, message", [
    (("show", "deadbeef"), "no individual matches 'deadbeef'"),
    (("elites", "--db", "missing.db"), "archive not found: missing.db"),
    (("lineage", "1", "--db", "notes.txt"), "notes.txt is not an evo archive"),
])
def test_user_errors_are_one_line(archive, tmp_path, args, message):
    db = archive[0]
    (tmp_path / "notes.txt").write_text("not a database\n")
    full = args if "--db" in args else (*args, "--db", db)
    proc = evo(*full, cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("Error: ")
    assert message in proc.stderr
