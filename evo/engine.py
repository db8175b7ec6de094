"""The steady-state, asynchronous evolution loop.

One coordinator thread owns the archive writes; worker threads run trials (subprocesses) and a
small pool of proposal threads runs operators ahead of time, so a freed worker finds a child
ready instead of waiting for an LLM. The loop:

1. Bootstrap: the seed program is trained with `noise_seeds` seeds. Their spread is the noise
   every later comparison is judged against, and their descriptors centre the MAP-Elites grid.
2. Generations: parents are selected from the elites (DEAP tournaments + uniform picks), an
   operator makes a child, a worker trains it, the archive is told. Generation 0 fills the
   population with mutants of the seed(s); each later generation adds `population` children.
3. Re-validation: the best individual after each generation, and newcomers that look better than
   their cell's elite but not by more than the noise, get trials on new seeds; champions are
   only reported with `champion_seeds` trials behind them.

Everything is recorded as it happens, so a run killed at any point resumes: trials that were cut
off are run again, finished ones never.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass

from deap import tools

from evo.config import RunConfig
from evo.executors import LocalExecutor
from evo.operators.base import ArchiveContext, ParentInfo, Proposal
from evo.selection import select_pair, select_parents
from population.mapelites import Grid
from population.noise import noise_sd as measure_noise
from population.store import DuplicateSource, Store, source_hash
from trainer.outcomes import CANCELLED
from trainer.runner import TrialResult

_TRIAL_FIELDS = ("seed", "outcome", "val_bpb", "training_seconds", "params", "tokens", "steps", "message")


@dataclass
class Task:
    trial_id: int
    individual_id: int
    seed: int
    kind: str  # "noise", "child", "retrain"


class _DaemonPool:
    """The proposal threads. Unlike ThreadPoolExecutor's, they are daemons: the interpreter joins
    those at exit, so after Ctrl-C a run would sit until every LLM call in flight (and its repair
    round) came back; a stopped run records the proposals already answered and drops the rest."""

    def __init__(self, workers: int, name: str):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._workers = workers
        for i in range(workers):
            threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True).start()

    def submit(self, fn, *args) -> Future:
        fut: Future = Future()
        self._jobs.put((fut, fn, args))
        return fut

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            fut, fn, args = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as e:  # the future carries it to the coordinator
                fut.set_exception(e)

    def shutdown(self) -> None:
        """Cancel what has not started; the threads end after their current job."""
        try:
            while True:
                job = self._jobs.get_nowait()
                if job is not None:
                    job[0].cancel()
        except queue.Empty:
            pass
        for _ in range(self._workers):
            self._jobs.put(None)


class Reporter:
    """What the engine tells the person watching. The CLI renders it with rich; tests collect it."""

    def trial_done(self, engine: "Engine", ind, result: TrialResult, elite: bool, kind: str) -> None: ...

    def generation_done(self, engine: "Engine", record: dict) -> None: ...

    def message(self, text: str) -> None: ...

    def status(self, engine: "Engine") -> None: ...


MEMORISING_EPOCHS = 10  # more passes over the train split than this and the score measures memory


class Engine:
    def __init__(self, store: Store, run, config: RunConfig, operator, executor: LocalExecutor,
                 reporter: Reporter | None = None):
        self.store = store
        self.run = run
        self.cfg = config
        self.operator = operator
        self.executor = executor
        self.reporter = reporter or Reporter()
        self.rng = random.Random(config.rng_seed + 7919 * len(store.trials(run.id)))
        self.grid: Grid | None = Grid.from_config(run.config["grid_bounds"]) if run.config.get("grid_bounds") else None
        self.noise_sd: float | None = run.noise_sd
        self.inflight: dict[Future, Task] = {}
        self.proposing: dict[Future, int] = {}  # proposal future -> generation
        self.ready: deque[tuple[int, int]] = deque()  # (individual id, generation) awaiting a first trial
        self.retrain: deque[int] = deque()  # individual ids owed another seed
        self.sources: dict[int, str] = {}
        self.started = time.time()
        self.deadline = self.started + config.hours * 3600 if config.hours else None
        self.finished_trials = len(store.trials(run.id, status="done"))
        self.failed_trials = sum(1 for t in store.trials(run.id, status="done") if t.outcome != "ok")
        self.logbook = tools.Logbook()
        self._proposal_pool = _DaemonPool(self._proposal_threads(), "evo-propose")
        self._made: dict[int, int] = {}  # generation -> children accepted
        self._attempts: dict[int, int] = {}  # generation -> proposals tried
        self._recorded_generations = {g.generation for g in store.generations(run.id)}
        self._told_exhausted = False
        self._noise_owed = 0  # bootstrap trials not dispatched yet
        self._api_failures = 0  # proposals in a row that ended on an API error (bad key, no network...)
        self._llm_broken: str | None = None  # why proposing stopped for good

    # ------------------------------------------------------------------ public

    def run_loop(self) -> None:
        """Run until a stop condition; KeyboardInterrupt cancels in-flight trials and re-raises."""
        try:
            self._resume_state()
            self._bootstrap()
            while not self._finished():
                self._fill_workers()
                self._fill_proposals()
                self.reporter.status(self)
                if not self.inflight and not self.proposing:
                    if self._nothing_left_to_do():
                        break
                    continue
                done, _ = wait(list(self.inflight) + list(self.proposing), timeout=1.0, return_when=FIRST_COMPLETED)
                for fut in done:
                    if fut in self.inflight:
                        self._trial_finished(fut, self.inflight.pop(fut))
                    else:
                        self._proposal_finished(fut, self.proposing.pop(fut))
                self._check_generations()
            self._drain_proposals()  # their calls are paid for: record them before the run ends
            self._stop_if_broken()
            if (self._operator_exhausted() and not self._finished() and self._dispatch_allowed()
                    and self._open_generation() is not None):
                spent = getattr(self.operator, "spent_usd", None)
                self.reporter.message(
                    f"run ended after {self.finished_trials} trials: the LLM budget is spent"
                    + (f" (${spent:.4f} of ${self.cfg.max_llm_dollars:g})" if spent is not None
                       and self.cfg.max_llm_dollars else "")
                    + f"; to go on, raise it: {self._resume_command()} --max-llm-dollars N")
            self.store.update_run(self.run.id, status="finished")
        except BaseException:
            self.executor.shutdown(cancel=True)
            self._proposal_pool.shutdown()
            for fut, generation in list(self.proposing.items()):  # answers already paid for are kept
                if fut.done() and not fut.cancelled():
                    try:
                        self._proposal_finished(fut, generation)
                    except Exception:  # the stop, not this bookkeeping, is what the user must see
                        pass
            for fut, task in list(self.inflight.items()):  # cut off: resume re-runs them
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    _, result = fut.result()
                    if result.outcome != CANCELLED:
                        self._record(task, result)
                        continue
                self.store.delete_trial(task.trial_id)
            self.store.update_run(self.run.id, status="stopped")
            raise
        finally:
            self._proposal_pool.shutdown()
        self.executor.shutdown()

    # ------------------------------------------------------------------ state

    def _proposal_threads(self) -> int:
        if self.cfg.llm_concurrency:
            return self.cfg.llm_concurrency
        return 2 * self.executor.size + 2 if self.cfg.operator == "llm" else 1

    def _resume_state(self) -> None:
        """Rebuild queues from the archive: cut-off trials, untrained children, generation counts."""
        for trial in self.store.running_trials(self.run.id):
            self.store.delete_trial(trial.id)
            if self.grid is not None:  # before the grid exists, bootstrap re-runs its own trials
                self.retrain.appendleft(trial.individual_id)
            self.reporter.message(f"resume: re-running cut-off trial of #{trial.individual_id} (seed {trial.seed})")
        for ind in self.store.individuals(self.run.id):
            g = ind.generation
            if ind.status == "rejected":
                self._attempts[g] = self._attempts.get(g, 0) + 1
                continue
            self._made[g] = self._made.get(g, 0) + 1
            self._attempts[g] = self._attempts.get(g, 0) + 1
            if (ind.status == "pending" and ind.n_trials == 0 and ind.id not in self.retrain
                    and ind.operator not in ("seed", "seed-from")):  # seeds are the bootstrap's
                self.ready.append((ind.id, g))

    def _target(self, generation: int) -> int:
        return self.cfg.population

    def _open_generation(self) -> int | None:
        """The generation new children go into, or None when no more children are wanted."""
        g = max(self._made, default=0)
        while self._made.get(g, 0) >= self._target(g) or self._attempts.get(g, 0) >= 4 * self._target(g):
            g += 1
        if self.cfg.generations is not None and g > self.cfg.generations:
            return None
        return g

    def _finished(self) -> bool:
        if self.cfg.trials is not None and self.finished_trials >= self.cfg.trials:
            return True
        return False

    def _dispatch_allowed(self) -> bool:
        if self._llm_broken:
            return False  # the run stops once the trials in flight finish
        if self.deadline and time.time() > self.deadline:
            return False
        if self.cfg.trials is not None and self.finished_trials + len(self.inflight) >= self.cfg.trials:
            return False
        return True

    def _nothing_left_to_do(self) -> bool:
        if not self._dispatch_allowed():
            return True
        if self.ready or self.retrain:
            return False
        if self._open_generation() is not None and not self._operator_exhausted():
            return False
        # All generations made and trained: re-validate the champions, until the top 3 all have
        # their seeds (a re-train can demote one and promote an individual trained once). Ends:
        # each pass adds seeds, and no individual gets more than `champion_seeds`.
        self._queue_champions(k=3)
        return not self.retrain

    # ------------------------------------------------------------------ bootstrap

    def _bootstrap(self) -> None:
        """Train the seed program(s); measure the noise; centre the grid. Resumable."""
        if self.grid is not None:
            return
        seeds = self.store.individuals(self.run.id, generation=0)
        seeds = [s for s in seeds if s.operator in ("seed", "seed-from")]
        first = seeds[0]
        tasks = []
        for ind in seeds:
            want = self.cfg.noise_seeds if ind.id == first.id else 1
            used = self.store.used_seeds(ind.id)
            for seed in range(want):
                if seed not in used:
                    tasks.append((ind.id, seed))
        self.reporter.message(f"bootstrap: training the seed program with {self.cfg.noise_seeds} seeds to measure noise")
        pending = deque(tasks)
        while (pending and not self._llm_broken) or self.inflight:
            while pending and len(self.inflight) < self.executor.size and not self._llm_broken:
                self._dispatch(*pending.popleft(), kind="noise")
            # Generation 0's children are mutants of the seeds whatever the bootstrap measures, so
            # their proposals start now: a slow LLM is not left to start after the seed has trained.
            self._noise_owed = len(pending)
            self._fill_proposals()
            self.reporter.status(self)
            done, _ = wait(list(self.inflight) + list(self.proposing), timeout=1.0, return_when=FIRST_COMPLETED)
            for fut in done:
                if fut in self.inflight:
                    task = self.inflight.pop(fut)
                    self._record(task, fut.result()[1])
                else:
                    self._proposal_finished(fut, self.proposing.pop(fut))
        self._noise_owed = 0
        if self._llm_broken:  # before the grid: --resume trains the seeds it did not get to
            self._drain_proposals()
            self._stop_if_broken()
        trials = [t for t in self.store.trials(individual_id=first.id, status="done") if t.outcome == "ok"]
        if not trials:
            from evo.errors import EvoError

            last = self.store.trials(individual_id=first.id, status="done")
            why = last[-1].message if last else "no trial finished"
            raise EvoError(f"the seed program does not train: {why} (try `evo trial` on it to see the error)")
        self.noise_sd = measure_noise([t.val_bpb for t in trials])
        center = {name: _median([getattr(t, name) for t in trials]) for name in self.cfg.grid["descriptors"]}
        self.grid = Grid.around(center, decades=self.cfg.grid.get("decades", 2.0), bins=self.cfg.grid.get("bins", 10))
        config = dict(self.run.config, grid_bounds=self.grid.to_config())
        self.run = self.store.update_run(self.run.id, noise_sd=self.noise_sd, config=config)
        for ind in seeds:
            self.store.tell(ind.id, self.grid, self.noise_sd)
        sd = f"{self.noise_sd:.4f}" if self.noise_sd is not None else "n/a"
        self.reporter.message(f"bootstrap: seed val_bpb {_mean([t.val_bpb for t in trials]):.4f}, noise sd {sd} "
                              f"over {len(trials)} seeds; grid {self.grid.n_cells} cells around the seed")
        self._warn_if_memorising(trials)

    def _warn_if_memorising(self, trials) -> None:
        """Say so when a trial sees its corpus many times over: on an H100 the 300 s budget runs
        ~175 epochs of the 2.5M-token stdlib corpus and val_bpb then rewards training *less*
        (1.13 after 20 s, 1.87 after 300 s), so the search would optimise the wrong thing."""
        import json
        from pathlib import Path

        try:
            n_train = json.loads((Path(self.cfg.dataset_dir) / "manifest.json").read_text())["n_train_tokens"]
        except (OSError, KeyError, ValueError, TypeError):
            return
        tokens = _median([t.tokens for t in trials if t.tokens])
        if n_train and tokens and tokens / n_train > MEMORISING_EPOCHS:
            self.reporter.message(
                f"warning: a trial trains {tokens / n_train:.0f} epochs of this {n_train / 1e6:.1f}M-token corpus, so "
                f"val_bpb will reward memorising less; prepare a larger one (`evo prepare climbmix --shards N` "
                f"or `evo prepare files PATH...`) and pass it with --data-dir")

    # ------------------------------------------------------------------ trials

    def _source(self, individual_id: int) -> str:
        if individual_id not in self.sources:
            self.sources[individual_id] = self.store.get_individual(individual_id).source
        return self.sources[individual_id]

    def _dispatch(self, individual_id: int, seed: int, kind: str) -> None:
        trial = self.store.start_trial(individual_id, seed, device=self.cfg.device)
        fut = self.executor.submit(self._source(individual_id), seed=seed, dataset_dir=self.cfg.dataset_dir,
                                   budget=self.cfg.budget, **self.cfg.harness_options())
        self.inflight[fut] = Task(trial.id, individual_id, seed, kind)

    def _next_seed(self, individual_id: int) -> int:
        used = self.store.used_seeds(individual_id)
        return next(s for s in range(len(used) + 1) if s not in used)

    def _fill_workers(self) -> None:
        while len(self.inflight) < self.executor.size and self._dispatch_allowed():
            if self.retrain:
                ind = self.retrain.popleft()
                self._dispatch(ind, self._next_seed(ind), "retrain")
            elif self.ready:
                ind, _ = self.ready.popleft()
                self._dispatch(ind, self._next_seed(ind), "child")
            else:
                return

    def _trial_finished(self, fut: Future, task: Task) -> None:
        _, result = fut.result()
        if result.outcome == CANCELLED:
            self.store.delete_trial(task.trial_id)
            return
        self._record(task, result)

    def _record(self, task: Task, result: TrialResult) -> None:
        self.store.finish_trial(task.trial_id, result.to_dict())
        self.finished_trials += 1
        self.failed_trials += not result.ok
        elite = False
        if self.grid is not None:
            elite = self.store.tell(task.individual_id, self.grid, self.noise_sd)
            if result.ok and not elite:
                self._maybe_promising(task.individual_id)
        ind = self.store.get_individual(task.individual_id)
        if task.kind == "retrain" and elite and ind.cell is not None:
            self._rechallenge(ind)
        self.reporter.trial_done(self, ind, result, elite, task.kind)

    def _rechallenge(self, elite) -> None:
        """A re-train moved an elite's mean; let the best rival in its cell challenge it again."""
        rivals = self.store.individuals(self.run.id, cell=elite.cell, order="val_bpb", limit=2)
        rival = next((r for r in rivals if r.id != elite.id and r.n_ok), None)
        if rival is not None:
            self.store.tell(rival.id, self.grid, self.noise_sd)

    def _maybe_promising(self, individual_id: int) -> None:
        """Better than its cell's elite in the mean but not beyond noise: earn it another seed."""
        ind = self.store.get_individual(individual_id)
        if ind.cell is None or ind.n_ok >= self.cfg.champion_seeds or individual_id in self.retrain:
            return
        holders = [i for e, i in self.store.elites(self.run.id) if e.cell == ind.cell]
        if holders and holders[0].val_bpb_mean is not None and ind.val_bpb_mean < holders[0].val_bpb_mean:
            self.retrain.append(individual_id)

    def _queue_champions(self, k: int) -> None:
        for ind in self.store.best(self.run.id, k):
            missing = self.cfg.champion_seeds - ind.n_ok
            if ind.n_trials > ind.n_ok:  # it failed on some seed: not a champion, no more seeds
                continue
            for _ in range(max(0, missing) - sum(1 for r in self.retrain if r == ind.id)):
                self.retrain.append(ind.id)

    # ------------------------------------------------------------------ proposals

    def _operator_exhausted(self) -> bool:
        """No more proposals: the LLM budget is spent, or the API keeps failing."""
        return self._llm_broken is not None or bool(getattr(self.operator, "exhausted", False))

    def _fill_proposals(self) -> None:
        if self._operator_exhausted():
            if not self._told_exhausted and not self._llm_broken:
                self._told_exhausted = True
                self.reporter.message("the LLM budget is spent: no new children; training those already made")
            return
        want = self.executor.size + self._proposal_threads()
        if self.cfg.trials is not None:  # no paying for children the trial cap will never train
            owed = len(self.inflight) + len(self.retrain) + self._noise_owed
            want = min(want, self.cfg.trials - self.finished_trials - owed)
        while len(self.ready) + len(self.proposing) < want and self._dispatch_allowed():
            g = self._open_generation()
            if g is None:
                return
            planned = self._made.get(g, 0) + sum(1 for pg in self.proposing.values() if pg == g)
            if planned >= self._target(g):
                return  # the open generation is fully planned; wait for proposals to land
            self._attempts[g] = self._attempts.get(g, 0) + 1
            fut = self._proposal_pool.submit(self._propose, random.Random(self.rng.random()))
            self.proposing[fut] = g

    def _elite_pool(self) -> list[tuple[int, str | None, float]]:
        pool = [(i.id, e.cell, i.val_bpb_mean) for e, i in self.store.elites(self.run.id) if i.val_bpb_mean is not None]
        if not pool:  # bootstrap (or the moment after it, before the seeds are told): the seeds are the parents
            seeds = [i for i in self.store.individuals(self.run.id, generation=0) if i.operator in ("seed", "seed-from")]
            pool = [(i.id, None, i.val_bpb_mean if i.val_bpb_mean is not None else 0.0) for i in seeds]
        return pool

    def _propose(self, rng: random.Random) -> tuple[Proposal, list[int]]:
        """Runs in a proposal thread: select parents, read context, call the operator."""
        pool = self._elite_pool()
        pair = select_pair(pool, rng, self.cfg.tournament_size) if rng.random() < self.cfg.crossover_rate else None
        if pair:
            a, b = (self._parent_info(i) for i in pair)
            ancestor = self._ancestor_source(a, b)
            return self.operator.crossover(a, b, ancestor, self._context(a.id), rng), list(pair)
        (pid,) = select_parents(pool, 1, rng, self.cfg.tournament_size, self.cfg.uniform_share)
        parent = self._parent_info(pid)
        return self.operator.mutate(parent, self._context(pid), rng), [pid]

    def _parent_info(self, individual_id: int) -> ParentInfo:
        ind = self.store.get_individual(individual_id)
        trials = [{k: getattr(t, k) for k in _TRIAL_FIELDS}  # results only: a running trial has none yet
                  for t in self.store.trials(individual_id=ind.id, status="done")]
        return ParentInfo(id=ind.id, source=ind.source, hypothesis=ind.hypothesis or "", operator=ind.operator or "",
                          val_bpb=ind.val_bpb_mean, n_trials=ind.n_ok,
                          cell=Grid.parse_key(ind.cell) if ind.cell else None, commit=ind.commit, trials=trials)

    def _ancestor_source(self, a: ParentInfo, b: ParentInfo) -> str | None:
        git = self.store.git
        if git is None or not (a.commit and b.commit):
            return None
        base = git.merge_base(a.commit, b.commit)
        return git.source_at(base) if base else None

    def _context(self, parent_id: int) -> ArchiveContext:
        elites = [self._parent_info(i.id) for _, i in self.store.elites(self.run.id)[:8]]
        return ArchiveContext(
            program=self.run.program_text or "",
            elites=elites,
            failures=self.store.recent_failures(self.run.id, 8),
            tried_from_parent=[c.hypothesis for c in self.store.children_of(parent_id) if c.hypothesis],
            noise_sd=self.noise_sd,
        )

    def _proposal_finished(self, fut: Future, generation: int) -> None:
        try:
            proposal, parents = fut.result()
        except Exception as e:  # an operator bug must not end an overnight run
            proposal, parents = Proposal(operator=self.cfg.operator, parents=[], hypothesis="",
                                         rejected=f"operator error: {type(e).__name__}: {e}"), []
        ind_id = None
        if proposal.source is not None and proposal.rejected is None:
            try:
                ind = self.store.add_individual(self.run.id, proposal.source, proposal.parents or parents,
                                                proposal.operator, proposal.hypothesis, generation)
                ind_id = ind.id
                self.sources[ind.id] = proposal.source
                self._made[generation] = self._made.get(generation, 0) + 1
                self.ready.append((ind.id, generation))
            except DuplicateSource:
                twin = self.store.get_individual(source_hash(proposal.source), self.run.id)
                proposal.rejected = f"duplicate of #{twin.id}"
        if ind_id is None:
            rejected = self.store.add_rejected(self.run.id, proposal.parents or parents, proposal.operator,
                                               proposal.hypothesis, proposal.rejected or "no source", generation)
            ind_id = rejected.id
            self.reporter.message(f"rejected ({proposal.operator}): {proposal.rejected}")
        for call in proposal.llm_calls:
            self.store.record_llm_call(self.run.id, ind_id, call)
        self._note_api_failure(proposal)

    def _drain_proposals(self) -> None:
        """Wait for the proposals in flight and record them."""
        if self.proposing:
            self.reporter.message(f"waiting for {len(self.proposing)} proposal(s) in flight, to record them")
        while self.proposing:
            done, _ = wait(list(self.proposing), timeout=1.0, return_when=FIRST_COMPLETED)
            for fut in done:
                self._proposal_finished(fut, self.proposing.pop(fut))

    def _stop_if_broken(self) -> None:
        if self._llm_broken:
            from evo.errors import EvoError

            raise EvoError(f"stopped after {self.finished_trials} trials: {self._llm_broken}; "
                           f"fix the cause and continue with `{self._resume_command()}`")

    def _resume_command(self) -> str:
        return f"evo run --resume --name {self.run.name} --db {self.store.name}"

    def _note_api_failure(self, proposal: Proposal) -> None:
        """A run whose every call fails (a revoked key, no network) would propose forever: stop
        proposing after enough proposals in a row end on an API error the SDK did not retry away.
        Rate limits, overload and timeouts were already retried with backoff; they do not count."""
        calls = proposal.llm_calls
        if not calls or calls[-1].get("outcome") != "api_error":
            if calls:
                self._api_failures = 0
            return
        self._api_failures += 1
        if self._api_failures >= max(8, 2 * self._proposal_threads()) and self._llm_broken is None:
            self._llm_broken = f"the LLM failed {self._api_failures} proposals in a row ({proposal.rejected})"
            self.reporter.message(f"{self._llm_broken}: no new trials; stopping once those in flight finish")

    # ------------------------------------------------------------------ generations

    def _check_generations(self) -> None:
        """Record each generation whose children have all finished their first trial."""
        for g in sorted(self._made):
            if g in self._recorded_generations:
                continue
            if g == self._open_generation() or any(pg == g for pg in self.proposing.values()):
                return  # still being filled
            members = self.store.individuals(self.run.id, generation=g)
            if any(m.status == "pending" and m.n_trials == 0 for m in members):
                return
            self._record_generation(g, members)

    def _record_generation(self, g: int, members) -> None:
        trials = [t for m in members for t in self.store.trials(individual_id=m.id, status="done")]
        ok = [t for t in trials if t.outcome == "ok"]
        stats = tools.Statistics(key=lambda t: t.val_bpb)
        for name, fn in (("avg", _mean), ("std", _std), ("min", min), ("max", max)):
            stats.register(name, fn)
        elites = self.store.elites(self.run.id)
        best = self.store.best(self.run.id, 1)
        record = dict(gen=g, trials=len(trials), failures=len(trials) - len(ok), elites=len(elites),
                      coverage=self.grid.coverage(len(elites)),
                      qd_score=self.grid.qd_score(i.val_bpb_mean for _, i in elites if i.val_bpb_mean is not None),
                      best=best[0].val_bpb_mean if best else None, **(stats.compile(ok) if ok else {}))
        self.logbook.record(**record)
        self.store.record_generation(self.run.id, g, dict(
            trials=record["trials"], failures=record["failures"], best_val_bpb=record["best"],
            best_individual_id=best[0].id if best else None, coverage=record["coverage"],
            qd_score=record["qd_score"], record=record))
        self._recorded_generations.add(g)
        self._queue_champions(k=1)
        self.reporter.generation_done(self, record)


def _mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def _std(xs):
    xs = list(xs)
    if len(xs) < 2:
        return 0.0
    m = _mean(xs)
    return (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5


def _median(xs):
    xs = sorted(x for x in xs if x is not None)
    return xs[len(xs) // 2] if xs else None
