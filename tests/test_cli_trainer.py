"""The installed `evo` command for `prepare` and `trial`: user errors are one `Error:` line, never a
traceback; a real trial prints its val_bpb.

Each case runs the console script in a subprocess (a second or more each, all of it imports), so
the cases are the ones a user meets first; the rest of prepare's errors are tested in-process in
test_trainer_prepare.py. EVO_DATA_DIR points into the test's own directory: nothing touches
~/.cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SEED_TRAIN

EVO = shutil.which("evo") or str(Path(sys.executable).parent / "evo")


def evo(*args, cwd: Path, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    # one math thread: on a small shared CPU, busy-waiting thread pools slow a trial tenfold under load
    full_env = {**os.environ, "EVO_DATA_DIR": str(cwd / "data"), "COLUMNS": "200", "OMP_NUM_THREADS": "1",
                **(env or {})}
    return subprocess.run([EVO, *map(str, args)], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def assert_user_error(r: subprocess.CompletedProcess, needle: str) -> str:
    """Non-zero exit, no traceback, exactly one `Error:` line (the last line), which says `needle`."""
    assert r.returncode != 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], r.stderr
    assert needle in errors[0], errors[0]
    return errors[0]


def test_evo_is_installed():
    assert Path(EVO).exists(), "the evo console script is not installed (pip install -e .)"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["prepare", "bogus"], "unknown source 'bogus'"),
        (["prepare", "files", "/nonexistent/corpus"], "corpus path not found: /nonexistent/corpus"),
        (["prepare", "files", "{empty}"], "no text documents found"),
    ],
    ids=["unknown-source", "missing-path", "empty-corpus"],
)
def test_prepare_user_errors(tmp_path, args, needle):
    (tmp_path / "empty").mkdir()
    args = [a.format(empty=tmp_path / "empty") for a in args]
    r = evo(*args, cwd=tmp_path)
    assert_user_error(r, needle)
    assert r.returncode == 1
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())


def test_prepare_files_prints_the_dataset_path(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"doc{i}.txt").write_text(f"document {i}: " + "the quick brown fox jumps over the lazy dog " * 20)
    r = evo("prepare", "files", corpus, "--vocab-size", "300", "--val-fraction", "0.3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.strip())
    assert path.parent == tmp_path / "data" and (path / "manifest.json").exists()
    assert "data hash" in r.stderr  # progress and the summary go to stderr, the path alone to stdout


@pytest.mark.parametrize(
    "setup, args, needle",
    [
        ("not-python", ["trial", "x.txt"], "x.txt: not a Python file (SyntaxError"),
        ("", ["trial", "missing.py"], "missing.py: no such file"),
        ("", ["trial", SEED_TRAIN, "--budget", "0"], "Invalid value for '--budget': must be greater than 0"),
        ("", ["trial", SEED_TRAIN, "--budget", "-1"], "Invalid value for '--budget': must be greater than 0"),
        ("", ["trial", SEED_TRAIN, "--data-dir", "{empty}"], "no prepared data in"),
    ],
    ids=["not-python", "missing-file", "budget-0", "budget-negative", "no-data"],
)
def test_trial_user_errors(tmp_path, setup, args, needle):
    if setup == "not-python":
        (tmp_path / "x.txt").write_text("These are notes, not a program: train for 5 minutes.\n")
    (tmp_path / "empty").mkdir()
    args = [str(a).format(empty=tmp_path / "empty") for a in args]
    assert_user_error(evo(*args, cwd=tmp_path), needle)


def test_trial_of_the_seed_prints_val_bpb(dataset, tmp_path):
    """A real 1-second CPU trial on the session's tiny prepared dataset (found through --data-dir)."""
    r = evo("trial", SEED_TRAIN, "--data-dir", dataset.path.parent, "--budget", "1", "--device", "cpu",
            "--keep-dir", tmp_path / "work", cwd=tmp_path, timeout=150)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    fields = dict(ln.split(":", 1) for ln in r.stdout.splitlines() if ":" in ln)
    assert fields["outcome"].strip() == "ok"
    val_bpb = float(fields["val_bpb"])
    assert 0 < val_bpb < dataset.uniform_bpb()
    assert float(fields["training_seconds"]) >= 1.0
    assert dataset.path.name in r.stderr  # the trial line names the data it used
    assert (tmp_path / "work" / "stdout.log").exists()
