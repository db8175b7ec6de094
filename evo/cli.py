"""The `evo` command.

Every user-caused error (bad path, unknown run, empty corpus, ...) is raised somewhere below as
one of the exceptions `_user_errors()` names, with a one-line message; `EvoGroup` turns it into
`Error: ...` and exit status 1, so nobody sees a traceback for a typo.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from evo.browse.commands import BROWSE_COMMANDS
from evo.datasets import resolve_dataset
from evo.defaults import CPU_BUDGET, GPU_BUDGET
from evo.import_command import import_group
from evo.migrate_command import migrate
from evo.options import DEVICE_HELP, console, data_dir_option, positive, sandbox_choice
from evo.run_command import run
from trainer.corpus import TEXT_FIELD, VAL_FRACTION, CorpusError
from trainer.dataset import CPU_VOCAB, GPU_VOCAB, DatasetError
from trainer.download import DownloadError


def _user_errors() -> tuple[type[Exception], ...]:
    from evo.errors import EvoError
    from population.store import ArchiveError

    return (CorpusError, DatasetError, DownloadError, ArchiveError, EvoError)


class EvoGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise  # click's own (--help, a bad flag): nothing to translate, nor to import the archive for
        except _user_errors() as e:
            raise click.ClickException(str(e)) from None
        except Exception as e:  # the archive's file damaged where opening it did not read
            import sqlalchemy.exc

            if not isinstance(e, sqlalchemy.exc.DatabaseError) or isinstance(e, sqlalchemy.exc.IntegrityError):
                raise
            from population.opening import damaged

            raise click.ClickException(damaged("the archive", e)) from None


@click.group(cls=EvoGroup)
@click.version_option(package_name="evo")
def main():
    """evo: evolve train.py variants in a MAP-Elites archive, scored by val_bpb."""


@main.command()
@click.argument("source", default="stdlib")
@click.argument("paths", nargs=-1)
@data_dir_option
@click.option("--vocab-size", type=int, default=None,
              help=f"BPE vocabulary incl. BOS [default: {CPU_VOCAB} on CPU, {GPU_VOCAB} on GPU].")
@click.option("--shards", type=int, default=None, help="climbmix: number of training shards to download.")
@click.option("--val-fraction", type=float, default=VAL_FRACTION, show_default=True,
              help="Share of documents held out.")
@click.option("--text-field", default=TEXT_FIELD, show_default=True,
              help="Field/column holding text in .jsonl/.parquet.")
@click.option("--force", is_flag=True, help="Rebuild even if cached.")
def prepare(source, paths, data_dir, vocab_size, shards, val_fraction, text_field, force):
    """Tokenize a corpus once into token files: SOURCE is stdlib (default), files PATH..., or climbmix."""
    from trainer.prepare import prepare as run_prepare

    ds = run_prepare(source, paths=list(paths), shards=shards, data_dir=data_dir, vocab_size=vocab_size,
                     val_fraction=val_fraction, text_field=text_field, console=console, force=force)
    click.echo(ds.path)


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--budget", type=float, default=None, callback=positive,
              help=f"Training seconds [default: {CPU_BUDGET:g} on CPU, {GPU_BUDGET:g} on GPU].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@data_dir_option
@click.option("--keep-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run in this directory and keep its logs (default: a temporary one).")
@click.option("--sandbox", type=sandbox_choice(), default="auto", show_default=True,
              help="OS sandbox around the trial (strict: refuse to run without it).")
def trial(path, budget, seed, device, data_dir, keep_dir, sandbox):
    """Train one train.py for a fixed time budget and print its val_bpb (scored outside the trial)."""
    from trainer.runner import format_summary, run_trial
    from trainer.sandbox import SandboxError, resolve
    from trainer.trial_config import default_budget

    if not path.is_file():
        raise click.ClickException(f"{path}: no such file (give the path to a train.py)")
    try:
        compile(path.read_text(), str(path), "exec")
    except (SyntaxError, UnicodeDecodeError, ValueError) as e:
        raise click.ClickException(f"{path}: not a Python file ({type(e).__name__}: {getattr(e, 'msg', e)})")
    ds = resolve_dataset(data_dir, prepare_if_missing=False)
    import torch

    budget = budget or default_budget("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")
    try:
        box = resolve(sandbox)
    except SandboxError as e:
        raise click.ClickException(str(e))
    console.print(f"trial: {path} | budget {budget:g}s | seed {seed} | device {device} | data {ds.path.name}")
    console.print(box.describe())
    with console.status("training…"):
        result = run_trial(path, dataset_dir=ds.path, budget=budget, seed=seed, device=device, workdir=keep_dir,
                           sandbox=sandbox)
    click.echo(format_summary(result))
    if not result.ok:
        if result.stderr_tail:
            click.echo("--- stderr tail ---\n" + result.stderr_tail[-1500:], err=True)
        sys.exit(2)


main.add_command(run)
main.add_command(migrate)
main.add_command(import_group)
for command in BROWSE_COMMANDS:
    main.add_command(command)

if __name__ == "__main__":
    main()
