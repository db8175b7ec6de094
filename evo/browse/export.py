"""A run as autoresearch's `results.tsv`, so its analysis notebook reads evo runs unchanged.

The notebook does `pd.read_csv("results.tsv", sep="\\t")` and upper-cases `status`, expecting
KEEP/DISCARD/CRASH. One row per experiment, as there: an experiment is an individual that
trained (a rejected proposal never ran, so it is not one), in the order its first trial
finished; its val_bpb is the mean over its seeds, its memory the peak over them.
"""

from __future__ import annotations

from population.models import Run
from population.store import Store

from evo.browse import data

HEADER = ("commit", "val_bpb", "memory_gb", "status", "description")


def results_tsv(store: Store, run: Run) -> tuple[str, int]:
    """(the file's text, number of experiments). keep = it became an elite or improved the
    running best (`data.history`), crash = none of its trials finished ok, discard = the rest."""
    hist = data.history(store, run)
    memory: dict[int, float] = {}
    for p in hist.points:  # dicts keep insertion order: first finished trial first
        memory[p.individual_id] = max(memory.get(p.individual_id, 0.0), p.memory_mb or 0.0)
    lines = ["\t".join(HEADER)]
    for ind_id, peak_mb in memory.items():
        ind = hist.individuals[ind_id]
        commit = (ind.commit or ind.source_hash or "")[:7]
        description = " ".join((ind.hypothesis or ind.operator or "").split())  # no tabs or newlines
        if not ind.n_ok or ind.val_bpb_mean is None:
            lines.append(f"{commit}\t0.000000\t0.0\tcrash\t{description}")
            continue
        status = "keep" if ind_id in hist.kept else "discard"
        lines.append(f"{commit}\t{ind.val_bpb_mean:.6f}\t{peak_mb / 1024:.1f}\t{status}\t{description}")
    return "\n".join(lines) + "\n", len(lines) - 1
