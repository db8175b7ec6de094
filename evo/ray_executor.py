"""Trials as Ray tasks: the GPUs (or CPUs) of a whole cluster behind the `Executor` protocol.

Ray does the scheduling; this module only says what a trial needs and reads back what happened.

- Each trial is one task asking for one GPU (on a cluster without GPUs, `cpus_per_trial` CPUs).
  The task runs `trainer.runner.run_trial` on its node, the same sealed trial as the local
  executor (its sandbox, its scorer), and hands back the `TrialResult` as a dict. Only the
  coordinator writes the archive: a node never sees it.
- The variant's source, the data manifest's hash and the hash of evo's trainer code travel with
  the task. A node whose prepared data (at the run's data path: a shared filesystem, or
  `evo prepare` run there with the same inputs) or whose trainer differs refuses the task in one
  line; the executor then says so, leaves that node out (a Ray label selector on `ray.io/node-id`)
  and sends the trial elsewhere. A refusal is not a trial: nothing is recorded for it. With every
  node refused the run stops with that line.
- A node that dies, or a task's worker killed, ends the trial as the recorded outcome `lost`
  (`trainer.outcomes.LOST`); the engine trains that individual once more (`evo.engine`). Ray's
  own retries are off (`max_retries=0`) so that each attempt is a row in the archive.
- Trials are dispatched ahead: `size` is the cluster's trial slots plus `ahead` (one per slot by
  default), so a slot that frees finds a trial already queued in Ray and starts it at once
  instead of waiting for the coordinator's next pass.
- Ray's worker processes are reused (`max_calls=0`; Ray's default for GPU tasks is a new process
  per task), so the trial servers a worker started (`trainer.runner`: torch imported once) serve
  its next trials too.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from evo.errors import EvoError
from trainer.outcomes import CANCELLED, LOST
from trainer.runner import TrialResult

NODE_ID_LABEL = "ray.io/node-id"


def trainer_code_hash() -> str:
    """The hash of this installation's trainer/ sources: nodes must score with the same code."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent / "trainer"
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _trial_on_node(source: str, seed: int, device: str, data_hash: str, code_hash: str, threads: int | None,
                   options: dict) -> dict:
    """The Ray task: check the node, then one sealed trial. Returns {"node", "refused"} or
    {"node", "result"}."""
    import ray

    from trainer.dataset import Dataset, DatasetError
    from trainer.runner import run_trial

    ctx = ray.get_runtime_context()
    node = f"{socket.gethostname()} ({ctx.get_node_id()[:8]})"
    data_dir = options["dataset_dir"]
    try:
        here = Dataset(data_dir).hash
    except (DatasetError, OSError) as e:
        return {"node": node, "refused": f"no prepared data at {data_dir} ({e}): run the same `evo prepare` there"}
    if here != data_hash:
        return {"node": node, "refused": f"its data at {data_dir} has manifest hash {here}, the run's is {data_hash}: "
                                         "prepare it with the same inputs"}
    if trainer_code_hash() != code_hash:
        return {"node": node, "refused": "it has another version of evo's trainer installed: install the same one"}
    gpus = [str(int(g)) if str(g).isdigit() else str(g) for g in ray.get_gpu_ids()]
    env = {"CUDA_VISIBLE_DEVICES": ",".join(gpus)} if gpus else {}
    where = f"{node} {'cuda:' + ','.join(gpus) if gpus else 'cpu'}"
    result = run_trial(source, seed=seed, device=device, threads=threads, env=env, **options)
    return {"node": where, "result": result.to_dict()}


def _check_reachable(address: str | None, within: float = 5.0) -> None:
    """A HOST:PORT that nothing answers on is one line at once; `ray.init` would retry for minutes."""
    if not address or "://" in address or address == "auto" or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=within).close()
    except (OSError, ValueError) as e:
        raise ConnectionError(f"nothing answers at {address} ({e})") from None


class RayExecutor:
    """Runs trials as tasks on a Ray cluster (`ray.init(address)`; None: the one `ray start` made
    on this machine, or a new local one)."""

    def __init__(self, address: str | None = None, *, device: str = "auto", cpus_per_trial: int = 1, ahead: int | None = None, say: Callable[[str], None] = print):
        import ray

        self._ray = ray
        _check_reachable(address)
        if not ray.is_initialized():
            ray.init(address=address, log_to_driver=False, include_dashboard=False,
                     logging_level="ERROR", configure_logging=True)
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0)) if device in ("auto", "cuda") else 0
        if device == "cuda" and not gpus:
            raise EvoError(f"--device cuda: the Ray cluster at {address or 'this machine'} has no GPU")
        self.device = "cuda" if gpus else "cpu"
        self.cpus_per_trial = max(1, cpus_per_trial)
        self.slots = gpus or int(resources.get("CPU", 0)) // self.cpus_per_trial
        if self.slots < 1:
            raise EvoError(f"the Ray cluster at {address or 'this machine'} has no GPU and fewer than "
                           f"{self.cpus_per_trial} CPU(s) for a trial")
        self.ahead = self.slots if ahead is None else max(0, ahead)
        self.nodes = len(self._trial_nodes())
        self._data_hashes: dict[str, str] = {}  # data dir -> its manifest hash, as the coordinator sees it
        self.code_hash = trainer_code_hash()
        self.say = say
        self._refused: dict[str, str] = {}  # node id -> why it refused
        self._lock = threading.Lock()
        self._inflight: dict[Any, Future] = {}  # ObjectRef -> the engine's future
        self._closed = False
        self._replies = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evo-ray-replies")
        self._want = {"num_gpus": 1} if gpus else {"num_cpus": self.cpus_per_trial}
        self._task = ray.remote(max_retries=0, max_calls=0)(_trial_on_node)

    @property
    def size(self) -> int:
        return self.slots + self.ahead

    def describe(self) -> str:
        unit = "GPU" if self.device == "cuda" else f"{self.cpus_per_trial}-CPU slot"
        return (f"Ray: {self.slots} {unit}(s) on {self.nodes} node(s), {self.ahead} trial(s) queued ahead")

    def submit(self, source: str, *, seed: int, **options) -> Future:
        """Future of (where it ran, TrialResult)."""
        out: Future = Future()
        out.set_running_or_notify_cancel()
        self._launch(out, source, seed, options)
        return out

    def _launch(self, out: Future, source: str, seed: int, options: dict) -> None:
        with self._lock:
            if self._closed:
                out.set_result(("", TrialResult(outcome=CANCELLED, seed=seed, message="cancelled")))
                return
            where = {"label_selector": {NODE_ID_LABEL: f"!in({','.join(self._refused)})"}} if self._refused else {}
            task = self._task.options(**self._want, **where)
            threads = None if self.device == "cuda" else self.cpus_per_trial
            ref = task.remote(source, seed, self.device, self._data_hash(options["dataset_dir"]), self.code_hash,
                              threads, options)
            self._inflight[ref] = out
        # Ray runs the callback on its own thread, where calling Ray again (a resubmit, ray.nodes())
        # deadlocks: the reply is read on one of ours.
        ref.future().add_done_callback(
            lambda done: self._replies.submit(self._settle, ref, done, out, source, seed, options))

    def _settle(self, ref: Any, done: Future, out: Future, source: str, seed: int, options: dict) -> None:
        """Whatever goes wrong here must still resolve the engine's future."""
        try:
            self._landed(ref, done, out, source, seed, options)
        except BaseException as e:  # noqa: BLE001
            if not out.done():
                out.set_exception(e)

    def _data_hash(self, data_dir: str) -> str:
        if data_dir not in self._data_hashes:
            from trainer.dataset import Dataset

            self._data_hashes[data_dir] = Dataset(data_dir).hash
        return self._data_hashes[data_dir]

    def _landed(self, ref: Any, done: Future, out: Future, source: str, seed: int, options: dict) -> None:
        ray = self._ray
        with self._lock:
            self._inflight.pop(ref, None)
        try:
            reply = done.result()
        except ray.exceptions.TaskCancelledError:
            out.set_result(("", TrialResult(outcome=CANCELLED, seed=seed, message="cancelled")))
            return
        except ray.exceptions.RayTaskError as e:  # run_trial itself raised (e.g. --sandbox strict with none)
            out.set_exception(e.as_instanceof_cause())
            return
        except ray.exceptions.RayError as e:  # the node, its worker or the object is gone
            if self._closed:
                out.set_result(("", TrialResult(outcome=CANCELLED, seed=seed, message="cancelled")))
                return
            why = str(e).strip().split(". ")[0].splitlines()[0] if str(e).strip() else ""
            out.set_result(("", TrialResult(outcome=LOST, seed=seed, device=self.device,
                                            message=f"the Ray node or worker running it was lost "
                                                    f"({type(e).__name__}{': ' + why[:160] if why else ''})")))
            return
        except BaseException as e:  # noqa: BLE001 - the engine's future carries it
            out.set_exception(e)
            return
        if "refused" in reply:
            node_id = self._node_id_of(reply["node"])
            self.say(f"node {reply['node']} refused a trial: {reply['refused']}; leaving it out")
            with self._lock:
                self._refused[node_id] = reply["refused"]
                left = self._trial_nodes() - set(self._refused)
            if not left:
                out.set_exception(EvoError(f"no node of the Ray cluster can run this run's trials: "
                                           f"{reply['node']}: {reply['refused']}"))
                return
            self._launch(out, source, seed, options)
            return
        out.set_result((reply["node"], TrialResult.from_dict(reply["result"])))

    def _trial_nodes(self) -> set[str]:
        """The live nodes with room for one trial (a head started with no CPUs runs none)."""
        unit, need = ("GPU", 1) if self.device == "cuda" else ("CPU", self.cpus_per_trial)
        return {n["NodeID"] for n in self._ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(unit, 0) >= need}

    def _node_id_of(self, label: str) -> str:
        """The full node id from a reply's "host (id8)" label."""
        short = label.rsplit("(", 1)[-1].rstrip(")")
        for n in self._ray.nodes():
            if n["NodeID"].startswith(short):
                return n["NodeID"]
        return short

    def shutdown(self, cancel: bool = False) -> None:
        """Cancel (force: the task's worker is killed, which ends its trial server and so the
        trial) what is in flight, then leave the cluster; a cluster we started ourselves stops."""
        with self._lock:
            self._closed = True
            refs = list(self._inflight) if cancel else []
        for ref in refs:
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - already finished or its node gone
                pass
        if not cancel:
            for fut in list(self._inflight.values()):
                fut.exception()  # wait: trials finish as on the local executor
        self._replies.shutdown(wait=not cancel)
        self._ray.shutdown()
