"""The harness's metric and its guard, in-process on the tiny dataset."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.harness import Harness, TrialConfig


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


class Pooling(Uniform):
    """Leaks the future subtly: every position sees the mean of the whole sequence."""

    def forward(self, idx):
        emb = F.one_hot(idx, self.vocab).float()
        return emb + emb.mean(dim=1, keepdim=True)


def make(dataset, **kw) -> Harness:
    return Harness(TrialConfig(dataset_dir=str(dataset.path), device="cpu", **kw))


def test_uniform_model_bpb_equals_closed_form(dataset):
    h = make(dataset, eval_tokens=2048, eval_seq_len=64)
    bpb = h.evaluate_bpb(Uniform(h.vocab_size))
    n = (2048 // 64) * 64
    assert bpb == pytest.approx(dataset.uniform_bpb(n), rel=1e-6)
    # and the closed form itself: log2(V) per counted token over the bytes they carry
    y = np.asarray(dataset.val_tokens[1 : n + 1]).astype(np.int64)
    b = dataset.token_bytes[y]
    assert bpb == pytest.approx(math.log2(h.vocab_size) * (b > 0).sum() / b.sum(), rel=1e-6)


def test_bos_tokens_carry_no_bytes(dataset):
    assert dataset.token_bytes[dataset.bos_id] == 0
    assert (dataset.token_bytes[: dataset.bos_id] > 0).all()


def test_causal_model_passes_check(dataset):
    h = make(dataset, eval_seq_len=64)
    ok, diff = h.causality_ok(Uniform(h.vocab_size))
    assert ok and diff == 0.0


@pytest.mark.parametrize("cheat", [Peek, Pooling])
def test_model_that_sees_the_future_is_refused(dataset, cheat):
    h = make(dataset, eval_seq_len=64)
    ok, diff = h.causality_ok(cheat(h.vocab_size))
    assert not ok and diff > 0


def test_peeking_model_would_score_impossibly_well(dataset):
    """Why the check matters: the cheat's bpb is far below anything honest."""
    h = make(dataset, eval_tokens=2048, eval_seq_len=64)
    assert h.evaluate_bpb(Peek(h.vocab_size)) < 0.5 * h.evaluate_bpb(Uniform(h.vocab_size))


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
