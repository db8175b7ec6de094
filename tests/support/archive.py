"""Helpers shared by the archive's and the browser's tests: result dicts, trained individuals."""

from __future__ import annotations

from population.mapelites import Dim, Grid
from population.records import Individual, Run
from population.store import Store

GRID = Grid([Dim("params", 1e3, 1e7, 4), Dim("tokens", 1e6, 1e10, 4)])


def result(val_bpb=1.0, outcome="ok", params=20_000, tokens=10**8, **extra):
    """A TrialResult.to_dict()-shaped dict."""
    ok = outcome == "ok"
    return {
        **dict(
        outcome=outcome, val_bpb=val_bpb if ok else None, seed=0, device="cpu", budget=60.0,
        training_seconds=60.0, total_seconds=70.0, startup_seconds=2.0, compile_seconds=1.0,
        eval_seconds=3.0, peak_memory_mb=512.0, params=params, tokens=tokens if ok else None,
        steps=100, mfu=0.3, tokens_per_second=1e6, exit_code=0 if ok else 1,
        stderr_tail="" if ok else "Traceback ...\nRuntimeError: boom", message=outcome,
        ),
        **extra,
    }


def trained(store: Store, run: Run, source: str, val_bpb=1.0, parents=(), seed=0, **kw):
    ind = store.add_individual(run.id, source, list(parents), "offline", f"try {source!r}", 1)
    trial = store.start_trial(ind.id, seed, "cpu", "w0")
    store.finish_trial(trial.id, result(val_bpb, **kw))
    return store.get_individual(ind.id)


def child_elite(store: Store, run_name: str) -> Individual:
    """An elite made by an operator from a parent (source loaded), so it has a diff and a lineage."""
    run = store.get_run(run_name)
    children = [ind for _, ind in store.elites(run.id) if ind.parents]
    assert children, "the short run produced no elite with a parent"
    return store.get_individual(children[0].id)
