"""What the store hands out: frozen snapshots of archive rows, never live ORM objects.

Optuna's storage returns `FrozenTrial`s for the same reason: a caller cannot change the archive
by assigning to an attribute, nothing lazy-loads behind its back from another thread, and a
storage backend could build these from any source. Each class has exactly the columns of its
table in `population.models` (generated from the table, so the two cannot drift) plus the small
derived properties callers use (`Individual.parents`, `Trial.ok`).

An individual's `source` is most of the archive's bytes, so lists leave it out: only
`Store.get_individual` loads it, and reading `.source` from a record without it raises instead
of quietly returning nothing.
"""

from __future__ import annotations

from dataclasses import field, make_dataclass
from typing import Any

from population import models

_UNLOADED = object()


def _record(model: type, doc: str, *, exclude: tuple[str, ...] = (), extra: tuple = (),
            namespace: dict[str, Any] | None = None) -> type:
    columns = [(c.key, Any) for c in model.__table__.columns if c.key not in exclude]
    return make_dataclass(model.__name__, columns + list(extra), frozen=True, slots=True,
                          namespace={"__doc__": doc, "__module__": __name__, **(namespace or {})})


def _source(self: Any) -> str | None:
    if self._source is _UNLOADED:
        raise AttributeError(f"individual {self.id} was read without its source (Store.get_individual loads it)")
    return self._source


def _individual_repr(self: Any) -> str:
    return f"<Individual {self.id} run={self.run_id} {self.status} val_bpb={self.val_bpb_mean}>"


Run = _record(models.Run, "A run: its name, status and the config that resumes it.")
Individual = _record(
    models.Individual,
    "A variant with its cached trial aggregates; `source` only when read by `get_individual`.",
    exclude=("source",),
    extra=(("_source", Any, field(default=_UNLOADED, repr=False, compare=False)),),
    namespace={
        "source": property(_source),
        "parents": property(lambda self: [p for p in (self.parent1_id, self.parent2_id) if p is not None]),
        "__repr__": _individual_repr,
    },
)
Trial = _record(models.Trial, "One training of one individual under one seed.",
                namespace={"ok": property(lambda self: self.outcome == "ok")})
Elite = _record(models.Elite, "The occupant of one MAP-Elites cell of a run.")
GenerationStat = _record(models.GenerationStat, "One generation's statistics.")
LLMCall = _record(models.LLMCall, "One LLM request and what it cost.")

_RECORDS: dict[type, type] = {
    models.Run: Run, models.Individual: Individual, models.Trial: Trial, models.Elite: Elite,
    models.GenerationStat: GenerationStat, models.LLMCall: LLMCall,
}
_COLUMNS: dict[type, tuple[str, ...]] = {
    model: tuple(c.key for c in model.__table__.columns if c.key != "source") for model in _RECORDS
}


def freeze(row: Any) -> Any:
    """The record of an ORM row, read inside its session (an expired column, such as one set by
    `onupdate`, is loaded there). A loaded `source` comes along; an unloaded one stays out."""
    model = type(row)
    record = _RECORDS[model](**{name: getattr(row, name) for name in _COLUMNS[model]})
    if model is models.Individual and "source" in row.__dict__:
        object.__setattr__(record, "_source", row.__dict__["source"])
    return record
