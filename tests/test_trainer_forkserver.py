"""CPU trials forked from a server that has already imported torch: the same process a fresh
`python train.py` would be (group, directory, environment, exit status, traceback), no secrets
even in the environment block, and no trial outliving its coordinator."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import FAST, variant
from trainer import runner
from trainer.runner import run_trial

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fork server is Linux-only")

PROBE = textwrap.dedent("""\
    import os, sys
    preloaded = 'torch' in sys.modules
    with open('probe.txt', 'w') as f:
        f.write(f"{os.getppid()} {preloaded} {os.getpgid(0) == os.getpid()} {os.getcwd()} {__file__} {sys.argv[0]}")
""")


def trial(dataset, source, **kw):
    opts = dict(dataset_dir=dataset.path, budget=1.0, seed=0, device="cpu", **FAST)
    opts.update(kw)
    return run_trial(source, **opts)


@pytest.fixture
def fresh_server():
    """Trials of this test get servers started inside it (after its monkeypatching)."""
    runner.close_servers()
    yield
    runner.close_servers()


def _idle_servers():
    return [s for idle in runner._POOL._idle.values() for s in idle]


def test_cpu_trial_is_forked_from_the_preloaded_server_as_its_own_process(dataset, tmp_path, fresh_server):
    work = tmp_path / "w"
    r = trial(dataset, PROBE, workdir=work, sandbox="off")  # host pids: the parent is the server
    assert r.outcome == "no_result"  # it never handed a model over: a real process that just exited 0
    ppid, preloaded, own_group, cwd, file, argv0 = (work / "probe.txt").read_text().split()
    (server,) = _idle_servers()
    assert int(ppid) == server.fork._proc.pid
    assert preloaded == "True" and own_group == "True"
    assert Path(cwd) == server.dir and file == argv0 == str(server.dir / "train.py")


@pytest.mark.parametrize("start, same", [("fork", True), ("spawn", False)])
def test_spawn_gives_every_trial_a_fresh_interpreter(dataset, tmp_path, monkeypatch, fresh_server, start, same):
    monkeypatch.setenv("EVO_TRIAL_START", start)
    parents = []
    for i in range(2):
        trial(dataset, PROBE, workdir=tmp_path / str(i), sandbox="off")
        parents.append((tmp_path / str(i) / "probe.txt").read_text().split()[0])
    assert (parents[0] == parents[1]) is same


@pytest.mark.parametrize("body", [
    "def f():\n    raise ValueError('boom')\nf()\n",
    "import sys\nprint('partial', flush=True)\nsys.exit(3)\n",
    "import sys\nsys.exit('a message')\n",
    "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n",
    "raise KeyboardInterrupt\n",
])
def test_exit_status_and_stderr_match_a_fresh_interpreter(dataset, tmp_path, body, fresh_server):
    forked = trial(dataset, body)
    (tmp_path / "train.py").write_text(body)
    fresh = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, capture_output=True, text=True)
    assert forked.exit_code == fresh.returncode != 0, (forked.stderr_tail, fresh.stderr)
    assert forked.stderr_tail.strip().splitlines()[-1:] == fresh.stderr.strip().splitlines()[-1:]
    if "ValueError" in body:  # the traceback starts in train.py, not in the server's runpy
        frames = [ln for ln in forked.stderr_tail.splitlines() if ln.strip().startswith("File ")]
        assert frames and all("train.py" in ln for ln in frames)


def test_a_key_in_the_coordinator_never_reaches_the_environment_block(dataset, monkeypatch, fresh_server):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-must-not-leak")
    monkeypatch.setenv("HF_TOKEN", "hf-must-not-leak")
    for mode in ("auto", "off"):
        r = trial(dataset, variant("env_probe.py"), budget=0.5, sandbox=mode)
        assert r.ok, r.stderr_tail[-500:]


def test_ctrl_c_does_not_wait_for_the_server_to_finish_importing(dataset, tmp_path, fresh_server):
    cancel = threading.Event()
    cancel.set()
    work = tmp_path / "w"
    r = trial(dataset, PROBE, workdir=work, cancel=cancel)
    assert r.outcome == "cancelled" and not (work / "stdout.log").exists()  # never forked


def test_a_relative_workdir_gets_the_trial_files(dataset, tmp_path, monkeypatch, fresh_server):
    monkeypatch.chdir(tmp_path)
    trial(dataset, PROBE, workdir="rel")
    assert (tmp_path / "rel" / "probe.txt").is_file() and (tmp_path / "rel" / "stdout.log").is_file()


SURVIVOR = textwrap.dedent("""\
    import os, subprocess, sys, time
    MARKER = 'MARKER_PATH'  # the slot is new on the retry, so the marker lives outside it
    if not os.path.exists(MARKER):  # the first try: start a grandchild, then wait to be orphaned
        open(MARKER, 'w').write('x')
        p = subprocess.Popen(['sleep', '300'])
        open(MARKER + '.pids', 'w').write(f"{os.getppid()} {p.pid}")
        while True:
            time.sleep(1)
    open('spawned', 'w').write('yes')  # the runner's second try, in a fresh server
""")


def test_a_trial_the_server_dies_under_is_trained_again_not_charged(dataset, tmp_path, fresh_server):
    work = tmp_path / "w"
    marker = tmp_path / "first"
    source = SURVIVOR.replace("MARKER_PATH", str(marker))
    result = {}
    runner_thread = threading.Thread(target=lambda: result.update(
        r=trial(dataset, source, workdir=work, limit=120, sandbox="off")))
    runner_thread.start()
    pids = Path(str(marker) + ".pids")
    deadline = time.time() + 120
    while not pids.exists() or not pids.read_text():
        assert time.time() < deadline, "the forked trial never started"
        time.sleep(0.1)
    server, grandchild = map(int, pids.read_text().split())
    os.kill(server, signal.SIGKILL)
    runner_thread.join(60)
    assert not runner_thread.is_alive()
    r = result["r"]
    assert r.outcome == "no_result" and r.exit_code == 0, (r.outcome, r.message)  # not "oom" from the -9
    assert (work / "spawned").read_text() == "yes"
    deadline = time.time() + 10
    while _running(grandchild) and time.time() < deadline:
        time.sleep(0.1)
    assert not _running(grandchild), "the trial's own child outlived the lost trial"


COORDINATOR = textwrap.dedent("""\
    import sys
    from pathlib import Path
    from trainer.runner import run_trial
    run_trial(Path(sys.argv[1]), dataset_dir=sys.argv[2], budget=1.0, device="cpu", workdir=sys.argv[3], limit=300,
              sandbox=sys.argv[5])
""")


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("mode", ["off", "auto"])
def test_a_trial_dies_with_its_coordinator(dataset, tmp_path, mode):
    source = "import os, time\nopen(os.environ['EVO_TEST_OUT'], 'w').write(os.getcwd())\nwhile True:\n    time.sleep(1)\n"
    source = source.replace("os.environ['EVO_TEST_OUT']", repr("cwd.txt"))
    (tmp_path / "v.py").write_text(source)
    work = tmp_path / "w"
    coord = subprocess.Popen([sys.executable, "-c", COORDINATOR, str(tmp_path / "v.py"), str(dataset.path), str(work),
                              "", mode], cwd=Path(__file__).resolve().parent.parent)
    deadline = time.time() + 120
    while not (procs := _trial_processes(coord.pid)):
        assert time.time() < deadline and coord.poll() is None, "the trial never started"
        time.sleep(0.2)
    coord.send_signal(signal.SIGKILL)
    coord.wait()
    deadline = time.time() + 10
    while any(_running(p) for p in procs) and time.time() < deadline:
        time.sleep(0.1)
    left = [p for p in procs if _running(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, "the trial outlived its coordinator"


def _trial_processes(coordinator: int) -> list[int]:
    """Host pids of the trial processes below `coordinator`: those running in a slot directory."""
    kids = _descendants(coordinator)
    out = []
    for p in kids:
        try:
            if "evo-trainer-" in os.readlink(f"/proc/{p}/cwd") and Path(f"/proc/{p}/cwd/cwd.txt").exists():
                out.append(p)
        except OSError:
            pass
    return out


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                ppid = int(Path(f"/proc/{p}/stat").read_text().split(")")[-1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(p))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out
