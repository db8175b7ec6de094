"""The click options and checks more than one `evo` command takes, and the console they report on.

One definition each, so `evo trial`, `evo run` and the browsing commands cannot drift apart.
Imported on every `evo` start: nothing heavy here (the commands import their machinery inside).
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from evo.defaults import DEFAULT_DB
from trainer.dataset import DATA_DIR_ENV, DEFAULT_DATA_DIR
from trainer.sandbox import MODES as SANDBOX_MODES

# Progress and messages go to stderr; what a command produces (a path, a score line) to stdout.
console = Console(stderr=True)

DEVICE_HELP = "auto, cpu, cuda, cuda:N."


def positive(ctx, param, value):
    """A click callback: a number greater than 0 (None, the unset default, passes)."""
    if value is not None and value <= 0:
        raise click.BadParameter(f"must be greater than 0, got {value}")
    return value


def positive_int(ctx, param, value):
    """A click callback: an integer of at least 1 (None, the unset default, passes)."""
    if value is not None and value < 1:
        raise click.BadParameter(f"must be at least 1, got {value}")
    return value


def sandbox_choice() -> click.Choice:
    return click.Choice(list(SANDBOX_MODES))


def data_dir_option(f):
    return click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar=DATA_DIR_ENV,
                        help=f"Where prepared data lives [env {DATA_DIR_ENV}; default {DEFAULT_DATA_DIR}].")(f)


class ArchiveLocation(click.ParamType):
    """An archive as `evo run` takes it: an SQLite file path (a `Path`; next to it, the git store)
    or a database URL such as `postgresql://user@host:5432/evo`, kept as the string it is (a
    `Path` would fold its `//`)."""

    name = "PATH|URL"

    def convert(self, value, param, ctx):
        if isinstance(value, Path) or "://" not in str(value):
            path = Path(value)
            if path.is_dir():
                self.fail(f"{path} is a directory, not an archive file", param, ctx)
            return path
        return str(value)


def archive_file_option(f):
    """`--db` of `evo run`: the SQLite file it writes (next to it, the git store), or a server's URL
    (the git store is then this host's mirror, `population.opening.mirror_dir`)."""
    return click.option("--db", type=ArchiveLocation(), default=Path(DEFAULT_DB), show_default=True,
                        help="The archive: an SQLite file, or a database URL (postgresql://user@host:port/db).")(f)


def archive_option(f):
    """`--db` of the browsing commands: a file or an SQLAlchemy URL, opened read-only."""
    return click.option("--db", default=DEFAULT_DB, show_default=True, metavar="PATH|URL",
                        help="The archive: an SQLite file or a SQLAlchemy URL.")(f)


def run_option(f):
    return click.option("--run", "run_name", default=None, metavar="NAME", help="Run name or id [the latest run].")(f)
