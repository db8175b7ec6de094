"""Which process drives a run: the coordinator's claim, and whether its holder is still alive.

`evo run` claims its run (`Store.claim_run`): the run's row records `coordinator` ("host:pid"),
`claimed_at` and `heartbeat_at`, which the engine refreshes (`Store.heartbeat`, at most every
`HEARTBEAT_EVERY_S`). A second `evo run --resume` of the same run is refused while the holder is
alive, and takes the run over once it is gone:

- on the same host, the holder is alive while its pid is a running process that started before
  the claim (a zombie, or a pid the system has since given to a newer process, is not the holder);
  a SIGKILLed coordinator is therefore seen to be gone at once;
- on another host its pid means nothing here: the holder is alive while its last heartbeat is
  less than `STALE_AFTER_S` old.

Nothing here writes: the claim itself is one transaction of the store's.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from datetime import datetime, timezone

HEARTBEAT_EVERY_S = 15.0  # how often a driving coordinator refreshes its heartbeat (one UPDATE)
STALE_AFTER_S = 60.0  # a claim from another host without a heartbeat this long is taken over
_START_SLACK_S = 2.0  # /proc's boot time has whole seconds: a start this close to the claim is the holder's


@dataclass(frozen=True)
class Holder:
    """A claim's holder, parsed from "host:pid"."""

    host: str
    pid: int

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}"


def this_process() -> str:
    """This process as a coordinator: "host:pid"."""
    return f"{socket.gethostname()[:240]}:{os.getpid()}"


def parse(coordinator: str) -> Holder | None:
    host, _, pid = coordinator.rpartition(":")
    return Holder(host, int(pid)) if host and pid.isdigit() else None


def is_alive(coordinator: str, claimed_at: datetime | None, heartbeat_at: datetime | None, now: datetime,
             stale_after: float = STALE_AFTER_S) -> bool:
    """Whether the process holding a claim may still be driving the run (see the module's rules).
    Times are naive UTC, as the archive stores them."""
    holder = parse(coordinator)
    if holder is not None and holder.host == socket.gethostname()[:240]:
        return pid_is_holder(holder.pid, claimed_at)
    return heartbeat_at is not None and (now - heartbeat_at).total_seconds() < stale_after


def pid_is_holder(pid: int, claimed_at: datetime | None) -> bool:
    """Whether `pid` is a live process on this host that may have made a claim at `claimed_at`."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    stat = _proc_stat(pid)
    if stat is None:  # no /proc (not Linux): the pid exists, that is all we can know
        return True
    state, started = stat
    if state in ("Z", "X"):  # exited, not yet reaped by its parent
        return False
    if claimed_at is not None and started is not None:
        claimed = claimed_at.replace(tzinfo=timezone.utc).timestamp()
        return started <= claimed + _START_SLACK_S  # started after the claim: the pid was reused
    return True


def _proc_stat(pid: int) -> tuple[str, float | None] | None:
    """(state, start time in epoch seconds) of a process from /proc, None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()  # the name in parentheses may hold spaces
    except OSError:
        return None
    state, start_ticks = fields[0], int(fields[19])
    boot = _boot_time()
    if boot is None:
        return state, None
    return state, boot + start_ticks / os.sysconf("SC_CLK_TCK")


def _boot_time() -> float | None:
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def who(coordinator: str) -> str:
    """"pid 1234 on host h"."""
    holder = parse(coordinator)
    return f"pid {holder.pid} on host {holder.host}" if holder else f"coordinator {coordinator!r}"


def describe(coordinator: str, claimed_at: datetime | None, heartbeat_at: datetime | None, now: datetime) -> str:
    """"pid 1234 on host h (claimed 2026-01-02 10:00:00 UTC, last heartbeat 5 s ago)"."""
    when = []
    if claimed_at is not None:
        when.append(f"claimed {claimed_at:%Y-%m-%d %H:%M:%S} UTC")
    if heartbeat_at is not None:
        when.append(f"last heartbeat {max(0, round((now - heartbeat_at).total_seconds()))} s ago")
    return who(coordinator) + (f" ({', '.join(when)})" if when else "")
