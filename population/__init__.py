"""What exists: the archive of runs, individuals, trials and elites, and the git store of variants.

`population` records; it never runs trials or calls LLMs, and imports neither `evo` nor `trainer`.
See docs/internals.md for how the packages fit together.
"""

from population.gitstore import GitStore
from population.mapelites import Dim, Grid
from population.noise import is_improvement, noise_sd
from population.store import ArchiveError, DuplicateSource, DuplicateTrial, Store

__all__ = [
    "ArchiveError",
    "Dim",
    "DuplicateSource",
    "DuplicateTrial",
    "GitStore",
    "Grid",
    "Store",
    "is_improvement",
    "noise_sd",
]
