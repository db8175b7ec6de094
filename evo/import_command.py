"""`evo import`: other tools' records as runs of the archive (today: autoresearch)."""

from __future__ import annotations

from pathlib import Path

import click

from evo.options import archive_file_option


@click.group("import")
def import_group():
    """Bring another tool's experiments into the archive as a run."""


@import_group.command("autoresearch")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--branch", default=None, help="The experiment branch [the checked-out one].")
@click.option("--results", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The experiment log [PATH/results.tsv].")
@click.option("--name", default=None, help="Run name [autoresearch-BRANCH].")
@archive_file_option
def autoresearch(path, branch, results, name, db):
    """An autoresearch repository's branch and results.tsv as a run: kept commits (and the discarded
    or crashed ones still in the repository) with their descriptions and recorded val_bpb, shown as
    imported scores that never compete; then `evo run --seed-from DB:RUN` re-trains the best."""
    from evo.autoresearch_import import import_autoresearch
    from population.store import Store

    with Store.open(db, create=True) as store:
        summary = import_autoresearch(store, path, branch=branch, results=results, name=name)
    click.echo(f"imported {summary.individuals} experiments of {path} (branch {summary.branch}) as run "
                  f"'{summary.run_name}' in {db}: {summary.kept} kept, {summary.discarded} discarded, "
                  f"{summary.crashed} crashed; their val_bpb are autoresearch's, shown as imported")
    for line in summary.skipped:
        click.echo(f"  skipped {line}")
    click.echo(f"next: evo lineage {summary.tip} --db {db}  |  evo run --seed-from {db}:{summary.run_name} "
                  f"(re-trains the best kept ones under evo before they compete)")
