"""Bad input anywhere is one line that says what to do, a non-zero exit, and nothing written."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from tests.conftest import SEED_TRAIN, evo


def _copy_data(dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(dataset.path, data)
    return data


def _one_line_error(proc, needle: str) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    [line] = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error")]
    assert needle in line, line
    return line


@pytest.mark.parametrize("damage, needle, also_run", [
    (lambda d: (d / "manifest.json").write_text("{not json"), "not a readable manifest", True),
    (lambda d: (d / "manifest.json").write_text('{"vocab_size": 512}'), "lacks", False),
    (lambda d: (d / "train.bin").write_bytes((d / "train.bin").read_bytes()[:1000]), "truncated or replaced", True),
    (lambda d: (d / "val.bin").unlink(), "val.bin is missing", False),
    (lambda d: (d / "token_bytes.npy").write_bytes(b"garbage"), "token_bytes.npy is not readable", False),
])
def test_a_damaged_data_directory_is_named_in_one_line(dataset, tmp_path, damage, needle, also_run):
    data = _copy_data(dataset, tmp_path)
    damage(data)
    _one_line_error(evo("trial", SEED_TRAIN, "--data-dir", data, "--budget", 1, check=False), needle)
    if not also_run:  # `evo run` resolves its data the same way (`evo.datasets`): two cases show it
        return
    db = tmp_path / "archive.db"
    _one_line_error(evo("run", "--db", db, "--trials", 1, "--data-dir", data, "--operator", "offline",
                        cwd=tmp_path, check=False), needle)
    assert not db.exists()  # the data is checked before the archive is created


def test_a_corrupt_archive_is_named_in_one_line_and_left_as_it_was(short_run, tmp_path):
    src, _ = short_run
    db = tmp_path / "archive.db"
    raw = bytearray(src.read_bytes())
    raw[4096:8192] = b"\xff" * 4096  # a page of garbage after a valid header
    db.write_bytes(bytes(raw))
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    for args in (["elites", "--db", db], ["runs", "--db", db],
                 ["run", "--db", db, "--trials", 1, "--operator", "offline", "--resume"]):
        proc = evo(*args, cwd=tmp_path, check=False)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert str(db.name) in proc.stderr
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


@pytest.fixture
def archive_copy(short_run, tmp_path):
    src, name = short_run
    db = tmp_path / "archive.db"
    db.write_bytes(src.read_bytes())
    shutil.copytree(src.with_suffix(".git"), db.with_suffix(".git"))
    return db, name, hashlib.sha256(db.read_bytes()).hexdigest()


@pytest.mark.parametrize("args, needle", [
    (["--population", 7], "--population"),
    (["--budget", 9], "--budget"),
    (["--operator", "llm"], "--operator"),
    (["--seed-file", SEED_TRAIN], "--seed"),
    (["--noise-seeds", 5, "--population", 7], "--noise-seeds, --population"),
])
def test_resume_refuses_flags_that_would_change_the_run(archive_copy, tmp_path, args, needle):
    db, name, before = archive_copy
    line = _one_line_error(evo("run", "--db", db, "--name", name, "--resume", *args, cwd=tmp_path, check=False),
                           needle)
    assert "start a new run" in line
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_resume_accepts_the_flags_a_resume_may_change_and_the_run_s_own_values(archive_copy, tmp_path):
    db, name, _ = archive_copy
    # the same population as stored, a new stop condition: not a conflict (the run is finished and
    # has its trials, so it ends at once)
    proc = evo("run", "--db", db, "--name", name, "--resume", "--population", 3, "--generations", 1, "--sandbox",
               "auto", cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr


def test_an_empty_or_unreadable_program_is_refused_with_the_llm_operator(dataset, tmp_path):
    empty = tmp_path / "program.md"
    empty.write_text("  \n")
    env = {"ANTHROPIC_API_KEY": "sk-ant-test-not-used"}
    db = tmp_path / "archive.db"
    _one_line_error(evo("run", "--db", db, "--trials", 1, "--operator", "llm", "--program", empty,
                        "--data-dir", dataset.path, cwd=tmp_path, check=False, env=env), "is empty")
    binary = tmp_path / "program.bin"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    _one_line_error(evo("run", "--db", db, "--trials", 1, "--operator", "llm", "--program", binary,
                        "--data-dir", dataset.path, cwd=tmp_path, check=False, env=env), "not a readable text file")
    assert not db.exists()


def test_seed_from_a_run_on_other_data_is_refused(any_short_run, dataset, corpus_dir, tmp_path):
    """From an SQLite file and from a PostgreSQL URL (`postgresql://…/db:RUN`)."""
    from trainer.prepare import prepare

    prior_db, prior_name = any_short_run
    other = prepare("files", paths=[str(corpus_dir)], data_dir=tmp_path / "other", vocab_size=300, val_fraction=0.2)
    db = tmp_path / "next.db"
    _one_line_error(evo("run", "--db", db, "--seed-from", f"{prior_db}:{prior_name}", "--trials", 1,
                        "--data-dir", other.path, "--operator", "offline", cwd=tmp_path, check=False),
                    "trained on other data")
    assert not db.exists()


def test_a_database_server_that_is_not_there_is_one_line(dataset, tmp_path):
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://evo@127.0.0.1:{port}/archive"
    for args in (("runs", "--db", url), ("run", "--db", url, "--trials", 1, "--operator", "offline", "--data-dir", dataset.path),
                 ("migrate", "--db", url)):
        line = _one_line_error(evo(*args, cwd=tmp_path, check=False), "cannot connect")
        assert line == f"Error: cannot connect to {url}: connection refused"
