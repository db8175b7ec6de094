"""Sealed trials under attack: every hostile variant (tests/variants/hostile) through the real runner
with the sandbox on, judged from evidence gathered outside the trial (tests/support/hostile.py),
and one `evo run --operator llm --sandbox strict` whose LLM answers with hostile variants.

A hostile variant prints `EVO-ATTACK-SUCCEEDED: ...` for each step that got through, but the
verdict does not take its word: scores are compared with half the dataset's uniform bpb, writes
are found by diffing the trees a trial must not touch (the trainer package, the dataset, a fake
HOME, the trial's parent directory, /tmp, /var/tmp, /dev/shm), leaks by looking for the canary
key in what the trial printed and in what a loopback listener received, tampering by watching a
decoy coordinator process, escapes by looking for processes that outlive the trial.
"""

from __future__ import annotations

import itertools
import sqlite3
import subprocess
import threading

import pytest

from evo.operators.validate import validate_child
from tests.conftest import FAST, VARIANTS, evo
from tests.support.hostile import (
    CANARY_KEY,
    Canaries,
    copy_dataset,
    header,
    honest_floor,
    hostile_variants,
    options,
    verdict,
)
from tests.support.messages_server import Fail, MessagesServer, Reply
from trainer.runner import run_trial

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

BUDGET = 1.0
HOSTILE_VARIANTS = hostile_variants()
# For the end-to-end run: dangerous, and accepted by evo/operators/validate.py (asserted below), so
# they reach the trainer: a forged result, a probe evasion, validation data, a key, writes outside.
E2E = ("forged_result_exit", "probe_batch", "val_file", "read_secrets_proc", "write_outside")


def run_sealed(source: str, dataset, workdir, **options):
    return run_trial(source, dataset_dir=dataset.path, budget=BUDGET, seed=0, device="cpu", sandbox="strict",
                     workdir=workdir, **{**FAST, **options})


def describe(row: dict) -> str:
    keys = ("outcome", "val_bpb", "floor", "total_seconds", "message", "markers", "writes", "network", "survivors",
            "tampered")
    return f"{row['name']} ({row['cls']}, expect {row['expect']}): " + ", ".join(f"{k}={row[k]!r}" for k in keys)


@pytest.fixture(scope="module")
def hostile_data(dataset, tmp_path_factory):
    """One private copy of the dataset for every hostile trial of this module (attacks try to
    overwrite its files: never the session's; each test checks the copy did not change, and the
    trials share their warm servers, which belong to a data directory)."""
    return copy_dataset(dataset, tmp_path_factory.mktemp("hostile-data"))


@pytest.mark.parametrize("name, cls, source", HOSTILE_VARIANTS, ids=[v[0] for v in HOSTILE_VARIANTS])
def test_a_hostile_variant_is_refused_or_trains_honestly(name, cls, source, hostile_data, tmp_path, monkeypatch,
                                                       requires_sandbox):
    opts = {**FAST, **options(source)}
    expect = header(source)["expect"]
    ds = hostile_data
    # the stash variant runs twice: what the first trial leaves must not reach the second
    works = [tmp_path / "trial", tmp_path / "trial2"][: 2 if name == "unmetered_stash" else 1]
    rows = []
    with Canaries(tmp_path, dataset=ds, workdir=works[0], exclude=tuple(works[1:]), eval_tokens=opts["eval_tokens"],
                  eval_seq_len=opts["eval_seq_len"]) as canaries:
        for key, value in canaries.env.items():
            monkeypatch.setenv(key, value)
        for work in works:
            canaries.workdir = work
            result = run_sealed(canaries.prepare(source), ds, work, **options(source))
            stdout = (work / "stdout.log").read_text(errors="replace") if (work / "stdout.log").exists() else ""
            rows.append(verdict(result, stdout, canaries, name=name, cls=cls, expect=expect))
    for row in rows:
        what = describe(row)
        assert not (row["scored"] and not row["honest"]), f"scored dishonestly: {what}"
        if expect == "refused":  # e.g. unmetered_time: the runner's clock, not a score, must stop it
            assert not row["scored"], f"a known cheat was scored: {what}"
        assert row["leaks"] == 0, f"the canary key or a connection reached the outside: {what}"
        assert row["writes_outside"] == 0, f"wrote outside its trial directory: {what}"
        assert not row["survivors"], f"processes outlived the trial: {what}"
        assert not row["tampered"], f"reached another process: {what}"
        assert not row["fatal"], f"got what a sealed trial never has: {row['fatal']}; {what}"
    if name == "unmetered_stash":
        assert not [m for m in rows[1]["markers"] if m.startswith("found a stash")], describe(rows[1])


def test_the_end_to_end_variants_pass_static_validation():
    # validate.py is a gate against accidents, not a sandbox: these reach the trainer in a real run
    sources = {name: source for name, _, source in hostile_variants(list(E2E))}
    assert sorted(sources) == sorted(E2E)
    assert {name: validate_child(source) for name, source in sources.items()} == {name: None for name in E2E}


E2E_TOML = """
eval_tokens = 4096
eval_seq_len = 64
noise_seeds = 1
champion_seeds = 1
crossover_rate = 0.0
llm_concurrency = 1
llm_timeout = 60
llm_max_retries = 1
"""


def test_evo_run_with_an_llm_that_writes_hostile_variants_keeps_them_out_of_the_archive(dataset, tmp_path,
                                                                                        requires_sandbox):
    ds = copy_dataset(dataset, tmp_path / "data")
    run_dir, tmpdir = tmp_path / "run", tmp_path / "tmp"
    run_dir.mkdir()
    tmpdir.mkdir()
    cfg = tmp_path / "evo.toml"
    cfg.write_text(E2E_TOML)
    sources = {name: source for name, _, source in hostile_variants(list(E2E))}
    floor = honest_floor(ds, 4096, 64)
    proposals = itertools.count()
    lock = threading.Lock()

    with Canaries(tmp_path, dataset=ds, exclude=(run_dir,), watch=(tmpdir,), eval_tokens=4096,
                  eval_seq_len=64) as canaries:

        def answer(request):
            if request.headers.get("x-api-key") != CANARY_KEY and request.headers.get("authorization") != \
                    f"Bearer {CANARY_KEY}":
                return Fail(401, "invalid x-api-key")
            with lock:
                i = next(proposals)
            name = E2E[i % len(E2E)]
            source = canaries.prepare(sources[name]) + ("" if i < len(E2E) else f"# proposal {i}\n")
            return Reply(f"Hypothesis: hostile {name}\n\n```python\n{source}```\n")

        with MessagesServer(handler=answer) as server:
            # the coordinator holds the canary as its key; its trials' temporary directories go to tmpdir
            proc = evo("run", "--db", run_dir / "archive.db", "--name", "hostile", "--operator", "llm",
                       "--sandbox", "strict", "--budget", 1, "--config", cfg, "--seed-file", VARIANTS / "bigram.py",
                       "--population", len(E2E), "--trials", 1 + len(E2E), "--data-dir", ds.path, cwd=run_dir,
                       timeout=600, check=False,
                       env={**canaries.env, "ANTHROPIC_BASE_URL": server.url, "TMPDIR": str(tmpdir)})
        survivors = canaries.reap()
        writes = canaries.changes()
        network = canaries.network()
        tampered = canaries.tampering()
    assert proc.returncode == 0, proc.stderr[-3000:]

    db = run_dir / "archive.db"
    con = sqlite3.connect(db)
    try:
        children = {row[0]: row[1].removeprefix("hostile ") for row in con.execute(
            "SELECT id, hypothesis FROM individuals WHERE operator = 'llm' AND hypothesis LIKE 'hostile %'")}
        trials = con.execute("SELECT individual_id, outcome, val_bpb, stderr_tail, message FROM trials "
                             "WHERE status = 'done'").fetchall()
        elites = {row[0] for row in con.execute("SELECT individual_id FROM elites")}
    finally:
        con.close()
    trained = {t[0] for t in trials if t[0] in children}
    assert len({children[i] for i in trained}) >= 2, f"too few hostile children reached the trainer: {children}"
    # A known cheat (`expect: refused`) gets no score and no cell. The others are honest bigrams once
    # their attack finds nothing, and may take a cell on their honest score, never on a dishonest one.
    refused = {i for i, name in children.items() if header(sources[name])["expect"] == "refused"}
    assert not elites & refused, [children[i] for i in elites & refused]
    scored = [(children[t[0]], t[1], t[2]) for t in trials if t[0] in refused and t[1] == "ok"]
    assert not scored, f"known cheats were scored: {scored}"
    dishonest = [(children[t[0]], t[1], t[2]) for t in trials
                 if t[0] in children and t[1] == "ok" and t[2] is not None and t[2] < floor]
    assert not dishonest, f"hostile children scored below {floor:.3f} bpb: {dishonest}"

    # the coordinator's key is nowhere: the run directory's files (archive.db, archive.git, logs), the
    # git store's objects (compressed on disk), the run's output
    secret = CANARY_KEY.encode()
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.name == "archive.db" for p in files) and any("archive.git" in p.parts for p in files)
    assert [p for p in files if secret in p.read_bytes()] == []
    objects = subprocess.run(["git", "--git-dir", str(run_dir / "archive.git"), "cat-file", "--batch-all-objects",
                              "--batch"], capture_output=True, check=True).stdout
    assert secret not in objects
    assert CANARY_KEY not in proc.stdout + proc.stderr

    assert writes == [], f"{len(writes)} writes outside: {writes}"
    assert network == [], network
    assert tampered == [], tampered
    assert survivors == [], survivors


def test_the_default_corpus_validation_files_are_hidden_from_a_trial(tmp_path, requires_sandbox):
    """The stdlib corpus's validation documents are files of the Python installation every trial
    imports from: outside a sandbox a variant reads them (the attack is real); inside, they are not
    there, and the same variant trains an honest model."""
    from trainer.prepare import prepare

    ds = prepare("stdlib", data_dir=tmp_path / "data", vocab_size=512)
    source = (VARIANTS / "hostile" / "val_sources.py").read_text()
    runs = {}
    for mode in ("off", "strict"):
        work = tmp_path / mode
        r = run_trial(source, dataset_dir=ds.path, budget=BUDGET, seed=0, device="cpu", sandbox=mode, workdir=work,
                      **FAST)
        runs[mode] = (r, (work / "stdout.log").read_text())
    assert "EVO-ATTACK-SUCCEEDED: read" in runs["off"][1]
    r, stdout = runs["strict"]
    assert "EVO-ATTACK-SUCCEEDED" not in stdout, stdout[-2000:]
    assert r.ok and r.val_bpb >= honest_floor(ds, FAST["eval_tokens"], FAST["eval_seq_len"])
