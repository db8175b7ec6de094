"""The operating-system sandbox a trial's processes run in: Debian's bubblewrap (`bwrap`).

A variant is untrusted code under selection pressure: whatever it can reach, selection will find.
Inside the sandbox it sees an allow-list, not the machine minus a deny-list:

- read-only: the system (`/usr`, `/etc`, `/sys`, the `/bin`-style links), the Python installation
  and the directories on `sys.path` (never the project root, the coordinator's working directory,
  `$HOME` or anything above them), and the project's `trainer/` package alone (the harness);
- read-only, the data directory's *training* files only (`manifest.json`, `tokenizer.json`,
  `train.bin`, `token_bytes.npy`); the validation split is not there. The scorer's sandbox
  (role "scorer") sees the whole data directory instead, and no trial directory;
- writable: its own trial directory, and a private `/tmp`, `/dev/shm` and `/var/tmp` that vanish
  with it (tmpfs, that is RAM: each of a fixed size where bwrap can size them, `--size`);
- its own PID namespace (no other process is visible, so no `/proc/*/environ` of the
  coordinator), its own network namespace (no interface but a loopback nobody else is on),
  no capabilities (it cannot remount what it was given), a new session (no terminal injection).
  `/run`, `/var` and `/home` do not exist for it, so no Unix socket of the host is reachable.

On a GPU host the NVIDIA device nodes are bound in. Where bwrap is missing or cannot create
namespaces (some containers), `--sandbox auto` runs without it and says so; `strict` refuses.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from trainer.dataset import MANIFEST_NAME

MODES = ("auto", "strict", "off")
ROOT = Path(__file__).resolve().parent.parent  # the project: hidden; only trainer/ is shown
TRAINER_DIR = ROOT / "trainer"
TRAIN_FILES = (MANIFEST_NAME, "tokenizer.json", "train.bin", "token_bytes.npy")
_SYSTEM_DIRS = ("/usr", "/etc", "/sys")
_SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
PRIVATE_DIRS = ("/tmp", "/dev/shm", "/var/tmp")  # a private tmpfs each, emptied between trials


class SandboxError(RuntimeError):
    """`--sandbox strict` where no sandbox can be made, or a mode that does not exist."""


@functools.lru_cache(maxsize=1)
def probe() -> tuple[bool, str]:
    """(usable, why not): is bwrap installed, and can it make namespaces on this machine?"""
    if not sys.platform.startswith("linux"):
        return False, f"no sandbox on {sys.platform} (bubblewrap is Linux only)"
    exe = shutil.which("bwrap")
    if exe is None:
        return False, "bubblewrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    try:
        proc = subprocess.run([exe, "--unshare-all", "--cap-drop", "ALL", "--ro-bind", "/", "/", "true"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"bwrap could not be started: {e}"
    if proc.returncode != 0:
        return False, f"bwrap cannot create namespaces here: {proc.stderr.strip()[:200]}"
    return True, ""


@functools.lru_cache(maxsize=1)
def sizes_tmpfs() -> bool:
    """Does this bwrap size a tmpfs (`--size BYTES`, bubblewrap 0.6+)? Older ones make it half the
    machine's memory, the kernel's default."""
    try:
        proc = subprocess.run([shutil.which("bwrap") or "bwrap", "--help"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--size" in proc.stdout + proc.stderr


@dataclass(frozen=True)
class Sandbox:
    """What a trial runs in. `enabled` False means plain processes (mode off, or auto without bwrap)."""

    mode: str
    enabled: bool
    reason: str = ""  # why it is not enabled

    def describe(self) -> str:
        """One line for the start of a run: what is and is not contained."""
        if self.enabled:
            return ("sandbox: bubblewrap — a trial sees the training split and its own directory only; "
                    "no validation data, network, other process, project file or key")
        why = "turned off (--sandbox off)" if self.mode == "off" else self.reason
        return (f"sandbox: none — {why}. Scores are still computed outside the trial and keys kept out of its "
                "environment, but a trial can read and write every file you can (the validation split "
                "included) and reach the network; use --sandbox strict to refuse to run like this")

    def command(self, argv: list[str], *, role: str, data_dir: Path, writable: Path | None = None,
                readable: tuple[Path, ...] = (), gpu: bool = False, tmpfs_bytes: int | None = None) -> list[str]:
        """`argv` wrapped in bwrap with the layout for `role` ("trainer" or "scorer"); unchanged when
        the sandbox is off. `writable` is the one host directory the process may write to;
        `tmpfs_bytes` the size of each private /tmp, /dev/shm and /var/tmp."""
        if not self.enabled:
            return argv
        return [shutil.which("bwrap") or "bwrap", *layout(role=role, data_dir=data_dir, writable=writable,
                                                          readable=readable, gpu=gpu, tmpfs_bytes=tmpfs_bytes),
                "--", *argv]


def resolve(mode: str) -> Sandbox:
    """The sandbox for `--sandbox MODE`; SandboxError when strict cannot be honoured."""
    if mode not in MODES:
        raise SandboxError(f"--sandbox must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off":
        return Sandbox("off", False)
    usable, why = probe()
    if not usable and mode == "strict":
        raise SandboxError(f"--sandbox strict: {why}")
    return Sandbox(mode, usable, why)


def _hidden() -> list[Path]:
    """Directories whose contents a trial must not see, and whose ancestors must not be shown."""
    out = [ROOT, Path.cwd().resolve()]
    home = os.environ.get("HOME")
    if home:
        out.append(Path(home).resolve())
    return out


def _python_dirs() -> list[Path]:
    """The interpreter and everything importable, minus the hidden directories and their parents
    (an editable install puts the project root on sys.path; its trainer/ is bound on its own)."""
    hidden = _hidden()
    seen: dict[str, Path] = {}
    candidates = [sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable)),
                  *sys.path]
    for entry in candidates:
        if not entry or not os.path.isabs(entry) or not os.path.isdir(entry):
            continue
        p = Path(entry).resolve()
        if any(p == h or p in h.parents for h in hidden) or str(p) in ("/", *PRIVATE_DIRS):
            continue  # a script run from /tmp puts /tmp on sys.path: it must stay the private tmpfs
        seen.setdefault(str(p), p)
    return list(seen.values())


def _hide_val_sources(data_dir: Path, shown: list[str]) -> list[str]:
    """The files the validation documents were read from, where the trial could otherwise see them
    (the stdlib corpus's are in the Python installation), and their compiled caches: each shows
    as an empty file."""
    try:
        sources = json.loads((data_dir / MANIFEST_NAME).read_text()).get("val_sources") or []
    except (OSError, ValueError):
        return []
    args: list[str] = []
    for src in sources:
        p = Path(src)
        if not p.is_file() or not any(str(p).startswith(d.rstrip("/") + "/") for d in shown):
            continue
        caches = glob.glob(str(p.parent / "__pycache__" / f"{p.stem}.*.pyc"))
        for f in (str(p), *caches):
            args += ["--ro-bind", "/dev/null", f]
    return args


def layout(*, role: str, data_dir: Path, writable: Path | None, readable: tuple[Path, ...] = (),
           gpu: bool = False, tmpfs_bytes: int | None = None) -> list[str]:
    """bwrap's arguments. Order matters: the private /tmp comes before anything bound inside it
    (test data and trial directories often live under /tmp). `tmpfs_bytes`: the size of each
    private tmpfs (RAM), where this bwrap can set one."""
    # --die-with-parent: when the coordinator's thread that started it goes (or the runner kills
    # it), the whole namespace goes with it.
    # --as-pid-1: the server itself is the namespace's init. Nothing else holds the pipes to the
    # coordinator (bwrap's own init would, dumpable, readable through /proc/1/fd), and a trial
    # cannot kill it (init ignores signals from its own namespace).
    args = ["--unshare-all", "--die-with-parent", "--as-pid-1", "--cap-drop", "ALL", "--new-session",
            "--hostname", "evo-trial",
            "--proc", "/proc", "--dev", "/dev"]
    size = ["--size", str(int(tmpfs_bytes))] if tmpfs_bytes and sizes_tmpfs() else []
    for d in PRIVATE_DIRS:
        args += [*size, "--tmpfs", d]
    for d in _SYSTEM_DIRS:
        if os.path.isdir(d):
            args += ["--ro-bind", d, d]
    for link in _SYSTEM_LINKS:
        if os.path.islink(link):
            args += ["--symlink", os.readlink(link), link]
        elif os.path.isdir(link):
            args += ["--ro-bind", link, link]
    for p in _python_dirs():
        args += ["--ro-bind", str(p), str(p)]
    args += ["--ro-bind", str(TRAINER_DIR), str(TRAINER_DIR)]
    data_dir = Path(data_dir).resolve()
    if role == "scorer":
        args += ["--ro-bind", str(data_dir), str(data_dir)]
    elif role == "trainer":
        for name in TRAIN_FILES:
            if (data_dir / name).exists():
                args += ["--ro-bind", str(data_dir / name), str(data_dir / name)]
        args += _hide_val_sources(data_dir, [*_SYSTEM_DIRS, *map(str, _python_dirs())])
    else:
        raise ValueError(f"unknown sandbox role {role!r}")
    for p in readable:
        args += ["--ro-bind", str(Path(p).resolve()), str(Path(p).resolve())]
    if gpu:
        for node in sorted(glob.glob("/dev/nvidia*")) + (["/dev/dri"] if os.path.exists("/dev/dri") else []):
            args += ["--dev-bind", node, node]
    if writable is not None:
        w = str(Path(writable).resolve())
        args += ["--bind", w, w, "--chdir", w]
    # The root and /dev are bwrap's own tmpfs (where it made the mount points): read-only, or a
    # trial could leave files there (/dev/.w, /work/x.py on PYTHONPATH) for the next one.
    return args + ["--remount-ro", "/dev", "--remount-ro", "/"]
