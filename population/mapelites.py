"""The MAP-Elites grid: behaviour descriptors → cell, the replace rule, and QD metrics.

Cells keep different kinds of solutions apart so they do not compete: by default a variant is
placed by its parameter count and the tokens it trained on within the budget (both on log
scales, both measured by the trial), so a big-slow model and a small-fast one each keep their
own elite instead of the search collapsing onto whichever trade-off wins first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from population.noise import is_improvement

DEFAULT_DESCRIPTORS = ("params", "tokens")


@dataclass(frozen=True)
class Dim:
    """One descriptor axis: `bins` equal-width bins over [lo, hi] (in log10 space when `log`)."""

    name: str
    lo: float
    hi: float
    bins: int
    log: bool = True

    def __post_init__(self) -> None:
        if self.bins < 1:
            raise ValueError(f"descriptor {self.name!r}: bins must be at least 1")
        if not self.lo < self.hi:
            raise ValueError(f"descriptor {self.name!r}: lo ({self.lo}) must be below hi ({self.hi})")
        if self.log and self.lo <= 0:
            raise ValueError(f"descriptor {self.name!r}: a log-scale range must be positive")

    def index(self, value: float | None) -> int | None:
        """The bin of `value`; values outside the range go to the edge bins, so an unusually
        large or small variant still gets a cell (the edges are the frontier worth keeping)."""
        if value is None or math.isnan(value):
            return None
        if self.log:
            if value <= 0:
                return 0
            value, lo, hi = math.log10(value), math.log10(self.lo), math.log10(self.hi)
        else:
            lo, hi = self.lo, self.hi
        i = math.floor((value - lo) / (hi - lo) * self.bins)
        return min(max(i, 0), self.bins - 1)


class Grid:
    """A regular grid over descriptor dims.

    `qd_offset` turns val_bpb (lower is better) into a positive per-cell quality for the QD
    score; 8 bits per byte is what a model uniform over byte values would score, so any model
    that learned anything contributes positively.
    """

    def __init__(self, dims: Iterable[Dim], qd_offset: float = 8.0):
        self.dims = tuple(dims)
        if not self.dims:
            raise ValueError("a grid needs at least one descriptor dim")
        names = [d.name for d in self.dims]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate descriptor names in {names}")
        self.qd_offset = qd_offset

    def __repr__(self) -> str:
        return f"Grid({list(self.dims)!r}, qd_offset={self.qd_offset})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Grid) and self.to_config() == other.to_config()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dims)

    @property
    def n_cells(self) -> int:
        return math.prod(d.bins for d in self.dims)

    def cell(self, descriptors: Mapping[str, Any] | None) -> tuple[int, ...] | None:
        """The cell of a descriptor dict, or None when any dim's value is missing (a failed
        trial measures nothing, so it has no place in the grid)."""
        if not descriptors:
            return None
        idx = [d.index(descriptors.get(d.name)) for d in self.dims]
        return None if any(i is None for i in idx) else tuple(idx)

    @staticmethod
    def key(cell: tuple[int, ...]) -> str:
        """The cell as stored in the archive and named in git refs: "3,5"."""
        return ",".join(str(i) for i in cell)

    @staticmethod
    def parse_key(key: str) -> tuple[int, ...]:
        return tuple(int(part) for part in key.split(","))

    def coverage(self, n_elites: int) -> float:
        """Fraction of cells holding an elite."""
        return n_elites / self.n_cells

    def qd_score(self, elite_scores: Iterable[float]) -> float:
        """Σ (qd_offset − val_bpb) over elites: rewards both filling cells and improving them.
        A score worse than the offset counts 0 rather than subtracting from the others."""
        return sum(max(0.0, self.qd_offset - s) for s in elite_scores)

    def to_config(self) -> dict[str, Any]:
        return {"dims": [asdict(d) for d in self.dims], "qd_offset": self.qd_offset}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Grid:
        return cls([Dim(**d) for d in config["dims"]], qd_offset=config.get("qd_offset", 8.0))

    @classmethod
    def around(
        cls,
        center: Mapping[str, float],
        decades: float = 2.0,
        bins: int = 10,
        qd_offset: float = 8.0,
    ) -> Grid:
        """A log-scale grid spanning 2 × `decades` around the seed's measured descriptors.

        Used when the user gives no bounds: absolute parameter and token counts depend on the
        hardware and budget, the seed's own measurements do not. With an even number of bins
        the range is shifted by half a bin so the seed sits in the middle of a cell rather
        than on a boundary, where its own seed-to-seed jitter would split it across two cells.
        """
        dims = []
        for name, value in center.items():
            if value is None or value <= 0:
                raise ValueError(f"cannot centre a log-scale grid on {name}={value!r}")
            width = 2.0 * decades / bins
            lo = math.log10(value) - (bins // 2 + 0.5) * width
            dims.append(Dim(name, 10.0**lo, 10.0 ** (lo + bins * width), bins, log=True))
        return cls(dims, qd_offset=qd_offset)


def replaces(
    new_mean: float,
    new_n: int,
    old_mean: float | None,
    old_n: int,
    noise_sd: float | None,
) -> bool:
    """The MAP-Elites replace rule: an empty cell always takes the newcomer; an occupied one
    only when the newcomer is better by more than seed noise (see `population.noise`)."""
    if old_mean is None or old_n == 0:
        return True
    return is_improvement(new_mean, new_n, old_mean, old_n, noise_sd)
