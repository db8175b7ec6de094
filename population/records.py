"""What the store hands out: frozen snapshots of archive rows, never live ORM objects.

Optuna's storage returns `FrozenTrial`s for the same reason: a caller cannot change the archive
by assigning to an attribute, nothing lazy-loads behind its back from another thread, and a
storage backend could build these from any source. Each class has exactly the columns of its
table in `population.models` (generated from the table, so the two cannot drift) plus the small
derived properties callers use (`Individual.parents`, `Trial.ok`).

They are named tuples: the engine reads a hundred elites per proposal, and a tuple is built
from a row in under a microsecond where a frozen dataclass takes three (measured with
`scripts/bench_search.py --only bookkeeping`). Two records are equal when they are of the same
table and hold the same values; they hash by table and id.

An individual's `source` is most of the archive's bytes, so lists leave it out: only
`Store.get_individual` loads it, and reading `.source` from a record without it raises instead
of quietly returning nothing.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any

from population import models

_UNLOADED = object()


def _columns(model: type) -> tuple[str, ...]:
    return tuple(c.key for c in model.__table__.columns if c.key != "source")


def _eq(self: Any, other: object) -> bool:
    return type(self) is type(other) and tuple.__eq__(self, other)


def _record(model: type, doc: str, *, extra: tuple[str, ...] = (), **properties: Any) -> type:
    base = namedtuple(f"_{model.__name__}", _columns(model) + extra)
    namespace = {
        "__doc__": doc, "__module__": __name__, "__slots__": (),
        "__eq__": _eq, "__ne__": lambda self, other: not _eq(self, other),
        "__hash__": lambda self: hash((type(self).__name__, self.id)),
        **properties,
    }
    return type(model.__name__, (base,), namespace)


def _source(self: Any) -> str | None:
    if self.loaded_source is _UNLOADED:
        raise AttributeError(f"individual {self.id} was read without its source (Store.get_individual loads it)")
    return self.loaded_source


Run = _record(models.Run, "A run: its name, status and the config that resumes it.")
Individual = _record(
    models.Individual,
    "A variant with its cached trial aggregates; `source` only when read by `get_individual`.",
    extra=("loaded_source",),
    source=property(_source),
    parents=property(lambda self: [p for p in (self.parent1_id, self.parent2_id) if p is not None]),
    __repr__=lambda self: f"<Individual {self.id} run={self.run_id} {self.status} val_bpb={self.val_bpb_mean}>",
)
Trial = _record(models.Trial, "One training of one individual under one seed.",
                ok=property(lambda self: self.outcome == "ok"))
Elite = _record(models.Elite, "The occupant of one MAP-Elites cell of a run.")
GenerationStat = _record(models.GenerationStat, "One generation's statistics.")
LLMCall = _record(models.LLMCall, "One LLM request and what it cost.")

_RECORDS: dict[type, tuple[type, tuple[str, ...]]] = {
    model: (record, _columns(model))
    for model, record in (
        (models.Run, Run), (models.Individual, Individual), (models.Trial, Trial), (models.Elite, Elite),
        (models.GenerationStat, GenerationStat), (models.LLMCall, LLMCall),
    )
}


def freeze(row: Any) -> Any:
    """The record of an ORM row, read inside its session (an expired column, such as one set by
    `onupdate`, is loaded there). A loaded `source` comes along; an unloaded one stays out."""
    record, columns = _RECORDS[type(row)]
    loaded = row.__dict__
    values = [loaded[name] if name in loaded else getattr(row, name) for name in columns]
    if record is Individual:
        values.append(loaded.get("source", _UNLOADED))
    return tuple.__new__(record, values)
