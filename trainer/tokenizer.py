"""The BPE tokenizer: trained on the train split by rustbpe, encoded by tiktoken.

No tokenizer file is ever fetched: training on the prepared corpus takes seconds and makes the
vocabulary match the data. The result is stored as a small JSON (split pattern, mergeable ranks,
the BOS special token) next to the token files, and its hash is part of the data manifest, so a
score always names the exact tokenizer it was measured with.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Iterable

import tiktoken

BOS = "<|bos|>"
# GPT-4-style split, with numbers in groups of at most two digits as nanochat/autoresearch do.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
MIN_VOCAB = 256 + 1  # every byte, plus BOS


def train(texts: Iterable[str], vocab_size: int) -> dict:
    """Train a byte-level BPE with `vocab_size` tokens in all (BOS included)."""
    import rustbpe

    if vocab_size < MIN_VOCAB + 1:
        raise ValueError(f"--vocab-size must be at least {MIN_VOCAB + 1} (256 bytes, one merge and BOS)")
    tok = rustbpe.Tokenizer()
    tok.train_from_iterator(iter(texts), vocab_size - 1, pattern=SPLIT_PATTERN)
    ranks = tok.get_mergeable_ranks()
    return {
        "pattern": tok.get_pattern(),
        "ranks": [base64.b64encode(bytes(b)).decode() for b, _ in sorted(ranks, key=lambda r: r[1])],
        "bos": BOS,
    }


def save(spec: dict, path: Path) -> str:
    """Write the tokenizer JSON; return its sha256 (part of the manifest hash)."""
    text = json.dumps(spec, sort_keys=True)
    path.write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()


def encoding(spec: dict) -> tiktoken.Encoding:
    ranks = {base64.b64decode(b): i for i, b in enumerate(spec["ranks"])}
    return tiktoken.Encoding(
        name="evo-bpe",
        pat_str=spec["pattern"],
        mergeable_ranks=ranks,
        special_tokens={spec["bos"]: len(ranks)},
    )


def load(path: Path) -> tiktoken.Encoding:
    return encoding(json.loads(Path(path).read_text()))


def token_byte_lengths(enc: tiktoken.Encoding) -> list[int]:
    """UTF-8 byte length of every token id; special tokens count 0 (excluded from bits per byte)."""
    special = set(enc._special_tokens.values())
    return [0 if i in special else len(enc.decode_single_token_bytes(i)) for i in range(enc.n_vocab)]
