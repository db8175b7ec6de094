"""The CLI's views of an archive as rich renderables, laid out to read on an 80-column terminal:
narrow columns for numbers, the hypothesis last so it takes whatever width is left.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Group, RenderableType
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from evo.autoresearch_import import imported_rows
from evo.browse import fmt
from evo.browse.data import RunSummary, Step
from population.mapelites import Grid
from population.records import Elite, Individual, Run, Trial

# The default grid's descriptors: always shown as columns, since they say what kind of model it is.
SIZE_COLUMNS = ("params", "tokens")


def _table(title: str | None = None) -> Table:
    return Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, pad_edge=False,
                 collapse_padding=True, header_style="bold")


def _one_line(text: str) -> Text:
    """A cell that ends in … where the terminal ends, in the one column allowed to give way."""
    return Text(fmt.first_line(text), no_wrap=True, overflow="ellipsis")


def runs_table(summaries: Sequence[RunSummary]) -> Table:
    table = _table()
    table.show_edge = False  # with the default run names, the row is 79 characters wide
    table.caption, table.caption_justify = "cells: elites / cells of the run's grid", "left"
    table.add_column("run", overflow="fold")
    table.add_column("started (UTC)", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("trials", justify="right", no_wrap=True)
    table.add_column("best val_bpb", no_wrap=True)
    table.add_column("cells", justify="right", no_wrap=True)
    for s in summaries:
        trials = f"{s.counts['trials']}" + (f" [red]({s.counts['failed']}✗)[/]" if s.counts["failed"] else "")
        best = f"{fmt.bpb(s.best.val_bpb_mean)} [dim]{fmt.short_id(s.best)}[/]" if s.best else \
            f"{fmt.bpb(s.imported_best)} [dim]imported[/]" if s.imported_best is not None else "-"
        cells = f"{s.elites}/{s.cells}" if s.cells else "-"
        table.add_row(s.run.name, s.run.created_at.strftime("%Y-%m-%d %H:%M"), s.run.status, trials, best, cells)
    return table


def elites_table(run: Run, grid: Grid | None, elites: Sequence[tuple[Elite, Individual]]) -> Table:
    extra_dims = [d.name for d in grid.dims if d.name not in SIZE_COLUMNS] if grid else []
    cells = f" in {grid.n_cells} cells ({len(elites) / grid.n_cells:.0%})" if grid else ""
    table = _table(f"{run.name}: {len(elites)} elite{'s' * (len(elites) != 1)}{cells}, best first")
    table.add_column("id", no_wrap=True)
    table.add_column("cell", no_wrap=True)
    for name in (*extra_dims, *SIZE_COLUMNS):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("val_bpb", justify="right", no_wrap=True)
    table.add_column("± sd", justify="right", no_wrap=True)
    table.add_column("n", justify="right", no_wrap=True)
    table.add_column("hypothesis", min_width=12)
    for elite, ind in elites:
        measured = ind.descriptors or {}
        table.add_row(
            fmt.short_id(ind), elite.cell, *(fmt.count(measured.get(n)) for n in (*extra_dims, *SIZE_COLUMNS)),
            fmt.bpb(ind.val_bpb_mean), fmt.bpb(ind.val_bpb_sd) if ind.val_bpb_sd is not None else "-",
            str(ind.n_ok), _one_line(ind.hypothesis or ind.operator),
        )
    return table


def individual_panel(ind: Individual, run: Run, parents: Sequence[Individual], elite_cell: str | None) -> Table:
    """The facts about one individual, as label/value lines."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    table.add_row("individual", f"{fmt.label(ind)}  [dim](run {run.name}, generation {ind.generation})[/]")
    table.add_row("val_bpb", f"{fmt.score(ind)}  [dim]{ind.n_trials} trial(s), {ind.n_trials - ind.n_ok} failed[/]")
    recorded = imported_rows(run).get(ind.id)
    if recorded:  # another tool's number: shown for what it is, never a measurement
        table.add_row("imported", f"val_bpb {fmt.bpb(recorded['val_bpb'])}, {recorded['status']}, commit "
                                  f"{recorded['commit']} [dim](recorded by {run.config['imported']['kind']}, "
                                  f"not measured by evo)[/]")
    status = ind.status + (f": {ind.rejected_reason}" if ind.rejected_reason else "")
    if elite_cell:
        status += f", [green]elite of cell {elite_cell}[/]"
    elif ind.cell:
        status += f", in cell {ind.cell}"
    table.add_row("status", status)
    table.add_row("operator", ind.operator or "-")
    table.add_row("parents", ", ".join(f"{fmt.label(p)} ({fmt.bpb(p.val_bpb_mean)})" for p in parents) or "none (a seed)")
    table.add_row("commit", ind.commit or "-")
    table.add_row("source", ind.source_hash or "-")
    table.add_row("hypothesis", Text(ind.hypothesis or "-"))
    return table


def trials_table(trials: Sequence[Trial]) -> Table:
    table = _table()
    for name in ("seed", "outcome", "val_bpb", "params", "tokens", "steps", "mem MB", "train s"):
        table.add_column(name, justify="left" if name == "outcome" else "right", no_wrap=True)
    table.add_column("message", min_width=10)
    for t in trials:
        outcome = t.outcome or t.status
        table.add_row(
            str(t.seed), outcome if t.outcome in ("ok", None) else f"[red]{outcome}[/]", fmt.bpb(t.val_bpb),
            fmt.count(t.params), fmt.count(t.tokens), fmt.count(t.steps),
            f"{t.peak_memory_mb:.0f}" if t.peak_memory_mb is not None else "-",
            f"{t.training_seconds:.1f}" if t.training_seconds is not None else "-",
            _one_line("" if t.ok else (t.message or "")),
        )
    return table


def diff_view(text: str) -> RenderableType:
    """Highlighted, wrapped rather than cropped: a hidden end of line may be the whole change."""
    if not text:
        return Text("(identical sources)", style="dim")
    return Syntax(text, "diff", theme="ansi_dark", word_wrap=True, background_color="default")


def lineage_tree(steps: Sequence[Step], run: Run) -> Tree:
    """The lineage as a flat trunk, oldest first, each step one line (cut at the terminal's edge)
    with its Δval_bpb against the step before; a crossover's other parent hangs off its step."""
    last = steps[-1].ind
    n = len(steps) - 1
    recorded = imported_rows(run)  # another tool's scores, for individuals evo has not trained

    def score(ind) -> tuple[float | None, str]:
        if ind.val_bpb_mean is not None or ind.id not in recorded:
            return ind.val_bpb_mean, fmt.bpb(ind.val_bpb_mean)
        row = recorded[ind.id]
        return row["val_bpb"], f"{fmt.bpb(row['val_bpb'])} imported {row['commit']} {row['status']}"

    def change(step) -> float | None:
        if step.delta is not None or step.parent is None:
            return step.delta
        mine, theirs = score(step.ind)[0], score(step.parent)[0]
        return mine - theirs if mine is not None and theirs is not None else None

    tree = Tree(Text.from_markup(f"[bold]lineage of {fmt.label(last)}[/] [dim]({run.name}, {n} step{'s' * (n != 1)}) "
                                 f"· val_bpb · Δ vs the step above[/]"))
    width = max(len(fmt.label(step.ind)) for step in steps)
    for step in steps:
        ind = step.ind
        d = change(step)
        style = "green" if d is not None and d < 0 else "red" if d else ""
        line = Text.assemble(
            (fmt.label(ind).ljust(width), "bold" if ind is last else ""), "  ", score(ind)[1], "  ",
            (f"{fmt.delta(d):>7}", style), "  ", (_operator_prefix(ind), "dim"), fmt.first_line(ind.hypothesis),
            no_wrap=True, overflow="ellipsis",  # one line per step; `evo show` has the whole hypothesis
        )
        node = tree.add(line)
        if step.other is not None:
            node.add(Text.assemble(("× also from ", "dim"), fmt.label(step.other), "  ",
                                   fmt.bpb(step.other.val_bpb_mean), ("  (its lineage: evo lineage ", "dim"),
                                   fmt.short_id(step.other), (")", "dim")))
    return tree


def _operator_prefix(ind) -> str:
    """`offline: `, unless the hypothesis already names it (a seed's is `seed: train.py`)."""
    operator = ind.operator or "-"
    return "" if (ind.hypothesis or "").startswith(operator) else f"{operator}: "


STDERR_LINES = 12  # of a failed trial's stderr tail: enough for the traceback's last frames


def show_view(ind: Individual, run: Run, parents: Sequence[Individual], elite_cell: str | None,
              trials: Sequence[Trial]) -> RenderableType:
    """The facts, the trials, and the end of each failed trial's stderr (what broke)."""
    parts: list[RenderableType] = [individual_panel(ind, run, parents, elite_cell)]
    if trials:
        parts += [Text(""), Text("trials", style="bold"), trials_table(trials)]
    for t in trials:
        if t.status == "done" and not t.ok and t.stderr_tail:
            tail = "\n".join(t.stderr_tail.rstrip().splitlines()[-STDERR_LINES:])
            parts += [Text(f"stderr of seed {t.seed} ({t.outcome}), last lines", style="bold"),
                      Text(tail, style="dim"), Text("")]
    return Group(*parts)


def parent_diff_title(parent: Individual) -> Text:
    return Text(f"diff against parent {fmt.label(parent)}", style="bold")
