"""Start CPU trials by forking a process that has already imported torch.

A trial in a fresh interpreter spends 3–12 s importing torch on a small CPU machine (more than a
6 s-budget trial trains); forking a process that paid that once costs milliseconds. The server
is started with the scrubbed trial environment, so neither it nor its children ever held the
coordinator's keys, and it never runs a torch op itself, so no intra-op thread pool exists to
be broken by the fork (OpenBLAS's one idle thread is shut down by its own fork handler). Each
child is what `python train.py` would be: its own process group (the runner kills the whole
group; the server has a session of its own), directory, environment, stdout and stderr files,
and the same exit status (a traceback and 1 for an uncaught exception, -N for a signal). No
trial shares a process with another.

CUDA trials keep the spawned interpreter (`trainer.runner`): a 300 s GPU trial gains ~1% from
this, and CUDA must never be initialised before a fork. When the coordinator dies, the server
sees its stdin close and kills every trial group it started; a trial dies with the server.

Protocol (JSON lines): the client writes {"id", "cwd", "env", "stdout", "stderr"}; the server
answers {"ready": true} once, then {"id", "pid"} (or {"id", "error"}) per request and
{"id", "returncode"} when that child exits.
"""

from __future__ import annotations

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
# compiled. Imports only: the server never runs a torch op, so it starts no thread pool.
PRELOAD = ("torch", "torch._dynamo", "numpy", "trainer.harness")
READY_TIMEOUT = 300.0
_PR_SET_PDEATHSIG = 1


# ---------------------------------------------------------------------------------- the server


def serve() -> None:
    """The server's loop: read requests on stdin, fork a child for each, report exits.

    However it ends (the coordinator gone, a broken reply pipe, a bug here), it takes its trials'
    process groups with it: a trial never outlives the server that reports on it.
    """
    reply_fd = os.dup(1)
    os.dup2(2, 1)  # anything an import prints goes to stderr, never into the protocol
    for name in PRELOAD:
        __import__(name)
    children: dict[int, int] = {}  # pid -> request id

    def send(msg: dict) -> None:
        os.write(reply_fd, (json.dumps(msg) + "\n").encode())

    try:
        send({"ready": True})
        sel = selectors.DefaultSelector()
        sel.register(0, selectors.EVENT_READ)
        buf = b""
        while True:
            if sel.select(timeout=0.05):
                data = os.read(0, 1 << 16)
                if not data:
                    return  # the coordinator is gone
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    rid = None
                    try:
                        req = json.loads(line)
                        rid = req["id"]
                        pid = _fork_trial(req, close=(reply_fd, sel.fileno()))
                    except (ValueError, KeyError, TypeError, OSError) as e:
                        send({"id": rid, "error": f"cannot start the trial: {e!r}"})
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
                send({"id": children.pop(pid), "returncode": os.waitstatus_to_exitcode(status)})
    finally:
        for pid in children:
            kill_group(pid)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _fork_trial(req: dict, close: tuple[int, ...]) -> int:
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
        if sys.platform.startswith("linux"):
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
        code = _run_main(os.path.join(req["cwd"], "train.py"))
    finally:
        os._exit(code)


def _redirect(fd: int, path: str, flags: int) -> None:
    new = os.open(path, flags, 0o644)
    os.dup2(new, fd)
    os.close(new)


def _run_main(path: str) -> int:
    """Run `path` as `python path` would, and return the exit status it would have."""
    sys.argv = [path]
    sys.path[0] = os.path.dirname(path)
    code = 0
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException as e:
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != path:
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
    """SIGKILL a trial's process group; one already gone is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------- the client


class ForkServerError(RuntimeError):
    pass


class Child:
    """A forked trial, with the part of `subprocess.Popen` the runner uses. `lost`: the server died
    before reporting its exit (the trial died with it; its status says nothing about the variant)."""

    def __init__(self, rid: int):
        self.rid = rid
        self._started, self._exited = threading.Event(), threading.Event()
        self.pid: int | None = None
        self.returncode: int | None = None
        self.error: str | None = None
        self.lost = False

    def poll(self) -> int | None:
        return self.returncode if self._exited.is_set() else None

    def wait(self, timeout: float | None = None) -> int | None:
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired("train.py", timeout)
        return self.returncode


class ForkServer:
    """One server per coordinator process; thread-safe `launch`."""

    def __init__(self, env: dict[str, str]):
        self._lock = threading.Lock()  # the table of children
        self._write_lock = threading.Lock()  # the request pipe (never held while the table is)
        self._children: dict[int, Child] = {}
        self._next_id = 0
        self._ready = threading.Event()
        self._dead: str | None = None
        self.ever_ready = False
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "trainer.forkserver"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env=env, start_new_session=True, cwd=str(Path(__file__).resolve().parent.parent),
        )
        threading.Thread(target=self._read, name="evo-forkserver", daemon=True).start()

    @property
    def alive(self) -> bool:
        return self._dead is None

    def launch(self, cwd: Path, env: dict[str, str], stdout: Path, stderr: Path,
               cancel: threading.Event | None = None, ready_within: float = READY_TIMEOUT) -> Child | None:
        """Fork a trial running `cwd/train.py`; None if `cancel` was set while the server was still
        importing (Ctrl-C must not wait for that); raises ForkServerError if the server cannot."""
        deadline = time.monotonic() + min(ready_within, READY_TIMEOUT)
        while not self._ready.wait(0.05):
            if cancel is not None and cancel.is_set():
                return None
            if time.monotonic() > deadline:
                self.close()  # stuck importing: no later trial should wait for it again
                raise ForkServerError("the fork server did not start in time")
        with self._lock:
            if self._dead:
                raise ForkServerError(self._dead)
            self._next_id += 1
            child = self._children[self._next_id] = Child(self._next_id)
        req = {"id": child.rid, "cwd": str(cwd), "env": env, "stdout": str(stdout), "stderr": str(stderr)}
        try:
            with self._write_lock:
                self._proc.stdin.write((json.dumps(req) + "\n").encode())
                self._proc.stdin.flush()
        except (OSError, ValueError) as e:
            with self._lock:
                self._children.pop(child.rid, None)
            raise ForkServerError(f"the fork server is gone: {e}") from e
        if not child._started.wait(READY_TIMEOUT) or child.pid is None:
            raise ForkServerError(child.error or self._dead or "the fork server did not answer")
        return child

    def _read(self) -> None:
        try:
            for line in self._proc.stdout:
                msg = json.loads(line)
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
                    child.pid = msg["pid"]
                    child._started.set()
                elif "error" in msg:
                    child.error = msg["error"]
                    child._started.set()
                else:
                    child.returncode = msg["returncode"]
                    child._exited.set()
        except Exception as e:  # a garbled reply: treat the server as dead rather than hang its trials
            self._dead = f"the fork server's reply could not be read: {e!r}"
            self.close()
        finally:
            self._dead = self._dead or f"the fork server exited (status {self._proc.wait()})"
            self._ready.set()
            with self._lock:
                orphans, self._children = list(self._children.values()), {}
            for child in orphans:  # they died with it (PDEATHSIG); say so rather than hang
                child.error, child.lost, child.returncode = self._dead, True, -signal.SIGKILL
                child._started.set()
                child._exited.set()

    def close(self) -> None:
        """Stop the server; it kills any trial still running."""
        with contextlib.suppress(OSError, ValueError):
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()


_server: ForkServer | None = None
_server_lock = threading.Lock()


def shared(env: dict[str, str]) -> ForkServer | None:
    """The process's fork server, started on first use; None where forking is not offered, or
    where a server could not even start (do not pay its start-up again on every trial)."""
    global _server
    if not sys.platform.startswith("linux") or os.environ.get("EVO_TRIAL_START", "fork") == "spawn":
        return None
    with _server_lock:
        if _server is not None and not _server.alive:
            if not _server.ever_ready:
                return None
            _server.close()
            _server = None
        if _server is None:
            _server = ForkServer(env)
        return _server


if __name__ == "__main__":
    serve()
