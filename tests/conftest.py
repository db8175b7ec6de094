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


@pytest.fixture
def requires_sandbox():
    """Tests of the OS sandbox: skipped where bubblewrap cannot run, except in CI, where a missing
    sandbox is a failure (.ci/run installs it)."""
    import os

    from trainer.sandbox import probe

    usable, why = probe()
    if not usable:
        if os.environ.get("CI"):
            pytest.fail(f"the sandbox is required in CI: {why}")
        pytest.skip(why)


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the session (tests/support/postgres.py). Skipped where its
    binaries are missing, except in CI, where that is a failure (.ci/run installs them)."""
    import os

    from tests.support import postgres

    if postgres.binaries() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is required in CI: no initdb found (.ci/run installs Debian's postgresql)")
        pytest.skip("PostgreSQL server binaries (initdb) not installed")
    server = postgres.start()
    yield server
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def _mirrors(tmp_path_factory):
    """Git mirrors of server archives go to a directory of the session, not ~/.cache."""
    import os

    os.environ["EVO_MIRRORS"] = str(tmp_path_factory.mktemp("mirrors"))


# Every archive backend; the store-level, engine, resume, browse and web tests run on each, as
# Optuna tests every storage.
BACKENDS = ("sqlite", "postgresql")


# A test of one backend's own behaviour (SQLite's WAL readers, files beside the archive)
# overrides the fixture's parameters with this mark.
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"])


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def archive_url(backend, tmp_path, request) -> str:
    """Where a test's new archive goes: an SQLite file in its directory, or a fresh database on
    the session's PostgreSQL server."""
    if backend == "sqlite":
        return str(tmp_path / "archive.db")
    return request.getfixturevalue("postgres_server").fresh_database()


@pytest.fixture
def store(archive_url, tmp_path):
    """A new, empty archive (database and git store) on each backend."""
    from population.store import Store

    s = Store.open(archive_url, create=True, git_dir=tmp_path / "archive.git")
    yield s
    s.close()


@pytest.fixture
def run(store):
    return store.create_run("r1", {"budget": 60})


def variant(name: str) -> str:
    return (VARIANTS / name).read_text()


FAST_TOML = """
eval_tokens = 4096
eval_seq_len = 64
noise_seeds = 2
champion_seeds = 2
"""


def evo(*args, cwd=None, env=None, timeout=600, check=True):
    """Run the real `evo` command in a subprocess."""
    import os
    import subprocess

    proc = subprocess.run(["evo", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"evo {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def start_evo(*args, cwd=None, env=None):
    """Start the real `evo` in its own process group, where Ctrl-C (SIGINT to the group) reaches it.

    SIGINT goes back to its default handler in the child: a shell that starts pytest in the
    background without job control sets it to ignored, Python then never raises KeyboardInterrupt,
    and a Ctrl-C test would see a run that simply finishes.
    """
    import os
    import signal
    import subprocess

    return subprocess.Popen(["evo", *map(str, args)], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env={**os.environ, **(env or {})},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.fixture(scope="session")
def fast_toml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "evo.toml"
    path.write_text(FAST_TOML)
    return path


@pytest.fixture(scope="session")
def short_run(dataset, fast_toml, tmp_path_factory):
    """A real archive from a short `evo run` (offline operator, CPU, 1 s trials): what the
    browser, export and consistency tests read. Returns (db path, run name)."""
    work = tmp_path_factory.mktemp("short-run")
    db = work / "archive.db"
    evo("run", "--db", db, "--name", "short", "--population", 3, "--generations", 1, "--budget", 1,
        "--config", fast_toml, "--data-dir", dataset.path, "--operator", "offline", cwd=work)
    return db, "short"


@pytest.fixture(scope="session", params=BACKENDS)
def any_short_run(request, short_run):
    """The short run's archive on each backend: the SQLite file itself, or a PostgreSQL database
    holding a copy of its rows, whose git store is this host's mirror made from the database
    (so every commit the engine wrote is rebuilt there and checked to have the same sha).
    Returns (db path or URL, run name). The browser's tests read it on both."""
    if request.param == "sqlite":
        return short_run
    return copy_to_postgres(request, short_run[0]), short_run[1]


def copy_to_postgres(request, sqlite_path) -> str:
    """A fresh database on the session's server with the rows of an SQLite archive; its URL."""
    from tests.support.postgres import copy_archive

    url = request.getfixturevalue("postgres_server").fresh_database()
    copy_archive(sqlite_path, url)
    return url
