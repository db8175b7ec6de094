"""A run as autoresearch's `results.tsv`, so its analysis notebook reads evo runs unchanged.

The notebook does `pd.read_csv("results.tsv", sep="\\t")` and upper-cases `status`, expecting
KEEP/DISCARD/CRASH. One row per experiment, as there: an experiment is an individual that
trained (a rejected proposal never ran, so it is not one), in the order its first trial
finished; its val_bpb is the mean over its seeds, its memory the peak over them.
"""

from __future__ import annotations

import csv
import io

from evo.browse import data
from population.records import Run
from population.store import Store

HEADER = ("commit", "val_bpb", "memory_gb", "status", "description")


def results_tsv(store: Store, run: Run) -> tuple[str, int]:
    """(the file's text, number of experiments). keep = it became an elite or improved the
    running best (`data.history`), crash = none of its trials finished ok, discard = the rest.

    Descriptions are one line; one that holds a double quote is quoted CSV-style (quotes
    doubled), which is how `read_csv` reads it back unchanged instead of running on into the
    next rows."""
    hist = data.history(store, run)
    memory: dict[int, float] = {}
    for p in hist.points:  # dicts keep insertion order: first finished trial first
        memory[p.individual_id] = max(memory.get(p.individual_id, 0.0), p.memory_mb or 0.0)
    out = io.StringIO()
    writer = csv.writer(out, delimiter="\t", lineterminator="\n")
    writer.writerow(HEADER)
    for ind_id, peak_mb in memory.items():
        ind = hist.individuals[ind_id]
        commit = (ind.commit or ind.source_hash or "")[:7]
        description = " ".join((ind.hypothesis or ind.operator or "").split())  # no tabs or newlines
        if not ind.n_ok or ind.val_bpb_mean is None:
            writer.writerow((commit, "0.000000", "0.0", "crash", description))
        else:
            status = "keep" if ind_id in hist.kept else "discard"
            writer.writerow((commit, f"{ind.val_bpb_mean:.6f}", f"{peak_mb / 1024:.1f}", status, description))
    return out.getvalue(), len(memory)
