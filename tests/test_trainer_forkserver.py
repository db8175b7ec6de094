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
from trainer import forkserver
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
def fresh_server(monkeypatch):
    """A fork server started inside the test (after its monkeypatching), closed after it."""
    monkeypatch.setattr(forkserver, "_server", None)
    yield
    if forkserver._server is not None:
        forkserver._server.close()


def test_cpu_trial_is_forked_from_the_preloaded_server_as_its_own_process(dataset, tmp_path, fresh_server):
    work = tmp_path / "w"
    r = trial(dataset, PROBE, workdir=work)
    assert r.outcome == "no_result"  # it never reported: a real process that just exited 0
    ppid, preloaded, own_group, cwd, file, argv0 = (work / "probe.txt").read_text().split()
    assert int(ppid) == forkserver._server._proc.pid
    assert preloaded == "True" and own_group == "True"
    assert Path(cwd) == work.resolve() and file == argv0 == str(work.resolve() / "train.py")


def test_spawn_gives_a_fresh_interpreter(dataset, tmp_path, monkeypatch, fresh_server):
    monkeypatch.setenv("EVO_TRIAL_START", "spawn")
    work = tmp_path / "w"
    trial(dataset, PROBE, workdir=work)
    ppid, preloaded, own_group, *_ = (work / "probe.txt").read_text().split()
    assert forkserver._server is None and preloaded == "False" and own_group == "True"


@pytest.mark.parametrize("body", [
    "def f():\n    raise ValueError('boom')\nf()\n",
    "import sys\nprint('partial', flush=True)\nsys.exit(3)\n",
    "import sys\nsys.exit('a message')\n",
    "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n",
    "raise KeyboardInterrupt\n",
])
def test_exit_status_and_stderr_match_a_fresh_interpreter(dataset, monkeypatch, body, fresh_server):
    forked = trial(dataset, body)
    monkeypatch.setenv("EVO_TRIAL_START", "spawn")
    spawned = trial(dataset, body)
    assert forked.exit_code == spawned.exit_code != 0, (forked.stderr_tail, spawned.stderr_tail)
    assert forked.outcome == spawned.outcome
    assert forked.stderr_tail.strip().splitlines()[-1:] == spawned.stderr_tail.strip().splitlines()[-1:]
    if "ValueError" in body:  # the traceback starts in train.py, not in the server's runpy
        frames = [ln for ln in forked.stderr_tail.splitlines() if ln.strip().startswith("File ")]
        assert frames and all("train.py" in ln for ln in frames)


def test_a_key_in_the_coordinator_never_reaches_the_environment_block(dataset, monkeypatch, fresh_server):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-must-not-leak")
    monkeypatch.setenv("HF_TOKEN", "hf-must-not-leak")
    r = trial(dataset, variant("env_probe.py"), budget=0.5)
    assert r.ok, r.stderr_tail[-500:]
    assert forkserver._server is not None  # the server started in this test, with the key set


def test_ctrl_c_does_not_wait_for_the_server_to_finish_importing(dataset, tmp_path, fresh_server):
    cancel = threading.Event()
    cancel.set()
    work = tmp_path / "w"
    r = trial(dataset, PROBE, workdir=work, cancel=cancel)
    assert r.outcome == "cancelled" and not (work / "stdout.log").exists()  # never forked


def test_a_relative_workdir_is_the_trial_directory(dataset, tmp_path, monkeypatch, fresh_server):
    monkeypatch.chdir(tmp_path)
    trial(dataset, PROBE, workdir="rel")
    assert Path((tmp_path / "rel" / "probe.txt").read_text().split()[3]) == (tmp_path / "rel").resolve()


SURVIVOR = textwrap.dedent("""\
    import os, subprocess, sys, time
    if 'torch' in sys.modules:  # forked: start a grandchild, then wait to be orphaned
        p = subprocess.Popen(['sleep', '300'])
        open('grandchild', 'w').write(str(p.pid))
        while True:
            time.sleep(1)
    open('spawned', 'w').write('yes')  # the runner's second try, in a fresh interpreter
""")


def test_a_trial_the_server_dies_under_is_trained_again_not_charged(dataset, tmp_path, fresh_server):
    work = tmp_path / "w"
    result = {}
    runner = threading.Thread(target=lambda: result.update(r=trial(dataset, SURVIVOR, workdir=work, limit=120)))
    runner.start()
    deadline = time.time() + 120
    while not (work / "grandchild").exists() or not (work / "grandchild").read_text():
        assert time.time() < deadline, "the forked trial never started"
        time.sleep(0.1)
    grandchild = int((work / "grandchild").read_text())
    forkserver._server._proc.kill()
    runner.join(60)
    assert not runner.is_alive()
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
    run_trial(Path(sys.argv[1]), dataset_dir=sys.argv[2], budget=1.0, device="cpu", workdir=sys.argv[3], limit=300)
""")


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_trial_dies_with_its_coordinator(dataset, tmp_path):
    source = "import os, time\nopen('pid', 'w').write(str(os.getpid()))\nwhile True:\n    time.sleep(1)\n"
    (tmp_path / "v.py").write_text(source)
    work = tmp_path / "w"
    coord = subprocess.Popen([sys.executable, "-c", COORDINATOR, str(tmp_path / "v.py"), str(dataset.path), str(work)],
                             cwd=Path(__file__).resolve().parent.parent)
    deadline = time.time() + 120
    while not (work / "pid").exists() or not (work / "pid").read_text():
        assert time.time() < deadline and coord.poll() is None, "the trial never started"
        time.sleep(0.1)
    pid = int((work / "pid").read_text())
    assert _running(pid)
    coord.send_signal(signal.SIGKILL)
    coord.wait()
    deadline = time.time() + 10
    while _running(pid) and time.time() < deadline:
        time.sleep(0.1)
    if _running(pid):
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the trial outlived its coordinator")
