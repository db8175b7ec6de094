"""Every way a trial can end, as data.

A failure is a recorded outcome, never an exception that stops the search: the archive keeps
what went wrong (with the stderr tail) so operators can avoid repeating it.
"""

from __future__ import annotations

import re

OUTCOMES = ("ok", "syntax_error", "import_error", "crash", "oom", "nan", "timeout", "no_result", "cheated",
            "unexportable", "over_budget")
FAILURES = OUTCOMES[1:]
CANCELLED = "cancelled"  # stopped by the user (Ctrl-C): not a result, never recorded as one

_OOM = re.compile(r"OutOfMemoryError|out of memory|MemoryError|can't allocate memory|DefaultCPUAllocator|"
                  r"CUBLAS_STATUS_ALLOC_FAILED|std::bad_alloc")
_IMPORT = re.compile(r"^(ModuleNotFoundError|ImportError)\b")
_SYNTAX = re.compile(r"^(SyntaxError|IndentationError|TabError)\b")


def last_error_line(stderr: str) -> str:
    """The exception line of a traceback (or the last non-empty line), for one-line messages."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b", ln):
            return ln[:300]
    return lines[-1][:300] if lines else ""


def classify(exit_code: int | None, stderr: str, report: dict | None, timed_out: bool, budget: float,
             handed_over: bool) -> tuple[str, str] | None:
    """(outcome, one-line message) for a trainer process that failed, or None when it exited 0
    having handed over a model (then the scorer decides). `report` is the trainer's own account:
    a failure it claims (nan, unexportable) only fails itself, so it is taken at its word."""
    if timed_out:
        return "timeout", f"killed after exceeding the wall-clock limit for a {budget:g}s budget"
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
