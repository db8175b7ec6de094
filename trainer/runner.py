"""Run one trial: a variant's train.py in its own process, with a hard wall-clock kill.

The subprocess gets its own directory, an allow-listed environment (no API keys or tokens of any
kind can reach LLM-written code), the seed, device and budget through a JSON config, and its own
process group so a kill takes everything it started. What comes back is a `TrialResult`: the
harness's JSON if it wrote one, else an outcome classified from exit status and stderr.
On CPU the process is forked from one that has already imported torch (`trainer.forkserver`);
`EVO_TRIAL_START=spawn` gives every trial a fresh interpreter instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from trainer import forkserver
from trainer.trial_config import CONFIG_ENV, TrialConfig
from trainer.outcomes import CANCELLED, classify

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
    # never pip-installed (a GPU box with the repo copied over).
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)])
    env["HF_HUB_OFFLINE"] = "1"
    env.update(extra or {})
    return env


def wall_limit(budget: float, device: str) -> float:
    """Budget + start-up allowance (imports, torch.compile) + evaluation allowance."""
    cuda = device.startswith("cuda") or (device == "auto" and _cuda_available())
    return budget + (240.0 if cuda else 60.0) + (180.0 if cuda else 60.0)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# Linux: before exec'ing the trial, ask the kernel to SIGKILL it if the coordinator dies, so a
# coordinator killed mid-run leaves no orphan trial holding the GPU while the resumed run starts.
# (A wrapper that exec's, because preexec_fn is unsafe in a threaded coordinator.)
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGKILL)\n"  # PR_SET_PDEATHSIG
    "if os.getppid() != int(sys.argv[1]): sys.exit(1)\n"  # the parent died before prctl took effect
    "os.execv(sys.executable, [sys.executable, 'train.py'])\n"
)


def _command() -> list[str]:
    if sys.platform.startswith("linux"):
        return [sys.executable, "-S", "-c", _DIE_WITH_PARENT, str(os.getpid())]
    return [sys.executable, "train.py"]


def _start(work: Path, env: dict[str, str], device: str, cancel: threading.Event | None, limit: float,
           fork: bool = True):
    """`python train.py` in `work`, in its own process group, output to stdout.log and stderr.log;
    None if cancelled before it started.

    CPU trials are forked from a process that has already imported torch (trainer.forkserver);
    CUDA trials, and any trial the fork server cannot start, get a fresh interpreter.
    """
    cpu = device == "cpu" or (device == "auto" and not _cuda_available())
    server = forkserver.shared(scrubbed_env()) if cpu and fork else None
    if server is not None:
        try:
            return server.launch(work, env, work / "stdout.log", work / "stderr.log", cancel, ready_within=limit)
        except forkserver.ForkServerError:
            pass  # a trial must not be lost to the accelerator; the spawned path is always there
    with (work / "stdout.log").open("wb") as out, (work / "stderr.log").open("wb") as err:
        return subprocess.Popen(_command(), cwd=work, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)


def _supervise(proc, limit: float, cancel: threading.Event | None) -> tuple[bool, bool]:
    """Wait for the trial; kill its group `limit` seconds after it started, or when cancelled.
    Returns (timed_out, cancelled)."""
    started = time.time()
    timed_out = cancelled = False
    try:
        while proc.poll() is None:
            if time.time() - started > limit:
                timed_out = True
                _kill_group(proc)
            elif cancel is not None and cancel.is_set():
                cancelled = True
                _kill_group(proc)
            else:
                time.sleep(0.05)
    except BaseException:
        _kill_group(proc)  # Ctrl-C in a caller without a cancel event: leave no orphans
        raise
    return timed_out, cancelled


def _kill_group(proc) -> None:
    forkserver.kill_group(proc.pid)
    proc.wait()


def _tail(path: Path, n: int = STDERR_TAIL_CHARS) -> str:
    if not path.exists():
        return ""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - n))
        return f.read().decode("utf-8", errors="replace")


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
    **harness_options,
) -> TrialResult:
    """Train one variant once. Never raises for anything the variant does.

    `source` is the program text, or a Path to a train.py. `limit` overrides the hard wall-clock
    kill (default: `wall_limit`). `cancel`, when set, kills the trial and returns outcome
    "cancelled" (Ctrl-C in the engine). `harness_options` are TrialConfig fields (eval_tokens, ...).
    """
    if budget <= 0:
        raise ValueError(f"--budget must be a positive number of seconds, got {budget}")
    text = source.read_text() if isinstance(source, Path) else source
    own_dir = workdir is None
    work = Path(tempfile.mkdtemp(prefix="evo-trial-")) if own_dir else Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    base = TrialResult(outcome="crash", seed=seed, device=device, budget=budget)
    t0 = time.time()
    try:
        (work / "train.py").write_text(text)
        try:
            compile(text, "train.py", "exec")
        except SyntaxError as e:
            msg = f"SyntaxError: {e.msg} (train.py, line {e.lineno})"
            return _with(base, outcome="syntax_error", message=msg, stderr_tail=msg, total_seconds=time.time() - t0)

        result_path = work / "result.json"
        result_path.unlink(missing_ok=True)
        cfg = TrialConfig(dataset_dir=str(Path(dataset_dir).resolve()), result_path=str(result_path), seed=seed,
                          device=device, budget=budget, threads=threads, launch_time=time.time(), **harness_options)
        (work / "config.json").write_text(json.dumps(asdict(cfg)))
        limit = limit or wall_limit(budget, device)
        trial_env = scrubbed_env({CONFIG_ENV: str(work / "config.json"), **(env or {})})
        proc = _start(work, trial_env, device, cancel, limit)
        if proc is None:
            return _with(base, outcome=CANCELLED, message="cancelled", total_seconds=time.time() - t0)
        timed_out, cancelled = _supervise(proc, limit, cancel)
        if getattr(proc, "lost", False) and not cancelled:
            # The fork server died under the trial: not the variant's doing, though its status would
            # read as SIGKILL ("oom"). Processes the trial started outlive it; kill them and train
            # the variant again in a fresh interpreter.
            _kill_group(proc)
            result_path.unlink(missing_ok=True)
            (work / "config.json").write_text(json.dumps(asdict(replace(cfg, launch_time=time.time()))))
            proc = _start(work, trial_env, device, cancel, limit, fork=False)
            timed_out, cancelled = _supervise(proc, limit, cancel)
        total = time.time() - t0
        stderr = _tail(work / "stderr.log")
        if cancelled:
            return _with(base, outcome=CANCELLED, message="cancelled", total_seconds=total)
        reported = json.loads(result_path.read_text()) if result_path.exists() else None
        outcome, message = classify(proc.returncode, stderr, reported, timed_out, budget)
        out = TrialResult.from_dict({**base.to_dict(), **(reported or {})})
        return _with(out, outcome=outcome, message=message, exit_code=proc.returncode, total_seconds=total,
                     stderr_tail=stderr, val_bpb=out.val_bpb if outcome == "ok" else None)
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
    return "\n".join(lines)
