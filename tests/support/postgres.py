"""A real PostgreSQL server for the tests, started in a temporary directory.

Debian's `postgresql` package (installed by .ci/run) puts its server binaries in
/usr/lib/postgresql/<major>/bin, not on PATH, so they are looked up there too. The server runs
as the `postgres` user when the tests run as root (PostgreSQL refuses to run as root), listens
on a free loopback port with its unix socket in the data directory, and has fsync off: the
tests need speed, not durability. Each test gets a database of its own (`fresh_database`).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.ports import free_port


def binaries() -> Path | None:
    """The directory holding `initdb`, `pg_ctl` and `postgres`, or None when none is installed."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl", path=str(Path(found).parent)):
        return Path(found).parent
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True):
        return Path(candidate).parent
    return None



@dataclass
class Server:
    bindir: Path
    datadir: Path
    port: int
    user: str
    _counter: int = 0
    _file_copy: bool | None = None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str):
        """Run one statement outside a transaction (CREATE DATABASE needs that); its first value."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="postgres",
                             autocommit=True) as conn:
            cursor = conn.execute(sql)
            row = cursor.fetchone() if cursor.description else None
            return row[0] if row else None

    def fresh_database(self) -> str:
        """A new empty database; returns its URL. Copied file by file from the template where the
        server can (PostgreSQL 15+): twice as fast as the default for a database this small."""
        self._counter += 1
        name = f"evo_test_{os.getpid()}_{self._counter}"
        if self._file_copy is None:
            self._file_copy = int(self.admin("SHOW server_version_num")) >= 150000
        self.admin(f'CREATE DATABASE "{name}"' + (" STRATEGY FILE_COPY" if self._file_copy else ""))
        return self.url(name)

    def stop(self) -> None:
        _as_owner(self, [str(self.bindir / "pg_ctl"), "stop", "-D", str(self.datadir), "-m", "immediate", "-w"],
                  check=False)
        shutil.rmtree(self.datadir.parent, ignore_errors=True)


def _as_owner(server_or_dir, args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    """Run a server binary as the data directory's owner (`postgres` when we are root)."""
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--", *args]
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=120)


def start() -> Server:
    """initdb + pg_ctl start in a new temporary directory (under /tmp, which the `postgres` user
    can reach); returns the running server. `stop()` it at the end: that also removes the directory."""
    bindir = binaries()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL server binaries (initdb) not found")
    tmp = Path(tempfile.mkdtemp(prefix="evo-pg-"))
    datadir = tmp / "pgdata"
    user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(tmp, entry.pw_uid, entry.pw_gid)
    _as_owner(None, [str(bindir / "initdb"), "-D", str(datadir), "-U", user, "-A", "trust", "-E", "UTF8",
                     "--no-sync"])
    port = free_port()
    options = f"-c listen_addresses=127.0.0.1 -k {datadir} -p {port} -c fsync=off -c synchronous_commit=off " \
              "-c full_page_writes=off -c max_connections=200"
    proc = _as_owner(None, [str(bindir / "pg_ctl"), "start", "-D", str(datadir), "-w", "-t", "60",
                            "-l", str(datadir / "server.log"), "-o", options], check=False)
    server = Server(bindir, datadir, port, user)
    if proc.returncode != 0:
        log = (datadir / "server.log").read_text(errors="replace")[-2000:] if (datadir / "server.log").exists() else ""
        raise RuntimeError(f"PostgreSQL did not start: {proc.stderr.strip()} {log}")
    deadline = time.monotonic() + 30
    while True:
        try:
            server.admin("SELECT 1")
            return server
        except Exception:
            if time.monotonic() > deadline:
                server.stop()
                raise
            time.sleep(0.2)


def copy_archive(sqlite_path: Path, url: str) -> None:
    """Copy every row of an SQLite archive into a new, empty database at `url`, table by table
    through the models' own types (times, JSON), so the browser's tests read the same archive on
    both backends. The server's id sequences are moved past the copied ids."""
    from sqlalchemy import create_engine, select, text

    from population.models import Base
    from population.opening import _create

    source = create_engine(f"sqlite:///{sqlite_path}")
    target = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        _create(target)
        with source.connect() as src, target.begin() as dst:
            for table in Base.metadata.sorted_tables:
                if table.name == "evo_meta":
                    continue  # _create wrote the version
                rows = [dict(r) for r in src.execute(select(table)).mappings()]
                if rows:
                    dst.execute(table.insert(), rows)
                if "id" in table.c:
                    dst.execute(text(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                                     f"coalesce((SELECT max(id) FROM {table.name}), 0) + 1, false)"))
    finally:
        source.dispose()
        target.dispose()
