"""`evo migrate`: bring an archive to this evo's schema.

`evo run` (new run or `--resume`) migrates an older archive itself when it opens it; the browsing
commands open archives read-only and so cannot, and say to run this once. Only the database is
touched (no git store needed), in one transaction: a migration that fails leaves it as it was.
"""

from __future__ import annotations

import click

from evo.options import archive_option, console


@click.command("migrate", help="Upgrade an archive written by an older evo to this evo's schema, in place.")
@archive_option
def migrate(db):
    from population.opening import migrate_archive

    before, after = migrate_archive(db)
    if before == after:
        console.print(f"{db}: archive schema {after}, already this evo's; nothing to do")
    else:
        console.print(f"{db}: migrated from archive schema {before} to {after}")
