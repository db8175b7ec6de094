"""autoresearch's `prepare` interface, served by evo's harness inside a sealed trial.

Hundreds of autoresearch forks keep a train.py that does `from prepare import MAX_SEQ_LEN,
TIME_BUDGET, Tokenizer, make_dataloader, evaluate_bpb`. In an evo trial that `prepare` is this
module (through the shim in trainer/autoresearch_path/, first on the trial's sys.path), backed by
`trainer.harness` on evo's prepared data:

- `MAX_SEQ_LEN` is the evaluation's sequence length (the scorer's), `TIME_BUDGET` the trial's
  budget, `EVAL_TOKENS` the tokens the scorer evaluates on, `VOCAB_SIZE` the data's vocabulary;
- `Tokenizer.from_directory()` is evo's BPE of the prepared data (the directory argument is
  ignored: there is one tokenizer, the data's);
- `make_dataloader(tokenizer, B, T, "train")` yields `(x, y, epoch)` with every row starting at a
  document's BOS and documents packed best-fit as autoresearch does; "val" is refused: the
  validation split belongs to the scorer and is not even in the trial's sandbox;
- `evaluate_bpb(model, tokenizer, batch_size)` is the hand-over: the model is exported
  (`model(idx)` with no targets must return logits) and scored by evo's scorer in another
  process, and the score the scorer measured comes back. Once per trial: after it the model that
  counts is the one handed over.

`torch.manual_seed(n)` in such a variant seeds with n + the trial's seed (autoresearch files seed
with a constant; evo measures noise over seeds), so seed 0 is exactly the file's own seeding.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from trainer import harness as _harness, sdpa_attention as _sdpa

__all__ = ["MAX_SEQ_LEN", "TIME_BUDGET", "EVAL_TOKENS", "VOCAB_SIZE", "BOS_TOKEN", "Tokenizer", "make_dataloader",
           "get_token_bytes", "evaluate_bpb"]

_h = _harness.setup()
_AUTORESEARCH_BOS = "<|reserved_0|>"  # autoresearch's BOS name; a file may prepend it by name

MAX_SEQ_LEN = _h.eval_seq_len
TIME_BUDGET = _h.budget
EVAL_TOKENS = _h.eval.rows * _h.eval.seq_len
VOCAB_SIZE = _h.vocab_size
BOS_TOKEN = "<|bos|>"


def _seeded_by_trial(real, offset: int):
    def manual_seed(seed):
        return real(int(seed) + offset)

    manual_seed.__doc__ = real.__doc__
    return manual_seed


if _h.seed:  # seed 0 leaves torch as it is: the file seeds exactly as it would under autoresearch
    torch.manual_seed = _seeded_by_trial(torch.manual_seed, _h.seed)
    torch.cuda.manual_seed = _seeded_by_trial(torch.cuda.manual_seed, _h.seed)
    torch.cuda.manual_seed_all = _seeded_by_trial(torch.cuda.manual_seed_all, _h.seed)


class Tokenizer:
    """autoresearch's tokenizer wrapper over the prepared data's BPE."""

    def __init__(self, enc):
        self.enc = enc
        self.bos_token_id = _h.bos_id

    @classmethod
    def from_directory(cls, tokenizer_dir=None):
        return cls(_h.data.tokenizer())

    def get_vocab_size(self):
        return self.enc.n_vocab

    def get_bos_token_id(self):
        return self.bos_token_id

    def _token_id(self, token):
        if isinstance(token, int):
            return token
        return self.bos_token_id if token in (BOS_TOKEN, _AUTORESEARCH_BOS) else self.enc.encode_single_token(token)

    def encode(self, text, prepend=None, num_threads=8):
        if isinstance(text, str):
            ids = self.enc.encode_ordinary(text)
            return ids if prepend is None else [self._token_id(prepend), *ids]
        if isinstance(text, list):
            rows = self.enc.encode_ordinary_batch(text, num_threads=num_threads)
            return rows if prepend is None else [[self._token_id(prepend), *row] for row in rows]
        raise ValueError(f"Invalid input type: {type(text)}")

    def decode(self, ids):
        return self.enc.decode(ids)


def get_token_bytes(device="cpu"):
    """UTF-8 bytes of every token id (0 for BOS), as autoresearch's token_bytes.pt."""
    return torch.from_numpy(_h.data.token_bytes.astype(np.int32)).to(device)


def _documents(tokens: np.ndarray, bos: int, start: int, chunk: int = 1 << 22):
    """Endless (offset, length, epoch) of the BOS-started documents of `tokens`, from the first
    document at or after `start`, wrapping around (epoch counts passes, from 1). BOS positions are
    found a chunk at a time, so a billion-token split costs no index up front."""
    n = len(tokens)
    epoch, pos = 1, start
    while True:
        first = None
        at = pos
        while at < n:
            block = np.asarray(tokens[at:at + chunk])
            starts = np.flatnonzero(block == bos) + at
            for s in starts:
                if first is not None:
                    yield first, int(s) - first, epoch
                first = int(s)
            at += chunk
        if first is not None:
            yield first, n - first, epoch
        epoch, pos = epoch + 1, 0


def make_dataloader(tokenizer, B, T, split, buffer_size=1000):
    """BOS-aligned rows with best-fit packing, as autoresearch's: each row of T + 1 tokens is filled
    with the largest buffered document that fits; when none fits, the shortest is cropped to fill
    it. Yields (x, y, epoch) on the trial's device. The trial's seed picks where in the split the
    documents start (seed 0: at the beginning, as autoresearch)."""
    if split == "val":
        raise ValueError("make_dataloader(..., 'val'): the validation split belongs to evo's scorer and is not "
                         "in the trial; train on 'train' and call evaluate_bpb(model, tokenizer, batch_size), "
                         "which hands the model to the scorer")
    if split != "train":
        raise ValueError(f"make_dataloader: split must be 'train', got {split!r}")
    return _packed_batches(B, T, buffer_size)  # the checks above run at the call, not at the first batch


def _packed_batches(B: int, T: int, buffer_size: int):
    tokens = _h.data.train_tokens
    start = 0 if not _h.seed else int(np.random.default_rng(_h.seed).integers(0, len(tokens)))
    docs = _documents(tokens, _h.bos_id, start)
    row_capacity = T + 1
    buffer: list[tuple[int, int]] = []
    epoch = 1
    rows = np.empty((B, row_capacity), dtype=np.int64)
    pin = _h.is_cuda
    while True:
        for r in range(B):
            pos = 0
            while pos < row_capacity:
                while len(buffer) < buffer_size:
                    offset, length, epoch = next(docs)
                    buffer.append((offset, length))
                remaining = row_capacity - pos
                best, best_len = -1, 0
                for i, (_, length) in enumerate(buffer):
                    if best_len < length <= remaining:
                        best, best_len = i, length
                if best >= 0:
                    offset, length = buffer.pop(best)
                else:
                    shortest = min(range(len(buffer)), key=lambda i: buffer[i][1])
                    offset, _ = buffer.pop(shortest)
                    length = remaining
                rows[r, pos:pos + length] = tokens[offset:offset + length]
                pos += length
        # Inputs and targets contiguous in one buffer (one host-to-device copy), as autoresearch's.
        both = torch.from_numpy(np.concatenate([rows[:, :-1].ravel(), rows[:, 1:].ravel()]))
        if pin:
            both = both.pin_memory().to(_h.device, non_blocking=True)
        _h._count_loader_batch(B * T)
        yield both[:B * T].view(B, T), both[B * T:].view(B, T), epoch


def _flops_per_token(model) -> float | None:
    estimate = getattr(getattr(model, "_orig_mod", model), "estimate_flops", None)
    try:
        value = float(estimate()) if callable(estimate) else None
    except Exception:
        return None
    return value if value and math.isfinite(value) else None


_handed_over = False


def evaluate_bpb(model, tokenizer=None, batch_size=None):
    """Hand the model to evo's scorer and return the val_bpb it measured (nan if the scorer did not
    score it: the trial summary says why). `model(idx)` must return (B, T, vocab) logits.
    Once per trial."""
    global _handed_over
    if _handed_over:
        raise RuntimeError("evaluate_bpb was already called: a trial hands over one model")
    _handed_over = True
    extra = {"attention": _sdpa.substituted} if _sdpa.substituted else {}
    score = _h.hand_over(model, flops_per_token=_flops_per_token(model), extra=extra)
    return float("nan") if score is None else score

