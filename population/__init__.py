"""What exists: the archive of runs, individuals, trials and elites, and the git store of variants.

`population` records; it never runs trials or calls LLMs, and imports neither `evo` nor `trainer`.
Its modules, from the bottom up: `models` (the tables), `records` (the frozen rows the store
hands out), `migrations` (Alembic revisions from one schema version to the next), `opening`
(which database, is it an archive, of which schema; migrating an older one), `coordinator` (who
drives a run, and whether that process is alive), `store` (every read and write, one transaction
scope, the run's claim), `gitstore` (the variants as commits and refs), `noise` and `mapelites`
(the comparison rule and the grid), `elites` (the replace rule over the store).
See docs/internals.md for how the packages fit together.
"""

from population.elites import AddResult, AddStatus, EliteArchive
from population.errors import ArchiveError, ClaimLost, DuplicateSource, DuplicateTrial, RunBusy
from population.gitstore import GitStore
from population.mapelites import Dim, Grid
from population.noise import is_improvement, noise_sd
from population.store import Store

__all__ = [
    "AddResult",
    "AddStatus",
    "ArchiveError",
    "ClaimLost",
    "Dim",
    "DuplicateSource",
    "DuplicateTrial",
    "EliteArchive",
    "GitStore",
    "Grid",
    "RunBusy",
    "Store",
    "is_improvement",
    "noise_sd",
]
