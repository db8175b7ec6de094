"""A prepared data directory: token files (memory-mapped), byte lengths, manifest.

Layout (written by `trainer.prepare`):
  manifest.json     what the data is: source, input file hashes, vocab, token counts
  tokenizer.json    the BPE (see trainer.tokenizer)
  train.bin         all train documents, each starting with BOS, as one flat array
  val.bin           the same for validation
  token_bytes.npy   UTF-8 byte length of each token id (0 for BOS), for bits per byte
The manifest hash identifies the data a score was measured on: scores with different hashes are
not comparable, and the archive stores it with each run.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import cached_property
from pathlib import Path

import numpy as np

MANIFEST_NAME = "manifest.json"  # a directory holding one is a prepared dataset
DATA_DIR_ENV = "EVO_DATA_DIR"
DEFAULT_DATA_DIR = "~/.cache/evo/data"  # where `evo prepare` writes unless told (--data-dir, $EVO_DATA_DIR)
CPU_VOCAB = 2048  # BPE vocabulary (incl. BOS) `evo prepare` builds unless told (--vocab-size)
GPU_VOCAB = 8192  # autoresearch's


_MANIFEST_KEYS = ("source", "inputs_sha256", "vocab_size", "bos_id", "tokenizer_sha256", "n_train_tokens",
                  "n_val_tokens", "dtype")


class DatasetError(Exception):
    """A user-facing, one-line problem with a data directory."""


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV) or Path(DEFAULT_DATA_DIR).expanduser())


def manifest_hash(manifest: dict) -> str:
    """Hash of what determines the tokens; timestamps and paths on this machine are left out."""
    keys = ("source", "inputs_sha256", "vocab_size", "tokenizer_sha256", "n_train_tokens", "n_val_tokens", "dtype")
    blob = json.dumps({k: manifest[k] for k in keys}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Dataset:
    """A whole data directory: the scorer's view. A trial gets `train_split()` only."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mf = self.path / MANIFEST_NAME
        if not mf.exists():
            raise DatasetError(f"no prepared data in {self.path} (run `evo prepare` first)")
        try:
            self.manifest = json.loads(mf.read_text())
            missing = [k for k in _MANIFEST_KEYS if k not in self.manifest]
        except (OSError, UnicodeDecodeError, ValueError, TypeError) as e:
            raise DatasetError(f"{mf} is not a readable manifest ({type(e).__name__}: {e}); "
                               f"prepare the data again (`evo prepare ... --force`)") from None
        if missing:
            raise DatasetError(f"{mf} lacks {', '.join(missing)}: not a manifest evo wrote; "
                               f"prepare the data again (`evo prepare ... --force`)")
        self.vocab_size: int = self.manifest["vocab_size"]
        self.bos_id: int = self.manifest["bos_id"]
        self.hash = manifest_hash(self.manifest)

    def check(self) -> Dataset:
        """Every file the manifest promises is there and whole: token files of exactly the
        manifest's token counts (a copy cut short would train and score on less, silently), the
        byte table of the vocabulary's size, the tokenizer. The coordinator checks before any trial."""
        fix = "prepare the data again (`evo prepare ... --force`)"
        itemsize = np.dtype(self.manifest["dtype"]).itemsize
        for name, count in (("train.bin", self.manifest["n_train_tokens"]), ("val.bin", self.manifest["n_val_tokens"])):
            path = self.path / name
            if not path.is_file():
                raise DatasetError(f"{path} is missing; {fix}")
            if path.stat().st_size != count * itemsize:
                raise DatasetError(f"{path} holds {path.stat().st_size // itemsize:,} tokens, the manifest says "
                                   f"{count:,} (truncated or replaced); {fix}")
        try:
            table = np.load(self.path / "token_bytes.npy", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DatasetError(f"{self.path / 'token_bytes.npy'} is not readable ({e}); {fix}") from None
        if table.shape != (self.vocab_size,):
            raise DatasetError(f"{self.path / 'token_bytes.npy'} has {table.shape} entries, not {self.vocab_size}; {fix}")
        if not (self.path / "tokenizer.json").is_file():
            raise DatasetError(f"{self.path / 'tokenizer.json'} is missing; {fix}")
        return self

    @cached_property
    def train_tokens(self) -> np.ndarray:
        return np.memmap(self.path / "train.bin", dtype=self.manifest["dtype"], mode="r")

    @cached_property
    def val_tokens(self) -> np.ndarray:
        return np.memmap(self.path / "val.bin", dtype=self.manifest["dtype"], mode="r")

    @cached_property
    def token_bytes(self) -> np.ndarray:
        return np.load(self.path / "token_bytes.npy")

    def tokenizer(self):
        from trainer.tokenizer import load

        return load(self.path / "tokenizer.json")

    def train_split(self) -> "TrainSplit":
        return TrainSplit(self)

    def uniform_bpb(self, n_tokens: int | None = None) -> float:
        """val_bpb of a model that predicts every token uniformly: log2(V) * tokens / bytes.

        Over the first n_tokens target tokens of val, counting only tokens that carry bytes —
        the reference a trained model must beat clearly.
        """
        y = np.asarray(self.val_tokens[1 : (n_tokens + 1) if n_tokens else None]).astype(np.int64)
        nbytes = self.token_bytes[y]
        return float(np.log2(self.vocab_size) * (nbytes > 0).sum() / nbytes.sum())


class TrainSplit:
    """What a trial may see of a data directory: the training tokens, the vocabulary, the byte
    lengths. No validation tokens: they belong to the scorer (and inside the sandbox the file is
    not even there)."""

    def __init__(self, ds: Dataset):
        self.path = ds.path
        self.vocab_size = ds.vocab_size
        self.bos_id = ds.bos_id
        self.hash = ds.hash
        self.train_tokens = ds.train_tokens
        self.token_bytes = ds.token_bytes.copy()  # the scorer reads its own copy from disk

    def tokenizer(self):
        from trainer.tokenizer import load

        return load(self.path / "tokenizer.json")
