"""Run one sealed trial: the variant trains in a sandbox, a separate scorer computes its val_bpb.

1. The trainer: the variant's train.py in its own process, forked from a warm server that runs
   inside the OS sandbox (`trainer.sandbox`: training split and own directory only, no network,
   no other process) with an allow-listed environment (no API keys or tokens of any kind can
   reach LLM-written code). It trains and hands over an exported graph (`trainer.artifact`).
2. The runner's clock: launch → hand-over is measured here, from the server's reports, never
   from the variant; past budget + `handover_allowance` the trial is `over_budget`, unscored.
3. The scorer (`trainer.scorer`): a process that never runs variant code, in a sandbox of its own
   that sees the validation split, loads the graph, checks causality at the evaluation's shape and
   computes val_bpb. Its result comes back through a directory no trial can reach.

Nothing the trainer writes is trusted as a result: its report (steps, tokens, timings) is shown
as its own account, and a failure it claims only fails itself. What a trial may use (output, file
sizes, files, processes, memory, the sandbox's tmpfs: `trainer.trial_config.ResourceLimits`) is
enforced by its fork server; past a limit the trial is stopped with that limit's outcome. CPU trials reuse one warm server
per slot (it cleans up between trials); CUDA trials, and `EVO_TRIAL_START=spawn`, get a fresh
server per trial, so CUDA is never initialised before a fork.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from trainer import forkserver
from trainer.outcomes import CANCELLED, classify, limit_exceeded
from trainer.sandbox import Sandbox, resolve as resolve_sandbox
from trainer.trial_config import (
    ARTIFACT_NAME,
    CONFIG_ENV,
    HANDOVER_NAME,
    LOG_BYTES,
    REPORT_NAME,
    SCORE_NAME,
    TMPFS_BYTES,
    EvalPlan,
    ResourceLimits,
    TrialConfig,
    eval_plan,
    handover_allowance,
    resource_limits,
)

STDERR_TAIL_CHARS = 3000

# Only these variables reach a trial. An allow-list, not a deny-list: a new secret variable
# (ANTHROPIC_API_KEY, HF_TOKEN, AWS_*, GITHUB_TOKEN, ...) is kept out without anyone naming it.
ENV_ALLOW = (
    "PATH", "HOME", "USER", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV",
    "CUDA_VISIBLE_DEVICES", "CUDA_HOME", "CUDA_PATH", "LD_LIBRARY_PATH", "NVIDIA_VISIBLE_DEVICES",
    "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
)
_SECRET_HINTS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")


@dataclass
class TrialResult:
    outcome: str
    val_bpb: float | None = None
    seed: int = 0
    device: str = ""
    budget: float = 0.0
    training_seconds: float | None = None
    total_seconds: float | None = None
    startup_seconds: float | None = None
    compile_seconds: float | None = None
    eval_seconds: float | None = None
    peak_memory_mb: float | None = None
    params: int | None = None
    tokens: int | None = None
    steps: int | None = None
    mfu: float | None = None
    tokens_per_second: float | None = None
    exit_code: int | None = None
    stderr_tail: str = ""
    message: str = ""
    handover_seconds: float | None = None  # the runner's clock: launch -> hand-over
    export_seconds: float | None = None
    checked_rows: int | None = None  # rows the scorer's causality check cut and compared
    sandboxed: bool | None = None
    attention: str | None = None  # the trainer's word on a substituted attention kernel (autoresearch's FA3)

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrialResult":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def scrubbed_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ENV_ALLOW and not any(h in k for h in _SECRET_HINTS)}
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "evo" / "inductor"))
    env["PYTHONUNBUFFERED"] = "1"
    # The variant imports the coordinator's own harness, also from a source checkout that was
    # never pip-installed (a GPU box with the repo copied over). First of all: autoresearch's
    # module names (`prepare`, `kernels`, `flash_attn_interface`), so that they are evo's.
    here = Path(__file__).resolve().parent
    env["PYTHONPATH"] = os.pathsep.join([str(here / "autoresearch_path"), str(here.parent),
                                         *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)])
    env["HF_HUB_OFFLINE"] = "1"
    env.update(extra or {})
    return env


def _cuda_requested(device: str) -> bool:
    if device.startswith("cuda"):
        return True
    if device != "auto":
        return False
    import torch

    return torch.cuda.is_available()


def wall_limit(budget: float, device: str) -> float:
    """When the trainer is killed: the hand-over bound plus a grace for a process that is slow
    to exit (past the bound it is `over_budget` anyway; killed, it is a `timeout`)."""
    cuda = _cuda_requested(device)
    return budget + handover_allowance(budget, cuda) + (60.0 if cuda else 10.0)


def score_limit(plan: EvalPlan, cuda: bool) -> float:
    """When the scorer is killed: generous for an honest graph (CPU: ~1.5 s for 32k tokens)."""
    return (180.0 if cuda else 60.0) + plan.rows * plan.seq_len / (2e5 if cuda else 2e4)


# ------------------------------------------------------------------------ servers and their slots


def _private_env(slot: Path) -> dict[str, str]:
    """Inside a sandbox everything is read-only but the slot: caches and home go there, per trial
    (a compiler cache shared between trials would be a channel from one variant to the next)."""
    return {"HOME": str(slot), "TMPDIR": "/tmp", "TORCHINDUCTOR_CACHE_DIR": str(slot / ".cache" / "inductor"),
            "TRITON_CACHE_DIR": str(slot / ".cache" / "triton")}


class _Server:
    """A fork server in a private directory: for the trainer role, the directory its trials run in
    (the only host path they can write); for the scorer role, where requests and results live."""

    def __init__(self, role: str, box: Sandbox, data_dir: Path, gpu: bool, exclusive: bool,
                 tmpfs_bytes: int = TMPFS_BYTES):
        self.dir = Path(tempfile.mkdtemp(prefix=f"evo-{role}-"))
        argv = forkserver.server_argv(role, exclusive=exclusive, own_pid_namespace=box.enabled, gpu=gpu)
        command = box.command(argv, role=role, data_dir=data_dir, writable=self.dir, gpu=gpu, tmpfs_bytes=tmpfs_bytes)
        self.sandboxed = box.enabled
        env = scrubbed_env(_private_env(self.dir) if box.enabled else None)
        self.fork = forkserver.ForkServer(command, env, cwd=self.dir)

    @property
    def alive(self) -> bool:
        return self.fork.alive

    def clear(self) -> None:
        for entry in os.listdir(self.dir):
            path = self.dir / entry
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()

    def close(self) -> None:
        self.fork.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class _Pool:
    """Idle servers by (role, data dir, sandbox, gpu; a trainer's tmpfs size). A trainer server
    serves one trial at a time (taken out while it runs); the scorer server is shared by every
    concurrent request."""

    def __init__(self):
        self._lock = threading.Lock()
        self._idle: dict[tuple, list[_Server]] = {}
        self._scorers: dict[tuple, _Server] = {}

    def trainer(self, box: Sandbox, data_dir: Path, gpu: bool, reuse: bool, tmpfs_bytes: int = TMPFS_BYTES) -> _Server:
        key = (str(data_dir), box.enabled, gpu, tmpfs_bytes)
        if reuse:
            with self._lock:
                idle = self._idle.setdefault(key, [])
                while idle:
                    server = idle.pop()
                    if server.alive:
                        return server
                    server.close()
        return _Server("trainer", box, data_dir, gpu, exclusive=True, tmpfs_bytes=tmpfs_bytes)

    def give_back(self, server: _Server, box: Sandbox, data_dir: Path, gpu: bool, reuse: bool,
                  tmpfs_bytes: int = TMPFS_BYTES) -> None:
        if reuse and server.alive:
            server.clear()
            with self._lock:
                self._idle.setdefault((str(data_dir), box.enabled, gpu, tmpfs_bytes), []).append(server)
        else:
            server.close()

    def scorer(self, box: Sandbox, data_dir: Path, gpu: bool) -> _Server:
        key = (str(data_dir), box.enabled, gpu)
        with self._lock:
            server = self._scorers.get(key)
            if server is None or not server.alive:
                if server is not None:
                    server.close()
                server = self._scorers[key] = _Server("scorer", box, data_dir, gpu, exclusive=False)
            return server

    def close(self) -> None:
        with self._lock:
            servers = [s for idle in self._idle.values() for s in idle] + list(self._scorers.values())
            self._idle, self._scorers = {}, {}
        for s in servers:
            s.close()


_POOL = _Pool()


@atexit.register
def close_servers() -> None:
    """Stop every warm server (at exit, and in tests that want servers of their own)."""
    _POOL.close()


# ---------------------------------------------------------------------------------- one trial


def _reuse_servers(gpu: bool) -> bool:
    """CPU trials share warm servers; CUDA trials (never fork after CUDA could have been touched)
    and EVO_TRIAL_START=spawn get a fresh one each."""
    return sys.platform.startswith("linux") and not gpu and os.environ.get("EVO_TRIAL_START", "fork") != "spawn"


def _supervise(proc, limit: float, cancel: threading.Event | None,
               watch: Callable[[], float | None] | None = None) -> tuple[bool, bool]:
    """Wait for a child; kill its group `limit` seconds after it started, or when cancelled.
    `watch`, called each tick, may move the kill time (it returns the new one, or None).
    Returns (timed_out, cancelled)."""
    deadline = time.time() + limit
    timed_out = cancelled = False
    try:
        while proc.poll() is None:
            moved = watch() if watch is not None else None
            if moved is not None:
                deadline = moved
            elif time.time() > deadline:
                timed_out = True
                _kill_group(proc)
            elif cancel is not None and cancel.is_set():
                cancelled = True
                _kill_group(proc)
            else:
                time.sleep(0.02)
    except BaseException:
        _kill_group(proc)  # Ctrl-C in a caller without a cancel event: leave no orphans
        raise
    return timed_out, cancelled


def _kill_group(proc) -> None:
    proc.kill()  # through its server: inside a sandbox its pid is not a host pid


def _tail(path: Path, n: int = STDERR_TAIL_CHARS) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return ""
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - n))
        return f.read().decode("utf-8", errors="replace")


def _collect(slot: Path, work: Path) -> None:
    """Move the files the trial left in its slot into `work`: regular files at the top level only
    (a symlink or hard link planted by the variant would point the runner at a file the variant
    cannot read itself; directories such as compiler caches stay behind and are cleared)."""
    for entry in os.scandir(slot):
        if entry.name in ("train.py", "config.json"):
            continue  # the runner's own copies are in `work` already
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
            shutil.move(entry.path, str(work / entry.name))


AFTER_SCORE_GRACE = 30.0  # seconds a trainer may go on after its score came back (its own prints, exit)


class _Handover:
    """A hand-over made while the trainer still runs (autoresearch's `evaluate_bpb` returns the
    score): the trainer writes HANDOVER_NAME next to its artifact; the runner copies the artifact
    out through a descriptor it checked (a regular file of one link: no symlink or hard link the
    variant planted), scores it in the scorer process, keeps the verdict and writes only the
    val_bpb back into the slot. The first hand-over is the trial's; the trainer then has
    AFTER_SCORE_GRACE seconds to exit, and the kill clock does not run while the scorer works."""

    def __init__(self, score: Callable[[Path], dict], bound: float, work: Path):
        self._score, self._bound, self._work = score, bound, work
        self.at: float | None = None
        self.verdict: dict | None = None

    def watch(self, slot: Path, proc) -> float | None:
        if self.at is not None or not (slot / HANDOVER_NAME).exists():
            return None
        self.at = time.time()
        handover = self.at - (proc.started_at or self.at)
        if handover > self._bound:
            self.verdict = {"outcome": "over_budget", "message": f"{handover:.1f}s from launch to hand-over; the "
                                                                 f"limit is {self._bound:.1f}s (budget + allowance)"}
        elif not _take_artifact(slot / ARTIFACT_NAME, self._work / ARTIFACT_NAME):
            self.verdict = {"outcome": "no_result", "message": "handed over without a model file"}
        else:
            self.verdict = self._score(self._work / ARTIFACT_NAME)
        ok = self.verdict.get("outcome") == "ok"
        answer = {"outcome": self.verdict.get("outcome"), "message": self.verdict.get("message", ""),
                  "val_bpb": self.verdict.get("val_bpb") if ok else None}
        with contextlib.suppress(OSError):
            tmp = slot / (SCORE_NAME + ".tmp")
            tmp.write_text(json.dumps(answer))
            os.replace(tmp, slot / SCORE_NAME)
        if self.verdict.get("outcome") == CANCELLED:
            _kill_group(proc)
        return time.time() + AFTER_SCORE_GRACE


def _take_artifact(path: Path, dest: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            return False
        with open(dest, "wb") as out:
            shutil.copyfileobj(f, out, 1 << 20)
    return True


# What a trainer may say about itself (shown, and used as behaviour descriptors; the score, the
# parameter count and the hand-over time are measured elsewhere). Anything else it writes is dropped.
_REPORTED = {"outcome", "message", "training_seconds", "startup_seconds", "compile_seconds", "steps", "tokens",
             "tokens_per_second", "mfu", "peak_memory_mb", "export_seconds", "attention"}


def _read_report(path: Path) -> dict | None:
    text = _tail(path, 1 << 20)
    try:
        report = json.loads(text) if text else None
    except ValueError:
        return None
    return report if isinstance(report, dict) else None


def _train(text: str, cfg: TrialConfig, box: Sandbox, gpu: bool, env: dict[str, str], work: Path,
           limit: float, cancel: threading.Event | None, limits: ResourceLimits, early: _Handover):
    """Train in a server's slot, then collect into `work`: (child or None if cancelled first,
    timed_out, cancelled, sandboxed). The config's launch time is written once the server is
    ready, so its imports are not charged to the trial. The server enforces `limits`."""
    data_dir = Path(cfg.dataset_dir)
    for attempt in range(2):
        reuse = _reuse_servers(gpu) and attempt == 0
        server = _POOL.trainer(box, data_dir, gpu, reuse, limits.tmpfs_bytes)
        slot = server.dir
        try:
            server.clear()
            try:
                if not server.fork.wait_ready(cancel, max(limit, 120.0)):
                    return None, False, True, server.sandboxed
                (slot / "train.py").write_text(text)
                run_cfg = TrialConfig(**{**asdict(cfg), "artifact_path": str(slot / ARTIFACT_NAME),
                                         "report_path": str(slot / REPORT_NAME), "launch_time": time.time()})
                (slot / "config.json").write_text(json.dumps(asdict(run_cfg)))
                trial_env = scrubbed_env({CONFIG_ENV: str(slot / "config.json"), **env})
                if server.sandboxed:
                    trial_env.update(_private_env(slot))
                proc = server.fork.launch([str(slot / "train.py")], slot, trial_env, slot / "stdout.log",
                                          slot / "stderr.log", cancel, limits=limits.request())
            except forkserver.ForkServerError:
                continue  # a trial must not be lost to the accelerator: a fresh server
            if proc is None:
                return None, False, True, server.sandboxed
            timed_out, cancelled = _supervise(proc, limit, cancel, lambda: early.watch(slot, proc))
            if proc.lost and not server.sandboxed:
                forkserver.kill_group(proc.pid)  # what the trial started outlives it (a sandbox's end takes it)
            if proc.lost and not cancelled and attempt == 0 and early.at is None:
                # The server died under the trial (perhaps killed by it): not, by itself, a verdict.
                # Train the variant once more in a fresh server; a second loss is the variant's.
                continue
            _collect(slot, work)
            return proc, timed_out, cancelled, server.sandboxed
        finally:
            _POOL.give_back(server, box, data_dir, gpu, reuse, limits.tmpfs_bytes)
    raise forkserver.ForkServerError("no trial server could be started (twice)")


def _score(artifact_path: Path, cfg: TrialConfig, plan: EvalPlan, box: Sandbox, gpu: bool,
           env: dict[str, str], cancel: threading.Event | None) -> dict:
    """The scorer's verdict on a handed-over model (a dict with at least outcome and message)."""
    server = _POOL.scorer(box, Path(cfg.dataset_dir), gpu)
    token = f"{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}"
    inbox = server.dir / f"{token}.evo"
    request, result = server.dir / f"{token}.request.json", server.dir / f"{token}.result.json"
    logs = server.dir / f"{token}.out", server.dir / f"{token}.err"
    try:
        shutil.move(str(artifact_path), str(inbox))
        request.write_text(json.dumps({"artifact": str(inbox), "dataset_dir": cfg.dataset_dir, "plan": asdict(plan),
                                       "device": "cuda" if gpu else "cpu", "threads": cfg.threads}))
        scorer_env = scrubbed_env({k: v for k, v in env.items() if k.startswith("CUDA")})
        try:
            proc = server.fork.launch(["-m", "trainer.scorer", str(request), str(result)], server.dir, scorer_env,
                                      logs[0], logs[1], cancel, limits={"log_bytes": LOG_BYTES})
        except forkserver.ForkServerError as e:
            return {"outcome": "crash", "message": f"the scorer could not start: {e}"}
        if proc is None:
            return {"outcome": CANCELLED, "message": "cancelled"}
        timed_out, cancelled = _supervise(proc, score_limit(plan, gpu), cancel)
        if cancelled:
            return {"outcome": CANCELLED, "message": "cancelled"}
        if timed_out:
            return {"outcome": "timeout", "message": "scoring the exported model took too long"}
        verdict = _read_report(result)
        if verdict is None:
            err = _tail(logs[1]).strip().splitlines()
            return {"outcome": "crash", "message": f"the scorer failed: {err[-1] if err else proc.returncode}"}
        return verdict
    finally:
        for p in (inbox, request, result, *logs):
            with contextlib.suppress(OSError):
                p.unlink()


def run_trial(
    source: str | Path,
    *,
    dataset_dir: str | Path,
    budget: float,
    seed: int = 0,
    device: str = "auto",
    workdir: str | Path | None = None,
    threads: int | None = None,
    limit: float | None = None,
    cancel: threading.Event | None = None,
    env: dict[str, str] | None = None,
    sandbox: str = "auto",
    **harness_options,
) -> TrialResult:
    """Train one variant once and score it. Never raises for anything the variant does.

    `source` is the program text, or a Path to a train.py. `limit` overrides the hard wall-clock
    kill of the trainer (default: `wall_limit`). `cancel`, when set, kills the trial and returns
    outcome "cancelled" (Ctrl-C in the engine). `sandbox`: auto | strict | off
    (`trainer.sandbox`; strict raises SandboxError where none can be made). `harness_options`
    are TrialConfig fields (eval_tokens, eval_seq_len, eval_batch, warmup_steps, max_steps, and
    the resource limits max_log_bytes, max_file_bytes, max_disk_bytes, max_processes,
    max_memory_bytes, tmpfs_bytes: `trainer.trial_config.resource_limits`).
    """
    if budget <= 0:
        raise ValueError(f"--budget must be a positive number of seconds, got {budget}")
    box = resolve_sandbox(sandbox)
    text = source.read_text() if isinstance(source, Path) else source
    own_dir = workdir is None
    work = Path(tempfile.mkdtemp(prefix="evo-trial-")) if own_dir else Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    base = TrialResult(outcome="crash", seed=seed, device=device, budget=budget, sandboxed=box.enabled)
    t0 = time.time()
    try:
        (work / "train.py").write_text(text)
        try:
            compile(text, "train.py", "exec")
        except SyntaxError as e:
            msg = f"SyntaxError: {e.msg} (train.py, line {e.lineno})"
            return _with(base, outcome="syntax_error", message=msg, stderr_tail=msg, total_seconds=time.time() - t0)
        data_dir = Path(dataset_dir).resolve()
        from trainer.dataset import Dataset

        gpu = _cuda_requested(device)
        cfg = TrialConfig(dataset_dir=str(data_dir), seed=seed, device=device, budget=budget, threads=threads,
                          **harness_options)
        plan = eval_plan(cfg.eval_tokens, cfg.eval_seq_len, Dataset(data_dir).manifest["n_val_tokens"], gpu,
                         cfg.eval_batch)
        (work / "config.json").write_text(json.dumps(asdict(cfg)))
        limit = limit or wall_limit(budget, device)
        limits = resource_limits(cfg, gpu)
        early = _Handover(lambda artifact: _score(artifact, cfg, plan, box, gpu, env or {}, cancel),
                          budget + handover_allowance(budget, gpu), work)
        try:
            proc, timed_out, cancelled, sandboxed = _train(text, cfg, box, gpu, env or {}, work, limit, cancel, limits,
                                                           early)
        except forkserver.ForkServerError as e:
            return _with(base, outcome="crash", message=str(e), total_seconds=time.time() - t0)
        if proc is None or cancelled:
            return _with(base, outcome=CANCELLED, message="cancelled", total_seconds=time.time() - t0)
        stderr = _tail(work / "stderr.log")
        report = {k: v for k, v in (_read_report(work / REPORT_NAME) or {}).items() if k in _REPORTED}
        handover = (early.at or proc.ended_at) - proc.started_at
        out = _with(TrialResult.from_dict({**base.to_dict(), **report}), exit_code=proc.returncode,
                    stderr_tail=stderr, handover_seconds=handover, sandboxed=sandboxed, val_bpb=None, mfu=report.get("mfu"))
        if proc.limit:  # stopped by its server past a resource limit: that, whatever else it did
            failed = limit_exceeded(proc.limit.get("kind"), proc.limit.get("used", 0), proc.limit.get("detail", ""),
                                    limits)
        elif early.verdict is not None:  # handed over while running: scored then, whatever it did after
            failed = None
        else:
            failed = classify(proc.returncode, stderr, report, timed_out, budget, (work / ARTIFACT_NAME).is_file(),
                              limits)
        if proc.lost and early.verdict is None:
            failed = ("crash", "the trial's server died under it twice (did the variant kill it?)")
        if failed is None and handover > budget + handover_allowance(budget, gpu):
            failed = ("over_budget", f"{handover:.1f}s from launch to hand-over; the limit is the {budget:g}s budget "
                                     f"+ {handover_allowance(budget, gpu):.1f}s for start-up, compile and export")
        if failed is not None:
            return _with(out, outcome=failed[0], message=failed[1], total_seconds=time.time() - t0)
        verdict = early.verdict or _score(work / ARTIFACT_NAME, cfg, plan, box, gpu, env or {}, cancel)
        if verdict.get("outcome") == CANCELLED:
            return _with(base, outcome=CANCELLED, message="cancelled", total_seconds=time.time() - t0)
        check = verdict.get("check") or {}
        ok = verdict.get("outcome") == "ok"
        return _with(out, outcome=verdict.get("outcome", "crash"), message=verdict.get("message", ""),
                     val_bpb=verdict.get("val_bpb") if ok else None, params=verdict.get("params", out.params),
                     eval_seconds=verdict.get("eval_seconds"), checked_rows=check.get("rows"),
                     total_seconds=time.time() - t0)
    finally:
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)


def _with(r: TrialResult, **changes) -> TrialResult:
    return TrialResult.from_dict({**r.to_dict(), **changes})


def format_summary(r: TrialResult) -> str:
    """The autoresearch-style block a person reads after a trial."""

    def f(v, fmt):
        return format(v, fmt) if v is not None else "-"

    overhead = (r.total_seconds - r.training_seconds) if r.total_seconds and r.training_seconds else None
    lines = [
        "---",
        f"outcome:          {r.outcome}" + (f" ({r.message})" if r.outcome != "ok" and r.message else ""),
        f"val_bpb:          {f(r.val_bpb, '.6f')}",
        f"training_seconds: {f(r.training_seconds, '.1f')}",
        f"total_seconds:    {f(r.total_seconds, '.1f')}",
        f"overhead_seconds: {f(overhead, '.1f')} (startup {f(r.startup_seconds, '.1f')}, "
        f"compile {f(r.compile_seconds, '.1f')}, eval {f(r.eval_seconds, '.1f')})",
        f"peak_memory_mb:   {f(r.peak_memory_mb, '.1f')}",
        f"mfu_percent:      {f(r.mfu * 100 if r.mfu is not None else None, '.2f')}",
        f"total_tokens_M:   {f(r.tokens / 1e6 if r.tokens is not None else None, '.2f')}",
        f"tokens_per_sec:   {f(r.tokens_per_second, ',.0f')}",
        f"num_steps:        {f(r.steps, 'd')}",
        f"num_params_M:     {f(r.params / 1e6 if r.params is not None else None, '.2f')}",
        f"seed:             {r.seed}",
        f"device:           {r.device}",
    ]
    if r.attention:
        lines.append(f"attention:        {r.attention}")
    return "\n".join(lines)
