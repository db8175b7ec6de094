"""The browsing commands through the real `evo` console script, against the real archive of a
short `evo run` (the `short_run` fixture): the right ids, hypotheses, diffs and files come out,
and what a user can get wrong ends in one `Error:` line."""

from __future__ import annotations

import difflib

import pytest

from population.store import Store
from tests.conftest import evo


@pytest.fixture(scope="module")
def archive(short_run):
    """(db, run name, a read-only Store) for reading what the commands should print."""
    db, name = short_run
    store = Store.open(db, readonly=True)
    yield db, name, store
    store.close()


def child_elite(store: Store, run_name: str):
    """An elite made by an operator from a parent, so it has a diff and a lineage."""
    run = store.get_run(run_name)
    children = [ind for _, ind in store.elites(run.id) if ind.parents]
    assert children, "the short run produced no elite with a parent"
    return store.get_individual(children[0].id)


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
