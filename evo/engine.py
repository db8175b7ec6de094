"""The steady-state, asynchronous evolution loop: scheduling, and nothing else.

One coordinator thread owns the archive writes; worker threads run trials (subprocesses, behind
an `Executor`) and a small pool of proposal threads runs the operator ahead of time, so a freed
worker finds a child ready instead of waiting for an LLM. The loop:

1. Bootstrap (`evo.bootstrap`): the seed program is trained with `noise_seeds` seeds; their
   spread is the noise, their descriptors centre the grid, and the run's `EliteArchive` exists.
2. Generations: the proposer (`evo.proposer`) selects parents and calls the operator, a worker
   trains the child, the elite archive places it. Generation 0 fills the population with mutants
   of the seed(s); each later generation adds `population` children; `evo.generations` records
   each once its children have trained. A paid operator's proposals are paced
   (`evo.proposer.Pace`): fewer in flight and a growing wait while they make no new child, none
   once the model plainly repeats itself (the run then trains what it has and ends). Without it
   nothing bounded them: a generation's attempt cap only opens the next generation, and a trial
   cap counts trials, which rejected proposals never become.
3. Re-validation (`evo.revalidation`): promising newcomers, re-trained elites' rivals and the
   champions get trials on new seeds; champions are only reported with `champion_seeds` behind them.

Everything is recorded as it happens, so a run killed at any point resumes: trials that were cut
off are run again, finished ones never.
"""

from __future__ import annotations

import queue
import random
import sys
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass

from evo import bootstrap
from evo.config import RunConfig
from evo.defaults import SEED_OPERATORS, resume_command
from evo.errors import EvoError
from evo.executors import Executor
from evo.generations import record_generation
from evo.operators.base import Operator
from evo.proposer import Pace, Proposer
from evo.reporting import Reporter, RunStatus
from evo.revalidation import Revalidation
from population.elites import AddResult, EliteArchive
from population.errors import ArchiveError, ClaimLost, DuplicateTrial
from population.records import Individual, Run
from population.store import Store
from trainer.outcomes import CANCELLED, LOST
from trainer.runner import TrialResult

STATUS_EVERY_S = 0.5  # the live status line refreshes twice a second; reading it more often is waste


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


class Engine:
    def __init__(self, store: Store, run: Run, config: RunConfig, operator: Operator, executor: Executor,
                 reporter: Reporter | None = None, *, joined: bool = False):
        self.store = store
        self.run_record = run  # the run's row as last written (its config gains the grid at bootstrap)
        self.cfg = config
        self.operator = operator
        self.executor = executor
        self.reporter = reporter or Reporter()
        # Joined (`evo run --join`): one of several coordinators of the run. It holds no claim on
        # the run and leaves its status to the coordinator that does.
        self.joined = joined
        self.rng = random.Random(config.rng_seed + 7919 * len(store.trials(run.id)))
        self.archive: EliteArchive | None = bootstrap.resumed_archive(store, run)
        self.proposer = Proposer(store, run, config, operator)
        self.proposer.archive = self.archive
        self.revalidation = Revalidation(store, run.id, config.champion_seeds)
        self.inflight: dict[Future, Task] = {}
        self.proposing: dict[Future, int] = {}  # proposal future -> generation
        self.ready: deque[tuple[int, int]] = deque()  # (individual id, generation) awaiting a first trial
        self.retrain: deque[int] = deque()  # individual ids owed another seed
        self.sources: dict[int, str] = {}
        self.started = time.time()
        self.deadline = self.started + config.hours * 3600 if config.hours else None
        done = store.trials(run.id, status="done")
        self.finished_trials = len(done)
        self.failed_trials = sum(1 for t in done if not t.ok)
        self._proposal_threads = config.proposal_threads(executor.size)
        self._proposal_pool = _DaemonPool(self._proposal_threads, "evo-propose")
        self._made: dict[int, int] = {}  # generation -> children accepted
        self._attempts: dict[int, int] = {}  # generation -> proposals tried
        self._recorded_generations = {g.generation for g in store.generations(run.id)}
        self._told_exhausted = False
        self._told_broken = False
        self._told_repeating = False
        # A paid operator's proposals are paced; one that costs nothing proposes at full speed.
        self.pace = Pace(config.max_proposals_per_child if operator.spent_usd is not None else None)
        self._llm_calls = store.llm_spend(run.id)["calls"] if operator.spent_usd is not None else None
        self._trained_children = sum(1 for i in store.individuals(run.id)
                                     if i.n_trials and i.operator not in SEED_OPERATORS)
        self._noise_pending: deque[tuple[int, int]] = deque()  # bootstrap (individual, seed) not dispatched yet
        self._status_at = 0.0

    # ------------------------------------------------------------------ public

    def run_loop(self) -> None:
        """Run until a stop condition; KeyboardInterrupt cancels in-flight trials and re-raises."""
        try:
            self._resume_state()
            self._bootstrap()
            while not self._finished() or self.inflight:  # another coordinator may fill the cap first
                self._fill_workers()
                self._fill_proposals()
                self._report_status()
                if not self.inflight and not self.proposing:
                    if self._nothing_left_to_do():
                        break
                    time.sleep(min(1.0, self.pace.wait_s()))  # a paced proposal is due later
                    continue
                self._wait_and_collect()
                self._check_generations()
            self._drain_proposals()  # their calls are paid for: record them before the run ends
            self._stop_if_broken()
            if (self.operator.exhausted and not self._finished() and self._dispatch_allowed()
                    and self._open_generation() is not None):
                spent = self.operator.spent_usd
                self.reporter.message(
                    f"run ended after {self.finished_trials} trials: the LLM budget is spent"
                    + (f" (${spent:.4f} of ${self.cfg.max_llm_dollars:g})" if spent is not None
                       and self.cfg.max_llm_dollars else "")
                    + f"; to go on, raise it: {self._resume_command()} --max-llm-dollars N")
            elif (self.pace.stopped and not self._finished() and self._dispatch_allowed()
                  and self._open_generation() is not None):
                self.reporter.message(f"run ended after {self.finished_trials} trials: {self.pace.stopped}; "
                                      f"to give it another chance (a new allowance): {self._resume_command()}")
            if not self.joined:
                self.store.update_run(self.run_record.id, status="finished")
        except BaseException:
            self._stop_everything()
            raise
        finally:
            self._proposal_pool.shutdown()
        self.executor.shutdown()

    def _stop_everything(self) -> None:
        """After Ctrl-C or an error: keep what is paid for and finished, drop what was cut off."""
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
                where, result = fut.result()
                if result.outcome != CANCELLED:
                    self._record(task, result, where)
                    continue
            self.store.delete_trial(task.trial_id)
        if not self.joined and not isinstance(sys.exc_info()[1], ClaimLost):  # else another drives it now
            self.store.update_run(self.run_record.id, status="stopped")

    # ------------------------------------------------------------------ state

    def _resume_state(self) -> None:
        """Rebuild queues from the archive: cut-off trials, untrained children, generation counts."""
        self._reclaim_orphans("resume")
        for ind in self._count_generations():
            if (ind.status == "pending" and ind.n_trials == 0 and ind.id not in self.retrain
                    and ind.operator not in SEED_OPERATORS):  # seeds are the bootstrap's
                self.ready.append((ind.id, ind.generation))

    def _count_generations(self) -> list[Individual]:
        """Proposals tried and children made per generation, as the archive has them (this
        coordinator's counts never fall below what it counted itself); returns the individuals."""
        individuals = self.store.individuals(self.run_record.id)
        made: dict[int, int] = {}
        attempts: dict[int, int] = {}
        for ind in individuals:
            attempts[ind.generation] = attempts.get(ind.generation, 0) + 1
            if ind.status != "rejected":
                made[ind.generation] = made.get(ind.generation, 0) + 1
        for g in attempts:
            self._attempts[g] = max(self._attempts.get(g, 0), attempts[g])
        for g in made:  # a generation of rejected proposals only has made no child
            self._made[g] = max(self._made.get(g, 0), made[g])
        return individuals

    def _reclaim_orphans(self, why: str) -> None:
        """Trials cut off with the coordinator that ran them (this one's last session, or another
        coordinator of the run that died) are deleted and trained again here. A live
        coordinator's trials are its own (`Store.orphaned_trials`)."""
        for trial in self.store.orphaned_trials(self.run_record.id):
            try:
                self.store.delete_trial(trial.id)
            except ArchiveError:  # another live coordinator reclaimed it first, or it just finished
                continue
            if self.archive is not None:  # before the grid exists, bootstrap re-runs its own trials
                self.retrain.appendleft(trial.individual_id)
            self.reporter.message(f"{why}: re-running cut-off trial of #{trial.individual_id} (seed {trial.seed}"
                                  + (f", left by {trial.coordinator})" if why != "resume" else ")"))

    def _share(self) -> None:
        """Every heartbeat (15 s) of a coordinator that shares its run: take over the trials of
        coordinators that died, and count the run's trials and generations as they are in the
        archive, which the others write too."""
        self._reclaim_orphans("reclaim")
        self.finished_trials = len(self.store.trials(self.run_record.id, status="done"))
        self._count_generations()

    def _heartbeat(self) -> None:
        if self.store.heartbeat(self.run_record.id, claim=not self.joined):
            self._share()

    def _open_generation(self) -> int | None:
        """The generation new children go into, or None when no more children are wanted."""
        target = self.cfg.population
        g = max(self._made, default=0)
        while self._made.get(g, 0) >= target or self._attempts.get(g, 0) >= 4 * target:
            g += 1
        if self.cfg.generations is not None and g > self.cfg.generations:
            return None
        return g

    def _finished(self) -> bool:
        return self.cfg.trials is not None and self.finished_trials >= self.cfg.trials

    def _dispatch_allowed(self) -> bool:
        if self.operator.broken:
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
        if self._open_generation() is not None and not self._no_more_proposals():
            return False
        # All generations made and trained: re-validate the champions, until the top 3 all have
        # their seeds (a re-train can demote one and promote an individual trained once). Ends:
        # each pass adds seeds, and no individual gets more than `champion_seeds`.
        self.retrain.extend(self.revalidation.champions_owed(3, self.retrain))
        return not self.retrain

    def _wait_and_collect(self) -> None:
        """Wait (at most a second, or until a paced proposal is due) for trials or proposals to
        finish, and record them."""
        self._heartbeat()  # the run's claim and this coordinator's trials: an UPDATE every 15 s, else nothing
        due = self.pace.wait_s()
        done, _ = wait(list(self.inflight) + list(self.proposing), timeout=min(1.0, due) if due > 0 else 1.0,
                       return_when=FIRST_COMPLETED)
        for fut in done:
            if fut in self.inflight:
                self._trial_finished(fut, self.inflight.pop(fut))
            else:
                self._proposal_finished(fut, self.proposing.pop(fut))

    def _report_status(self) -> None:
        now = time.time()
        if now - self._status_at < STATUS_EVERY_S:
            return
        self._status_at = now
        run_id = self.run_record.id
        best = self.store.best(run_id, 1)
        self.reporter.status(RunStatus(
            run_name=self.run_record.name, finished_trials=self.finished_trials, failed_trials=self.failed_trials,
            in_flight=len(self.inflight), proposing=len(self.proposing), best=best[0] if best else None,
            elites=len(self.store.elites(run_id)) if self.archive else 0,
            cells=self.archive.grid.n_cells if self.archive else None, elapsed_s=now - self.started,
            llm_calls=self._llm_calls, trained_children=self._trained_children))

    # ------------------------------------------------------------------ bootstrap

    def _bootstrap(self) -> None:
        """Train the seed program(s) while generation 0's proposals start; then build the
        archive from what they measured. Resumable."""
        if self.archive is not None:
            return
        pending = self._noise_pending
        pending.extend(bootstrap.owed_trials(self.store, self.run_record.id, self.cfg.noise_seeds))
        self.reporter.message(f"bootstrap: training the seed program with {self.cfg.noise_seeds} seeds to measure noise")
        while (pending and not self.operator.broken) or self.inflight:
            while pending and len(self.inflight) < self.executor.size and not self.operator.broken:
                self._dispatch(*pending.popleft(), kind="noise")
            # Generation 0's children are mutants of the seeds whatever the bootstrap measures, so
            # their proposals start now: a slow LLM is not left to start after the seed has trained.
            self._fill_proposals()
            self._report_status()
            self._wait_and_collect()
        if self.operator.broken:  # before the grid: --resume trains the seeds it did not get to
            self._drain_proposals()
            self._stop_if_broken()
        self.archive, self.run_record = bootstrap.measure(self.store, self.run_record, self.cfg, self.reporter.message)
        self.proposer.archive = self.archive

    # ------------------------------------------------------------------ trials

    def _source(self, individual_id: int) -> str:
        if individual_id not in self.sources:
            self.sources[individual_id] = self.store.get_individual(individual_id).source
        return self.sources[individual_id]

    def _dispatch(self, individual_id: int, seed: int, kind: str) -> None:
        while True:
            try:
                trial = self.store.start_trial(individual_id, seed, device=self.cfg.device)
                break
            except DuplicateTrial:  # another coordinator of the run took that seed a moment ago
                if kind == "noise":
                    return  # its bootstrap trial, not ours
                seed = self._next_seed(individual_id)
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
        where, result = fut.result()
        if result.outcome == CANCELLED:
            self.store.delete_trial(task.trial_id)
            return
        self._record(task, result, where)

    def _record(self, task: Task, result: TrialResult, where: str = "") -> None:
        try:
            self.store.finish_trial(task.trial_id, {**result.to_dict(), "worker": where})
        except ArchiveError as e:  # reclaimed by another coordinator that took this one for dead
            self.reporter.message(f"#{task.individual_id}'s trial (seed {task.seed}) was not recorded: {e}")
            return
        self.finished_trials += 1
        self.failed_trials += not result.ok
        added: AddResult | None = None
        if self.archive is not None:  # bootstrap trials are placed once the grid exists
            added = self.archive.add(task.individual_id)
        ind = self.store.get_individual(task.individual_id, source=False)
        if ind.n_trials == 1 and ind.operator not in SEED_OPERATORS:
            self._trained_children += 1
        if added is not None and result.ok and task.individual_id not in self.retrain \
                and self.revalidation.promising(ind, added):
            self.retrain.append(task.individual_id)
        if task.kind == "retrain" and added is not None and added.placed:
            self.revalidation.rechallenge(self.archive, ind)
        if result.outcome == LOST:
            self._train_lost_again(task, result)
        self.reporter.trial_done(ind, result, added is not None and added.placed, task.kind)

    def _train_lost_again(self, task: Task, result: TrialResult) -> None:
        """A trial whose machine was lost is trained once more (a new seed: the lost one stays on
        record); a second loss of the same individual is the variant's, and it is left there."""
        lost = sum(1 for t in self.store.trials(individual_id=task.individual_id, status="done") if t.outcome == LOST)
        if lost > 1:
            self.reporter.message(f"#{task.individual_id} lost its trial twice ({result.message}); not queued again")
            return
        self.reporter.message(f"#{task.individual_id}'s trial (seed {task.seed}) was lost: {result.message}; "
                              "queued again")
        if task.kind == "noise":
            self._noise_pending.append((task.individual_id, self._next_seed(task.individual_id)))
        elif task.individual_id not in self.retrain:
            self.retrain.appendleft(task.individual_id)

    # ------------------------------------------------------------------ proposals

    def _no_more_proposals(self) -> bool:
        """The operator's budget is spent, the API keeps failing, or the model repeats itself."""
        return self.operator.exhausted or self.operator.broken is not None or self.pace.stopped is not None

    def _fill_proposals(self) -> None:
        if self._no_more_proposals():
            if self.operator.broken:
                self._tell_broken()
            elif self.operator.exhausted and not self._told_exhausted:
                self._told_exhausted = True
                self.reporter.message("the LLM budget is spent: no new children; training those already made")
            elif self.pace.stopped and not self._told_repeating:
                self._told_repeating = True
                self.reporter.message(f"{self.pace.stopped}: no new children; training those already made")
            return
        want = self.executor.size + self._proposal_threads
        if self.cfg.trials is not None:  # no paying for children the trial cap will never train
            owed = len(self.inflight) + len(self.retrain) + len(self._noise_pending)
            want = min(want, self.cfg.trials - self.finished_trials - owed)
        while len(self.ready) + len(self.proposing) < want and self._dispatch_allowed():
            if len(self.proposing) >= self.pace.in_flight(self._proposal_threads) or self.pace.wait_s() > 0:
                return  # backing off: the last proposals made no new child
            g = self._open_generation()
            if g is None:
                return
            planned = self._made.get(g, 0) + sum(1 for pg in self.proposing.values() if pg == g)
            if planned >= self.cfg.population:
                return  # the open generation is fully planned; wait for proposals to land
            self._attempts[g] = self._attempts.get(g, 0) + 1
            fut = self._proposal_pool.submit(self.proposer.propose, random.Random(self.rng.random()))
            self.proposing[fut] = g

    def _proposal_finished(self, fut: Future, generation: int) -> None:
        try:
            proposal, parents = fut.result()
        except Exception as e:  # an operator bug must not end an overnight run
            proposal, parents = self.proposer.failed(e), []
        recorded = self.proposer.record(proposal, parents, generation)
        self.pace.note(proposal, recorded.rejected)
        if self._llm_calls is not None:
            self._llm_calls += len(proposal.llm_calls)
        if recorded.rejected is None:
            self.sources[recorded.individual.id] = proposal.source
            self._made[generation] = self._made.get(generation, 0) + 1
            self.ready.append((recorded.individual.id, generation))
        else:
            self.reporter.message(f"rejected ({proposal.operator}): {recorded.rejected}")
        if self.operator.broken:
            self._tell_broken()

    def _tell_broken(self) -> None:
        if not self._told_broken:
            self._told_broken = True
            self.reporter.message(f"{self.operator.broken}: no new trials; stopping once those in flight finish")

    def _drain_proposals(self) -> None:
        """Wait for the proposals in flight and record them."""
        if self.proposing:
            self.reporter.message(f"waiting for {len(self.proposing)} proposal(s) in flight, to record them")
        while self.proposing:
            self._heartbeat()
            done, _ = wait(list(self.proposing), timeout=1.0, return_when=FIRST_COMPLETED)
            for fut in done:
                self._proposal_finished(fut, self.proposing.pop(fut))

    def _stop_if_broken(self) -> None:
        if self.operator.broken:
            raise EvoError(f"stopped after {self.finished_trials} trials: {self.operator.broken}; "
                           f"fix the cause and continue with `{self._resume_command()}`")

    def _resume_command(self) -> str:
        return resume_command(self.run_record.name, self.store.name)

    # ------------------------------------------------------------------ generations

    def _check_generations(self) -> None:
        """Record each generation whose children have all finished their first trial."""
        for g in sorted(self._made):
            if g in self._recorded_generations:
                continue
            if g == self._open_generation() or any(pg == g for pg in self.proposing.values()):
                return  # still being filled
            members = self.store.individuals(self.run_record.id, generation=g)
            if any(m.status == "pending" and m.n_trials == 0 for m in members):
                return
            record = record_generation(self.store, self.archive, g, members)
            self._recorded_generations.add(g)
            self.retrain.extend(self.revalidation.champions_owed(1, self.retrain))
            self.reporter.generation_done(record)
