"""`evo run`: validate everything, create or resume the run, then hand over to the engine.

All input is checked before the archive is written to: a bad flag, a missing seed file, an
unknown run or a file that is not an archive fails with one line and leaves the archive as it was.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import click
from rich.console import Console

from evo import defaults
from evo.config import RunConfig, load_toml
from evo.datasets import resolve_dataset
from evo.errors import EvoError
from evo.options import (
    DEVICE_HELP,
    archive_file_option,
    console,
    data_dir_option,
    positive,
    positive_int,
    sandbox_choice,
)
from trainer.dataset import MANIFEST_NAME, Dataset


def _parse_seed_from(spec: str) -> tuple[Path | str, str | None]:
    """`DB[:RUN]`: a file path, or a database URL whose run follows the database's name
    (`postgresql://u@host:5432/evo:night-1`)."""
    if "://" in spec:
        head, slash, tail = spec.rpartition("/")
        db, _, run = tail.partition(":")
        return head + slash + db, (run or None)
    path, _, run = spec.partition(":")
    return Path(path), (run or None)


def _seed_sources(cfg: RunConfig, seed_file: Path | None, data_hash: str) -> list[tuple[str, str, str]]:
    """(source, operator, hypothesis) for generation 0's starting programs. A prior run seeds
    only from the same data: its scores, noise and grid are measurements on its tokens."""
    from evo.autoresearch_import import imported_rows, seeds_from_import
    from population.store import Store

    if cfg.seed_from:
        path, run_name = _parse_seed_from(cfg.seed_from)
        prior = Store.open(path, readonly=True)
        try:
            run = prior.get_run(run_name) if run_name else prior.latest_run()
            if run is None:
                raise EvoError(f"{path} has no runs to seed from")
            if imported_rows(run):  # another tool's record: its programs, re-trained here before they compete
                rows = imported_rows(run)
                picked = seeds_from_import(run, cfg.top)
                if not picked:
                    raise EvoError(f"run '{run.name}' in {path} has no kept experiment with a recorded val_bpb")
                return [(prior.get_individual(i).source, defaults.SEED_FROM_OPERATOR,
                         f"from {path.name}:{run.name} #{i} (imported {rows[i]['val_bpb']:.4f}, "
                         f"{rows[i]['commit']}): {prior.get_individual(i, source=False).hypothesis}") for i in picked]
            if run.data_manifest_hash and run.data_manifest_hash != data_hash:
                raise EvoError(f"--seed-from {cfg.seed_from}: run '{run.name}' trained on other data (manifest "
                               f"{run.data_manifest_hash}, this run's is {data_hash}); pass its --data-dir "
                               f"{run.config.get('dataset_dir') or '(the one it was prepared in)'}, or start from "
                               f"one of its variants with --seed-file")
            elites = prior.elites(run.id)[: cfg.top]
            if not elites:
                raise EvoError(f"run '{run.name}' in {path} has no elites to seed from")
            where = path.name if isinstance(path, Path) else prior.name
            return [(prior.get_individual(ind.id).source, defaults.SEED_FROM_OPERATOR, f"from {where}:{run.name} "
                     f"#{ind.id} ({ind.val_bpb_mean:.4f}): {ind.hypothesis or ind.operator}") for _, ind in elites]
        finally:
            prior.close()
    path = seed_file or defaults.SEED_TRAIN
    if not path.is_file():
        raise EvoError(f"seed file not found: {path} (give --seed-file PATH to a train.py)")
    source = path.read_text()
    try:
        compile(source, str(path), "exec")
    except SyntaxError as e:
        raise EvoError(f"seed file {path} is not valid Python (line {e.lineno}: {e.msg})")
    return [(source, defaults.SEED_OPERATOR, f"seed: {path.name}")]


# What `--resume` may change: when to stop, how much to spend, where and how safely trials run.
# Everything else is the experiment, stored with the run; changing it would mix two experiments.
_RESUMABLE = {"generations", "trials", "hours", "max_llm_dollars", "max_proposals_per_child", "sandbox", "workers",
              "executor", "ray_address"}


def _refuse_changes(run, db: str, flags: dict, **files: Path | None) -> None:
    """One line naming every flag of `--resume` that would change the run's experiment."""
    stored = RunConfig.from_dict(run.config)
    changed = [f"--{k.replace('_', '-')}" for k, v in flags.items()
               if v is not None and k not in _RESUMABLE and v != getattr(stored, k, v)]
    changed += [f"--{k.replace('_file', '').replace('_', '-') if k != 'config_file' else 'config'}"
                for k, v in files.items() if v is not None]
    if changed:
        raise EvoError(f"--resume continues run '{run.name}' as it was started; {', '.join(sorted(changed))} would "
                       f"change it (only {', '.join('--' + k.replace('_', '-') for k in sorted(_RESUMABLE))} may): "
                       f"start a new run instead, e.g. --seed-from {db}:{run.name}")


def _program_text(program: Path | None, operator: str) -> str:
    """The research program the LLM reads: --program, else the packaged program.md."""
    path = program or defaults.PROGRAM_PATH
    if program is not None and not program.is_file():
        raise EvoError(f"--program {program}: no such file")
    if not path.is_file():
        return ""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise EvoError(f"--program {path}: not a readable text file ({type(e).__name__}: {e})") from None
    if program is not None and operator == "llm" and not text.strip():
        raise EvoError(f"--program {program} is empty: the LLM would get no research program "
                       f"(write one, or leave --program out for {defaults.PROGRAM_NAME})")
    return text


def _make_operator(cfg: RunConfig, seed_source: str, spent_usd: float = 0.0):
    if cfg.operator == "offline":
        from evo.operators.offline import OfflineOperator

        return OfflineOperator(device_kind=cfg.device_kind)
    key = os.environ.get("ANTHROPIC_API_KEY")
    if not key:
        raise EvoError("--operator llm needs ANTHROPIC_API_KEY in the environment "
                       "(export ANTHROPIC_API_KEY=...), or use --operator offline")
    from evo.executors import local_slots
    from evo.operators.llm import DEFAULT_MODEL, LLMOperator

    # Only what the user set is passed: the operator's own defaults stand for the rest.
    options = {name: value for name, value in (("temperature", cfg.llm_temperature), ("timeout", cfg.llm_timeout),
                                               ("max_retries", cfg.llm_max_retries)) if value is not None}
    workers = len(local_slots(cfg.device, cfg.workers))
    return LLMOperator(model=cfg.model or DEFAULT_MODEL, max_dollars=cfg.max_llm_dollars, api_key=key,
                       base_url=os.environ.get("ANTHROPIC_BASE_URL"), seed_source=seed_source, spent_usd=spent_usd,
                       failure_limit=cfg.llm_failure_limit(workers), **options)


def _sandbox(cfg: RunConfig, flags: dict, console: Console):
    """The trials' sandbox, said at start: what is and is not contained. `--sandbox` may change
    on --resume (a machine without bwrap can go on with `off`)."""
    from trainer.sandbox import SandboxError, resolve

    if flags.get("sandbox"):
        cfg.sandbox = flags["sandbox"]
    try:
        box = resolve(cfg.sandbox)
    except SandboxError as e:
        raise EvoError(str(e))
    if not box.enabled:
        _keep_key_from_trials()
    console.print(box.describe())


def _keep_key_from_trials() -> None:
    """Without a sandbox a trial runs as this user: make this process non-dumpable, so another
    process of the user cannot read its environment or memory (/proc/<pid>/environ, .../mem)
    without root's CAP_SYS_PTRACE. Trials never get the key in their own environment anyway."""
    import sys

    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(4, 0)  # PR_SET_DUMPABLE


def _make_executor(cfg: RunConfig, say):
    """Where the trials run: this machine's slots, or a Ray cluster (`--executor ray`)."""
    from evo.executors import LocalExecutor, local_slots

    if cfg.executor != "ray":
        return LocalExecutor(local_slots(cfg.device, cfg.workers))
    try:
        from evo.ray_executor import RayExecutor
    except ImportError:
        raise EvoError("--executor ray needs Ray: pip install 'evo[ray]' (or pip install ray)") from None
    where = cfg.ray_address or "this machine"
    try:
        return RayExecutor(cfg.ray_address, device=cfg.device, say=say)
    except ConnectionError as e:
        raise EvoError(f"--ray-address {where}: cannot reach a Ray cluster ({str(e).splitlines()[0]})") from None


def run_command(**kwargs) -> None:
    """`_run_command`, and the run's claim released however it ends: finished, Ctrl-C, an error."""
    claimed: list = []  # (store, run id) once this process drives a run
    try:
        _run_command(claimed=claimed, **kwargs)
    finally:
        for store, run_id in claimed:
            store.release_run(run_id)


def _run_command(*, db: Path | str, name: str | None, resume: bool, join: str | None = None, config_file: Path | None, seed_file: Path | None,
                 program: Path | None, data_dir: Path | None, console: Console, flags: dict, claimed: list) -> None:
    import torch
    from rich.live import Live
    from rich.text import Text

    from evo.autoresearch_import import imported_rows
    from evo.engine import Engine
    from evo.reporting import ConsoleReporter
    from population.coordinator import this_process, who
    from population.store import Store

    executor = None
    reporter = ConsoleReporter(console)
    if join is not None:
        if resume or name:
            raise EvoError("--join RUN names the run to join: leave out --resume and --name")
        resume, name = True, join
    if resume:
        if isinstance(db, Path) and not db.exists():
            raise EvoError(f"nothing to {'join' if join else 'resume'}: {db} does not exist")
        store = Store.open(db)
        run = store.get_run(name) if name else store.latest_run()
        if run is None:
            raise EvoError(f"nothing to resume: {store.name} has no runs")
        if imported_rows(run):
            raise EvoError(f"run '{run.name}' was imported, not trained by evo: start from it with "
                           f"--seed-from {store.name}:{run.name}")
        _refuse_changes(run, store.name, flags, seed_file=seed_file, program=program, config_file=config_file,
                        data_dir=data_dir)
        if join is not None:  # one more coordinator: no claim, the others go on
            if "grid_bounds" not in run.config:
                raise EvoError(f"--join {run.name}: the run is still measuring its seed's noise (no grid yet); "
                               "join it once its bootstrap has finished")
            console.print(f"joining run '{run.name}'"
                          + (f", driven by {who(run.coordinator)}" if run.coordinator else ""))
        else:
            stale = store.claim_run(run.id)  # another live `evo run` driving it: one line, nothing written
            claimed.append((store, run.id))
            if stale:
                console.print(f"run '{run.name}' was left claimed by {who(stale)}, which is gone: taking it over")
        if run.status == "finished":
            console.print(f"run '{run.name}' already finished; resuming extends it with the current stop flags")
        cfg = RunConfig.from_dict(run.config)
        for key in sorted(_RESUMABLE - {"sandbox"}):  # when to stop, what to spend, where trials run
            if flags.get(key) is not None:
                setattr(cfg, key, flags[key])
        _sandbox(cfg, flags, console)
        seed_source = store.get_individual(store.individuals(run.id, generation=0)[0].id).source
        # The dollar cap covers the whole run: what earlier sessions spent counts against it.
        operator = _make_operator(cfg, seed_source, spent_usd=store.llm_spend(run.id)["cost_usd"])
    else:
        if config_file is None and Path(defaults.CONFIG_FILE).is_file():
            config_file = Path(defaults.CONFIG_FILE)
            console.print(f"settings: ./{defaults.CONFIG_FILE}")
        settings = load_toml(config_file) if config_file else {}
        settings.update({k: v for k, v in flags.items() if v is not None})
        cfg = RunConfig.from_dict(settings)
        if cfg.executor == "ray":  # the cluster's devices, not this machine's, decide the defaults
            executor = _make_executor(cfg, reporter.message)
            cuda = executor.device == "cuda"
        else:
            cuda = cfg.device != "cpu" and torch.cuda.is_available()
        cfg.device_kind = "cuda" if cuda else "cpu"
        if "budget" not in settings:
            cfg.budget = defaults.GPU_BUDGET if cuda else defaults.CPU_BUDGET
        if cfg.operator == "auto":
            cfg.operator = "llm" if os.environ.get("ANTHROPIC_API_KEY") else "offline"
            console.print(f"operator: {cfg.operator}" + ("" if cfg.operator == "llm" else
                          " (no ANTHROPIC_API_KEY set: hyperparameter mutations through the syntax tree)"))
        program_text = _program_text(program, cfg.operator)
        dataset = resolve_dataset(data_dir, prepare_if_missing=True)
        seeds = _seed_sources(cfg, seed_file, dataset.hash)
        seed_text = seeds[0][0]
        operator = _make_operator(cfg, seed_text)  # a missing key fails here, before any write
        _sandbox(cfg, flags, console)  # and --sandbox strict on a machine without one
        store = Store.open(db, create=True)  # refuses a file that is not an archive, writing nothing
        if name and any(r.name == name for r in store.list_runs()):
            raise EvoError(f"run '{name}' already exists in {store.name} (use --resume to continue it, or another --name)")
        cfg.dataset_dir = str(dataset.path)
        run = store.create_run(name or time.strftime(defaults.RUN_NAME_FORMAT), cfg.to_dict(), dataset.hash,
                               program_text, coordinator=this_process())
        claimed.append((store, run.id))
        for source, op, hyp in seeds:
            store.add_individual(run.id, source, [], op, hyp, generation=0)
    if store.migrated:
        console.print(f"{store.name}: migrated from archive schema {store.migrated[0]} to {store.migrated[1]}")
    if not Path(cfg.dataset_dir, MANIFEST_NAME).exists():
        raise EvoError(f"the run's data {cfg.dataset_dir} is gone (run `evo prepare` again)")
    data = Dataset(cfg.dataset_dir).check()
    if run.data_manifest_hash and data.hash != run.data_manifest_hash:
        raise EvoError(f"the run's data {cfg.dataset_dir} changed since it started (manifest {data.hash}, the run's "
                       f"is {run.data_manifest_hash}); its scores would not compare: start a new run on it")
    if join is None:
        store.update_run(run.id, status="running")
    if executor is None:
        executor = _make_executor(cfg, reporter.message)
    engine = Engine(store, store.get_run(run.id), cfg, operator, executor, reporter, joined=join is not None)
    stop = (f"{cfg.generations} generations" if cfg.generations is not None else
            f"{cfg.trials} trials" if cfg.trials is not None else
            f"{cfg.hours} h" if cfg.hours else "Ctrl-C (no --generations/--trials/--hours given)")
    console.print(f"[bold]evo run[/] '{run.name}' in {store.name}: population {cfg.population}, budget {cfg.budget:g}s, "
                  f"operator {cfg.operator}, {executor.describe()}, until {stop}")
    try:
        with Live(Text(""), console=console, refresh_per_second=2, transient=True) as live:
            reporter.live = live
            engine.run_loop()
    except KeyboardInterrupt:
        console.print(f"\nstopped. Finished trials are kept; continue with: {defaults.resume_command(run.name, store.name)}")
        raise SystemExit(130)
    finally:
        reporter.live = None
    _print_summary(store, run, console)
    store.close()


def _print_summary(store, run, console: Console) -> None:
    best = store.best(run.id, 3)
    elites = store.elites(run.id)
    console.print(f"[bold]done[/]: {len(store.trials(run.id, status='done'))} trials, {len(elites)} elites")
    for ind in best:
        sd = f" ± {ind.val_bpb_sd:.4f}" if ind.n_ok > 1 and ind.val_bpb_sd is not None else ""
        console.print(f"  #{ind.id} val_bpb {ind.val_bpb_mean:.4f}{sd} (n={ind.n_ok}) {ind.hypothesis or ''}")
    spend = store.llm_spend(run.id)
    if spend["calls"]:
        children = [i for i in store.individuals(run.id) if i.operator not in defaults.SEED_OPERATORS]
        trained = sum(1 for i in children if i.n_trials)
        rejected = [i.rejected_reason or "" for i in children if i.status == "rejected"]
        duplicates = sum(1 for r in rejected if r.startswith("duplicate of"))
        per = f"{spend['calls'] / trained:.1f} LLM calls per trained child" if trained else "no trained child"
        console.print(f"LLM: {spend['calls']} calls (${spend['cost_usd']:.4f}) for {trained} trained "
                      f"{'child' if trained == 1 else 'children'}: {per}; {len(rejected)} proposals rejected "
                      f"({duplicates} duplicates)")
    console.print("browse: evo elites | evo show ID | evo plot | evo ui")


@click.command("run", help=f"Evolve train.py variants into a MAP-Elites archive ({defaults.DEFAULT_DB} + "
                          f"{Path(defaults.DEFAULT_DB).with_suffix('.git')}).")
@click.option("--population", type=int, default=None, callback=positive_int,
              help=f"Children per generation [{defaults.POPULATION}].")
@click.option("--budget", type=float, default=None, callback=positive,
              help=f"Training seconds per trial [{defaults.CPU_BUDGET:g} CPU, {defaults.GPU_BUDGET:g} GPU].")
@click.option("--generations", type=int, default=None, callback=positive_int, help="Stop after N generations.")
@click.option("--trials", type=int, default=None, callback=positive_int, help="Stop after N finished trials.")
@click.option("--hours", type=float, default=None, callback=positive, help="Stop dispatching after H hours.")
@archive_file_option
@click.option("--name", default=None, help="Run name [run-DATE-TIME]; with --resume, the run to continue.")
@click.option("--resume", is_flag=True, help="Continue a stopped run (the latest, or --name).")
@click.option("--join", default=None, metavar="RUN",
              help="Add this machine's workers (and LLM key) to RUN while other coordinators drive it "
                   "(a shared archive: --db postgresql://...).")
@click.option("--operator", type=click.Choice(["auto", "offline", "llm"]), default=None,
              help="Variation operator [auto: llm if ANTHROPIC_API_KEY is set, else offline].")
@click.option("--seed-file", type=click.Path(path_type=Path), default=None,
              help=f"train.py to start from [{defaults.SEED_TRAIN_NAME}].")
@click.option("--seed-from", default=None, metavar="DB[:RUN]", help="Start from the best elites of a prior run.")
@click.option("--top", type=int, default=None, callback=positive_int,
              help=f"With --seed-from: how many elites [{defaults.TOP}].")
@click.option("--program", type=click.Path(path_type=Path), default=None,
              help=f"Research program for the LLM [{defaults.PROGRAM_NAME}].")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help=f"Settings file (grid bins, noise seeds, ...) [./{defaults.CONFIG_FILE} if present].")
@click.option("--device", default=None, help=DEVICE_HELP)
@click.option("--executor", type=click.Choice(["local", "ray"]), default=None,
              help="Where trials run: this machine's GPUs (or CPU) [local], or a Ray cluster's (ray).")
@click.option("--ray-address", default=None, metavar="ADDR",
              help="The Ray cluster for --executor ray, as `ray start --head` prints it [this machine's].")
@click.option("--workers", type=int, default=None, callback=positive_int,
              help="Parallel trials [one per GPU; 1 on CPU].")
@click.option("--noise-seeds", type=int, default=None, callback=positive_int,
              help=f"Seeds for the noise measurement [{defaults.NOISE_SEEDS}].")
@click.option("--model", default=None, help="LLM model id.")
@click.option("--max-llm-dollars", type=float, default=None, callback=positive,
              help="Stop calling the LLM past this spend (the run's total, resumes included; may be raised "
                   "on --resume); the run then trains the children it has and ends.")
@click.option("--max-proposals-per-child", type=float, default=None, callback=positive,
              help="Stop calling an LLM that repeats itself: more than N proposals per new child and the last 2N "
                   "without one (N of them duplicates), or 10N in a row without one; the run then trains the "
                   f"children it has and ends (--resume gives it another chance) [{defaults.MAX_PROPOSALS_PER_CHILD:g}].")
@click.option("--temperature", "llm_temperature", type=float, default=None,
              help="LLM sampling temperature [the model's].")
@click.option("--llm-timeout", type=float, default=None, callback=positive,
              help=f"Seconds per LLM request [{defaults.LLM_TIMEOUT:g}].")
@click.option("--llm-max-retries", type=click.IntRange(min=0), default=None,
              help=f"Retries of a rate-limited, overloaded or timed-out LLM request [{defaults.LLM_MAX_RETRIES}].")
@click.option("--sandbox", type=sandbox_choice(), default=None,
              help="OS sandbox around each trial [auto: bubblewrap where it works, else none, said at start; "
                   "strict: refuse to run without it].")
@data_dir_option
def run(db, name, resume, join, seed_file, program, config_file, data_dir, **flags):
    if flags.get("operator") is None and not resume and join is None:
        flags["operator"] = "auto"
    run_command(db=db, name=name, resume=resume, join=join, config_file=config_file, seed_file=seed_file, program=program,
                data_dir=data_dir, console=console, flags=flags)
