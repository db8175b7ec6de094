"""Resource bombs and the instruments that judge them (tests/test_resource_limits.py, scripts/bench_faults.py).

Every file in tests/variants/bombs is a train.py that tries to use more than a trial's share: print
floods (its own and a child's), a huge file in its directory, many files there, a file in /tmp, a
fork bomb, memory balloons (one process, and spread over several). Each is bounded (512 MiB of
output, 1 GiB of files, 4,095 processes, 3 GiB of memory at most, and `EVO-BOMB-NOT-STOPPED` on
exit if it got that far), so that a failure to contain it cannot take the machine down. Its header
names the attack and the outcome a trial must end with (`# expect: log_flood`, `disk_limit`,
`process_limit`, `memory_limit`).

`run_bomb` runs one through the real runner on CPU under `BOMB_LIMITS` and judges it from outside:
the expected outcome, its logs within the cap, nothing of it left running (the processes below
this process's warm servers, and any process named like a bomb's), and an honest trial right after
it, in the same servers, scored. `run_bombs` runs them all.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.hostile import variants_in

BOMBS = Path(__file__).resolve().parent.parent / "variants" / "bombs"
HONEST = Path(__file__).resolve().parent.parent / "variants" / "bigram.py"
MiB, GiB = 2**20, 2**30
# The limits the bombs run under: small, so that each is stopped within seconds on 2 cores (the
# defaults, trainer.trial_config.ResourceLimits, are what a run gets). One tmpfs size for all: the
# bombs share their warm servers.
BOMB_LIMITS = dict(max_log_bytes=1 * MiB, max_file_bytes=64 * MiB, max_disk_bytes=128 * MiB, max_processes=64,
                   max_memory_bytes=1 * GiB, tmpfs_bytes=32 * MiB)
FAST = dict(eval_tokens=4096, eval_seq_len=64)  # the honest trial's evaluation: small (tests/conftest.py)
BOMB_NAME = "evo-bomb"  # what a bomb's processes call themselves where they exec (argv[0])


def resource_bombs(names: list[str] | None = None) -> list[tuple[str, str, str]]:
    """(name, expected outcome, source) for every resource bomb, sorted by name."""
    from trainer.outcomes import LIMIT_OUTCOMES

    return variants_in(BOMBS, "expect", LIMIT_OUTCOMES, names)


@dataclass
class BombResult:
    """One bomb's trial, judged. `seconds`: the runner's launch → stopped."""

    name: str
    expect: str
    outcome: str
    message: str
    sandboxed: bool | None
    seconds: float | None
    log_bytes: int  # the larger of stdout.log and stderr.log
    survivors: list[str] = field(default_factory=list)  # "pid cmdline", killed after they were found
    honest_after: str | None = None  # the honest trial's outcome ("unscored": ok without a val_bpb)
    why: list[str] = field(default_factory=list)  # what was not contained

    @property
    def contained(self) -> bool:
        return not self.why

    def line(self) -> str:
        where = "sandbox" if self.sandboxed else "no sandbox"
        seconds = f"{self.seconds:.2f}s" if self.seconds is not None else "-"
        text = (f"{self.name} ({where}): {self.outcome} after {seconds}, logs {self.log_bytes:,} bytes, "
                f"honest trial after it: {self.honest_after}")
        return text + ("" if self.contained else f"; NOT CONTAINED: {'; '.join(self.why)}")


def _process_tree() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] not in ("Z", "X"):
                children.setdefault(int(fields[1]), []).append(int(p.name))
    return children


def _below(children: dict[int, list[int]], root: int) -> list[int]:
    out, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def trial_servers() -> list[tuple[int, bool]]:
    """(host pid of the process the runner started, sandboxed) for each warm server of this
    process's runner (in a sandbox that process is bwrap, the server its one child)."""
    from trainer import runner

    pool = runner._POOL
    with pool._lock:
        servers = [s for idle in pool._idle.values() for s in idle] + list(pool._scorers.values())
    return [(s.fork._proc.pid, s.sandboxed) for s in servers if s.alive]


def bomb_survivors() -> list[str]:
    """What a trial left running ("pid cmdline"): every live process below this process's warm
    servers but the servers themselves, and any process, anywhere, named like a bomb's."""
    children = _process_tree()
    pids = set()
    for pid, sandboxed in trial_servers():
        inner = set(children.get(pid, [])) if sandboxed else set()
        pids.update(p for p in _below(children, pid) if p not in inner)
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            with contextlib.suppress(OSError):
                if (p / "cmdline").read_bytes().startswith(BOMB_NAME.encode()) and int(p.name) != os.getpid():
                    pids.add(int(p.name))
    out = []
    for pid in sorted(pids):
        with contextlib.suppress(OSError, IndexError):
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state not in ("Z", "X"):
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                out.append(f"{pid} {cmd.strip()[:120]}")
    return out


def kill_survivors(found: list[str]) -> None:
    for line in found:
        with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
            os.kill(int(line.split()[0]), signal.SIGKILL)


def run_bomb(name: str, expect: str, source: str, *, dataset_dir, workdir: Path, sandbox: str = "auto",
             budget: float = 1.0, honest: bool = True, **options) -> BombResult:
    """Run one bomb through the real runner (CPU) under `BOMB_LIMITS` (and `options`, which win),
    then, with `honest`, the honest bigram in the same warm servers, and judge both."""
    from trainer.runner import run_trial

    opts = {**FAST, **BOMB_LIMITS, **options}
    workdir = Path(workdir)
    result = run_trial(source, dataset_dir=dataset_dir, budget=budget, seed=0, device="cpu", sandbox=sandbox,
                       workdir=workdir, **opts)
    logs = [workdir / n for n in ("stdout.log", "stderr.log")]
    log_bytes = max((p.stat().st_size for p in logs if p.is_file()), default=0)
    time.sleep(0.1)  # let anything that escaped the kill show itself
    survivors = bomb_survivors()
    kill_survivors(survivors)
    honest_after = None
    if honest:
        h = run_trial(HONEST.read_text(), dataset_dir=dataset_dir, budget=budget, seed=0, device="cpu",
                      sandbox=sandbox, workdir=workdir.parent / f"{workdir.name}-honest", max_steps=3, **opts)
        honest_after = h.outcome if h.outcome != "ok" or h.val_bpb is not None else "unscored"
    cap = opts.get("max_log_bytes")
    why = []
    if result.outcome != expect:
        why.append(f"outcome {result.outcome}, not {expect}: {result.message}")
    if cap and log_bytes > cap:
        why.append(f"a log holds {log_bytes} bytes, over the {cap}-byte cap")
    if survivors:
        why.append(f"{len(survivors)} processes outlived it: {survivors[:3]}")
    if honest and honest_after != "ok":
        why.append(f"the honest trial after it ended {honest_after}")
    return BombResult(name=name, expect=expect, outcome=result.outcome, message=result.message,
                      sandboxed=result.sandboxed, seconds=result.handover_seconds, log_bytes=log_bytes,
                      survivors=survivors, honest_after=honest_after, why=why)


def run_bombs(dataset_dir, root: Path, sandbox: str = "auto", names: list[str] | None = None,
              **options) -> list[BombResult]:
    """Every resource bomb (or those named), one after another, each in a directory under `root`
    (a benchmark prints "resource bombs contained: N/N" and each result's `line()`)."""
    return [run_bomb(name, expect, source, dataset_dir=dataset_dir, workdir=Path(root) / name, sandbox=sandbox,
                     **options)
            for name, expect, source in resource_bombs(names)]
