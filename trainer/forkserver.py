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

Protocol (JSON lines): the client writes {"id", "argv", "cwd", "env", "stdout", "stderr"} to start
a child and {"kill": id} to SIGKILL its process group (the client never signals by pid: inside a
sandbox the pid is the PID namespace's, not the host's); the server answers {"ready": true} once,
then {"id", "pid"} (or {"id", "error"}) per request and {"id", "returncode"} when that child has
exited (and, exclusive, everything it left is gone).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import json
import os
import runpy
import selectors
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

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
PRIVATE_DIRS = ("/tmp", "/dev/shm", "/var/tmp")  # tmpfs of the sandbox: emptied between trials
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4


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
    """The server's loop: read requests on stdin, fork a child for each, report exits.

    However it ends (the coordinator gone, a broken reply pipe, a bug here), it takes its children
    with it: a trial never outlives the server that reports on it.
    """
    reply_fd = os.dup(1)
    os.dup2(2, 1)  # anything an import prints goes to stderr, never into the protocol
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(_PR_SET_DUMPABLE, 0)  # children cannot ptrace or read our pipes
    for name in PRELOAD_GPU if gpu else PRELOAD[role]:
        __import__(name)
    if not gpu:
        with contextlib.suppress(Exception):
            _warm_up(role)
    children: dict[int, int] = {}  # pid -> request id

    def send(msg: dict) -> None:
        os.write(reply_fd, (json.dumps(msg) + "\n").encode())

    try:
        send({"ready": True})
        sel = selectors.DefaultSelector()
        sel.register(0, selectors.EVENT_READ)
        buf = b""
        while True:
            if sel.select(timeout=0.02):
                data = os.read(0, 1 << 16)
                if not data:
                    return  # the coordinator is gone
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    rid = None
                    try:
                        req = json.loads(line)
                        if "kill" in req:  # the client cannot signal by pid: ours may be another namespace's
                            for pid, r in children.items():
                                if r == req["kill"]:
                                    kill_group(pid)
                            continue
                        rid = req["id"]
                        if exclusive and children:
                            raise ValueError("a trial is already running in this server")
                        pid = _fork_child(req, close=(reply_fd, sel.fileno()), leash=not own_pid_namespace)
                    except (ValueError, KeyError, TypeError, OSError) as e:
                        send({"id": rid, "error": f"cannot start the process: {e!r}"})
                        continue
                    children[pid] = rid
                    send({"id": rid, "pid": pid})
            while children:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                if pid not in children:
                    continue  # a grandchild reparented to us: reaped, nothing to report
                rid = children.pop(pid)
                if exclusive and own_pid_namespace:
                    _sweep()
                elif exclusive:
                    kill_group(pid)
                send({"id": rid, "returncode": os.waitstatus_to_exitcode(status)})
    finally:
        for pid in children:
            kill_group(pid)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        if own_pid_namespace:
            _sweep()


def _sweep() -> None:
    """Kill every process of this PID namespace but ourselves and its init (bwrap), wait until
    they are gone, and empty the private temporary directories. Only inside a sandbox: outside
    one, /proc lists the whole machine."""
    me = os.getpid()
    deadline = time.monotonic() + 10
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
    for d in PRIVATE_DIRS:
        with contextlib.suppress(OSError):
            _wipe(d, os.lstat(d).st_dev)
    _remove_sysv_ipc()


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


def _fork_child(req: dict, close: tuple[int, ...], leash: bool) -> int:
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
        _redirect(1, req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        _redirect(2, req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        code = _run_main(argv)
    finally:
        os._exit(code)


def _redirect(fd: int, path: str, flags: int) -> None:
    new = os.open(path, flags | os.O_NOFOLLOW, 0o644)
    os.dup2(new, fd)
    os.close(new)


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
    its exit (the child died with it; its status says nothing about the variant)."""

    def __init__(self, rid: int):
        self.rid = rid
        self._started, self._exited = threading.Event(), threading.Event()
        self.pid: int | None = None
        self.returncode: int | None = None
        self.error: str | None = None
        self.lost = False
        self.started_at: float | None = None
        self.ended_at: float | None = None
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
               cancel: threading.Event | None = None, ready_within: float = READY_TIMEOUT) -> Child | None:
        """Fork a child running `argv`; None if `cancel` was set while the server was still
        importing (Ctrl-C must not wait for that); raises ForkServerError if the server cannot."""
        if not self.wait_ready(cancel, ready_within):
            return None
        with self._lock:
            if self._dead:
                raise ForkServerError(self._dead)
            self._next_id += 1
            child = self._children[self._next_id] = Child(self._next_id)
        child.server = self
        req = {"id": child.rid, "argv": [str(a) for a in argv], "cwd": str(cwd), "env": env,
               "stdout": str(stdout), "stderr": str(stderr)}
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
