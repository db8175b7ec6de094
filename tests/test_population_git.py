"""The git store, checked with the real `git` a user would run on it."""

import subprocess
import time

import pytest

from population.elites import EliteArchive
from population.gitstore import GitStore
from population.mapelites import Dim, Grid
from population.store import ArchiveError, Store

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


def _mirror_state(repo):
    """What two mirrors of one archive must agree on: every ref and its sha, HEAD, the graph."""
    return (git(repo, "for-each-ref", "--format=%(refname) %(objectname)"), git(repo, "symbolic-ref", "HEAD"),
            git(repo, "log", "--graph", "--all", "--format=%H %an %at %s%n%b"))


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_hosts_mirror_is_rebuilt_from_the_database_with_the_same_shas(archive_url, tmp_path):
    """A server's archive is written through one host's git store (A); another host's mirror (B,
    empty) is then made from the database alone, and has the same commits, shas and refs."""
    from sqlalchemy import text

    from tests.support.archive import GRID, result, trained

    a, b = tmp_path / "a.git", tmp_path / "b.git"
    with Store.open(archive_url, create=True, git_dir=a) as s:
        run = s.create_run("night-1", {})
        archive = EliteArchive(s, run.id, GRID, None)
        seed = trained(s, run, SEED, 1.3)
        left = trained(s, run, SEED.replace("0.02", "0.03"), 1.2, parents=[seed.id])
        right = trained(s, run, SEED.replace("4", "6"), 1.0, parents=[seed.id], params=2_000_000)
        cross = trained(s, run, "lr = 0.03\nlayers = 6\n", 1.1, parents=[left.id, right.id])
        crashed = trained(s, run, "x = 1\n", None, parents=[cross.id], outcome="crash")
        for ind in (seed, left, right, cross, crashed):
            archive.add(ind.id)
        # an elite moving cells leaves its old one to the next best: refs move and vanish
        s.finish_trial(s.start_trial(left.id, 1).id, result(1.2, params=2_000_000))
        archive.add(left.id)
        later = s.create_run("night-2", {})
        trained(s, later, SEED, 1.25)
        want = _mirror_state(a)
    time.sleep(1.1)  # the mirror is made a second later: a commit stamped "now" would differ
    with Store.open(archive_url, readonly=True, git_dir=b) as mirror:
        assert _mirror_state(b) == want
        assert mirror.sync_git() == 0  # up to date: nothing written again
    assert "refs/elites/night-1/1,2" in want[0] and want[1].strip() == "refs/heads/night-2"
    git(b, "fsck", "--strict", "--no-dangling")
    # the writer goes on; the mirror catches up on its next open
    with Store.open(archive_url, git_dir=a) as s:
        newer = trained(s, s.get_run("night-1"), "x = 2\n", 1.05, parents=[cross.id])
        EliteArchive(s, run.id, GRID, None).add(newer.id)
        want = _mirror_state(a)
    with Store.open(archive_url, readonly=True, git_dir=b) as mirror:
        assert _mirror_state(b) == want
    # without git_dir a host's mirror is its cache's, made the same way
    with Store.open(archive_url, readonly=True) as mirror:
        assert _mirror_state(mirror.git.path) == want
    # data that no longer makes the recorded commit is an error naming the individual
    with Store.open(archive_url, git_dir=a) as s, s.engine.begin() as conn:
        conn.execute(text("UPDATE individuals SET hypothesis = 'edited' WHERE id = :id"), {"id": left.id})
    with pytest.raises(ArchiveError, match=rf"individual {left.id} of run 'night-1' records commit {left.commit[:12]}"):
        Store.open(archive_url, readonly=True, git_dir=tmp_path / "c.git")
