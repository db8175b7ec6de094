"""Start trial and scorer processes by forking a process that has already imported torch.

A trial in a fresh interpreter spends 3–12 s importing torch on a small CPU machine (more than a
6 s-budget trial trains); forking a process that paid that once costs milliseconds. A server is
started with the scrubbed trial environment (it never held the coordinator's keys), inside the
sandbox (`trainer.sandbox`) where there is one, and it never runs a torch op on real data, so no
intra-op thread pool exists to be broken by the fork and CUDA is never initialised before it.

Two roles, one mechanism:

- "trainer": runs variants' `train.py`. It is *exclusive*: one trial at a time, in its own slot
  directory, and when a trial ends the server SIGKILLs every other process in its PID namespace
  (a variant that double-forked and called setsid is gone too) and empties the private /tmp and
  /dev/shm before it reports the exit. Nothing a trial leaves behind reaches the next one. The
  server is non-dumpable, so a trial (its child) can neither ptrace it nor open its
  `/proc/<pid>/fd` pipes or `/proc/<pid>/mem`.
- "scorer": runs `trainer.scorer` on handed-over models, several at once, never variant code.

Each child is what `python script` would be: its own process group (the runner kills the whole
group), directory, environment, stdout and stderr files, and the same exit status (a traceback
and 1 for an uncaught exception, -N for a signal). When the coordinator dies, the server sees its
stdin close and kills what it started; outside a sandbox, a trial dies with the server
(PDEATHSIG), inside one the PID namespace ends with it.

A child's stdout and stderr are pipes the server drains into the log files, at most `log_bytes`
of each (the child holds only the pipes' write ends). With `limits` (a trial's
`trainer.trial_config.ResourceLimits.request()`) the child also gets the kernel's limits before
its code runs (RLIMIT_FSIZE, RLIMIT_CORE 0, RLIMIT_AS on CPU, RLIMIT_NPROC where it counts only
the sandbox's processes), and every `WATCH_INTERVAL` the server counts its processes (the
sandbox's PID namespace; outside one, the server's descendants: it is their subreaper), their
memory (proportional set size, plus the sandbox's tmpfs) and the blocks under its directory.
Past a limit it kills them all and says which limit with the exit.

Protocol (JSON lines): the client writes {"id", "argv", "cwd", "env", "stdout", "stderr",
"limits"?} to start a child and {"kill": id} to SIGKILL its process group (the client never
signals by pid: inside a sandbox the pid is the PID namespace's, not the host's); the server
answers {"ready": true} once, then {"id", "pid"} (or {"id", "error"}) per request and {"id",
"returncode", "limit"?} when that child has exited (and, exclusive, everything it left is gone);
"limit" is {"kind", "used", "detail"} when the server stopped it past one.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import gc
import json
import os
import re
import runpy
import selectors
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

from trainer.trial_config import format_bytes

# torch._dynamo: an optimizer's first step imports it (~2 s, 800 modules) even where nothing is
# compiled; torch.export and its serializer: the hand-over's first export costs ~0.4 s of imports.
# A GPU host's server imports less and warms nothing up: nothing that might touch CUDA runs
# before the fork.
PRELOAD = {
    "trainer": ("torch", "torch._dynamo", "numpy", "trainer.harness", "trainer.artifact", "torch.export",
                "torch._export.serde.serialize"),
    "scorer": ("torch", "numpy", "trainer.scorer", "trainer.artifact", "torch.export", "torch._export.serde.serialize"),
}
PRELOAD_GPU = ("torch", "numpy", "trainer.harness")
READY_TIMEOUT = 300.0
PRIVATE_DIRS = ("/tmp", "/dev/shm", "/var/tmp")  # tmpfs of the sandbox: emptied between trials (trainer.sandbox)
WATCH_INTERVAL = 0.1  # seconds between two measurements of a trial's processes, memory and files
PSS_INTERVAL = 0.5  # the exact memory measure (smaps_rollup) at most this often; resident set size between
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


# ---------------------------------------------------------------------------------- the server


def _warm_up(role: str) -> None:
    """Pay the export/deserialize code paths' first-call costs once, on a 3-token toy model
    (tiny ops run inline: no thread pool is started)."""
    import torch

    from trainer import artifact

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(8, 4)

        def forward(self, idx):
            return torch.nn.functional.rms_norm(self.emb(idx), (4,))

    x = torch.zeros(1, 3, dtype=torch.long)
    ep = artifact.export(Toy().eval(), x)
    if role == "scorer":
        from torch._export.serde import serialize as serde

        art = serde.serialize(ep, serialize_state_dict=False, serialize_constants=False, serialize_example_inputs=False)
        serde.deserialize(serde.SerializedArtifact(art.exported_program, dict(ep.state_dict), {}, ((x,), {})))
        ep.run_decompositions({})


def serve(role: str, exclusive: bool, own_pid_namespace: bool, gpu: bool = False) -> None:
    """The server's loop: read requests on stdin, fork a child for each, drain its output, watch
    its limits, report exits.

    However it ends (the coordinator gone, a broken reply pipe, a bug here), it takes its children
    with it: a trial never outlives the server that reports on it.
    """
    reply_fd = os.dup(1)
    os.dup2(2, 1)  # anything an import prints goes to stderr, never into the protocol
    linux = sys.platform.startswith("linux")
    if linux:
        import ctypes

        ctypes.CDLL(None).prctl(_PR_SET_DUMPABLE, 0)  # children cannot ptrace or read our pipes
        if exclusive and not own_pid_namespace:
            # A trial's processes that leave its group (setsid, a double fork) stay ours to count
            # and kill: orphans come to us, not to the machine's init.
            ctypes.CDLL(None).prctl(_PR_SET_CHILD_SUBREAPER, 1)
    for name in PRELOAD_GPU if gpu else PRELOAD[role]:
        __import__(name)
    if not gpu:
        with contextlib.suppress(Exception):
            _warm_up(role)
    children: dict[int, _Running] = {}  # pid -> the child
    sel = selectors.DefaultSelector()

    def send(msg: dict) -> None:
        os.write(reply_fd, (json.dumps(msg) + "\n").encode())

    def stop(run: _Running) -> None:
        """Kill everything of the trial now (its exit is reported once it is reaped)."""
        if exclusive and own_pid_namespace:
            _kill_namespace()
        elif exclusive and linux:
            _kill_descendants(run.pid)
        else:
            kill_group(run.pid)

    def read(run: _Running, pump: _Pump) -> None:
        if not pump.pump():
            sel.unregister(pump.r)
            pump.close_read()
        if pump.flooded and run.hit is None:
            run.hit = {"kind": "log_flood", "used": pump.total, "detail": pump.name}
            pump.mark_flooded()
            stop(run)

    def launch(req: dict) -> None:
        rid = None
        pumps: list[_Pump] = []
        try:
            rid = req["id"]
            if exclusive and children:
                raise ValueError("a trial is already running in this server")
            limits = req.get("limits") or {}
            cap = limits.get("log_bytes")
            pumps.append(_Pump("stdout", req["stdout"], cap))
            pumps.append(_Pump("stderr", req["stderr"], cap))
            others = [fd for r in children.values() for pp in r.pumps for fd in pp.fds()]
            pid = _fork_child(req, close=(reply_fd, sel.fileno(), *others), leash=not own_pid_namespace,
                              pumps=pumps, limits=limits)
        except (ValueError, KeyError, TypeError, OSError) as e:
            for pump in pumps:
                pump.close()
            send({"id": rid, "error": f"cannot start the process: {e!r}"})
            return
        run = children[pid] = _Running(rid, pid, str(req["cwd"]), pumps, limits)
        for pump in pumps:
            pump.close_write()
            sel.register(pump.r, selectors.EVENT_READ, (run, pump))
        send({"id": rid, "pid": pid})

    def finish(run: _Running, status: int) -> None:
        for pump in run.pumps:
            if pump.r >= 0:
                sel.unregister(pump.r)
                pump.drain()
                if pump.flooded and run.hit is None:
                    run.hit = {"kind": "log_flood", "used": pump.total, "detail": pump.name}
                    pump.mark_flooded()
            pump.close()
        msg = {"id": run.rid, "returncode": os.waitstatus_to_exitcode(status)}
        if run.hit is not None:
            msg["limit"] = run.hit
        send(msg)

    try:
        send({"ready": True})
        sel.register(0, selectors.EVENT_READ, None)
        buf = b""
        while True:
            for key, _ in sel.select(timeout=0.02):
                if key.data is not None:
                    read(*key.data)
                    continue
                data = os.read(0, 1 << 16)
                if not data:
                    return  # the coordinator is gone
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    try:
                        req = json.loads(line)
                    except ValueError as e:
                        send({"id": None, "error": f"cannot start the process: {e!r}"})
                        continue
                    if isinstance(req, dict) and "kill" in req:  # not by pid: ours may be another namespace's
                        for pid, r in children.items():
                            if r.rid == req["kill"]:
                                kill_group(pid)
                        continue
                    launch(req if isinstance(req, dict) else {})
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                run = children.pop(pid, None)
                if run is None:
                    continue  # a grandchild reparented to us: reaped, nothing to report
                if exclusive and own_pid_namespace:
                    _sweep()
                elif exclusive and linux:
                    _kill_descendants(pid)
                elif exclusive:
                    kill_group(pid)
                finish(run, status)
            now = time.monotonic()
            for run in list(children.values()):
                if run.hit is None and run.watched and now >= run.next_watch:
                    run.next_watch = now + WATCH_INTERVAL
                    run.hit = _measure(run, own_pid_namespace, now)
                    if run.hit is not None:
                        stop(run)
    finally:
        for pid in children:
            kill_group(pid)
        if exclusive and not own_pid_namespace and linux:
            with contextlib.suppress(Exception):
                _kill_descendants(None)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        if own_pid_namespace:
            _sweep()


class _Pump:
    """One output stream of a child: a pipe the server drains into its log file, at most `cap`
    bytes of it (None: all). The child holds only the write end: it cannot write past the cap."""

    def __init__(self, name: str, path: str, cap: int | None):
        self.name, self.cap, self.total, self.written = name, cap, 0, 0
        self.file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            self.r, self.w = os.pipe2(os.O_CLOEXEC)
        except OSError:
            os.close(self.file)
            raise
        os.set_blocking(self.r, False)

    def fds(self) -> list[int]:
        return [fd for fd in (self.r, self.w, self.file) if fd >= 0]

    @property
    def flooded(self) -> bool:
        return self.cap is not None and self.total > self.cap

    def pump(self) -> bool:
        """Move what the pipe holds into the file (up to the cap); False at its end (no writer left)."""
        try:
            data = os.read(self.r, 1 << 16)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        self._take(data)
        return True

    def drain(self) -> None:
        """What is left in the pipe once the child is gone (its writers killed: then the end; a
        writer that outlived it, in a server that is not exclusive, keeps the rest)."""
        while self.r >= 0:
            try:
                data = os.read(self.r, 1 << 16)
            except OSError:  # BlockingIOError included: nothing more now
                return
            if not data:
                return
            self._take(data)
            if self.flooded:
                return

    def _take(self, data: bytes) -> None:
        room = len(data) if self.cap is None else max(0, self.cap - self.written)
        if room:
            with contextlib.suppress(OSError):  # a full disk loses log lines, never the server
                self.written += os.write(self.file, data[:room])
        self.total += len(data)

    def mark_flooded(self) -> None:
        """End the log with a line saying it was cut (inside the cap)."""
        note = f"\n[evo: more than {format_bytes(self.cap)} on {self.name}: the trial was stopped]\n".encode()
        end = max(0, min(self.written, self.cap - len(note)))
        with contextlib.suppress(OSError):
            os.ftruncate(self.file, end)
            os.pwrite(self.file, note[: self.cap], end)

    def close_write(self) -> None:
        if self.w >= 0:
            os.close(self.w)
            self.w = -1

    def close_read(self) -> None:
        if self.r >= 0:
            os.close(self.r)
            self.r = -1

    def close(self) -> None:
        self.close_write()
        self.close_read()
        if self.file >= 0:
            os.close(self.file)
            self.file = -1


class _Running:
    """A child the server started: its request id, output streams and limits (the request's)."""

    def __init__(self, rid, pid: int, cwd: str, pumps: list[_Pump], limits: dict):
        self.rid, self.pid, self.cwd, self.pumps, self.limits = rid, pid, cwd, pumps, limits
        self.watched = _is_trial(limits)
        self.hit: dict | None = None  # the limit it went past: {"kind", "used", "detail"}
        self.next_watch = time.monotonic() + 0.02
        self.next_pss = 0.0


# ---------------------------------------------------------------------------------- the limits


def _is_trial(limits: dict) -> bool:
    """Limits beyond the log cap: a trial's (`ResourceLimits.request()`), watched and confined."""
    return any(limits.get(k) for k in ("file_bytes", "processes", "memory_bytes", "disk_bytes"))


def _measure(run: _Running, own_pid_namespace: bool, now: float) -> dict | None:
    """The first limit the trial is past, or None: its processes, their memory, its files."""
    limits = run.limits

    def pids() -> list[int]:
        return _namespace_pids() if own_pid_namespace else _descendants(None)

    def too_many(found: list[int]) -> dict | None:
        if limits.get("processes") and len(found) > limits["processes"]:
            return {"kind": "process_limit", "used": len(found), "detail": ""}
        return None

    found = pids()
    hit = too_many(found)
    if hit:
        return hit
    cap = limits.get("memory_bytes")
    if cap:
        tmpfs = _tmpfs_used() if own_pid_namespace else 0
        # Resident sizes count the pages a fork shares with the server (and its siblings) once per
        # process: an upper bound, cheap. Past the cap, the proportional set sizes decide; they
        # cost a walk of each process's page tables, so a pass stops as soon as it has its answer
        # and counts the processes again as it goes (a fork bomb starves the server of CPU).
        rss = {p: _rss(p) for p in found}
        if tmpfs + sum(rss.values()) > cap and now >= run.next_pss:
            run.next_pss = now + PSS_INTERVAL
            used = tmpfs
            for i, p in enumerate(sorted(found, key=rss.get, reverse=True)):  # a balloon first
                used += _pss(p)
                if used > cap:
                    return {"kind": "memory_limit", "used": used, "detail": ""}
                if i % 4 == 3:
                    hit = too_many(pids())
                    if hit:
                        return hit
    cap = limits.get("disk_bytes")
    if cap:
        used = _disk_usage(run.cwd, cap)
        if used > cap:
            return {"kind": "disk_limit", "used": used, "detail": run.cwd}
    return None


def _namespace_pids() -> list[int]:
    """Every process of this PID namespace but its init and ourselves: the trial's, in a sandbox."""
    me = os.getpid()
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me)]


def _descendants(root: int | None) -> list[int]:
    """Every process below `root` (None: below us), by the kernel's lists of each thread's
    children: a walk of those processes alone, not of the whole machine's /proc (a fork bomb
    starves the server; its share of CPU must go to counting the bomb, nothing else)."""
    out, todo, seen = [], [os.getpid() if root is None else root], set()
    while todo:
        pid = todo.pop()
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                    kids = [int(k) for k in f.read().split()]
            except (OSError, ValueError):
                continue
            for kid in kids:
                if kid not in seen:
                    seen.add(kid)
                    out.append(kid)
                    todo.append(kid)
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _pss(pid: int) -> int:
    """Proportional set size: a page shared by n processes counts 1/n in each."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return _rss(pid)


def _tmpfs_used() -> int:
    """Bytes held in the sandbox's private tmpfs (RAM, in no process's resident set)."""
    used = 0
    for d in _private_tmpfs():
        with contextlib.suppress(OSError):
            st = os.statvfs(d)
            used += (st.f_blocks - st.f_bfree) * st.f_frsize
    return used


def _disk_usage(root: str, cap: int) -> int:
    """Blocks allocated under `root` (each entry at least 4 KiB: inodes are room too; hard links
    once; not across mount points); stops counting past `cap`."""
    try:
        dev = os.lstat(root).st_dev
    except OSError:
        return 0
    seen: set[int] = set()
    total, todo = 0, [root]
    while todo:
        try:
            it = os.scandir(todo.pop())
        except OSError:
            continue
        with it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_dev != dev or st.st_ino in seen:
                    continue
                seen.add(st.st_ino)
                total += max(st.st_blocks * 512, 4096)
                if total > cap:
                    return total
                if stat.S_ISDIR(st.st_mode):
                    todo.append(entry.path)
    return total


def _kill_namespace() -> None:
    """SIGKILL every process of this PID namespace but ourselves (inside a sandbox only)."""
    if os.getpid() == 1:
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)  # from the namespace's init: all of it, in one call
        return
    for pid in _namespace_pids():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _kill_descendants(pid: int | None) -> None:
    """Outside a sandbox: SIGKILL the group of `pid` and every live process below us, until none
    is left (a fork bomb forks while it is being killed). Reaping is the caller's."""
    if pid is not None:
        kill_group(pid)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        live = [p for p in _descendants(None) if _alive(p)]
        if not live:
            return
        for p in live:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)
        time.sleep(0.002)


def _sweep() -> None:
    """Kill every process of this PID namespace but ourselves and its init (bwrap), wait until
    they are gone, and empty the private temporary directories. Only inside a sandbox: outside
    one, /proc lists the whole machine."""
    me = os.getpid()
    deadline = time.monotonic() + 10
    _kill_namespace()
    while True:
        others = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me)]
        if not others:
            break
        if time.monotonic() > deadline:  # something will not die: this server must not serve again
            raise SystemExit("the sandbox could not be emptied")
        for pid in others:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        time.sleep(0.005)
    for d in _private_tmpfs():
        with contextlib.suppress(OSError):
            _wipe(d, os.lstat(d).st_dev)
    _remove_sysv_ipc()


@functools.lru_cache(maxsize=1)
def _private_tmpfs() -> tuple[str, ...]:
    """The private directories that are a tmpfs of their own here (never a host directory a
    layout bound over one: emptying that would empty the trial's directory inside it)."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return ()
    last: dict[str, str] = {}
    for line in mounts:  # the last mount on a path is the one seen there
        fields = line.split()
        if len(fields) > 2:
            last[fields[1]] = fields[2]
    return tuple(d for d in PRIVATE_DIRS if last.get(d) == "tmpfs")


def _remove_sysv_ipc() -> None:
    """SysV shared memory, semaphores and message queues outlive the processes that made them
    (the sandbox's IPC namespace is the server's, shared by its trials one after another)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for kind, remove in (("shm", lambda i: libc.shmctl(i, 0, None)), ("sem", lambda i: libc.semctl(i, 0, 0)),
                         ("msg", lambda i: libc.msgctl(i, 0, None))):  # 0 = IPC_RMID
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 1:
                    remove(int(fields[1]))


def _wipe(path: str, dev: int) -> None:
    """Empty a private tmpfs without crossing into what is mounted inside it: the trial's own
    directory and the data files are host paths bound under /tmp when they live there."""
    with contextlib.suppress(OSError), os.scandir(path) as it:
        for entry in it:
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_dev != dev:
                    continue  # a mount point
                if entry.is_dir(follow_symlinks=False):
                    _wipe(entry.path, dev)
                    os.rmdir(entry.path)  # fails, harmlessly, where a mount point is left inside
                else:
                    os.unlink(entry.path)


def _fork_child(req: dict, close: tuple[int, ...], leash: bool, pumps: list[_Pump], limits: dict) -> int:
    argv = [str(a) for a in req["argv"]]
    server = os.getpid()
    pid = os.fork()
    if pid:
        # Both sides set the group, so it exists before the pid is reported: a runner that kills
        # the group at once (Ctrl-C) must not find it missing and then wait out the whole trial.
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        return pid
    code = 1
    try:
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
        if leash and sys.platform.startswith("linux"):
            import ctypes

            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != server:
                os._exit(1)
        for fd in close:
            os.close(fd)
        _redirect(0, os.devnull, os.O_RDONLY)
        for fd, pump in ((1, pumps[0]), (2, pumps[1])):
            os.dup2(pump.w, fd)  # the pipes' write ends; dup2 clears close-on-exec
        for pump in pumps:
            for fd in pump.fds():
                os.close(fd)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        if _is_trial(limits):  # never a scorer: it stays non-dumpable, as the server is
            _limit_resources(limits)
            _confine_to_group()
            if sys.platform.startswith("linux"):
                import ctypes

                # Dumpable again (a fork inherits the server's "no"): the server, with no capability,
                # can then read the trial's smaps_rollup to measure its memory. The server itself
                # stays non-dumpable, and the child holds none of its descriptors.
                ctypes.CDLL(None).prctl(_PR_SET_DUMPABLE, 1)
        code = _run_main(argv)
    finally:
        os._exit(code)


def _redirect(fd: int, path: str, flags: int) -> None:
    new = os.open(path, flags | os.O_NOFOLLOW, 0o644)
    os.dup2(new, fd)
    os.close(new)


def _limit_resources(limits: dict) -> None:
    """The kernel's own limits, set in the trial's process before its code runs and inherited by
    every process it starts. Only lowered: without CAP_SYS_RESOURCE (in the sandbox, no
    capability at all) a process cannot raise a hard limit again."""
    import resource

    _lower(resource.RLIMIT_CORE, 0)  # a 10 GB process that crashes must not write 10 GB of core
    if limits.get("file_bytes"):
        _lower(resource.RLIMIT_FSIZE, int(limits["file_bytes"]))  # EFBIG past it (Python ignores SIGXFSZ)
    if limits.get("address_space_bytes"):  # CPU only: CUDA reserves terabytes of address space
        _lower(resource.RLIMIT_AS, _vm_size() + int(limits["address_space_bytes"]))
    if limits.get("processes") and _nproc_counts_this_namespace():
        # Tasks, threads included (torch starts a thread per core, and the server's count too):
        # a kernel bound well above the server's own count, which stops the trial first.
        _lower(resource.RLIMIT_NPROC, max(1024, 16 * int(limits["processes"])))


# seccomp: (audit arch, setsid, setpgid, the x32 bit to refuse) per machine (linux/audit.h, unistd.h).
_SECCOMP_ARCH = {"x86_64": (0xC000003E, 112, 109, 0x40000000), "aarch64": (0xC00000B7, 157, 154, 0)}
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2
_SECCOMP_RET_ALLOW, _SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000


def _confine_to_group() -> bool:
    """Keep the trial and everything it starts in its process group: setsid and setpgid fail
    with EPERM (a seccomp filter, inherited by every process it starts and never removed).
    Outside a sandbox a kill of the group is then a kill of the whole trial, in one call, however
    fast a fork bomb forks; and its processes stay in the server's scheduling group (autogroups
    are per session), so the server keeps its share of CPU to count them. No honest trial needs
    either call (torch uses them only in torchrun's launcher). False where it cannot be installed
    (not Linux, another machine, an old kernel): then the server's kill walks its descendants."""
    import ctypes
    import platform

    arch = _SECCOMP_ARCH.get(platform.machine()) if sys.platform.startswith("linux") else None
    if arch is None:
        return False
    audit, setsid, setpgid, x32 = arch
    ld_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, ..|BPF_JGE|.., BPF_RET|BPF_K
    eperm, enosys = _SECCOMP_RET_ERRNO | 1, _SECCOMP_RET_ERRNO | 38
    prog = [
        (ld_abs, 0, 0, 4),  # seccomp_data.arch
        (jeq, 1, 0, audit),
        (ret, 0, 0, enosys),  # another ABI (i386 from a 64-bit process): nothing at all
        (ld_abs, 0, 0, 0),  # seccomp_data.nr
        (jge, 0, 1, x32) if x32 else (jeq, 0, 1, 0xFFFFFFFF),  # the x32 ABI's numbers: refused too
        (ret, 0, 0, enosys),
        (jeq, 2, 0, setsid),
        (jeq, 1, 0, setpgid),
        (ret, 0, 0, _SECCOMP_RET_ALLOW),
        (ret, 0, 0, eperm),
    ]

    class Insn(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Insn))]

    insns = (Insn * len(prog))(*[Insn(*i) for i in prog])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0:
        return False
    fprog = Prog(len(prog), insns)
    return libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) == 0


def _lower(which: int, value: int) -> None:
    import resource

    with contextlib.suppress(ValueError, OSError):
        _, hard = resource.getrlimit(which)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (value, value))


def _vm_size() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[0]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _nproc_counts_this_namespace() -> bool:
    """Does RLIMIT_NPROC count only this sandbox's processes? From Linux 5.14 it counts a user's
    processes per user namespace; outside one it counts every process of the user on the machine,
    and the machine's root is exempt from it (bwrap run by root maps uid 0 to 0)."""
    try:
        release = tuple(int(x) for x in re.match(r"(\d+)\.(\d+)", os.uname().release).groups())
        maps = [tuple(map(int, ln.split())) for ln in Path("/proc/self/uid_map").read_text().splitlines()]
    except (OSError, AttributeError, ValueError):
        return False
    if release < (5, 14) or maps == [(0, 0, 4294967295)]:
        return False
    uid = os.getuid()
    host = next((outer + uid - inner for inner, outer, count in maps if inner <= uid < inner + count), 0)
    return host != 0


def _run_main(argv: list[str]) -> int:
    """Run `argv` as `python argv[0] argv[1:]` would (`-m module` too), and return the exit status
    it would have."""
    module = argv[1] if argv[0] == "-m" else None
    path = None if module else os.path.abspath(argv[0])
    sys.argv = [module or path, *argv[(2 if module else 1):]]
    if path:
        sys.path[0] = os.path.dirname(path)
    code = 0
    try:
        if module:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(path, run_name="__main__")
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException as e:
        tb = e.__traceback__
        while tb is not None and path and tb.tb_frame.f_code.co_filename != path:
            tb = tb.tb_next  # drop runpy's frames: the traceback starts in train.py, as it would
        tb = tb or e.__traceback__
        sys.excepthook(type(e), e.with_traceback(tb), tb)
        # An uncaught Ctrl-C ends a fresh interpreter by SIGINT itself (status -2), not with 1.
        code = -signal.SIGINT if isinstance(e, KeyboardInterrupt) else 1
    try:
        threading._shutdown()  # type: ignore[attr-defined]  # wait for non-daemon threads, as exit does
        atexit._run_exitfuncs()
        gc.collect()  # finalizers: files a variant left open in its globals get flushed
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


def kill_group(pid: int) -> None:
    """SIGKILL a process group; one already gone is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------- the client


class ForkServerError(RuntimeError):
    pass


class Child:
    """A forked process, with the part of `subprocess.Popen` the runner uses. `started_at` and
    `ended_at` are the client's own clock (time.time) when the fork and the exit were reported:
    the runner's measure of a trial's launch → hand-over. `lost`: the server died before reporting
    its exit (the child died with it; its status says nothing about the variant). `limit`: the
    resource limit the server stopped it for, if any."""

    def __init__(self, rid: int):
        self.rid = rid
        self._started, self._exited = threading.Event(), threading.Event()
        self.pid: int | None = None
        self.returncode: int | None = None
        self.error: str | None = None
        self.lost = False
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.limit: dict | None = None  # {"kind", "used", "detail"}: the server stopped it past a limit
        self.server: "ForkServer | None" = None

    def poll(self) -> int | None:
        return self.returncode if self._exited.is_set() else None

    def kill(self) -> None:
        """SIGKILL the child's process group and wait for its exit; if the server does not report
        it within 10 s, stop the server, which takes the child with it."""
        if self._exited.is_set():
            return
        if self.server is not None:
            with contextlib.suppress(OSError, ValueError):
                self.server._send({"kill": self.rid})
            if not self._exited.wait(10):
                self.server.close(force=True)
        self._exited.wait(15)

    def wait(self, timeout: float | None = None) -> int | None:
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired("child", timeout)
        return self.returncode


class ForkServer:
    """A server process (in `command`, e.g. wrapped in bwrap); thread-safe `launch`."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: Path):
        self._lock = threading.Lock()  # the table of children
        self._write_lock = threading.Lock()  # the request pipe (never held while the table is)
        self._children: dict[int, Child] = {}
        self._next_id = 0
        self._ready = threading.Event()
        self._dead: str | None = None
        self.ever_ready = False
        self._proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, env=env, start_new_session=True, cwd=str(cwd))
        threading.Thread(target=self._read, name="evo-forkserver", daemon=True).start()

    @property
    def alive(self) -> bool:
        return self._dead is None

    def wait_ready(self, cancel: threading.Event | None = None, within: float = READY_TIMEOUT) -> bool:
        """True once the server has imported what it preloads; False if `cancel` was set first;
        ForkServerError if it died or took longer than `within`."""
        deadline = time.monotonic() + min(within, READY_TIMEOUT)
        while not self._ready.wait(0.05):
            if cancel is not None and cancel.is_set():
                return False
            if time.monotonic() > deadline:
                self.close()  # stuck importing: no later trial should wait for it again
                raise ForkServerError("the fork server did not start in time")
        if self._dead:
            raise ForkServerError(self._dead)
        return True

    def launch(self, argv: list[str], cwd: Path, env: dict[str, str], stdout: Path, stderr: Path,
               cancel: threading.Event | None = None, ready_within: float = READY_TIMEOUT,
               limits: dict | None = None) -> Child | None:
        """Fork a child running `argv`; None if `cancel` was set while the server was still
        importing (Ctrl-C must not wait for that); raises ForkServerError if the server cannot.
        `limits`: `ResourceLimits.request()` (or a part of it, e.g. just "log_bytes")."""
        if not self.wait_ready(cancel, ready_within):
            return None
        with self._lock:
            if self._dead:
                raise ForkServerError(self._dead)
            self._next_id += 1
            child = self._children[self._next_id] = Child(self._next_id)
        child.server = self
        req = {"id": child.rid, "argv": [str(a) for a in argv], "cwd": str(cwd), "env": env,
               "stdout": str(stdout), "stderr": str(stderr), "limits": limits or {}}
        try:
            self._send(req)
        except (OSError, ValueError) as e:
            with self._lock:
                self._children.pop(child.rid, None)
            raise ForkServerError(f"the fork server is gone: {e}") from e
        if not child._started.wait(READY_TIMEOUT) or child.pid is None:
            raise ForkServerError(child.error or self._dead or "the fork server did not answer")
        return child

    def _send(self, msg: dict) -> None:
        with self._write_lock:
            self._proc.stdin.write((json.dumps(msg) + "\n").encode())
            self._proc.stdin.flush()

    def _read(self) -> None:
        try:
            for line in self._proc.stdout:
                msg = json.loads(line)
                now = time.time()
                if msg.get("ready"):
                    self.ever_ready = True
                    self._ready.set()
                    continue
                with self._lock:
                    child = self._children.get(msg.get("id"))
                    if child is not None and "pid" not in msg:  # an exit or a refusal: its last word
                        del self._children[child.rid]
                if child is None:
                    continue
                if "pid" in msg:
                    if child.pid is None:  # the first word only: a clock is never reset
                        child.pid, child.started_at = msg["pid"], now
                    child._started.set()
                elif "error" in msg:
                    child.error = msg["error"]
                    child._started.set()
                else:
                    child.returncode, child.ended_at = msg["returncode"], now
                    child.limit = msg.get("limit")
                    child._exited.set()
        except Exception as e:  # a garbled reply: treat the server as dead rather than hang its children
            self._dead = f"the fork server's reply could not be read: {e!r}"
            self.close()
        finally:
            self._dead = self._dead or f"the fork server exited (status {self._proc.wait()})"
            self._ready.set()
            with self._lock:
                orphans, self._children = list(self._children.values()), {}
            now = time.time()
            for child in orphans:  # they died with it; say so rather than hang
                child.error, child.lost, child.returncode, child.ended_at = self._dead, True, -signal.SIGKILL, now
                child._started.set()
                child._exited.set()

    def close(self, force: bool = False) -> None:
        """Stop the server; it kills any child still running. `force`: SIGKILL its whole group at
        once (a server that no longer answers; in a sandbox that ends its PID namespace)."""
        if force:
            kill_group(self._proc.pid)
        with contextlib.suppress(OSError, ValueError):
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            kill_group(self._proc.pid)
            self._proc.wait()


def server_argv(role: str, exclusive: bool, own_pid_namespace: bool, gpu: bool = False) -> list[str]:
    argv = [sys.executable, "-m", "trainer.forkserver", "--role", role]
    flags = (("--exclusive", exclusive), ("--own-pid-namespace", own_pid_namespace), ("--gpu", gpu))
    return argv + [flag for flag, on in flags if on]


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m trainer.forkserver")
    p.add_argument("--role", choices=sorted(PRELOAD), default="trainer")
    p.add_argument("--exclusive", action="store_true", help="one child at a time; clean up after each")
    p.add_argument("--own-pid-namespace", action="store_true", help="inside a sandbox: sweep every other process")
    p.add_argument("--gpu", action="store_true", help="a CUDA host: import little, warm nothing up")
    a = p.parse_args()
    serve(a.role, a.exclusive, a.own_pid_namespace, a.gpu)


if __name__ == "__main__":
    main()
