"""Bounded resources per trial: every resource bomb (tests/variants/bombs: print floods, huge files
in the trial directory and in /tmp, a fork bomb, memory balloons) through the real runner on CPU,
with the sandbox and without, under small limits (tests/support/bombs.py BOMB_LIMITS). Each must
end with its own outcome and a one-line message naming the limit, its logs within the cap, nothing
of it left running, and an honest trial right after it, in the same warm servers, scored.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import FAST
from tests.support.bombs import BOMB_LIMITS, resource_bombs, run_bomb
from trainer import runner
from trainer.outcomes import FAILURES, LIMIT_OUTCOMES, classify, limit_exceeded
from trainer.runner import run_trial
from trainer.sandbox import resolve
from trainer.trial_config import GiB, MiB, TrialConfig, format_bytes, resource_limits

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the limits are Linux's")

BOMBS = resource_bombs()
# What each bomb's message must name: the limit it ran into, with its value.
NAMED = {
    "print_flood": "1 MiB", "child_flood": "1 MiB", "huge_file": "64 MiB", "many_files": "128 MiB",
    "tmp_file": {"strict": "32 MiB", "off": "64 MiB"},  # the sandbox's tmpfs; outside, the file size limit
    "fork_bomb": "limit of 64", "memory_balloon": "1 GiB", "memory_spread": "1 GiB",
}


@pytest.mark.parametrize("name, expect, source", BOMBS, ids=[b[0] for b in BOMBS])
@pytest.mark.parametrize("mode", ["strict", "off"])
def test_a_resource_bomb_is_stopped_with_its_own_outcome(name, expect, source, mode, dataset, tmp_path, request):
    if mode == "strict":
        request.getfixturevalue("requires_sandbox")
    r = run_bomb(name, expect, source, dataset_dir=dataset.path, workdir=tmp_path / "bomb", sandbox=mode, **FAST)
    assert r.contained, r.line()
    assert r.sandboxed is (mode == "strict")
    named = NAMED[name][mode] if isinstance(NAMED[name], dict) else NAMED[name]
    assert named in r.message and "\n" not in r.message, r.message
    assert r.seconds < 30, r.line()  # stopped by its limit, not by the wall clock (budget + 120 s on CPU)
    if expect == "log_flood":
        assert BOMB_LIMITS["max_log_bytes"] // 2 < r.log_bytes <= BOMB_LIMITS["max_log_bytes"]
        log = "stdout.log" if name == "print_flood" else "stderr.log"
        assert (tmp_path / "bomb" / log).read_bytes().rstrip().endswith(b"the trial was stopped]")


PROBE = textwrap.dedent("""\
    import os, resource
    for name in ("RLIMIT_FSIZE", "RLIMIT_CORE", "RLIMIT_AS"):
        print(name, *resource.getrlimit(getattr(resource, name)))
    for d in ("/tmp", "/dev/shm", "/var/tmp"):
        st = os.statvfs(d)
        print("tmpfs", d, st.f_blocks * st.f_frsize)
""")


@pytest.mark.parametrize("mode", ["strict", "off"])
def test_the_kernel_limits_are_set_before_the_variant_runs(dataset, tmp_path, mode, request):
    if mode == "strict":
        request.getfixturevalue("requires_sandbox")
    work = tmp_path / "w"
    r = run_trial(PROBE, dataset_dir=dataset.path, budget=1.0, device="cpu", sandbox=mode, workdir=work,
                  tmpfs_bytes=BOMB_LIMITS["tmpfs_bytes"], max_memory_bytes=2 * GiB, **FAST)
    assert r.outcome == "no_result", (r.message, r.stderr_tail[-500:])
    lines = [ln.split() for ln in (work / "stdout.log").read_text().splitlines()]
    rl = {ln[0]: (int(ln[1]), int(ln[2])) for ln in lines if ln[0].startswith("RLIMIT")}
    assert rl["RLIMIT_FSIZE"] == (GiB, GiB)  # the CPU default: model.evo fits
    assert rl["RLIMIT_CORE"] == (0, 0)
    soft, hard = rl["RLIMIT_AS"]
    assert soft == hard and 4 * GiB < soft < 64 * GiB  # its own address space + 2x the memory limit (CPU)
    if mode == "strict":
        sizes = {ln[1]: int(ln[2]) for ln in lines if ln[0] == "tmpfs"}
        assert sizes == {d: BOMB_LIMITS["tmpfs_bytes"] for d in ("/tmp", "/dev/shm", "/var/tmp")}


def test_a_cuda_trial_gets_no_address_space_limit_and_bigger_files():
    cfg = TrialConfig(dataset_dir="x")
    cpu, gpu = resource_limits(cfg, cuda=False), resource_limits(cfg, cuda=True)
    assert gpu.address_space_bytes is None and cpu.address_space_bytes == 2 * cpu.memory_bytes
    assert gpu.file_bytes > cpu.file_bytes >= GiB and gpu.disk_bytes >= gpu.file_bytes
    own = resource_limits(TrialConfig(dataset_dir="x", max_file_bytes=5 * GiB, max_processes=7), cuda=False)
    assert own.file_bytes == 5 * GiB and own.disk_bytes >= 5 * GiB and own.processes == 7


def test_limit_outcomes_are_failures_with_one_line_messages():
    limits = resource_limits(TrialConfig(dataset_dir="x", max_log_bytes=MiB, max_disk_bytes=3 * GiB,
                                         max_processes=100, max_memory_bytes=8 * GiB), cuda=False)
    assert set(LIMIT_OUTCOMES) <= set(FAILURES) and all(len(o) <= 32 for o in LIMIT_OUTCOMES)  # String(32)
    for kind, used, value in (("log_flood", 5 * MiB, "1 MiB"), ("disk_limit", 4 * GiB, "3 GiB"),
                              ("process_limit", 101, "100"), ("memory_limit", 9 * GiB, "8 GiB")):
        outcome, message = limit_exceeded(kind, used, "stdout", limits)
        assert outcome == kind and value in message and "\n" not in message
    too_large = "Traceback (most recent call last):\n  ...\nOSError: [Errno 27] File too large\n"
    assert classify(1, too_large, None, False, 1.0, False, limits)[0] == "disk_limit"
    assert format_bytes(limits.file_bytes) in classify(1, too_large, None, False, 1.0, False, limits)[1]
    full = "OSError: [Errno 28] No space left on device\n"
    assert classify(1, full, None, False, 1.0, False, limits)[0] == "disk_limit"
    export = {"outcome": "unexportable", "message": "torch.export failed: OSError: [Errno 27] File too large"}
    assert classify(3, "", export, False, 1.0, False, limits)[0] == "disk_limit"
    assert classify(-25, "", None, False, 1.0, False, limits)[0] == "disk_limit"  # SIGXFSZ, where not ignored
    assert classify(1, "RuntimeError: boom\n", None, False, 1.0, False, limits) == ("crash", "RuntimeError: boom")



CONFINED = textwrap.dedent("""\
    import ctypes, os
    said = [str(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))]  # PR_GET_DUMPABLE
    for name, call in (("setsid", os.setsid), ("setpgid", lambda: os.setpgid(0, 0))):
        r, w = os.pipe()
        if os.fork() == 0:  # not a group leader: each call would succeed
            try:
                call()
                os.write(w, b"ok")
            except OSError as e:
                os.write(w, str(e.errno).encode())
            os._exit(0)
        os.close(w)
        os.wait()
        said.append(name + "=" + os.read(r, 100).decode())
    print(*said)
""")


def test_a_trial_cannot_leave_its_process_group_and_a_scorer_launch_is_not_touched(dataset, tmp_path):
    # A trial (its limits): setsid and setpgid refused (EPERM = 1), dumpable again so that the
    # server can read its memory. A launch with a log cap only (the scorer's): neither.
    box, data = resolve("off"), Path(dataset.path).resolve()
    server = runner._POOL.trainer(box, data, False, True, BOMB_LIMITS["tmpfs_bytes"])
    try:
        said = {}
        for kind, limits in (("trial", {"log_bytes": MiB, "processes": 64, "file_bytes": GiB}),
                             ("log only", {"log_bytes": MiB})):
            (server.dir / "train.py").write_text(CONFINED)
            out = server.dir / "stdout.log"
            child = server.fork.launch([str(server.dir / "train.py")], server.dir, runner.scrubbed_env(), out,
                                       server.dir / "stderr.log", limits=limits)
            assert child.wait(60) == 0, (server.dir / "stderr.log").read_text()
            said[kind] = out.read_text().split()
    finally:
        runner._POOL.give_back(server, box, data, False, True, BOMB_LIMITS["tmpfs_bytes"])
    assert said["trial"] == ["1", "setsid=1", "setpgid=1"]
    assert said["log only"] == ["0", "setsid=ok", "setpgid=ok"]
