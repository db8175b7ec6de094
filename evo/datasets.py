"""Which prepared dataset a command trains on (`evo trial`, `evo run`)."""

from __future__ import annotations

from pathlib import Path

from evo.options import console
from trainer.dataset import MANIFEST_NAME, Dataset, DatasetError


def resolve_dataset(data_dir: Path | None, prepare_if_missing: bool):
    """The dataset to train on: `data_dir` itself if it is a prepared dataset, else the default
    one inside it; prepares the embedded stdlib corpus first if asked to. Its files are checked
    whole (`Dataset.check`) before anything trains on them."""
    from trainer.prepare import find_dataset, prepare as run_prepare

    if data_dir is not None and (data_dir / MANIFEST_NAME).exists():
        return Dataset(data_dir).check()
    try:
        return find_dataset(data_dir).check()
    except DatasetError:
        if not prepare_if_missing:
            raise
        console.print("[yellow]No prepared data yet: preparing the default corpus (Python stdlib) first.[/]")
        return run_prepare("stdlib", data_dir=data_dir, console=console)
