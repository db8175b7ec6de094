"""Document sources for `evo prepare`.

A source yields `Document(name, text, split)`. The split is decided per document by a hash of its
stable name, so it never depends on file order, on which other files exist, or on the machine:
the same document is in val on every machine, and validation text is never seen in training.

Sources:
- `stdlib`: the Python standard library's own .py files (tests excluded), found via sysconfig.
  Real text that every machine has, so evo runs with no download at all.
- `files`: local text files, .jsonl with a text field, .parquet with a text column.
- `climbmix`: the parquet shards autoresearch trains on, downloaded with retries, checked and
  atomically renamed (`trainer.download`). The last shard is pinned as validation, as there.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

VAL_FRACTION = 0.05  # share of documents held out for validation, unless told (--val-fraction)
TEXT_FIELD = "text"  # the field (.jsonl) or column (.parquet) holding a document's text

class CorpusError(Exception):
    """A user-facing, one-line problem with the corpus (missing path, empty corpus, ...)."""


@dataclass(frozen=True)
class Document:
    name: str  # stable identifier: relative path, "file.jsonl:12", "shard_00001.parquet:7"
    text: str
    split: str  # "train" or "val"
    path: str | None = None  # the file it was read from: the sandbox hides a val document's file


def split_of(name: str, val_fraction: float) -> str:
    """Assign a document to train/val by a hash of its name: deterministic and order-free."""
    h = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    return "val" if (h % 1_000_000) < val_fraction * 1_000_000 else "train"


# --- stdlib ---------------------------------------------------------------------------------

_TEST_DIRS = {"test", "tests", "idle_test", "idlelib", "site-packages", "dist-packages", "__pycache__"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> list[Path]:
    """The standard library's .py files, tests excluded, in a fixed (sorted) order."""
    root = root or stdlib_root()
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _TEST_DIRS]  # prune: never walk site-packages
        out.extend(Path(dirpath, f) for f in filenames if f.endswith(".py") and not f.startswith("test_"))
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


# The stdlib corpus's validation text: packages that training code never imports. The interpreter
# a trial runs needs the rest of its standard library on disk, readable, so validation text drawn
# from it (os.py, collections/) would be there for a variant to read; these files the sandbox
# hides instead (`trainer.sandbox`: they are listed in the manifest's val_sources).
STDLIB_VAL = ("turtledemo", "tkinter", "wsgiref", "xmlrpc", "curses", "dbm", "pydoc_data", "ensurepip", "turtle.py")


def stdlib_documents(val_fraction: float = VAL_FRACTION) -> Iterator[Document]:
    """The standard library's source; validation = the `STDLIB_VAL` packages (`val_fraction` is
    not used: the split is by package, the same on every machine with the same Python)."""
    root = stdlib_root()
    for path in stdlib_files(root):
        name = path.relative_to(root).as_posix()
        text = path.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            split = "val" if name.split("/")[0] in STDLIB_VAL else "train"
            yield Document(name, text, split, str(path))


# --- local files ----------------------------------------------------------------------------

TEXT_SUFFIXES = {".txt", ".md", ".py", ".rst", ".json", ".csv", ".tex", ".html", ".c", ".h", ".rs", ".js"}


def _expand(paths: list[str]) -> list[tuple[Path, str]]:
    """(file, stable name) pairs; a directory's files are named relative to it."""
    files: list[tuple[Path, str]] = []
    for p in map(Path, paths):
        if not p.exists():
            raise CorpusError(f"corpus path not found: {p} (give existing files or directories)")
        if p.is_dir():
            # hidden files and everything under hidden directories (.git, .venv, ...) are not corpus
            found = sorted(f for f in p.rglob("*")
                           if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts))
            files.extend((f, f.relative_to(p).as_posix()) for f in found)
        else:
            files.append((p, p.name))
    return files


def file_documents(paths: list[str], val_fraction: float = VAL_FRACTION,
                   text_field: str = TEXT_FIELD) -> Iterator[Document]:
    """Documents from local files: one per text file, per JSONL line, per parquet row."""
    for path, fname in _expand(paths):
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            for i, text in _jsonl_texts(path, text_field):
                name = f"{fname}:{i}"
                yield Document(name, text, split_of(name, val_fraction))
        elif suffix == ".parquet":
            for i, text in parquet_rows(path, text_field):
                name = f"{fname}:{i}"
                yield Document(name, text, split_of(name, val_fraction))
        else:
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                if suffix in TEXT_SUFFIXES:
                    text = path.read_text(encoding="utf-8", errors="replace")
                else:
                    continue  # a binary file inside a directory: not text, skip it
            if text.strip():
                yield Document(fname, text, split_of(fname, val_fraction), str(path.resolve()))


def _jsonl_texts(path: Path, text_field: str) -> Iterator[tuple[int, str]]:
    """(line index, text) for each non-blank line; blank texts are skipped like blank files."""
    with path.open("rb") as f:
        for i, raw in enumerate(f):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise CorpusError(f"{path}:{i + 1}: not UTF-8 text (JSONL files must be UTF-8)") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise CorpusError(f"{path}:{i + 1}: not valid JSON (expected one JSON object per line)") from None
            text = row.get(text_field) if isinstance(row, dict) else None
            if not isinstance(text, str):
                raise CorpusError(f"{path}:{i + 1}: no string field '{text_field}' (use --text-field)")
            if text.strip():
                yield i, _encodable(text)


def _encodable(text: str) -> str:
    """JSON can carry lone surrogates ("\\ud800") that UTF-8 cannot: replace them, as a decoder would."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", errors="replace").decode("utf-8")


def parquet_rows(path: Path, text_field: str = TEXT_FIELD) -> Iterator[tuple[int, str]]:
    """(row index, text) for each non-blank row of a string column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise CorpusError(f"{path}: not a readable parquet file ({e.__class__.__name__})") from None
    schema = pf.schema_arrow
    if text_field not in schema.names:
        raise CorpusError(f"{path}: no column '{text_field}' (columns: {', '.join(schema.names)}; use --text-field)")
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise CorpusError(f"{path}: column '{text_field}' holds {kind}, not text (use --text-field)")
    i = 0
    for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if text and text.strip():
                yield i, text
            i += 1


def parquet_texts(path: Path, text_field: str = TEXT_FIELD) -> Iterator[str]:
    for _, text in parquet_rows(path, text_field):
        yield text


# --- climbmix -------------------------------------------------------------------------------

CLIMBMIX_URL = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
CLIMBMIX_MAX_SHARD = 6542  # autoresearch pins the last shard as validation


def climbmix_shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def climbmix_documents(shard_dir: Path, n_shards: int) -> Iterator[Document]:
    """Train documents from the first n shards, val documents from the pinned last shard."""
    indices = [(i, "train") for i in range(n_shards)] + [(CLIMBMIX_MAX_SHARD, "val")]
    for index, split in indices:
        name = climbmix_shard_name(index)
        for j, text in parquet_rows(shard_dir / name):
            yield Document(f"{name}:{j}", text, split)


def climbmix_base_url() -> str:
    return os.environ.get("EVO_CLIMBMIX_URL", CLIMBMIX_URL)
