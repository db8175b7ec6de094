"""A run's coordinator claim (Store.claim_run / heartbeat / release_run, population.coordinator):
real archives on every backend, real processes for the liveness rules."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from datetime import timedelta

import pytest
from sqlalchemy import text

from population import coordinator
from population.models import utcnow
from population.store import ArchiveError, ClaimLost, RunBusy, Store

HOST = socket.gethostname()
ME = f"{HOST}:{os.getpid()}"


@pytest.fixture
def run(store):
    return store.create_run("r", {"budget": 1})


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def sqltime(dt) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S.%f")  # how SQLAlchemy stores a DateTime in SQLite


def set_claim(store, run_id, **columns):
    """Write claim columns behind the store's back (another process's claim, or an old one), in
    plain SQL on the archive's own engine (an SQLite file or a server)."""
    sets = ", ".join(f"{k} = :{k}" for k in columns)
    with store.engine.begin() as conn:
        conn.execute(text(f"UPDATE runs SET {sets} WHERE id = :run_id"), {**columns, "run_id": run_id})


def test_a_free_run_is_claimed_by_this_process_and_released(store, run):
    assert (run.coordinator, run.claimed_at, run.heartbeat_at) == (None, None, None)
    before = utcnow()
    assert store.claim_run(run.id) is None
    claimed = store.get_run(run.id)
    assert claimed.coordinator == ME == coordinator.this_process()
    assert before <= claimed.claimed_at == claimed.heartbeat_at <= utcnow()
    assert claimed.updated_at == run.updated_at  # a claim is not a change of the run
    assert store.claim_run(run.id) is None  # claiming again is harmless
    assert store.release_run(run.id) is True
    assert store.release_run(run.id) is False  # nothing left to release
    released = store.get_run(run.id)
    assert (released.coordinator, released.claimed_at, released.heartbeat_at) == (None, None, None)


def test_a_new_run_can_be_claimed_at_creation(store):
    run = store.create_run("claimed", {}, coordinator=ME)
    assert run.coordinator == ME and run.claimed_at == run.heartbeat_at is not None


def test_a_live_coordinator_on_this_host_is_not_displaced(store, run):
    parent = f"{HOST}:{os.getppid()}"  # a live process that started before the claim
    assert store.claim_run(run.id, parent) is None
    with pytest.raises(RunBusy) as e:
        store.claim_run(run.id)
    assert e.value.holder == parent
    assert str(e.value).startswith(f"run 'r' is being driven by pid {os.getppid()} on host {HOST} (claimed ")
    assert str(e.value).endswith(" s ago); stop it first or wait") and "\n" not in str(e.value)
    assert store.get_run(run.id).coordinator == parent  # nothing written
    assert store.release_run(run.id) is False  # not ours to release
    assert store.get_run(run.id).coordinator == parent


def test_a_dead_coordinators_claim_is_taken_over(store, run):
    gone = f"{HOST}:{dead_pid()}"
    store.claim_run(run.id, gone)
    assert store.claim_run(run.id) == gone
    assert store.get_run(run.id).coordinator == ME


def test_a_pid_reused_by_a_newer_process_is_not_the_holder(store, run):
    """The parent is alive, but it started after this (old) claim: the pid was given to it later."""
    store.claim_run(run.id, f"{HOST}:{os.getppid()}")
    set_claim(store, run.id, claimed_at="2000-01-01 00:00:00.000000")
    assert store.claim_run(run.id) == f"{HOST}:{os.getppid()}"


def test_a_zombie_is_not_alive():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        for _ in range(200):  # exited, not reaped yet
            with open(f"/proc/{proc.pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] == "Z":
                    break
            threading.Event().wait(0.02)
        assert not coordinator.pid_is_holder(proc.pid, utcnow())
    finally:
        proc.wait()
    assert coordinator.pid_is_holder(os.getpid(), utcnow())
    assert not coordinator.pid_is_holder(proc.pid, utcnow())


def test_another_hosts_coordinator_is_alive_while_its_heartbeat_is_fresh(store, run):
    other = "elsewhere.example:4242"  # its pid means nothing here: only the heartbeat counts
    store.claim_run(run.id, other)
    with pytest.raises(RunBusy, match=r"driven by pid 4242 on host elsewhere.example \(claimed .*, last heartbeat"):
        store.claim_run(run.id)
    stale = utcnow() - timedelta(seconds=coordinator.STALE_AFTER_S + 5)
    set_claim(store, run.id, heartbeat_at=sqltime(stale))
    assert store.claim_run(run.id) == other
    assert store.get_run(run.id).coordinator == ME


def test_the_heartbeat_is_one_update_at_most_every_n_seconds(store, run):
    store.claim_run(run.id)
    first = store.get_run(run.id).heartbeat_at
    assert store.heartbeat(run.id) is False  # the claim itself was the last sign of life
    assert store.get_run(run.id).heartbeat_at == first
    assert store.heartbeat(run.id, every=0) is True
    assert store.get_run(run.id).heartbeat_at > first
    assert store.get_run(run.id).updated_at == run.updated_at


def test_a_coordinator_whose_claim_was_taken_over_is_told_to_stop(store, run):
    store.claim_run(run.id)
    set_claim(store, run.id, coordinator="elsewhere.example:7", heartbeat_at=sqltime(utcnow()))
    with pytest.raises(ClaimLost, match=rf"run 'r' is no longer driven by this process \({ME}\) but by "
                                        r"pid 7 on host elsewhere.example .*; stopping here"):
        store.heartbeat(run.id, every=0)
    assert store.get_run(run.id).coordinator == "elsewhere.example:7"
    assert store.release_run(run.id) is False


def test_two_coordinators_claiming_at_once_one_wins(archive_url, tmp_path):
    """Each claim reads and writes under the write lock: of two live claimants, one is refused."""
    path, git = archive_url, tmp_path / "archive.git"
    with Store.open(path, create=True, git_dir=git) as s:
        run_id = s.create_run("r", {}).id
    claimants = [f"{HOST}:{os.getpid()}", f"{HOST}:{os.getppid()}"]  # both alive
    barrier, outcomes = threading.Barrier(2), []

    def claim(who):
        with Store.open(path, git_dir=git) as s:
            barrier.wait()
            try:
                outcomes.append(("won", s.claim_run(run_id, who)))
            except RunBusy as e:
                outcomes.append(("refused", e.holder))

    threads = [threading.Thread(target=claim, args=(who,)) for who in claimants]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    with Store.open(path, readonly=True) as s:
        holder = s.get_run(run_id).coordinator
    assert sorted(outcomes) == [("refused", holder), ("won", None)]


def test_a_read_only_store_cannot_claim(store, run, archive_url):
    with Store.open(archive_url, readonly=True) as reader:
        with pytest.raises(ArchiveError, match="open read-only"):
            reader.claim_run(run.id)
