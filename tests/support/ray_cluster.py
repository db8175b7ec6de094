"""A real Ray cluster on 127.0.0.1 for tests and benchmarks: a head node and worker nodes, each a
`ray start --block` process in its own session, so one node can be killed whole (SIGKILL to its
process group: its raylet and the worker processes the raylet started) while the others go on."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.ports import free_port

# Quick failure detection, for the tests' sake: a dead node is declared dead within ~2 s, not ~30.
FAST_FAILURE = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "3",
                "RAY_health_check_timeout_ms": "500", "RAY_USAGE_STATS_ENABLED": "0"}


@dataclass
class Cluster:
    address: str
    temp_dir: str
    nodes: list[subprocess.Popen] = field(default_factory=list)  # [head, worker 1, ...]

    def is_training(self, index: int) -> bool:
        """Whether node `index` runs a trial now: a trainer fork server below it has a forked
        child (the trial keeps the server's command line)."""
        from tests.support.faults import descendants

        servers = {}
        for pid in descendants(self.nodes[index].pid):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                state, ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2]
                ppid = int(ppid)
            except (OSError, IndexError, ValueError):
                continue
            if state == "Z":  # a trial that has ended, not yet reaped
                continue
            if b"trainer.forkserver" in cmd and b"trainer" in cmd[cmd.index(b"--role") + 1:][:1]:
                servers[pid] = ppid
        return any(ppid in servers for ppid in servers.values())

    def kill_node(self, index: int) -> None:
        """SIGKILL node `index` (1 = the first worker node) and every process below it, as a
        machine that is lost: Ray's worker processes leave the node's process group, and one
        that outlived its raylet could still hand its result back."""
        from tests.support.faults import descendants

        below = descendants(self.nodes[index].pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.nodes[index].pid, signal.SIGKILL)
        for pid in below:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.nodes[index].wait(10)


def _start_node(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(["ray", "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                             *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)


def _wait_for_nodes(address: str, n: int, env: dict, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        proc = subprocess.run(["ray", "status", f"--address={address}"], capture_output=True, text=True, env=env)
        if proc.returncode == 0 and proc.stdout.count(" node_") >= n:
            return
        time.sleep(0.5)
    raise RuntimeError(f"the Ray cluster at {address} did not get {n} nodes within {within:g}s")


@contextlib.contextmanager
def local_cluster(workers: int = 1, cpus: int = 1, head_cpus: int = 1) -> Iterator[Cluster]:
    """Head + `workers` worker nodes with `cpus` CPUs each; everything stopped on exit."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, **FAST_FAILURE, "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    cluster = Cluster(address, temp)
    try:
        cluster.nodes.append(_start_node(["--head", f"--port={port}", f"--num-cpus={head_cpus}", "--num-gpus=0",
                                          "--include-dashboard=false", f"--temp-dir={temp}"], env))
        _wait_for_nodes(address, 1, env)
        for i in range(workers):  # one at a time: two nodes starting at once on one address collide
            cluster.nodes.append(_start_node([f"--address={address}", f"--num-cpus={cpus}", "--num-gpus=0"], env))
            _wait_for_nodes(address, 2 + i, env)
        yield cluster
    finally:
        for node in reversed(cluster.nodes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGTERM)
        for node in reversed(cluster.nodes):
            try:
                node.wait(3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
