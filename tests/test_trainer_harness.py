"""The scorer's metric and its guard, and what the harness gives a variant, in-process on the tiny
dataset: models are exported and handed over exactly as h.finish does, then scored."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer import artifact
from trainer.harness import Harness, TrialConfig
from trainer.scorer import score
from trainer.trial_config import eval_plan


class Uniform(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, idx):
        return torch.zeros(*idx.shape, self.vocab) + 0 * self.dummy


class Peek(Uniform):
    def forward(self, idx):
        return 5.0 * F.one_hot(torch.roll(idx, -1, dims=1), self.vocab).float()


class Causal(Uniform):
    """Honest and input-dependent: a running mean of the embeddings so far."""

    def __init__(self, vocab):
        super().__init__(vocab)
        self.emb = nn.Embedding(vocab, vocab)

    def forward(self, idx):
        e = self.emb(idx)
        return e.cumsum(1) / torch.arange(1, idx.size(1) + 1)[None, :, None]


class Pooling(Uniform):
    """Leaks the future subtly: every position sees the mean of the whole sequence."""

    def forward(self, idx):
        emb = F.one_hot(idx, self.vocab).float()
        return emb + emb.mean(dim=1, keepdim=True)


def make(dataset, **kw) -> Harness:
    return Harness(TrialConfig(dataset_dir=str(dataset.path), device="cpu", **kw))


def scored(dataset, tmp_path, model, eval_tokens=2048, eval_seq_len=64, **kw) -> dict:
    """Hand `model` over as h.finish does (export at the evaluation's shape, save) and score it."""
    plan = eval_plan(eval_tokens, eval_seq_len, len(dataset.val_tokens), cuda=False)
    example = torch.zeros(plan.batch, plan.seq_len, dtype=torch.long)
    path = tmp_path / "model.evo"
    artifact.save(artifact.export(model.eval(), example), path)
    return score(path, dataset.path, plan, "cpu", **kw)


def test_uniform_model_bpb_equals_closed_form(dataset, tmp_path):
    r = scored(dataset, tmp_path, Uniform(dataset.vocab_size))
    n = (2048 // 64) * 64
    assert r["outcome"] == "ok" and r["val_bpb"] == pytest.approx(dataset.uniform_bpb(n), rel=1e-6)
    # and the closed form itself: log2(V) per counted token over the bytes they carry
    y = np.asarray(dataset.val_tokens[1 : n + 1]).astype(np.int64)
    b = dataset.token_bytes[y]
    assert r["val_bpb"] == pytest.approx(math.log2(dataset.vocab_size) * (b > 0).sum() / b.sum(), rel=1e-6)
    assert r["params"] == 1  # counted by the scorer from the graph's weights


def test_bos_tokens_carry_no_bytes(dataset):
    assert dataset.token_bytes[dataset.bos_id] == 0
    assert (dataset.token_bytes[: dataset.bos_id] > 0).all()


def test_causal_model_passes_the_check_exactly(dataset, tmp_path):
    r = scored(dataset, tmp_path, Causal(dataset.vocab_size))
    assert r["outcome"] == "ok" and r["check"]["max_change"] == 0.0 and r["check"]["rows"] >= 16


class LongOnly(Uniform):
    """Peeks only at sequences longer than a short probe's 64 tokens: the old check's blind spot."""

    def forward(self, idx):
        base = super().forward(idx)
        if idx.size(1) > 64:  # a shape, not data: export keeps this branch
            return base + 5.0 * F.one_hot(torch.roll(idx, -1, dims=1), self.vocab).float()
        return base


class Sparse(Uniform):
    """Peeks at every 7th position only."""

    def forward(self, idx):
        peek = 5.0 * F.one_hot(torch.roll(idx, -1, dims=1), self.vocab).float()
        mask = (torch.arange(idx.size(1)) % 7 == 0).float()[None, :, None]
        return super().forward(idx) + peek * mask


class WidePeek(Uniform):
    """Peeks, and adds a huge column past the vocabulary (a tolerance scaled by |logits| would
    grow with it)."""

    def forward(self, idx):
        peek = 30.0 * F.one_hot(torch.roll(idx, -1, dims=1), self.vocab).float()
        return torch.cat([peek, torch.full((*idx.shape, 1), -1e30)], dim=-1)


class NextRow(Uniform):
    """Its last position reads the first token of the next row of the batch (the next text, when
    rows are consecutive slices)."""

    def forward(self, idx):
        nxt = 30.0 * F.one_hot(torch.roll(idx[:, 0], -1, dims=0), self.vocab).float()[:, None]
        base = super().forward(idx)
        return torch.cat([base[:, :-1], base[:, -1:] + nxt], dim=1)


class Counter(Uniform):
    """Counts its calls in a buffer: could behave one way under a check and another in the evaluation."""

    def __init__(self, vocab):
        super().__init__(vocab)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, idx):
        self.calls += 1
        return super().forward(idx)


class Noisy(Uniform):
    def forward(self, idx):
        return super().forward(idx) + torch.rand(*idx.shape, self.vocab)


@pytest.mark.parametrize("cheat", [Peek, Pooling, Sparse, WidePeek, NextRow])
def test_model_that_sees_the_future_is_refused(dataset, tmp_path, cheat):
    r = scored(dataset, tmp_path, cheat(dataset.vocab_size))
    assert r["outcome"] == "cheated" and "val_bpb" not in r and r["check"]["max_change"] > 0


def test_the_check_runs_at_the_evaluation_shape(dataset, tmp_path):
    r = scored(dataset, tmp_path, LongOnly(dataset.vocab_size), eval_tokens=4096, eval_seq_len=128)
    assert r["outcome"] == "cheated"


@pytest.mark.parametrize("model, needle", [(Counter, "mutates"), (Noisy, "random")])
def test_impure_graphs_are_refused(dataset, tmp_path, model, needle):
    r = scored(dataset, tmp_path, model(dataset.vocab_size))
    assert r["outcome"] == "unexportable" and needle in r["message"]


def test_custom_ops_are_refused(dataset, tmp_path):
    @torch.library.custom_op("evotest::bump", mutates_args=())
    def bump(x: torch.Tensor) -> torch.Tensor:
        return x + 1

    bump.register_fake(lambda x: torch.empty_like(x))

    class Custom(Uniform):
        def forward(self, idx):
            return bump(super().forward(idx))

    r = scored(dataset, tmp_path, Custom(dataset.vocab_size))
    assert r["outcome"] == "unexportable" and "evotest" in r["message"]


@pytest.mark.parametrize("content", [b"not a zip", b"PK\x03\x04garbage"])
def test_a_file_that_is_not_a_graph_is_refused(dataset, tmp_path, content):
    (tmp_path / "model.evo").write_bytes(content)
    plan = eval_plan(2048, 64, len(dataset.val_tokens), cuda=False)
    assert score(tmp_path / "model.evo", dataset.path, plan)["outcome"] == "unexportable"


def test_a_pickle_is_never_unpickled(dataset, tmp_path):
    class Boom:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    with (tmp_path / "model.evo").open("wb") as f:
        np.savez(f, graph=np.frombuffer(b"{}", np.uint8), header=np.array([Boom()], dtype=object))
    plan = eval_plan(2048, 64, len(dataset.val_tokens), cuda=False)
    assert score(tmp_path / "model.evo", dataset.path, plan)["outcome"] == "unexportable"
    assert not (tmp_path / "pwned").exists()


def test_the_peeking_model_would_score_impossibly_well(dataset, tmp_path):
    """Why the check matters: the cheat's logits, scored without it, are far below uniform."""
    plan = eval_plan(2048, 64, len(dataset.val_tokens), cuda=False)
    x = torch.from_numpy(np.asarray(dataset.val_tokens[: plan.batch * 64 + 1]).astype(np.int64))
    logits = Peek(dataset.vocab_size)(x[:-1].view(plan.batch, 64))
    bits = F.cross_entropy(logits.reshape(-1, logits.size(-1)), x[1:].reshape(-1)).item() / math.log(2)
    assert bits < 0.5 * math.log2(dataset.vocab_size)
    assert scored(dataset, tmp_path, Peek(dataset.vocab_size))["outcome"] == "cheated"


def test_the_harness_offers_no_validation_data(dataset):
    h = make(dataset)
    assert not any("val" in name for name in dir(h.data))
    # the tokens offered are the training split's, token for token (not the validation split's)
    assert np.array_equal(h.data.train_tokens, dataset.train_tokens)


def test_batches_are_windows_of_the_train_tokens_and_seeded(dataset):
    a = make(dataset, seed=1).train_batches(4, 16)
    b = make(dataset, seed=1).train_batches(4, 16)
    c = make(dataset, seed=2).train_batches(4, 16)
    (xa, ya), (xb, _), (xc, _) = next(a), next(b), next(c)
    assert torch.equal(xa, xb) and not torch.equal(xa, xc)
    assert torch.equal(xa[:, 1:], ya[:, :-1])
    train = np.asarray(dataset.train_tokens)
    row = xa[0].numpy()
    starts = np.flatnonzero(train[: len(train) - 16] == row[0])
    assert any((train[s : s + 16] == row).all() for s in starts)


def test_budget_counts_training_steps_after_warmup(dataset):
    h = make(dataset, budget=0.2, warmup_steps=1)
    next(h.train_batches(2, 8))
    import time

    time.sleep(0.3)
    h.step(tokens=16)  # the warmup (compile) step: slow, not counted
    assert h.training_seconds == 0 and not h.done
    while not h.done:
        time.sleep(0.05)
        h.step(tokens=16)
    assert 0.2 <= h.training_seconds < 0.5 and h.progress == 1.0


def _rewrite_graph(path, edit):
    """Re-write the graph JSON inside a saved hand-over, as a hostile trainer could."""
    import json

    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    graph = json.loads(bytes(arrays["graph"]))
    edit(graph)
    arrays["graph"] = np.frombuffer(json.dumps(graph).encode(), np.uint8)
    with path.open("wb") as f:
        np.savez(f, **arrays)


def test_code_hidden_in_a_graph_file_never_runs(dataset, tmp_path):
    """torch's deserializer compiles guard code and parses shape expressions with sympy (which
    evaluates strings): the scorer drops the one and refuses the other."""
    plan = eval_plan(2048, 64, len(dataset.val_tokens), cuda=False)
    path = tmp_path / "model.evo"
    artifact.save(artifact.export(Uniform(dataset.vocab_size).eval(), torch.zeros(plan.batch, 64, dtype=torch.long)), path)
    pwned = tmp_path / "pwned"
    payload = f"__import__('pathlib').Path({str(pwned)!r}).touch() or True"
    _rewrite_graph(path, lambda g: g.update(guards_code=[payload]))
    assert score(path, dataset.path, plan)["outcome"] == "ok" and not pwned.exists()

    def symbolic(g):
        g["range_constraints"] = {"s0": {"min_val": 2, "max_val": 10}}
        g["graph_module"]["graph"]["nodes"][0]["inputs"] = [{"name": "x", "arg": {"as_sym_int": {"as_expr": {
            "expr_str": payload}}}}]

    _rewrite_graph(path, symbolic)
    r = score(path, dataset.path, plan)
    assert r["outcome"] == "unexportable" and "symbolic" in r["message"] and not pwned.exists()

    # a name is pasted into the forward's source by torch.fx: idx -> "idx=<payload>"
    artifact.save(artifact.export(Uniform(dataset.vocab_size).eval(), torch.zeros(plan.batch, 64, dtype=torch.long)), path)
    import json

    _rewrite_graph(path, lambda g: g.update(json.loads(json.dumps(g).replace('"idx"', json.dumps(f"idx={payload}")))))
    r = score(path, dataset.path, plan)
    assert r["outcome"] == "unexportable" and "identifier" in r["message"] and not pwned.exists()
