"""How `evo run` shows a run to the person watching: a log line per trial and per generation,
and a live status line under them (rich)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.live import Live
from rich.text import Text

from evo.engine import Reporter


class ConsoleReporter(Reporter):
    """A log line per trial and per generation, and a live status line under them."""

    def __init__(self, console: Console):
        self.console = console
        self.live: Live | None = None

    def _print(self, text) -> None:
        (self.live.console if self.live else self.console).print(text)

    def message(self, text: str) -> None:
        self._print(f"[dim]{time.strftime('%H:%M:%S')}[/] {text}")

    def trial_done(self, engine, ind, result, elite, kind) -> None:
        score = f"{result.val_bpb:.4f}" if result.val_bpb is not None else result.outcome
        mark = " [green]★ elite[/]" if elite and result.ok else ""
        hyp = (ind.hypothesis or "").splitlines()[0][:70] if ind.hypothesis else ind.operator
        fail = f" [red]{result.message[:60]}[/]" if not result.ok else ""
        self.message(f"#{ind.id} g{ind.generation} {kind:7s} seed {result.seed} {score}{mark} [dim]{hyp}[/]{fail}")

    def generation_done(self, engine, record) -> None:
        best = f"{record['best']:.4f}" if record.get("best") is not None else "-"
        self.message(f"[bold]generation {record['gen']}[/]: {record['trials']} trials, {record['failures']} failed, "
                     f"best {best}, coverage {record['coverage']:.0%}, QD {record['qd_score']:.2f}")

    def status(self, engine) -> None:
        if self.live is None:
            return
        best = engine.store.best(engine.run.id, 1)
        n_elites = len(engine.store.elites(engine.run.id)) if engine.grid else 0
        best_s = f"{best[0].val_bpb_mean:.4f} (#{best[0].id}, n={best[0].n_ok})" if best else "-"
        cov = f"{n_elites}/{engine.grid.n_cells}" if engine.grid else "-"
        elapsed = time.time() - engine.started
        self.live.update(Text.from_markup(
            f"[bold]{engine.run.name}[/] | trials {engine.finished_trials} done, {engine.failed_trials} failed | "
            f"in flight {len(engine.inflight)} | proposing {len(engine.proposing)} | best {best_s} | "
            f"cells {cov} | {elapsed / 60:.1f} min"))
