"""Every way a trial can end, as data.

A failure is a recorded outcome, never an exception that stops the search: the archive keeps
what went wrong (with the stderr tail) so operators can avoid repeating it.
"""

from __future__ import annotations

import re
import signal

from trainer.trial_config import ResourceLimits, format_bytes

# A trial stopped for using more than its share (trainer.trial_config.ResourceLimits): printing
# without end, files past the size or disk limit, too many processes, too much memory.
LIMIT_OUTCOMES = ("log_flood", "disk_limit", "process_limit", "memory_limit")
OUTCOMES = ("ok", "syntax_error", "import_error", "crash", "oom", "nan", "timeout", "no_result", "cheated",
            "unexportable", "over_budget", *LIMIT_OUTCOMES)
FAILURES = OUTCOMES[1:]
CANCELLED = "cancelled"  # stopped by the user (Ctrl-C): not a result, never recorded as one
# The machine or worker process running the trial was lost (an executor's outcome, e.g. a Ray node
# that died): recorded, and the individual is trained once more, since the variant may not be to blame.
LOST = "lost"

_OOM = re.compile(r"OutOfMemoryError|out of memory|MemoryError|can't allocate memory|DefaultCPUAllocator|"
                  r"CUBLAS_STATUS_ALLOC_FAILED|std::bad_alloc")
_IMPORT = re.compile(r"^(ModuleNotFoundError|ImportError)\b")
_SYNTAX = re.compile(r"^(SyntaxError|IndentationError|TabError)\b")
_TOO_LARGE = re.compile(r"\[Errno 27\]|File too large")  # EFBIG: past RLIMIT_FSIZE
_NO_SPACE = re.compile(r"\[Errno (28|122)\]|No space left on device|Disk quota exceeded")


def last_error_line(stderr: str) -> str:
    """The exception line of a traceback (or the last non-empty line), for one-line messages."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b", ln):
            return ln[:300]
    return lines[-1][:300] if lines else ""


def limit_exceeded(kind: str, used: int, detail: str, limits: ResourceLimits) -> tuple[str, str]:
    """(outcome, one-line message) for a trial the fork server stopped past a limit: `used` is
    what it measured (bytes, or processes), `detail` the stream for a log flood."""
    if kind == "log_flood":
        return kind, (f"printed more than {format_bytes(limits.log_bytes)} to {detail or 'its output'} "
                      f"(the limit per stream); stopped, the log keeps the first {format_bytes(limits.log_bytes)}")
    if kind == "disk_limit":
        return kind, (f"its files in the trial directory took {format_bytes(used)}, over the "
                      f"{format_bytes(limits.disk_bytes)} limit; stopped")
    if kind == "process_limit":
        return kind, f"ran {used} processes at once, over the limit of {limits.processes}; stopped"
    if kind == "memory_limit":
        return kind, (f"its processes held {format_bytes(used)} of memory, over the "
                      f"{format_bytes(limits.memory_bytes)} limit; stopped")
    raise ValueError(f"unknown resource limit {kind!r}")


def _disk_failure(exit_code: int | None, err: str, report: dict | None,
                  limits: ResourceLimits | None) -> tuple[str, str] | None:
    """disk_limit when a write failed for want of room: past RLIMIT_FSIZE (EFBIG, or SIGXFSZ where
    it is not ignored) or on a full file system (the sandbox's tmpfs, its size)."""
    said = f"{err} {report.get('message', '') if report else ''}"
    if exit_code == -signal.SIGXFSZ or _TOO_LARGE.search(said):
        size = f"{format_bytes(limits.file_bytes)}, the largest a trial may write" if limits else "its size limit"
        return "disk_limit", f"a file reached {size}: {err or 'killed by SIGXFSZ'}"[:500]
    if _NO_SPACE.search(said):
        room = (f" (the sandbox's /tmp, /dev/shm and /var/tmp hold {format_bytes(limits.tmpfs_bytes)} each)"
                if limits else "")
        return "disk_limit", f"no space left where it wrote{room}: {err}"[:500]
    return None


def classify(exit_code: int | None, stderr: str, report: dict | None, timed_out: bool, budget: float,
             handed_over: bool, limits: ResourceLimits | None = None) -> tuple[str, str] | None:
    """(outcome, one-line message) for a trainer process that failed, or None when it exited 0
    having handed over a model (then the scorer decides). `report` is the trainer's own account:
    a failure it claims (nan, unexportable) only fails itself, so it is taken at its word.
    `limits`: the trial's, named in the message of a write that failed for want of room."""
    if timed_out:
        return "timeout", f"killed after exceeding the wall-clock limit for a {budget:g}s budget"
    if exit_code != 0 or (report and report.get("outcome") == "unexportable"):
        disk = _disk_failure(exit_code, last_error_line(stderr), report, limits)
        if disk is not None:
            return disk
    if report and report.get("outcome") in ("nan", "unexportable"):
        return report["outcome"], str(report.get("message", ""))[:500]
    if exit_code == 0:
        if handed_over:
            return None
        return "no_result", "exited 0 without handing over a model (did the variant call h.finish(model)?)"
    err = last_error_line(stderr)
    if _OOM.search(stderr) or exit_code in (-9, 137):
        return "oom", err or "killed (SIGKILL: out of memory?)"
    if _IMPORT.match(err):
        return "import_error", err
    if _SYNTAX.match(err):
        return "syntax_error", err
    return "crash", err or f"exited with status {exit_code}"
