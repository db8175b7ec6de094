"""`evo run --operator llm` end to end: the real CLI in a subprocess, the real anthropic SDK, the
loopback Messages server in this process (ANTHROPIC_BASE_URL points at it), real 1 s trials.

One run serves a scripted sequence of answers (proposals go one at a time: `llm_concurrency = 1`),
so each failure mode lands on its own proposal and must end as a recorded outcome while the run
still finishes its `--trials`. The runs start from tests/variants/env_probe.py, a bigram model
that exits with an error when a key or token is in its environment, so every trial of these runs,
the LLM's children included, checks that the coordinator's key did not reach it.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time

import pytest

from population.store import Store
from tests.conftest import VARIANTS, evo, start_evo
from tests.support.messages_server import Fail, MessagesServer, Reply

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

KEY = "sk-ant-evotest-7f3a9c1e5b2d8f4a6c0e9b7d5f3a1c8e"
TOML = """
eval_tokens = 4096
eval_seq_len = 64
noise_seeds = 1
champion_seeds = 1
crossover_rate = 0.0
llm_concurrency = 1
llm_timeout = 1.5
llm_max_retries = 1
"""
SEED = VARIANTS / "env_probe.py"
PROBE = "secrets in trial environment"  # the seed's check, inherited by every child
_PARENT = re.compile(r"```python\n(.*?)```", re.S)
_LR = re.compile(r"^MATRIX_LR = .*$", re.M)


def edit(old: str, new: str, hypothesis: str = "a hypothesis") -> str:
    return f"Hypothesis: {hypothesis}\n\n<<<<<<< SEARCH\n{old}\n=======\n{new}\n>>>>>>> REPLACE\n"


class Answers:
    """The server's handler: scripted items first (a Reply, a Fail, or a function of the request),
    then good edits. A good edit sets the parent's MATRIX_LR line (read from the prompt) to a new
    value, so every child is new and applies cleanly."""

    def __init__(self, items=(), **reply):
        self.items = collections.deque(items)
        self.reply = reply  # token counts for good answers
        self._values = itertools.count(1)
        self._lock = threading.Lock()

    def good(self, hypothesis: str):
        def answer(request):
            parent = _PARENT.search(request.user_text).group(1)
            with self._lock:
                value = f"{0.03 + 0.0001 * next(self._values):.4f}"
            return Reply(edit(_LR.search(parent).group(0), f"MATRIX_LR = {value}", hypothesis), **self.reply)

        return answer

    def __call__(self, request):
        if sent_key(request) != KEY:
            return Fail(401, "invalid x-api-key")
        with self._lock:
            item = self.items.popleft() if self.items else self.good("another good idea")
        return item(request) if callable(item) else item


def sent_key(request) -> str | None:
    """The key as the SDK sent it: `x-api-key`, or `authorization: Bearer` in newer SDKs."""
    bearer = request.headers.get("authorization", "")
    return request.headers.get("x-api-key") or (bearer[len("Bearer "):] if bearer.startswith("Bearer ") else None)


def evo_llm(server, tmp_path, *args, key=KEY, check=True, resume=False):
    """`evo run` of the run "llm" in tmp_path: a new one from the probe seed, or `--resume`."""
    if resume:
        args = ("--resume", *args)
    else:
        cfg = tmp_path / "evo.toml"
        cfg.write_text(TOML)
        args = ("--operator", "llm", "--budget", 1, "--config", cfg, "--seed-file", SEED, *args)
    return evo("run", "--db", tmp_path / "archive.db", "--name", "llm", *args, cwd=tmp_path, timeout=300,
               check=check, env={"ANTHROPIC_API_KEY": key, "ANTHROPIC_BASE_URL": server.url})


def llm_calls(db) -> list[dict]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM llm_calls ORDER BY id")]
    finally:
        con.close()


def _git(db, *args) -> bytes:
    return subprocess.run(["git", "--git-dir", str(db.with_suffix(".git")), *args], capture_output=True,
                          check=True).stdout


def test_llm_run_trains_good_edits_records_every_failure_and_keeps_the_key_out(dataset, tmp_path):
    answers = Answers()
    answers.items.extend([
        "I would make the model deeper.", "Still only prose.",  # malformed, then its repair round
        edit("MATRIX_LR = 0.0999", "MATRIX_LR = 0.05"), edit("MATRIX_LR = 0.0999", "MATRIX_LR = 0.05"),
        edit("CUDA = h.is_cuda", "CUDA = h.is_cuda ("), edit("CUDA = h.is_cuda", "CUDA = h.is_cuda ("),
        edit("CUDA = h.is_cuda", "CUDA = h.is_cuda\ntorch.manual_seed(1)"),
        edit("CUDA = h.is_cuda", "CUDA = h.is_cuda\ntorch.manual_seed(1)"),
        Fail(529, "Overloaded", retry_after_ms=10), Fail(529, "Overloaded", retry_after_ms=10),
        Reply("too late", delay=5), Reply("too late", delay=5),  # llm_timeout 1.5 s, one retry
        Fail(429, "slow down", retry_after_ms=10), answers.good("after a 429"),  # the SDK retries once
    ])  # the good child fills the run's 2 trials (1 bootstrap), so nothing more is asked
    with MessagesServer(handler=answers) as server:
        proc = evo_llm(server, tmp_path, "--population", 4, "--trials", 2, "--data-dir", dataset.path)
        requests = list(server.requests)
    db = tmp_path / "archive.db"
    assert not answers.items, "the run ended before every scripted answer was asked for"
    assert all(sent_key(r) == KEY for r in requests)  # the coordinator has the key...
    assert all("temperature" not in r.body for r in requests)  # ...and sends no temperature unless set

    with Store.open(db, readonly=True) as store:
        run = store.get_run("llm")
        assert run.status == "finished"
        trials = store.trials(run.id, status="done")
        # every trial ran the seed's probe: none of them saw the key (or any key or token)
        assert len(trials) == 2 and all(t.outcome == "ok" for t in trials), [t.message for t in trials]
        inds = {i.id: i for i in store.individuals(run.id)}
        [seed] = [store.get_individual(i.id) for i in inds.values() if i.operator == "seed"]
        by_hyp = {i.hypothesis: i for i in inds.values()}
        # a good edit is a child that trained and entered the archive (a cell, its git commit)
        child = store.get_individual(by_hyp["after a 429"].id)
        assert child.operator == "llm" and child.status == "trained" and child.n_ok == 1
        assert child.parents == [seed.id] and child.cell is not None and PROBE in child.source
        assert child.source != seed.source and child.source.count("MATRIX_LR = ") == 1
        assert _git(db, "show", f"{child.commit}:train.py").decode() == child.source
        assert child.cell in {e.cell for e, _ in store.elites(run.id)}  # held by it or a better one
        rejected = sorted(i.rejected_reason for i in inds.values() if i.status == "rejected")
        spend = store.llm_spend(run.id)
    for needle in ("no `Hypothesis: ...` line", "does not occur", "fails validation: syntax error",
                   "the harness seeds everything", "LLM call failed (overloaded)", "LLM call failed (timeout)"):
        assert sum(needle in r for r in rejected) == 1, (needle, rejected)
    assert len(rejected) == 6 and sum("after one repair round" in r for r in rejected) == 4

    calls = llm_calls(db)
    [call] = [c for c in calls if c["individual_id"] == child.id]
    assert call["outcome"] == "ok" and call["role"] == "mutate" and call["error"] == ""
    assert call["input_tokens"] > 0 and call["output_tokens"] > 0 and call["cost_usd"] > 0
    assert call["cache_read_tokens"] > 0 and call["latency_s"] > 0  # the stable prefix came from the cache
    outcomes = collections.Counter(c["outcome"] for c in calls)
    assert outcomes == {"ok": 1, "malformed": 2, "search_not_found": 2, "parse_error": 2, "tampered": 2,
                        "overloaded": 1, "timeout": 1}
    assert [c["role"] for c in calls if c["outcome"] == "malformed"] == ["mutate", "repair"]
    assert all(c["individual_id"] in inds for c in calls)  # each call belongs to its proposal's row
    assert spend["calls"] == len(calls) and spend["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in calls))
    assert spend["cache_write_tokens"] > 0 and spend["cache_read_tokens"] > 0  # written once, then read
    # the SDK's own retries: the 429 was retried into a success, the 529 and the timeout once each
    retries = [int(r.headers.get("x-stainless-retry-count", 0)) for r in requests]
    assert sum(retries) == 3 and len(requests) == len(calls) + 3

    # the key is nowhere: not in the archive, the git store (objects and all), the run's directory
    # or the run's output
    secret = KEY.encode()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "archive.db" for p in files) and any("archive.git" in p.parts for p in files)
    for path in files:
        assert secret not in path.read_bytes(), path
    assert secret not in _git(db, "cat-file", "--batch-all-objects", "--batch")
    assert KEY not in proc.stdout + proc.stderr
    assert "rejected (llm)" in proc.stderr and "done" in proc.stderr  # the console writes to stderr
    # the summary: what the trained child cost (every call of the run, rejected proposals' included)
    assert (f"LLM: {len(calls)} calls (${spend['cost_usd']:.4f}) for 1 trained child: {len(calls)}.0 LLM calls "
            "per trained child; 6 proposals rejected (0 duplicates)") in " ".join(proc.stderr.split())


def test_max_llm_dollars_ends_the_run_and_caps_the_whole_run_across_resumes(dataset, tmp_path):
    # Each good answer costs about $0.11 (7000 output tokens at Sonnet prices); a call reserves
    # its worst case (~$0.14) first, so one call fits under $0.15 and a second is refused.
    answers = Answers(output_tokens=7000)
    db = tmp_path / "archive.db"
    with MessagesServer(handler=answers) as server:
        proc = evo_llm(server, tmp_path, "--population", 8, "--trials", 20, "--max-llm-dollars", 0.15,
                       "--temperature", 0.5, "--data-dir", dataset.path)
        requests = list(server.requests)
        calls = llm_calls(db)
        # Resumed with a higher cap, the run counts what it already spent (~$0.11): one more call
        # fits under $0.30 (two would, were the count started afresh).
        again = evo_llm(server, tmp_path, "--max-llm-dollars", 0.30, resume=True)
        more_requests = server.requests[len(requests):]
    ok = [c for c in calls if c["outcome"] == "ok"]
    assert len(ok) == len(requests) == 1, "the model was called past the budget"
    assert all(r.body.get("temperature") == 0.5 for r in requests)
    refused = [c for c in calls if c["outcome"] == "budget"]
    assert refused and all(c["cost_usd"] == 0 and "budget of $0.15 is spent" in c["error"] for c in refused)
    assert "the LLM budget is spent" in proc.stderr and "run ended after 2 trials" in proc.stderr
    assert "--max-llm-dollars" in proc.stderr
    first_spend = sum(c["cost_usd"] for c in ok)
    assert 0.1 < first_spend <= 0.15

    assert len(more_requests) == 1 and more_requests[0].body.get("temperature") == 0.5
    assert "run ended after 3 trials" in again.stderr
    with Store.open(db, readonly=True) as store:
        run = store.get_run("llm")
        spend = store.llm_spend(run.id)
        assert 0.2 < spend["cost_usd"] <= 0.30
        assert run.status == "finished"
        trials = store.trials(run.id, status="done")
        # the seed's noise trial and the two children the budget paid for, each trained once
        assert len(trials) == 3 and all(t.outcome == "ok" for t in trials)
        children = [i for i in store.individuals(run.id) if i.operator == "llm" and i.status != "rejected"]
        assert len(children) == 2 and all(c.n_ok == 1 for c in children)
        assert all("budget" in i.rejected_reason for i in store.individuals(run.id) if i.status == "rejected")


def test_a_key_the_api_refuses_stops_the_run_with_one_line_instead_of_proposing_forever(dataset, tmp_path):
    wrong = "sk-ant-revoked-0000111122223333"
    db = tmp_path / "archive.db"
    with MessagesServer(handler=Answers()) as server:
        # The proposals start with the bootstrap; they all fail at once, so the seed's first noise
        # trial finishes (nothing is cut off) and the second is never started.
        proc = evo_llm(server, tmp_path, "--trials", 3, "--noise-seeds", 2, "--data-dir", dataset.path, key=wrong,
                       check=False)
        n_requests = len(server.requests)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    [error] = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error")]
    assert "the LLM failed 8 proposals in a row" in error and "401" in error
    assert "evo run --resume --name llm" in error
    assert wrong not in proc.stderr + proc.stdout
    calls = llm_calls(db)
    # the 8th failure stops proposing (one already queued behind it would still be answered and kept)
    assert n_requests == len(calls) in (8, 9) and all(c["outcome"] == "api_error" for c in calls)
    with Store.open(db, readonly=True) as store:
        run = store.get_run("llm")
        assert run.status == "stopped" and run.noise_sd is None  # --resume finishes the bootstrap
        trials = store.trials(run.id)
        assert len(trials) == 1 and trials[0].status == "done" and trials[0].outcome == "ok"


def test_ctrl_c_does_not_wait_for_the_llm_and_resume_trains_the_children_already_paid_for(dataset, tmp_path):
    # The first proposal is answered at once; the second (queued behind it: one proposal thread)
    # would take a minute. Ctrl-C comes while the seed's trial runs and that call is in flight.
    answers = Answers()
    slow = answers.good("never answered in time")
    answers.items.extend([answers.good("made during the bootstrap"),
                          lambda request: dataclasses.replace(slow(request), delay=60)])
    db = tmp_path / "archive.db"
    with MessagesServer(handler=answers) as server:
        cfg = tmp_path / "evo.toml"
        cfg.write_text(TOML)
        args = ["run", "--db", db, "--name", "llm", "--operator", "llm", "--budget", 1, "--config", cfg,
                "--seed-file", SEED, "--trials", 3, "--data-dir", dataset.path]
        proc = start_evo(*args, cwd=tmp_path, env={"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": server.url})
        deadline = time.monotonic() + 120
        while len(server.requests) < 2 or server.in_flight == 0:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)
        stopped_at = time.monotonic()
        _, err = proc.communicate(timeout=60)
        waited = time.monotonic() - stopped_at
        assert proc.returncode == 130 and "evo run --resume" in err, err
        assert waited < 15, f"Ctrl-C waited {waited:.0f}s for the LLM call in flight"
        n_requests = len(server.requests)
        with Store.open(db, readonly=True) as store:
            run = store.get_run("llm")
            assert run.status == "stopped" and not store.running_trials(run.id)
            children = [i for i in store.individuals(run.id) if i.operator == "llm"]
            assert len(children) == 1, ([c.hypothesis for c in children], f"stopped {waited:.1f}s after Ctrl-C")
            [child] = children
            assert child.hypothesis == "made during the bootstrap" and child.n_trials == 0
        # the stop condition may change on resume: the seed's trial and the child, no new proposal
        evo_llm(server, tmp_path, "--trials", 2, resume=True)
        assert len(server.requests) == n_requests
    with Store.open(db, readonly=True) as store:
        run = store.get_run("llm")
        assert run.status == "finished"
        trials = store.trials(run.id)
        assert len(trials) == 2 and all(t.status == "done" and t.outcome == "ok" for t in trials)
        [seed] = [i for i in store.individuals(run.id) if i.operator == "seed"]
        assert sorted(t.individual_id for t in trials) == sorted([seed.id, child.id])  # each once
    assert [c["outcome"] for c in llm_calls(db)] == ["ok"]


def test_llm_operator_without_a_key_says_how_to_set_one(tmp_path):
    proc = evo("run", "--db", tmp_path / "archive.db", "--operator", "llm", "--trials", 1, cwd=tmp_path,
               check=False, env={"ANTHROPIC_API_KEY": ""})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    [line] = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "ANTHROPIC_API_KEY" in line and "export" in line and "--operator offline" in line
    assert not (tmp_path / "archive.db").exists()
