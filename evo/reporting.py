"""What a run tells the person watching it: the `Reporter` the engine calls, the `RunStatus`
value it hands over, and `ConsoleReporter`, which `evo run` shows with rich (a log line per
trial and per generation, and a live status line under them). Tests collect the same calls.

The reporter is given values, never the engine, so that what it shows cannot reach into the
loop's state (and the loop can change without the reporters noticing).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.console import Console
from rich.live import Live
from rich.text import Text

from population.records import Individual
from trainer.runner import TrialResult


@dataclass(frozen=True)
class RunStatus:
    """The live state of a run, as the status line shows it."""

    run_name: str
    finished_trials: int
    failed_trials: int
    in_flight: int
    proposing: int
    best: Individual | None  # the run's best individual so far
    elites: int
    cells: int | None  # None until the bootstrap has measured the seed and built the grid
    elapsed_s: float
    llm_calls: int | None = None  # the run's LLM calls so far; None for an operator that makes none
    trained_children: int = 0  # the run's children (not its seeds) with a finished trial

    @property
    def calls_per_child(self) -> float | None:
        """LLM calls per trained child so far (None without LLM calls or children)."""
        if not self.llm_calls or not self.trained_children:
            return None
        return self.llm_calls / self.trained_children


class Reporter:
    """The engine's calls; each does nothing here."""

    def trial_done(self, ind: Individual, result: TrialResult, placed: bool, kind: str) -> None:
        """A trial finished and was recorded; `placed`: the individual holds its cell now."""

    def generation_done(self, record: dict) -> None:
        """A generation's children have all trained; `record` is what the archive stores."""

    def message(self, text: str) -> None:
        """Something the person watching should read (bootstrap figures, a stop, a warning)."""

    def status(self, status: RunStatus) -> None:
        """The run's state, at most twice a second."""


class ConsoleReporter(Reporter):
    """A log line per trial and per generation, and a live status line under them."""

    def __init__(self, console: Console):
        self.console = console
        self.live: Live | None = None

    def _print(self, text) -> None:
        (self.live.console if self.live else self.console).print(text)

    def message(self, text: str) -> None:
        self._print(f"[dim]{time.strftime('%H:%M:%S')}[/] {text}")

    def trial_done(self, ind, result, placed, kind) -> None:
        score = f"{result.val_bpb:.4f}" if result.val_bpb is not None else result.outcome
        mark = " [green]★ elite[/]" if placed and result.ok else ""
        hyp = (ind.hypothesis or "").splitlines()[0][:70] if ind.hypothesis else ind.operator
        fail = f" [red]{result.message[:60]}[/]" if not result.ok else ""
        self.message(f"#{ind.id} g{ind.generation} {kind:7s} seed {result.seed} {score}{mark} [dim]{hyp}[/]{fail}")

    def generation_done(self, record) -> None:
        best = f"{record['best']:.4f}" if record.get("best") is not None else "-"
        self.message(f"[bold]generation {record['gen']}[/]: {record['trials']} trials, {record['failures']} failed, "
                     f"best {best}, coverage {record['coverage']:.0%}, QD {record['qd_score']:.2f}")

    def status(self, status: RunStatus) -> None:
        if self.live is None:
            return
        best = status.best
        best_s = f"{best.val_bpb_mean:.4f} (#{best.id}, n={best.n_ok})" if best else "-"
        cells = f"{status.elites}/{status.cells}" if status.cells else "-"
        llm = ""
        if status.llm_calls is not None:
            per = status.calls_per_child
            llm = f" | LLM {status.llm_calls} calls" + (f", {per:.1f}/child" if per is not None else "")
        self.live.update(Text.from_markup(
            f"[bold]{status.run_name}[/] | trials {status.finished_trials} done, {status.failed_trials} failed | "
            f"in flight {status.in_flight} | proposing {status.proposing} | best {best_s} | "
            f"cells {cells}{llm} | {status.elapsed_s / 60:.1f} min"))
