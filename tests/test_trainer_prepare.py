"""`evo prepare` end to end: real files, the real tokenizer, a real HTTP server for climbmix shards.

Nothing is mocked except one fault injection (a tokenizer that is interrupted), whose point is the
cleanup around it. Corpora are a few kilobytes and vocabularies 300 tokens, so each prepare takes
well under a second.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import trainer.tokenizer
from trainer import corpus
from trainer.corpus import CorpusError, file_documents, split_of, stdlib_files
from trainer.dataset import Dataset, DatasetError
from trainer.download import DownloadError, download
from trainer.prepare import find_dataset, prepare

VOCAB = 300
WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma "
         "tau upsilon phi chi psi omega naïve café 日本語 emoji 🙂").split()


def text_of(i: int, n_words: int = 60) -> str:
    """A deterministic, distinct document (with multi-byte characters) for index i."""
    rng = np.random.default_rng(i)
    words = [WORDS[j] for j in rng.integers(0, len(WORDS), n_words)]
    return f"document {i}: " + " ".join(words) + "\n"


def parquet_bytes(columns: dict) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


def files_prepare(paths, data_dir, **kw):
    opts = dict(data_dir=data_dir, vocab_size=VOCAB, val_fraction=0.3)
    opts.update(kw)
    return prepare("files", paths=[str(p) for p in paths], **opts)


def docs_by_bos(tokens: np.ndarray, bos: int) -> list[np.ndarray]:
    """Split a token file into its documents (each starts with BOS)."""
    starts = np.flatnonzero(tokens == bos)
    assert starts[0] == 0, "a token file starts with BOS"
    return np.split(tokens, starts[1:])


@pytest.fixture
def mixed_corpus(tmp_path) -> Path:
    """A directory of every supported kind: text files, a .jsonl, a .parquet, and things to skip."""
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    for i in range(6):
        (root / f"note{i}.txt").write_text(text_of(i))
    (root / "module.py").write_text("def f(x):\n    return x * 2  # " + text_of(100))
    (root / "sub" / "readme.md").write_text(text_of(101))
    (root / "empty.txt").write_text("  \n")  # blank: not a document
    (root / "blob.bin").write_bytes(bytes(range(256)) * 4)  # binary: skipped
    (root / ".hidden.txt").write_text(text_of(102))  # hidden file: skipped
    (root / ".git" / "config").write_text("[core]\n\tbare = false\n")  # inside a hidden dir: skipped
    rows = [{"text": text_of(200 + i), "id": i} for i in range(10)]
    (root / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:5]) + "\n\n"
                                     + "\n".join(json.dumps(r) for r in rows[5:]) + "\n")
    (root / "table.parquet").write_bytes(parquet_bytes({"text": [text_of(300 + i) for i in range(10)],
                                                        "n": list(range(10))}))
    return root


# --- stdlib source ------------------------------------------------------------------------------

def test_stdlib_files_exclude_tests_and_are_sorted(tmp_path):
    root = tmp_path / "lib"
    for rel in ["os.py", "Zed.py", "json/__init__.py", "json/decoder.py", "json/tests/helper.py",
                "test/support.py", "unittest/test/test_case.py", "unittest/case.py", "pkg/test_io.py",
                "idlelib/idle_test/htest.py", "site-packages/foo.py", "json/__pycache__/x.py", "README.txt"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x = 1\n")
    found = [p.relative_to(root).as_posix() for p in stdlib_files(root)]
    assert found == ["Zed.py", "json/__init__.py", "json/decoder.py", "os.py", "unittest/case.py"]


def test_real_stdlib_has_no_tests_and_a_fixed_order():
    files = stdlib_files()
    assert files == stdlib_files()
    root = corpus.stdlib_root()
    rel = [p.relative_to(root).as_posix() for p in files]
    assert rel == sorted(rel) and len(rel) > 300
    assert "os.py" in rel and "json/decoder.py" in rel
    for r in rel:
        parts = r.split("/")
        assert not {"test", "tests", "idle_test", "site-packages"} & set(parts[:-1]), r
        assert not parts[-1].startswith("test_") and r.endswith(".py"), r


def test_split_is_a_pure_function_of_the_name():
    names = [f"pkg/module_{i}.py" for i in range(20_000)]
    first = [split_of(n, 0.1) for n in names]
    assert first == [split_of(n, 0.1) for n in reversed(names)][::-1]  # order-free
    assert 0.09 < first.count("val") / len(names) < 0.11
    # a larger val fraction only moves documents into val, never out of it
    wider = [split_of(n, 0.3) for n in names]
    assert all(w == "val" for f, w in zip(first, wider) if f == "val")
    assert 0.29 < wider.count("val") / len(names) < 0.31


def test_a_documents_split_does_not_depend_on_its_neighbours(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d, n in ((a, 10), (b, 40)):
        d.mkdir()
        for i in range(n):
            (d / f"doc{i}.txt").write_text(text_of(i))
    split_a = {doc.name: doc.split for doc in file_documents([str(a)], 0.3)}
    split_b = {doc.name: doc.split for doc in file_documents([str(b)], 0.3)}
    assert split_a == {k: split_b[k] for k in split_a}


# --- files source -------------------------------------------------------------------------------

def test_files_source_reads_text_jsonl_and_parquet(mixed_corpus, tmp_path):
    docs = list(file_documents([str(mixed_corpus)], 0.3))
    names = [d.name for d in docs]
    assert names == (["module.py", "note0.txt", "note1.txt", "note2.txt", "note3.txt", "note4.txt", "note5.txt"]
                     + [f"rows.jsonl:{i}" for i in (0, 1, 2, 3, 4, 6, 7, 8, 9, 10)]  # line 5 is blank
                     + ["sub/readme.md"] + [f"table.parquet:{i}" for i in range(10)])
    assert docs[1].text == text_of(0) and docs[7].text == text_of(200) and docs[-1].text == text_of(309)

    ds = files_prepare([mixed_corpus], tmp_path / "data")
    m = ds.manifest
    train = [d for d in docs if d.split == "train"]
    val = [d for d in docs if d.split == "val"]
    assert train and val
    assert (m["n_train_docs"], m["n_val_docs"]) == (len(train), len(val))
    assert m["train_bytes"] == sum(len(d.text.encode()) for d in train)
    assert m["val_bytes"] == sum(len(d.text.encode()) for d in val)
    assert m["vocab_size"] == ds.vocab_size == VOCAB and m["bos_id"] == VOCAB - 1
    assert m["n_train_tokens"] == len(ds.train_tokens) and m["n_val_tokens"] == len(ds.val_tokens)
    assert m["hash"] == ds.hash == Dataset(ds.path).hash

    bos = ds.bos_id
    assert ds.train_tokens[0] == bos and ds.val_tokens[0] == bos
    enc = ds.tokenizer()
    for tokens, split_docs in ((np.asarray(ds.train_tokens), train), (np.asarray(ds.val_tokens), val)):
        pieces = docs_by_bos(tokens, bos)
        assert len(pieces) == len(split_docs)
        assert [enc.decode(p[1:].tolist()) for p in pieces] == [d.text for d in split_docs]
    # bits per byte rests on this: the bytes of all non-BOS tokens are exactly the text's bytes
    assert ds.token_bytes[bos] == 0
    for tokens, key in ((ds.train_tokens, "train_bytes"), (ds.val_tokens, "val_bytes")):
        t = np.asarray(tokens).astype(np.int64)
        assert int(ds.token_bytes[t[t != bos]].sum()) == m[key]


def test_text_field_option_for_jsonl_and_parquet(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jsonl").write_text("".join(json.dumps({"body": text_of(i), "text": 5}) + "\n" for i in range(12)))
    (src / "b.parquet").write_bytes(parquet_bytes({"body": [text_of(50 + i) for i in range(12)]}))
    ds = files_prepare([src / "a.jsonl", src / "b.parquet"], tmp_path / "data", text_field="body")
    assert ds.manifest["n_train_docs"] + ds.manifest["n_val_docs"] == 24
    with pytest.raises(CorpusError, match=r"a\.jsonl:1: no string field 'text'.*--text-field"):
        files_prepare([src / "a.jsonl"], tmp_path / "data2")
    with pytest.raises(CorpusError, match=r"b\.parquet: no column 'text' \(columns: body; use --text-field\)"):
        files_prepare([src / "b.parquet"], tmp_path / "data2")


def test_blank_rows_are_skipped_and_names_keep_their_row(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "t.parquet").write_bytes(parquet_bytes({"text": ["first doc", "", None, "  ", "last doc"]}))
    (src / "s.jsonl").write_text(json.dumps({"text": ""}) + "\n" + json.dumps({"text": "half \ud800 pair"}) + "\n")
    docs = {d.name: d.text for d in file_documents([str(src)], 0.3)}
    # a lone surrogate (valid JSON, invalid UTF-8) is replaced, not a crash when the text is encoded
    assert docs == {"s.jsonl:1": "half ? pair", "t.parquet:0": "first doc", "t.parquet:4": "last doc"}


def test_rerun_is_a_no_op_and_a_changed_input_rebuilds(mixed_corpus, tmp_path):
    data = tmp_path / "data"
    ds = files_prepare([mixed_corpus], data)

    def stats():
        return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(ds.path.iterdir())}

    before = stats()
    assert set(before) == {"manifest.json", "tokenizer.json", "train.bin", "val.bin", "token_bytes.npy"}
    time.sleep(0.01)
    again = files_prepare([mixed_corpus], data)
    assert again.path == ds.path and stats() == before and again.hash == ds.hash
    assert sorted(p.name for p in data.iterdir()) == [ds.path.name]  # no leftovers beside it

    (mixed_corpus / "note3.txt").write_text(text_of(3) + "one more line\n")
    changed = files_prepare([mixed_corpus], data)
    assert changed.path == ds.path
    assert changed.manifest["inputs_sha256"] != ds.manifest["inputs_sha256"]
    assert changed.hash != ds.hash
    assert stats()["train.bin"] != before["train.bin"]
    assert sorted(p.name for p in data.iterdir()) == [ds.path.name]


def test_a_different_val_fraction_rebuilds(mixed_corpus, tmp_path):
    """The split is part of what the tokens are: the cache must not hand back the old split."""
    a = files_prepare([mixed_corpus], tmp_path / "data", val_fraction=0.3)
    b = files_prepare([mixed_corpus], tmp_path / "data", val_fraction=0.6)
    assert b.manifest["val_fraction"] == 0.6
    assert b.manifest["n_val_docs"] > a.manifest["n_val_docs"] and b.hash != a.hash


def test_force_rebuilds_identically(mixed_corpus, tmp_path):
    a = files_prepare([mixed_corpus], tmp_path / "data")
    ino = (a.path / "train.bin").stat().st_ino
    b = files_prepare([mixed_corpus], tmp_path / "data", force=True)
    assert b.hash == a.hash and (b.path / "train.bin").stat().st_ino != ino


# --- user errors: one line, nothing left behind ----------------------------------------------------

def _jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


ERRORS = {
    "missing path": (lambda d: dict(paths=[str(d / "nope")]), "corpus path not found"),
    "no paths": (lambda d: dict(paths=[]), "needs at least one PATH"),
    "empty dir": (lambda d: dict(paths=[str((d / "empty").mkdir() or d / "empty")]), "no text documents"),
    "only binary": (lambda d: dict(paths=[str(d / "bin")]), "no text documents"),
    "one document": (lambda d: dict(paths=[str(d / "one.txt")]), r"too small: \d train and \d val documents.*--val"),
    "bad jsonl": (lambda d: dict(paths=[str(_jsonl(d / "x.jsonl", ['{"text": "ok"}', '{"text": ']))]),
                  r"x\.jsonl:2: not valid JSON"),
    "jsonl not objects": (lambda d: dict(paths=[str(_jsonl(d / "y.jsonl", ['["a list"]']))]),
                          r"y\.jsonl:1: no string field 'text'"),
    "jsonl not utf-8": (lambda d: dict(paths=[str(d / "latin.jsonl")]), r"latin\.jsonl:1: not UTF-8"),
    "parquet column": (lambda d: dict(paths=[str(d / "t.parquet")], text_field="body"), "no column 'body'"),
    "parquet not text": (lambda d: dict(paths=[str(d / "t.parquet")], text_field="n"), "column 'n' holds int64"),
    "damaged parquet": (lambda d: dict(paths=[str(d / "bad.parquet")]), "not a readable parquet file"),
    "vocab too small": (lambda d: dict(paths=[str(d / "one.txt")], vocab_size=100), "--vocab-size must be"),
    "vocab too large": (lambda d: dict(paths=[str(d / "one.txt")], vocab_size=70_000), "--vocab-size must be"),
    "val fraction": (lambda d: dict(paths=[str(d / "one.txt")], val_fraction=1.0), "--val-fraction"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_user_errors_are_one_line_corpus_errors(tmp_path, case):
    (tmp_path / "one.txt").write_text(text_of(0))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "a.dat").write_bytes(b"\xff\xfe\x00" * 100)
    (tmp_path / "latin.jsonl").write_bytes('{"text": "café"}\n'.encode("latin-1"))
    (tmp_path / "t.parquet").write_bytes(parquet_bytes({"text": ["a", "b"], "n": [1, 2]}))
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    make_kwargs, pattern = ERRORS[case]
    kwargs = make_kwargs(tmp_path)
    data = tmp_path / "data"
    opts = dict(data_dir=data, vocab_size=VOCAB)
    opts.update(kwargs)
    with pytest.raises(CorpusError, match=pattern) as err:
        prepare("files", **opts)
    assert "\n" not in str(err.value)
    assert not data.exists() or not any(data.iterdir())


def test_unknown_source_names_the_choices_and_hints_at_files(tmp_path):
    with pytest.raises(CorpusError, match=r"unknown source 'bogus' \(expected one of: stdlib, files, climbmix\)"):
        prepare("bogus", data_dir=tmp_path / "data")
    with pytest.raises(CorpusError, match=r"evo prepare files"):
        prepare(str(tmp_path), data_dir=tmp_path / "data")  # a path where the source goes


def test_paths_with_a_source_that_takes_none(tmp_path):
    with pytest.raises(CorpusError, match="takes no PATH"):
        prepare("stdlib", paths=[str(tmp_path)], data_dir=tmp_path / "data", vocab_size=VOCAB)


def test_missing_data_is_a_one_line_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="run `evo prepare` first"):
        Dataset(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        find_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match=r"no prepared data in .*run `evo prepare`"):
        find_dataset(tmp_path)


def test_find_dataset_takes_the_only_one_or_a_dataset_dir(mixed_corpus, tmp_path):
    data = tmp_path / "data"
    ds = files_prepare([mixed_corpus], data)
    assert find_dataset(data).path == ds.path  # the only prepared data there
    assert find_dataset(ds.path).path == ds.path  # --data-dir naming a dataset itself
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("".join(text_of(i) for i in range(40)))
    for i in range(8):
        (other / f"y{i}.txt").write_text(text_of(i))
    files_prepare([other], data)
    with pytest.raises(DatasetError, match=r"several prepared datasets in .*files-.*--data-dir"):
        find_dataset(data)


# --- interruption -------------------------------------------------------------------------------

def test_interrupted_prepare_leaves_nothing_and_a_rerun_succeeds(mixed_corpus, tmp_path, monkeypatch):
    real_train = trainer.tokenizer.train
    calls = []

    def interrupted(texts, vocab_size):
        calls.append(vocab_size)
        real_train(texts, vocab_size)
        raise KeyboardInterrupt  # Ctrl-C after the tokenizer is trained

    data = tmp_path / "data"
    monkeypatch.setattr(trainer.tokenizer, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        files_prepare([mixed_corpus], data)
    assert calls == [VOCAB]
    assert list(data.iterdir()) == []  # no dataset, no temporary directory
    with pytest.raises(DatasetError):
        find_dataset(data)

    monkeypatch.setattr(trainer.tokenizer, "train", real_train)
    ds = files_prepare([mixed_corpus], data)
    assert [p.name for p in data.iterdir()] == [ds.path.name]

    # an interrupted rebuild keeps the complete dataset that was there
    monkeypatch.setattr(trainer.tokenizer, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        files_prepare([mixed_corpus], data, force=True)
    assert [p.name for p in data.iterdir()] == [ds.path.name]
    assert Dataset(ds.path).hash == ds.hash


# --- climbmix over real HTTP ----------------------------------------------------------------------

class ShardServer:
    """A real HTTP server on 127.0.0.1 that serves shards, counts requests and can misbehave."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: Counter[str] = Counter()
        self.truncate: Counter[str] = Counter()  # how many next responses to cut short
        self.wrong_etag: set[str] = set()
        self.lock = threading.Lock()
        state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                with state.lock:
                    state.requests[name] += 1
                body = state.files.get(name)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                sha = "0" * 64 if name in state.wrong_etag else hashlib.sha256(body).hexdigest()
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", f'"{sha}"')
                self.end_headers()
                with state.lock:
                    cut = state.truncate[name] > 0
                    state.truncate[name] -= cut
                if cut:
                    self.wfile.write(body[: len(body) // 2])  # then the connection closes early
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs=dict(poll_interval=0.02), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = ShardServer()
    yield s
    s.close()


def shard(first: int, n: int) -> bytes:
    return parquet_bytes({"text": [text_of(first + i) for i in range(n)], "id": list(range(n))})


def test_climbmix_prepare_downloads_shards_and_pins_the_last_as_val(server, tmp_path, monkeypatch):
    server.files = {"shard_00000.parquet": shard(0, 12), "shard_00001.parquet": shard(100, 9),
                    "shard_06542.parquet": shard(500, 5)}
    monkeypatch.setenv("EVO_CLIMBMIX_URL", server.url + "/")
    data = tmp_path / "data"
    ds = prepare("climbmix", shards=1, data_dir=data, vocab_size=VOCAB)
    assert dict(server.requests) == {"shard_00000.parquet": 1, "shard_06542.parquet": 1}
    m = ds.manifest
    assert (m["source"], m["shards"], m["n_train_docs"], m["n_val_docs"]) == ("climbmix", 1, 12, 5)
    assert ds.path.name == f"climbmix1-v{VOCAB}"
    enc = ds.tokenizer()
    val = [enc.decode(p[1:].tolist()) for p in docs_by_bos(np.asarray(ds.val_tokens), ds.bos_id)]
    assert val == [text_of(500 + i) for i in range(5)]
    shards = data / "climbmix-shards"
    assert (shards / "shard_00000.parquet").read_bytes() == server.files["shard_00000.parquet"]
    sha = hashlib.sha256(server.files["shard_06542.parquet"]).hexdigest()
    assert (shards / "shard_06542.parquet.sha256").read_text().strip() == sha

    # cached: nothing fetched again; two shards fetch only the new one
    assert prepare("climbmix", shards=1, data_dir=data, vocab_size=VOCAB).hash == ds.hash
    two = prepare("climbmix", shards=2, data_dir=data, vocab_size=VOCAB)
    assert dict(server.requests) == {"shard_00000.parquet": 1, "shard_00001.parquet": 1, "shard_06542.parquet": 1}
    assert two.manifest["n_train_docs"] == 21 and two.path.name == f"climbmix2-v{VOCAB}"


def test_climbmix_needs_shards(tmp_path):
    with pytest.raises(CorpusError, match="--shards must be at least 1"):
        prepare("climbmix", data_dir=tmp_path / "data", vocab_size=VOCAB)


def test_climbmix_missing_shard_fails_the_prepare_fast(server, tmp_path, monkeypatch):
    server.files = {"shard_00000.parquet": shard(0, 12)}  # no val shard on the server
    monkeypatch.setenv("EVO_CLIMBMIX_URL", server.url)
    t0 = time.time()
    with pytest.raises(DownloadError, match=r"shard_06542\.parquet after 1 attempt .*404"):
        prepare("climbmix", shards=1, data_dir=tmp_path / "data", vocab_size=VOCAB)
    assert time.time() - t0 < 5 and server.requests["shard_06542.parquet"] == 1
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["climbmix-shards"]


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_truncated_download_is_retried(server, tmp_path):
    body = shard(0, 30)
    server.files = {"shard_00000.parquet": body}
    server.truncate["shard_00000.parquet"] = 1
    dest = tmp_path / "shards" / "shard_00000.parquet"
    sha = download(f"{server.url}/shard_00000.parquet", dest, retries=2, backoff=0.01)
    assert server.requests["shard_00000.parquet"] == 2
    assert sha == hashlib.sha256(body).hexdigest() and dest.read_bytes() == body
    assert _leftovers(dest.parent) == ["shard_00000.parquet", "shard_00000.parquet.sha256"]


def test_truncated_every_time_gives_up_with_the_reason(server, tmp_path):
    server.files = {"shard_00000.parquet": shard(0, 30)}
    server.truncate["shard_00000.parquet"] = 100  # misbehave on every attempt
    dest = tmp_path / "shard_00000.parquet"
    with pytest.raises(DownloadError, match=r"after 3 attempts .*truncated \(\d+ of \d+ bytes\)"):
        download(f"{server.url}/shard_00000.parquet", dest, retries=2, backoff=0.01)
    assert _leftovers(tmp_path) == []


def test_wrong_checksum_fails_after_retries_and_leaves_no_file(server, tmp_path):
    server.files = {"shard_00000.parquet": shard(0, 5)}
    server.wrong_etag = {"shard_00000.parquet"}
    dest = tmp_path / "shards" / "shard_00000.parquet"
    with pytest.raises(DownloadError, match=r"after 3 attempts \(.*checksum mismatch") as err:
        download(f"{server.url}/shard_00000.parquet", dest, retries=2, backoff=0.01)
    assert "\n" not in str(err.value)
    assert server.requests["shard_00000.parquet"] == 3
    assert _leftovers(dest.parent) == []  # no shard, no sidecar, no partial file


def test_not_found_fails_fast(server, tmp_path):
    t0 = time.time()
    with pytest.raises(DownloadError, match=r"after 1 attempt \(HTTPError: HTTP Error 404"):
        download(f"{server.url}/shard_00099.parquet", tmp_path / "shard_00099.parquet", retries=4, backoff=10)
    assert time.time() - t0 < 5 and server.requests["shard_00099.parquet"] == 1
    assert _leftovers(tmp_path) == []


def test_not_parquet_is_refused(server, tmp_path):
    server.files = {"shard_00000.parquet": b"<html>rate limited</html>"}
    with pytest.raises(DownloadError, match="not a complete parquet file"):
        download(f"{server.url}/shard_00000.parquet", tmp_path / "shard_00000.parquet", retries=1, backoff=0.01)
    assert _leftovers(tmp_path) == []


def test_unreachable_server_is_a_download_error(tmp_path):
    s = ShardServer()
    url = s.url
    s.close()  # nothing listens there any more
    with pytest.raises(DownloadError, match=r"after 2 attempts \(URLError"):
        download(f"{url}/shard_00000.parquet", tmp_path / "shard_00000.parquet", retries=1, backoff=0.01, timeout=5)


def test_a_downloaded_shard_is_not_fetched_again(server, tmp_path):
    server.files = {"shard_00000.parquet": shard(0, 5)}
    dest = tmp_path / "shard_00000.parquet"
    first = download(f"{server.url}/shard_00000.parquet", dest, retries=0)
    mtime = dest.stat().st_mtime_ns
    assert download(f"{server.url}/shard_00000.parquet", dest, retries=0) == first
    assert server.requests["shard_00000.parquet"] == 1 and dest.stat().st_mtime_ns == mtime
    # a shard without its sidecar (an old or foreign file) is fetched and checked again
    (tmp_path / "shard_00000.parquet.sha256").unlink()
    assert download(f"{server.url}/shard_00000.parquet", dest, retries=0) == first
    assert server.requests["shard_00000.parquet"] == 2
