"""`evo export --results-tsv`: autoresearch's analysis notebook must read it as it reads its own
results.tsv — `pd.read_csv(path, sep="\\t")`, statuses upper-cased to KEEP/DISCARD/CRASH."""

from __future__ import annotations

import pandas as pd

from evo.browse.export import results_tsv
from population.elites import EliteArchive
from population.mapelites import Grid
from population.store import Store
from tests.conftest import evo


def notebook_load(path) -> pd.DataFrame:
    """What autoresearch's analysis.ipynb does with results.tsv."""
    df = pd.read_csv(path, sep="\t")
    df["status"] = df["status"].str.strip().str.upper()
    return df


def test_results_tsv_of_a_real_run_loads_like_autoresearch(short_run, tmp_path):
    db, name = short_run
    target = tmp_path / "results.tsv"
    evo("export", "--results-tsv", target, "--db", db, "--run", name)
    df = notebook_load(target)
    assert list(df.columns) == ["commit", "val_bpb", "memory_gb", "status", "description"]
    with Store.open(db, readonly=True) as store:
        run = store.get_run(name)
        trained = [i for i in store.individuals(run.id) if i.n_trials]
        elites = [i for _, i in store.elites(run.id)]
    assert len(df) == len(trained) and set(df["status"]) <= {"KEEP", "DISCARD", "CRASH"}
    by_commit = df.set_index("commit")
    assert all(len(c) == 7 for c in df["commit"])
    for ind in elites:  # today's elites are kept, with their mean score and hypothesis
        row = by_commit.loc[ind.commit[:7]]
        assert row["status"] == "KEEP" and abs(row["val_bpb"] - ind.val_bpb_mean) < 1e-6
        assert row["description"] == ind.hypothesis and row["memory_gb"] > 0


def test_keep_discard_crash(tmp_path):
    """A seed, a clear improvement in its cell (keep), worse siblings (discard), a crash."""
    grid = Grid.around({"params": 1e6, "tokens": 1e4})
    with Store.open(tmp_path / "archive.db", create=True) as store:
        run = store.create_run("r", {"grid_bounds": grid.to_config()})
        store.update_run(run.id, noise_sd=0.001)
        measured = {"params": 1_000_000, "tokens": 10_000, "peak_memory_mb": 2048.0}

        def trained(source, parents, hypothesis, **result):
            ind = store.add_individual(run.id, source, parents, "offline", hypothesis)
            trial = store.start_trial(ind.id, seed=0)
            store.finish_trial(trial.id, {**measured, **result})
            EliteArchive(store, run.id, grid, 0.001).add(ind.id)
            return ind

        seed = trained("seed = 1\n", [], "seed: train.py", outcome="ok", val_bpb=1.0)
        better = trained("seed = 2\n", [seed.id], "LR 0.04 → 0.03", outcome="ok", val_bpb=0.95)
        trained("seed = 3\n", [seed.id], "LR 0.04 → 0.08", outcome="ok", val_bpb=1.05)
        trained("seed = 4\n", [better.id], '"RoPE base 10k → 50k\n helps long context', outcome="ok", val_bpb=1.2)
        trained("seed = 5\n", [better.id], "DEPTH 8 → 64\tso deep", outcome="oom", val_bpb=None,
                peak_memory_mb=80_000.0)
        text, n = results_tsv(store, run)
    path = tmp_path / "results.tsv"
    path.write_text(text)
    df = notebook_load(path)
    assert n == 5 and list(df["status"]) == ["KEEP", "KEEP", "DISCARD", "DISCARD", "CRASH"]
    assert list(df["val_bpb"]) == [1.0, 0.95, 1.05, 1.2, 0.0] and list(df["memory_gb"]) == [2.0, 2.0, 2.0, 2.0, 0.0]
    assert df["description"].iloc[3] == '"RoPE base 10k → 50k helps long context'  # an open quote ran on
    assert df["description"].iloc[4] == "DEPTH 8 → 64 so deep"  # a tab would have broken the columns
