"""autoresearch under evo: its `prepare` interface in a sealed trial, FA3 on SDPA, its program.md
with evo's contract, and its night of results imported as a run that `--seed-from` re-trains.

Real parts throughout: `evo trial` / `evo run` / `evo import` in subprocesses, real CPU training
of tests/fixtures/autoresearch/train.py (written for these tests in autoresearch's style), the
loopback Messages server for the LLM, git repositories built commit by commit.
"""

from __future__ import annotations

import math
import random
import re
import sqlite3

import pytest
import torch

from evo.operators.offline import OfflineOperator, read_constants
from evo.operators.validate import validate_child
from population.store import Store
from tests.conftest import VARIANTS, evo
from tests.support.autoresearch_repo import FIXTURE, build_night, git
from tests.support.messages_server import MessagesServer, Reply
from trainer.runner import run_trial
from trainer.sdpa_attention import flash_attn_func

PROGRAM = FIXTURE.with_name("program.md")
TOML = """
eval_tokens = 4096
eval_seq_len = 64
noise_seeds = 1
champion_seeds = 1
crossover_rate = 0.0
llm_concurrency = 1
"""
KEY = "sk-ant-evotest-autoresearch-0000000000000000"


def naive_attention(q, k, v, causal, window):
    """Softmax attention written out, (B, T, H, D), FA3's window rule (bottom-right aligned)."""
    B, T, H, D = q.shape
    S, H_kv = k.shape[1], k.shape[2]
    k, v = k.repeat_interleave(H // H_kv, dim=2), v.repeat_interleave(H // H_kv, dim=2)
    scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(D)
    left, right = window
    if causal:
        right = 0
    i = torch.arange(T)[:, None] + (S - T)
    j = torch.arange(S)[None, :]
    allowed = torch.ones(T, S, dtype=torch.bool)
    if left >= 0:
        allowed &= j >= i - left
    if right >= 0:
        allowed &= j <= i + right
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v)


@pytest.mark.parametrize("causal, window, heads", [
    (True, (-1, -1), (4, 4)), (True, (5, 0), (4, 4)), (True, (5, 0), (4, 2)), (True, (64, 0), (4, 1)),
    (False, (3, 2), (4, 4)), (False, (-1, -1), (2, 2)),
])
def test_flash_attn_func_on_sdpa_matches_attention_written_out(causal, window, heads):
    torch.manual_seed(0)
    q = torch.randn(2, 17, heads[0], 8)
    k, v = torch.randn(2, 17, heads[1], 8), torch.randn(2, 17, heads[1], 8)
    out = flash_attn_func(q, k, v, causal=causal, window_size=window)
    assert out.shape == q.shape
    torch.testing.assert_close(out, naive_attention(q, k, v, causal, window), atol=1e-5, rtol=1e-5)


def test_a_sliding_window_really_cuts_and_exports_as_standard_ops():
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 12, 2, 8) for _ in range(3))
    full = flash_attn_func(q, k, v, causal=True)
    windowed = flash_attn_func(q, k, v, causal=True, window_size=(3, 0))
    assert torch.allclose(full[:, :4], windowed[:, :4], atol=1e-6)  # the first rows see < 4 keys anyway
    assert not torch.allclose(full[:, 4:], windowed[:, 4:], atol=1e-3)

    class Attend(torch.nn.Module):
        def forward(self, x):
            return flash_attn_func(x, x, x, causal=True, window_size=(3, 0))

    ep = torch.export.export(Attend(), (q,), strict=False)
    assert torch.allclose(ep.module()(q), flash_attn_func(q, q, q, causal=True, window_size=(3, 0)), atol=1e-6)
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert any("scaled_dot_product" in op for op in ops), ops


def test_autoresearch_train_py_passes_child_validation_and_its_escapes_do_not():
    source = FIXTURE.read_text()
    assert validate_child(source) is None
    assert "evaluate_bpb" in validate_child(source.replace("val_bpb = evaluate_bpb(model, tokenizer, "
                                                           "DEVICE_BATCH_SIZE)", "val_bpb = 1.0"))
    reach = (VARIANTS / "autoresearch_reach_val.py").read_text()
    assert "trainer" in validate_child(reach)  # its trainer imports are refused before any trial
    assert "internals" in validate_child(source.replace("import math\n", "import math\nfrom prepare import _h\n"))


def test_evo_trial_trains_an_autoresearch_train_py_and_evaluate_bpb_returns_the_scorers_number(dataset, tmp_path):
    keep = tmp_path / "trial"
    r = evo("trial", FIXTURE, "--budget", 2, "--data-dir", dataset.path, "--keep-dir", keep, cwd=tmp_path,
            check=False, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = dict(re.findall(r"^(\w+):\s+(.*)$", r.stdout, re.M))
    assert summary["outcome"] == "ok"
    measured = float(summary["val_bpb"])
    assert 0 < measured < math.log2(dataset.vocab_size) * 1.5
    assert summary["attention"].startswith("sdpa")
    assert int(summary["num_steps"]) > 0 and summary["tokens_per_sec"] != "-"  # the loader's account
    printed = re.search(r"^val_bpb:\s+(\S+)$", (keep / "stdout.log").read_text(), re.M).group(1)
    assert printed == f"{measured:.6f}"  # what the variant printed is what the scorer measured


def test_an_autoresearch_variant_cannot_reach_the_validation_split(dataset, requires_sandbox, tmp_path):
    """Past the validator (the runner does not need it): make_dataloader "val", the val token
    file by the path in its own config, trainer internals, the harness behind prepare."""
    result = run_trial(VARIANTS / "autoresearch_reach_val.py", dataset_dir=dataset.path, budget=2, sandbox="strict",
                       eval_tokens=4096, eval_seq_len=64, workdir=tmp_path)
    assert result.sandboxed and result.outcome == "ok", (result.outcome, result.message, result.stderr_tail)
    out = (tmp_path / "stdout.log").read_text()
    assert "LEAK" not in out, out
    assert "validation split belongs to evo's scorer" in out
    assert "no val.bin" in out and "no Dataset.val_tokens" in out and "harness has no val" in out
    assert f"val_bpb: {result.val_bpb:.6f}" in out  # its one score is the scorer's, after the hand-over


def test_evo_run_from_an_autoresearch_seed_with_their_program_md(dataset, tmp_path):
    """A short `evo run --operator llm --seed-file train.py --program program.md`: the prompt holds
    their program and then evo's contract for the prepare interface, and the LLM's child (an
    autoresearch-style file) passes validation, trains and is scored."""
    cfg = tmp_path / "evo.toml"
    cfg.write_text(TOML)

    line = re.search(r"^MATRIX_LR = .*$", FIXTURE.read_text(), re.M).group(0)

    def answer(request):
        return Reply(f"Hypothesis: a higher learning rate learns more in the budget\n\n<<<<<<< SEARCH\n{line}\n"
                     f"=======\n{line.replace('0.01', '0.02')}\n>>>>>>> REPLACE\n")

    with MessagesServer(handler=answer) as server:
        evo("run", "--db", tmp_path / "archive.db", "--name", "ar", "--operator", "llm", "--budget", 2,
            "--trials", 2, "--population", 1, "--config", cfg, "--seed-file", FIXTURE, "--program", PROGRAM,
            "--data-dir", dataset.path, cwd=tmp_path, timeout=150,
            env={"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": server.url})
        requests = list(server.requests)
    assert requests
    system = "\n".join(b["text"] for b in requests[0].system_blocks)
    program_at = system.index("ZEBRA-RESEARCH-HINT")
    contract_at = system.index("`evaluate_bpb(model, tokenizer, batch_size)` last")
    assert program_at < contract_at < system.index("a program's own loop (git, results.tsv")
    assert "Hypothesis" in system[contract_at:]  # the answer format follows, whatever the program said
    with Store.open(tmp_path / "archive.db", readonly=True) as store:
        run = store.get_run("ar")
        inds = store.individuals(run.id)
        trials = store.trials(run.id)
    assert [t.outcome for t in trials] == ["ok", "ok"], [(t.outcome, t.message) for t in trials]
    child = next(i for i in inds if i.operator == "llm")
    assert child.n_ok == 1 and child.val_bpb_mean is not None and "learning rate" in child.hypothesis


def test_import_autoresearch_gives_the_branch_as_lineage_and_seed_from_retrains(dataset, fast_toml, tmp_path):
    night = build_night(tmp_path)
    db = tmp_path / "archive.db"
    r = evo("import", "autoresearch", night.repo, "--db", db, cwd=tmp_path)
    assert "3 kept, 1 discarded, 1 crashed" in r.stdout and "deadbee" in r.stdout

    with Store.open(db, readonly=True) as store:
        run = store.get_run("autoresearch-mar5")
        inds = store.individuals(run.id)
        assert store.trials(run.id) == [] and all(i.status == "imported" and i.val_bpb_mean is None for i in inds)
        rows = run.config["imported"]["rows"]
        by_commit = {row["commit"]: store.get_individual(int(i)) for i, row in rows.items()}
    tip = by_commit[night.kept[-1]]
    assert {c: by_commit[c].source == git(night.repo, "show", f"{c}:train.py") + "\n" for c in by_commit} \
        == dict.fromkeys(by_commit, True)
    assert by_commit[night.discarded].parent1_id == by_commit[night.kept[1]].id  # reset back to the LR commit
    assert rows[str(by_commit[night.crashed].id)]["val_bpb"] is None

    lineage = evo("lineage", tip.id, "--db", db, cwd=tmp_path).stdout
    steps = [ln for ln in lineage.splitlines() if "autoresearch:" in ln]
    assert [re.search(r"imported (\w+) keep", s).group(1) for s in steps] == night.kept
    assert [s.split("autoresearch: ")[1].strip() for s in steps] == ["baseline", "increase LR to 0.02",
                                                                       "halve the device batch"]
    shown = evo("show", by_commit[night.crashed].id, "--db", db, cwd=tmp_path).stdout
    assert re.search(rf"imported +val_bpb -, crash, commit {night.crashed}", shown), shown
    listing = evo("runs", "--db", db, cwd=tmp_path).stdout
    assert re.search(r"autoresearch-mar5 .* 0 +3\.0100 imported", listing), listing

    cfg = tmp_path / "evo.toml"
    cfg.write_text(fast_toml.read_text().replace("noise_seeds = 2", "noise_seeds = 1"))
    evo("run", "--db", db, "--name", "again", "--seed-from", f"{db}:autoresearch-mar5", "--top", 2,
        "--operator", "offline", "--budget", 2, "--trials", 2, "--population", 1, "--config", cfg,
        "--data-dir", dataset.path, cwd=tmp_path, timeout=300)
    con = sqlite3.connect(db)
    try:
        order = con.execute("SELECT i.operator, i.hypothesis, t.outcome, t.val_bpb FROM trials t JOIN individuals i "
                            "ON i.id = t.individual_id JOIN runs r ON r.id = t.run_id WHERE r.name = 'again' "
                            "ORDER BY t.id").fetchall()
    finally:
        con.close()
    assert [o for o, *_ in order[:2]] == ["seed-from", "seed-from"], order  # re-trained before any child
    assert "halve the device batch" in order[0][1] and "imported 3.0100" in order[0][1]
    assert all(outcome == "ok" and bpb not in (3.01, 3.05) for _, _, outcome, bpb in order[:2])
    with Store.open(db, readonly=True) as store:
        assert store.trials(store.get_run("autoresearch-mar5").id) == []  # the record stays a record
        again = store.get_run("again")
        placed = {ind.operator for _, ind in store.elites(again.id)}
        assert placed and all(ind.n_ok for _, ind in store.elites(again.id)), placed


def test_import_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path):
    db = tmp_path / "archive.db"
    plain = tmp_path / "plain"
    plain.mkdir()
    r = evo("import", "autoresearch", plain, "--db", db, cwd=tmp_path, check=False)
    assert r.returncode == 1 and "not a git repository" in r.stderr and "Traceback" not in r.stderr
    night = build_night(tmp_path)
    (night.repo / "results.tsv").write_text("commit,val_bpb,memory_gb,status,description\nabc,1,1,keep,x\n")
    r = evo("import", "autoresearch", night.repo, "--db", db, cwd=tmp_path, check=False)
    assert r.returncode == 1 and "results.tsv: line 1 should be the header" in r.stderr
    (night.repo / "results.tsv").write_text("commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
                                            f"{night.kept[0]}\t1.0\t1.0\tmaybe\tx\n")
    r = evo("import", "autoresearch", night.repo, "--db", db, cwd=tmp_path, check=False)
    assert r.returncode == 1 and "line 2: status 'maybe'" in r.stderr
    if db.exists():
        with Store.open(db, readonly=True) as store:
            assert store.list_runs() == []


AUTORESEARCH_CONSTANTS = '''
# Hyperparameters, as autoresearch's train.py lays them out (written for this test)
ASPECT_RATIO = 64       # model_dim = depth * ASPECT_RATIO
HEAD_DIM = 128          # target head dimension for attention
WINDOW_PATTERN = "SSSL" # sliding window pattern: L=full, S=half context
TOTAL_BATCH_SIZE = 2**19 # ~524K tokens per optimizer step
EMBEDDING_LR = 0.6
UNEMBEDDING_LR = 0.004
MATRIX_LR = 0.04
SCALAR_LR = 0.5
WEIGHT_DECAY = 0.2
ADAM_BETAS = (0.8, 0.95)
WARMUP_RATIO = 0.0
WARMDOWN_RATIO = 0.5
FINAL_LR_FRAC = 0.0
DEPTH = 8
DEVICE_BATCH_SIZE = 128
H100_BF16_PEAK_FLOPS = 989.5e12
from prepare import evaluate_bpb
evaluate_bpb(None)
'''


def test_offline_operator_mutates_autoresearchs_constant_block_and_keeps_it_valid():
    consts = read_constants(AUTORESEARCH_CONSTANTS, "cuda")
    assert {"DEPTH", "TOTAL_BATCH_SIZE", "MATRIX_LR", "WINDOW_PATTERN", "ADAM_BETAS", "DEVICE_BATCH_SIZE"} <= set(consts)
    assert "H100_BF16_PEAK_FLOPS" not in consts  # a reporting constant, not a hyperparameter
    op, rng = OfflineOperator("cuda"), random.Random(3)
    from evo.operators.base import ArchiveContext, ParentInfo

    seen = set()
    for _ in range(300):
        p = op.mutate(ParentInfo(1, AUTORESEARCH_CONSTANTS), ArchiveContext(), rng)
        assert p.rejected is None, p.rejected
        child = read_constants(p.source, "cuda")
        seen.update(n for n in child if child[n].value != consts[n].value)
        total, device = child["TOTAL_BATCH_SIZE"].value, child["DEVICE_BATCH_SIZE"].value
        assert total % (device * 2048) == 0, p.hypothesis  # autoresearch asserts this at start
        assert re.fullmatch(r"2\*\*\d+", child["TOTAL_BATCH_SIZE"].text)
        assert set(child["WINDOW_PATTERN"].value) <= {"S", "L"} and child["WINDOW_PATTERN"].text[0] == '"'
        assert all(0 < b < 1 for b in child["ADAM_BETAS"].value)
        assert validate_child(p.source) is None
    assert {"TOTAL_BATCH_SIZE", "WINDOW_PATTERN", "ADAM_BETAS", "DEPTH", "MATRIX_LR", "DEVICE_BATCH_SIZE"} <= seen


PLANTED_HANDOVER = '''
import json, os, time
from trainer import trial_config
slot = os.path.dirname(json.load(open(os.environ[trial_config.CONFIG_ENV]))["artifact_path"])
os.symlink(os.path.join(json.load(open(os.environ[trial_config.CONFIG_ENV]))["dataset_dir"], "train.bin"),
           os.path.join(slot, trial_config.ARTIFACT_NAME))
open(os.path.join(slot, trial_config.HANDOVER_NAME), "w").write("{}")
for _ in range(500):
    if os.path.exists(os.path.join(slot, trial_config.SCORE_NAME)):
        print("answer", open(os.path.join(slot, trial_config.SCORE_NAME)).read())
        break
    time.sleep(0.02)
'''


def test_a_planted_hand_over_is_not_scored(dataset, tmp_path):
    """A hand-over marker next to a symlink instead of a model: the runner copies only a regular
    file of one link, so nothing is scored and the trial's answer says so."""
    result = run_trial(PLANTED_HANDOVER, dataset_dir=dataset.path, budget=2, eval_tokens=4096, eval_seq_len=64,
                       workdir=tmp_path)
    assert result.outcome == "no_result" and result.val_bpb is None, (result.outcome, result.message)
    answer = (tmp_path / "stdout.log").read_text()
    assert '"outcome": "no_result"' in answer and '"val_bpb": null' in answer
