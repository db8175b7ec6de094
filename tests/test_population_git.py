"""The git store, checked with the real `git` a user would run on it."""

import subprocess

import pytest

from population.elites import EliteArchive
from population.gitstore import GitStore
from population.mapelites import Dim, Grid
from population.store import Store

SEED = "lr = 0.02\nlayers = 4\n"


def git(repo, *args):
    return subprocess.run(
        ["git", f"--git-dir={repo}", *args], check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture
def gs(tmp_path):
    g = GitStore(tmp_path / "archive.git")
    yield g
    g.close()


def test_commit_holds_the_source(gs):
    sha = gs.commit(SEED, [], "the seed", {"Val-bpb": "1.2345"})
    assert git(gs.path, "show", f"{sha}:train.py") == SEED
    assert gs.source_at(sha) == SEED
    assert git(gs.path, "cat-file", "-t", sha).strip() == "commit"
    assert git(gs.path, "log", "-1", "--format=%an <%ae>|%cn <%ce>", sha).strip() == "evo <evo@localhost>|evo <evo@localhost>"
    git(gs.path, "fsck", "--strict", "--no-dangling")


def test_parents_trailers_and_diff(gs):
    root = gs.commit(SEED, [], "the seed")
    a = gs.commit(SEED.replace("0.02", "0.03"), [root], "raise lr", {"Val-bpb": "1.2345", "Seed": 3})
    b = gs.commit(SEED.replace("4", "6"), [root], "deeper")
    merge = gs.commit("lr = 0.03\nlayers = 6\n", [a, b], "cross\nboth changes", {"Operator": "crossover"})
    assert git(gs.path, "rev-list", "--parents", "-n1", a).split() == [a, root]
    assert git(gs.path, "rev-list", "--parents", "-n1", merge).split() == [merge, a, b]
    assert git(gs.path, "log", "-1", "--format=%(trailers:key=Val-bpb,valueonly)", a).strip() == "1.2345"
    assert git(gs.path, "log", "-1", "--format=%(trailers:key=Seed,valueonly)", a).strip() == "3"
    assert git(gs.path, "log", "-1", "--format=%s|%b", merge).strip() == "cross|both changes\n\nOperator: crossover"
    diff = git(gs.path, "diff", root, a)
    assert "-lr = 0.02" in diff and "+lr = 0.03" in diff
    assert gs.merge_base(a, b) == root
    assert gs.merge_base(merge, a) == a
    assert gs.merge_base(a, gs.commit("x = 1\n", [], "unrelated")) is None
    # a crossover of a parent with itself is an ordinary commit
    same = gs.commit(SEED, [a, a], "self-cross")
    assert git(gs.path, "rev-list", "--parents", "-n1", same).split() == [same, a]


def test_refs(gs):
    sha = gs.commit(SEED, [], "the seed")
    other = gs.commit("x = 1\n", [sha], "child")
    gs.set_ref("refs/elites/r1/3,5", sha)
    assert git(gs.path, "rev-parse", "refs/elites/r1/3,5").strip() == sha
    gs.set_ref("refs/elites/r1/3,5", other)
    git(gs.path, "pack-refs", "--all")
    gs.set_ref("refs/elites/r1/3,5", sha)  # a loose ref overrides the packed one
    assert git(gs.path, "rev-parse", "refs/elites/r1/3,5").strip() == sha
    gs.delete_ref("refs/elites/r1/3,5")
    assert "refs/elites" not in git(gs.path, "for-each-ref")
    gs.set_ref("refs/heads/r1", other)
    gs.set_head("refs/heads/r1")
    assert git(gs.path, "log", "--format=%s").splitlines() == ["child", "the seed"]
    with pytest.raises(ValueError):
        gs.set_ref("HEAD", sha)
    with pytest.raises(ValueError):
        gs.commit(SEED, ["abc"], "bad parent")


def test_store_commits_each_individual_with_its_lineage(tmp_path):
    grid = Grid([Dim("params", 1e3, 1e7, 4), Dim("tokens", 1e6, 1e10, 4)])
    repo = tmp_path / "archive.git"

    def train(ind, seed, val_bpb, outcome="ok", params=20_000):
        trial = store.start_trial(ind.id, seed, "cpu", "w0")
        store.finish_trial(trial.id, {"outcome": outcome, "val_bpb": val_bpb if outcome == "ok" else None,
                                      "seed": seed, "params": params, "tokens": 10**8, "stderr_tail": ""})
        return store.get_individual(ind.id)

    with Store.open(tmp_path / "archive.db", create=True) as store:
        run = store.create_run("night-1", {})
        seed = store.add_individual(run.id, SEED, [], "seed", "the seed", 0)
        assert store.get_individual(seed.id).commit is None  # committed on its first finished trial
        seed = train(seed, 0, 1.23456)
        first_commit = seed.commit
        seed = train(seed, 1, 1.25)
        assert seed.commit == first_commit  # later trials do not re-commit
        a = train(store.add_individual(run.id, SEED.replace("0.02", "0.03"), [seed.id], "offline", "raise lr", 1), 0, 1.2)
        b = train(store.add_individual(run.id, SEED.replace("4", "6"), [seed.id], "offline", "deeper", 1), 0, None, "crash")
        child = train(store.add_individual(run.id, "lr = 0.03\nlayers = 6\n", [a.id, b.id], "crossover", "both", 2), 0, 1.1)
        assert EliteArchive(store, run.id, grid, 0.01).add(child.id).placed

        assert git(repo, "rev-list", "--parents", "-n1", a.commit).split() == [a.commit, seed.commit]
        assert git(repo, "rev-list", "--parents", "-n1", child.commit).split() == [child.commit, a.commit, b.commit]
        log = git(repo, "log", "-1", "--format=%B", seed.commit)
        assert log.splitlines()[0] == "the seed"
        for line in ("Val-bpb: 1.2346", "Outcome: ok", "Seed: 0", "Operator: seed", "Evo-run: night-1",
                     f"Evo-individual: {seed.id}"):
            assert line in log
        failed = git(repo, "log", "-1", "--format=%B", b.commit)
        assert "Outcome: crash" in failed and "Val-bpb" not in failed
        assert git(repo, "show", f"{child.commit}:train.py") == "lr = 0.03\nlayers = 6\n"
        refs = git(repo, "for-each-ref", "--format=%(refname) %(objectname)").splitlines()
        assert f"refs/elites/night-1/1,2 {child.commit}" in refs
        assert f"refs/individuals/night-1/{b.id} {b.commit}" in refs
        # the run's branch (and HEAD) follow the best elite: its lineage, its code
        assert git(repo, "rev-parse", "HEAD", "night-1").split() == [child.commit, child.commit]
        lineage = git(repo, "log", "--format=%s").splitlines()
        assert lineage[0] == "both" and sorted(lineage) == ["both", "deeper", "raise lr", "the seed"]
        assert git(repo, "show", "night-1:train.py") == "lr = 0.03\nlayers = 6\n"
        graph = git(repo, "log", "--graph", "--all", "--format=%s")
        assert all(h in graph for h in ("the seed", "raise lr", "deeper", "both"))
        git(repo, "fsck", "--strict", "--no-dangling")
        assert store.git.merge_base(a.commit, b.commit) == seed.commit
