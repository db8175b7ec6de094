"""The browsing commands: `evo runs`, `elites`, `show`, `lineage`, `diff`, `export`, `plot`, `ui`.

Each opens the archive read-only, so any of them can run next to a live `evo run`. Errors a
user can cause are `ArchiveError`/`EvoError`, which the `evo` group prints as one line.
The modules behind the commands are imported inside them: `evo` imports this one on every
start, and SQLAlchemy, rich's renderers and matplotlib would cost every other command a second.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from evo.errors import EvoError
from evo.options import archive_option, run_option


def _console():
    from rich.console import Console

    return Console(highlight=False)


@click.command()
@archive_option
def runs(db):
    """List the archive's runs: start date, trials, best val_bpb, cells filled."""
    from evo.browse import data, tables

    with data.open_archive(db) as store:
        summaries = [data.summarize(store, run) for run in store.list_runs()]
    if not summaries:
        raise EvoError(f"{db} has no runs yet (start one with `evo run`)")
    _console().print(tables.runs_table(summaries))


@click.command()
@archive_option
@run_option
def elites(db, run_name):
    """One row per archive cell: its best variant, scored over n trials."""
    from evo.browse import data, tables

    with data.open_archive(db) as store:
        run = data.pick_run(store, run_name)
        rows = store.elites(run.id)
    console = _console()
    if not rows:
        console.print(f"run {run.name} has no elites yet (the grid appears once the seed has been measured)")
        return
    console.print(tables.elites_table(run, data.grid_of(run), rows))


@click.command()
@click.argument("ref", metavar="ID")
@archive_option
def show(ref, db):
    """One variant: scores, trials, hypothesis, parents, and the diff against each parent.

    ID is an individual's number or a prefix (4+ hex) of its commit or source hash.
    """
    from rich.text import Text

    from evo.browse import data, tables

    with data.open_archive(db) as store:
        ind = store.get_individual(ref)
        run = store.get_run(ind.run_id)
        parents = [store.get_individual(p) for p in ind.parents]
        elite_cell = next((e.cell for e, i in store.elites(ind.run_id) if i.id == ind.id), None)
        trials = store.trials(individual_id=ind.id)
        diffs = [(p, data.diff(p, ind)) for p in parents] if ind.source is not None else []
    console = _console()
    console.print(tables.show_view(ind, run, parents, elite_cell, trials))
    for parent, text in diffs:
        console.print(tables.parent_diff_title(parent))
        if console.is_terminal:
            console.print(tables.diff_view(text))
        else:  # a plain patch when piped: lines kept whole, not wrapped at the terminal's width
            console.print(Text(text or "(identical sources)"), soft_wrap=True)


@click.command()
@click.argument("ref", metavar="ID")
@archive_option
def lineage(ref, db):
    """A variant's ancestry back to its seed, each step with its hypothesis and Δval_bpb."""
    from evo.browse import data, tables

    with data.open_archive(db) as store:
        ind = store.get_individual(ref)
        run = store.get_run(ind.run_id)
        steps = data.lineage(store, ind)
    _console().print(tables.lineage_tree(steps, run))


@click.command("diff")
@click.argument("a", metavar="A")
@click.argument("b", metavar="B")
@archive_option
def diff_command(a, b, db):
    """The unified diff from variant A's train.py to B's (a plain patch when piped)."""
    from evo.browse import data, tables

    with data.open_archive(db) as store:
        first, second = store.get_individual(a), store.get_individual(b)
    text = data.diff(first, second)
    console = _console()
    if console.is_terminal:
        console.print(tables.diff_view(text))
    elif text:
        click.echo(text)


@click.command()
@click.argument("ref", metavar="[ID]", required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the variant's train.py here [stdout].")
@click.option("--results-tsv", type=click.Path(dir_okay=False, allow_dash=True), default=None, metavar="FILE",
              help="Instead: write the run's trials as autoresearch's results.tsv ('-' for stdout).")
@archive_option
@run_option
def export(ref, output, results_tsv, db, run_name):
    """A variant's source, ready to run alone (`evo trial train.py`), or the run as results.tsv."""
    from evo.browse import data, fmt
    from evo.browse.export import results_tsv as make_tsv

    if (ref is None) == (results_tsv is None):
        raise click.UsageError("give either an individual ID or --results-tsv FILE")
    if results_tsv is not None:
        with data.open_archive(db) as store:
            text, n = make_tsv(store, data.pick_run(store, run_name))
        if results_tsv == "-":
            sys.stdout.write(text)
        else:
            Path(results_tsv).write_text(text)
            click.echo(f"wrote {results_tsv}: {n} experiments", err=True)
        return
    with data.open_archive(db) as store:
        ind = store.get_individual(ref)
    if ind.source is None:
        raise EvoError(f"individual {fmt.label(ind)} was rejected before it had a source ({ind.rejected_reason})")
    if output is None:
        sys.stdout.write(ind.source)
        return
    with open(output, "w", newline="") as f:  # byte for byte: no newline translation
        f.write(ind.source)
    click.echo(f"wrote {output}: {fmt.label(ind)}, val_bpb {fmt.score(ind)}; train it alone with: "
               f"evo trial {output}", err=True)


@click.command()
@archive_option
@run_option
@click.option("-o", "--out-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Where to write progress.{png,svg} and heatmap.{png,svg}.")
def plot(db, run_name, out_dir):
    """The progress chart (every trial, the running best, improvements) and the archive heatmap."""
    from evo.browse import data, plots

    with data.open_archive(db) as store:
        run = data.pick_run(store, run_name)
        hist = data.history(store, run)
        elite_rows = store.elites(run.id)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = plots.progress_chart(run, hist, out_dir / "progress")
    grid = data.grid_of(run)
    if grid is None:
        click.echo(f"run {run.name} has no grid yet: no heatmap", err=True)
    else:
        written += plots.heatmap(run, grid, elite_rows, out_dir / "heatmap")
    for path in written:
        click.echo(path)


@click.command()
@archive_option
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port on 127.0.0.1 (0: any free port).")
def ui(db, port):
    """Serve a local, read-only web page of the archive; it follows a running `evo run`."""
    from evo.browse.web import serve

    serve(db, port)


BROWSE_COMMANDS = (runs, elites, show, lineage, diff_command, export, plot, ui)
