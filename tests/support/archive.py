"""Helpers shared by the archive browser's tests."""

from __future__ import annotations

from population.models import Individual
from population.store import Store


def child_elite(store: Store, run_name: str) -> Individual:
    """An elite made by an operator from a parent (source loaded), so it has a diff and a lineage."""
    run = store.get_run(run_name)
    children = [ind for _, ind in store.elites(run.id) if ind.parents]
    assert children, "the short run produced no elite with a parent"
    return store.get_individual(children[0].id)
