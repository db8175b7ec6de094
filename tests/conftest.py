"""Shared fixtures: a tiny real dataset prepared once per test session.

Tests train real models on real tokens, just few of them: 40 stdlib modules, a 512-token BPE,
short evaluation slices. Trials run with budgets of a few seconds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from trainer.corpus import stdlib_files, stdlib_root

REPO = Path(__file__).resolve().parent.parent
SEED_TRAIN = REPO / "trainer" / "train.py"
VARIANTS = Path(__file__).resolve().parent / "variants"
# Harness options that keep test trials short: a small eval slice and context.
FAST = dict(eval_tokens=4096, eval_seq_len=64)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """40 real stdlib modules copied into a directory: a small, fixed corpus."""
    root = stdlib_root()
    out = tmp_path_factory.mktemp("corpus")
    for path in stdlib_files(root)[100:140]:
        dest = out / path.relative_to(root).as_posix().replace("/", "__")
        shutil.copy(path, dest)
    return out


@pytest.fixture(scope="session")
def dataset(corpus_dir, tmp_path_factory):
    from trainer.prepare import prepare

    return prepare("files", paths=[str(corpus_dir)], data_dir=tmp_path_factory.mktemp("data"),
                   vocab_size=512, val_fraction=0.2)


def variant(name: str) -> str:
    return (VARIANTS / name).read_text()
