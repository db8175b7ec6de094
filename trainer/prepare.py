"""`evo prepare`: corpus → tokenizer → flat token files, cached under the data dir.

Tokenizing happens once here, never in the training loop. The output directory is built under a
temporary name and renamed into place at the end, so an interrupted prepare leaves no half-written
data that a trial could train on; re-running with the same inputs is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from trainer import corpus, tokenizer
from trainer.dataset import CPU_VOCAB, GPU_VOCAB, MANIFEST_NAME, Dataset, DatasetError, default_data_dir, manifest_hash

SOURCES = ("stdlib", "files", "climbmix")


def default_vocab_size() -> int:
    import torch

    return GPU_VOCAB if torch.cuda.is_available() else CPU_VOCAB


def dataset_name(source: str, vocab_size: int, paths: list[str] | None = None, shards: int | None = None) -> str:
    if source == "files":
        key = "\n".join(str(Path(p).resolve()) for p in paths or [])
        return f"files-{hashlib.sha256(key.encode()).hexdigest()[:8]}-v{vocab_size}"
    if source == "climbmix":
        return f"climbmix{shards}-v{vocab_size}"
    return f"{source}-v{vocab_size}"


@contextmanager
def _stage(console, label: str):
    """One line per stage with its duration: long work shows progress."""
    t0 = time.time()
    if console:
        console.print(f"[dim]prepare:[/] {label} …")
    yield
    if console:
        console.print(f"[dim]prepare:[/] {label} done in {time.time() - t0:.1f}s")


def _documents(source, paths, shards, val_fraction, text_field, data_dir, console):
    if source == "stdlib":
        return list(corpus.stdlib_documents(val_fraction))
    if source == "files":
        if not paths:
            raise corpus.CorpusError("source 'files' needs at least one PATH (evo prepare files PATH...)")
        return list(corpus.file_documents(paths, val_fraction, text_field))
    if source == "climbmix":
        return list(corpus.climbmix_documents(download_climbmix(data_dir, shards, console), shards))
    raise _unknown_source(source)


def _unknown_source(source: str) -> corpus.CorpusError:
    hint = f"; for local files: evo prepare files {source}" if Path(source).exists() else ""
    return corpus.CorpusError(f"unknown source '{source}' (expected one of: {', '.join(SOURCES)}){hint}")


def download_climbmix(data_dir: Path, shards: int, console=None) -> Path:
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from trainer.download import download

    if not shards or shards < 1:
        raise corpus.CorpusError("--shards must be at least 1 for source 'climbmix'")
    shard_dir = data_dir / "climbmix-shards"
    base = corpus.climbmix_base_url().rstrip("/")
    indices = list(range(shards)) + [corpus.CLIMBMIX_MAX_SHARD]
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), console=console, disable=console is None) as progress:
        for i in indices:
            name = corpus.climbmix_shard_name(i)
            task = progress.add_task(name, total=None)
            download(f"{base}/{name}", shard_dir / name, on_bytes=lambda n, t=task: progress.advance(t, n))
    return shard_dir


def _write_tokens(path: Path, docs: list[list[int]], bos: int, dtype) -> int:
    n = sum(len(d) + 1 for d in docs)
    arr = np.memmap(path, dtype=dtype, mode="w+", shape=(max(n, 1),))
    pos = 0
    for d in docs:
        arr[pos] = bos
        arr[pos + 1 : pos + 1 + len(d)] = d
        pos += len(d) + 1
    arr.flush()
    del arr
    return n


def prepare(
    source: str = "stdlib",
    *,
    paths: list[str] | None = None,
    shards: int | None = None,
    data_dir: str | Path | None = None,
    vocab_size: int | None = None,
    val_fraction: float = corpus.VAL_FRACTION,
    text_field: str = corpus.TEXT_FIELD,
    console=None,
    force: bool = False,
) -> Dataset:
    """Prepare (or find cached) token files; returns the Dataset. Errors are one-line exceptions."""
    if source not in SOURCES:
        raise _unknown_source(source)
    if paths and source != "files":
        raise corpus.CorpusError(f"source '{source}' takes no PATH (for local files: evo prepare files PATH...)")
    if not 0 < val_fraction < 1:
        raise corpus.CorpusError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    vocab_size = vocab_size or default_vocab_size()
    if vocab_size < tokenizer.MIN_VOCAB + 1 or vocab_size > 65535:
        raise corpus.CorpusError(f"--vocab-size must be between {tokenizer.MIN_VOCAB + 1} and 65535, got {vocab_size}")
    out = data_dir / dataset_name(source, vocab_size, paths, shards)

    with _stage(console, f"reading the {source} corpus"):
        docs = _documents(source, paths, shards, val_fraction, text_field, data_dir, console)
    # What the tokens are made of: each document's name, text and split (so a new --val-fraction
    # or --text-field is a new dataset, never the cached one).
    inputs = hashlib.sha256()
    for d in docs:
        inputs.update(d.name.encode() + b"\0" + d.split.encode() + b"\0" + hashlib.sha256(d.text.encode()).digest())
    inputs_sha = inputs.hexdigest()

    if not force and (out / MANIFEST_NAME).exists():
        ds = Dataset(out)
        if ds.manifest.get("inputs_sha256") == inputs_sha:
            if console:
                console.print(f"[dim]prepare:[/] cached, nothing to do: {out}")
            return ds

    if not docs:
        where = ", ".join(paths) if source == "files" and paths else f"the {source} corpus"
        raise corpus.CorpusError(f"no text documents found in {where} (expected text, .jsonl or .parquet files)")
    train_docs = [d for d in docs if d.split == "train"]
    val_docs = [d for d in docs if d.split == "val"]
    if not train_docs or not val_docs:
        raise corpus.CorpusError(
            f"corpus too small: {len(train_docs)} train and {len(val_docs)} val documents "
            "(need at least one of each; add documents or raise --val-fraction)"
        )

    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with _stage(console, f"training a {vocab_size}-token BPE on {len(train_docs)} train documents"):
            spec = tokenizer.train((d.text for d in train_docs), vocab_size)
            tok_sha = tokenizer.save(spec, tmp / "tokenizer.json")
            enc = tokenizer.encoding(spec)
        dtype = "uint16" if enc.n_vocab <= 65536 else "uint32"
        bos = enc.n_vocab - 1
        counts = {}
        for split, split_docs in (("train", train_docs), ("val", val_docs)):
            with _stage(console, f"tokenizing {len(split_docs)} {split} documents"):
                ids = enc.encode_ordinary_batch([d.text for d in split_docs], num_threads=os.cpu_count() or 1)
                counts[split] = _write_tokens(tmp / f"{split}.bin", ids, bos, dtype)
        np.save(tmp / "token_bytes.npy", np.array(tokenizer.token_byte_lengths(enc), dtype=np.int32))
        manifest = {
            "source": source,
            "paths": [str(p) for p in paths or []],
            "shards": shards,
            "inputs_sha256": inputs_sha,
            "n_train_docs": len(train_docs),
            "n_val_docs": len(val_docs),
            "train_bytes": sum(len(d.text.encode()) for d in train_docs),
            "val_bytes": sum(len(d.text.encode()) for d in val_docs),
            "vocab_size": enc.n_vocab,
            "bos_id": bos,
            "dtype": dtype,
            "tokenizer_sha256": tok_sha,
            "n_train_tokens": counts["train"],
            "n_val_tokens": counts["val"],
            "val_fraction": val_fraction,
            "val_sources": sorted({d.path for d in val_docs if d.path}),  # hidden from trials (trainer.sandbox)
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        manifest["hash"] = manifest_hash(manifest)
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if console:
        console.print(
            f"[dim]prepare:[/] {out}: {counts['train']:,} train / {counts['val']:,} val tokens, "
            f"vocab {enc.n_vocab}, data hash {manifest['hash']}"
        )
    return Dataset(out)


def find_dataset(data_dir: str | Path | None = None, source: str = "stdlib", vocab_size: int | None = None) -> Dataset:
    """The prepared dataset a trial should use, or a one-line DatasetError saying what to run.

    `data_dir` may be a prepared dataset itself, or the directory `evo prepare` writes into. There,
    `source`'s data is preferred (at the device's default vocabulary); failing that, the only
    dataset prepared from any other source. Several others are ambiguous: the error names them.
    """
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    if not data_dir.exists():
        raise DatasetError(f"data dir {data_dir} does not exist (run `evo prepare` or pass --data-dir)")
    if (data_dir / MANIFEST_NAME).exists():
        return Dataset(data_dir)
    if vocab_size:
        return Dataset(data_dir / dataset_name(source, vocab_size))
    candidates = sorted(data_dir.glob(f"{source}-v*/{MANIFEST_NAME}"))
    if candidates:
        preferred = data_dir / dataset_name(source, default_vocab_size()) / MANIFEST_NAME
        return Dataset((preferred if preferred in candidates else candidates[0]).parent)
    others = sorted(p.parent for p in data_dir.glob(f"[!.]*/{MANIFEST_NAME}"))
    if len(others) == 1:
        return Dataset(others[0])
    if others:
        names = ", ".join(p.name for p in others)
        raise DatasetError(f"several prepared datasets in {data_dir} ({names}) and none from '{source}': "
                           f"choose one with --data-dir {data_dir / others[0].name}")
    raise DatasetError(f"no prepared data in {data_dir} (run `evo prepare` first, or pass --data-dir)")
