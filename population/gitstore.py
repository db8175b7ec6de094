"""The archive's git repository: one commit per individual, holding its `train.py`.

Git gives the user tools they already know for the population's genealogy: `git log --graph
--all` draws it (a crossover is a merge commit, its git parents are the recorded parents),
`git diff A B` shows what an operator changed, `git show <sha>:train.py` recovers a variant.

The engine commits once per trial, and its bookkeeping budget is a few milliseconds with
10,000 individuals in the archive, so objects are written straight into the object database
(blob, tree and commit built and zlib'd in-process, as loose objects) and refs as loose ref files;
no `git` process is spawned on that path. Every individual gets a ref
(`refs/individuals/<run>/<id>`) so that no commit is ever unreachable: `git gc` would prune
those, and `git log --all` would not show them. The store also keeps a branch per run on its
best elite and HEAD on the newest run's branch, so a bare `git log` shows the champion's
lineage.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
import threading
import time
import zlib
from pathlib import Path

from git import Repo

IDENTITY = "evo <evo@localhost>"
FILENAME = "train.py"
_SHA = re.compile(r"[0-9a-f]{40}")


def individual_ref(run: str, individual_id: int) -> str:
    """Every individual's commit stays reachable through this ref (so `git gc` keeps it)."""
    return f"refs/individuals/{run}/{individual_id}"


def elite_ref(run: str, cell: str) -> str:
    """The elite of one cell: `git show refs/elites/<run>/3,5:train.py`."""
    return f"refs/elites/{run}/{cell}"


def branch_ref(run: str) -> str:
    """The run's branch, kept on its best elite: `git log <run>` is the champion's lineage."""
    return f"refs/heads/{run}"


class GitStore:
    """A bare repository of variants. Thread-safe: one lock serialises every call, because
    gitpython's persistent `cat-file` reader is shared state."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if not (self.path / "objects").is_dir():
            Repo.init(self.path, bare=True, mkdir=True)
        self.repo = Repo(self.path)
        self._lock = threading.Lock()
        self._written: dict[str, str] = {}  # refs this store set, and to what: an unchanged one is not rewritten

    def __repr__(self) -> str:
        return f"GitStore({str(self.path)!r})"

    def close(self) -> None:
        self.repo.close()

    def _store(self, kind: bytes, data: bytes) -> bytes:
        """Write one loose object, exactly as `git hash-object -w` would (gitpython's own
        `odb.store` spawns that command per object); returns the binary sha."""
        raw = kind + b" " + str(len(data)).encode() + b"\0" + data
        sha = hashlib.sha1(raw).digest()
        target = self.path / "objects" / sha.hex()[:2] / sha.hex()[2:]
        if not target.exists():
            target.parent.mkdir(exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".obj")
            with os.fdopen(fd, "wb") as f:
                f.write(zlib.compress(raw, 1))  # level 1: git's default core.looseCompression
            os.chmod(tmp, 0o444)
            os.replace(tmp, target)
        return sha

    def commit(
        self,
        source: str,
        parents: list[str],
        message: str,
        trailers: dict[str, object] | None = None,
        at: float | None = None,
    ) -> str:
        """Write a commit whose tree is just `train.py` = `source`; returns its sha.

        `message`'s first line is the subject; `trailers` become `Key: value` lines at the end
        (`git log --format=%(trailers)` and `git interpret-trailers` read them). `at` (seconds
        since the epoch, default now) is the author and committer time: the archive passes a
        time it stores, so that the commit, and its sha, is a function of the database alone
        and every host's mirror of one archive agrees (`Store.sync_git`).
        """
        for p in parents:
            if not _SHA.fullmatch(p):
                raise ValueError(f"not a full commit sha: {p!r}")
        parents = list(dict.fromkeys(parents))  # a crossover of a parent with itself is one parent
        subject, _, body = (message.strip() or "(no message)").partition("\n")
        text = subject + ("\n\n" + body.strip() if body.strip() else "")
        if trailers:
            lines = (f"{k}: {' '.join(str(v).split())}" for k, v in trailers.items())
            text += "\n\n" + "\n".join(lines)
        stamp = f"{int(time.time() if at is None else at)} +0000"
        with self._lock:
            blob = self._store(b"blob", source.encode())
            tree = self._store(b"tree", b"100644 " + FILENAME.encode() + b"\0" + blob)
            header = [f"tree {tree.hex()}"] + [f"parent {p}" for p in parents]
            header += [f"author {IDENTITY} {stamp}", f"committer {IDENTITY} {stamp}"]
            body = "\n".join(header) + "\n\n" + text + "\n"
            return self._store(b"commit", body.encode()).hex()

    def set_ref(self, name: str, sha: str) -> None:
        """Point `name` (e.g. `refs/elites/run1/3,5`) at `sha`, written as a loose ref file,
        which git prefers over any packed value."""
        if not name.startswith("refs/") or ".." in name or not _SHA.fullmatch(sha):
            raise ValueError(f"bad ref update {name!r} -> {sha!r}")
        if self._written.get(name) == sha:
            return
        self._write_file(self.path / name, sha + "\n")
        self._written[name] = sha

    def set_head(self, ref: str) -> None:
        """Point HEAD at branch `ref` (e.g. `refs/heads/run1`), so that `git log` and `git show`
        without a revision work in the repository."""
        if not ref.startswith("refs/heads/") or ".." in ref:
            raise ValueError(f"bad HEAD target {ref!r}")
        self._write_file(self.path / "HEAD", f"ref: {ref}\n")

    def _write_file(self, target: Path, text: str) -> None:
        """Atomically (temp file + rename; git skips dot files while it scans refs)."""
        with self._lock:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".ref")
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, target)

    def refs(self, *prefixes: str) -> dict[str, str]:
        """Every ref under `prefixes` (e.g. "refs/elites/"), loose or packed, and its sha."""
        with self._lock:
            out = self.repo.git.for_each_ref("--format=%(objectname) %(refname)", *prefixes)
        return {name: sha for sha, _, name in (line.partition(" ") for line in out.splitlines())}

    def missing(self, shas: list[str]) -> set[str]:
        """Those of `shas` whose objects this repository lacks (one `git cat-file --batch-check`)."""
        if not shas:
            return set()
        with self._lock:
            out = subprocess.run(["git", f"--git-dir={self.path}", "cat-file", "--batch-check"], input="\n".join(shas),
                                 capture_output=True, text=True, check=True).stdout
        return {line.split()[0] for line in out.splitlines() if line.endswith(" missing")}

    def delete_ref(self, name: str) -> None:
        """Remove a ref (loose or packed). Rare (an elite moving cells), so `git` does it."""
        with self._lock:
            self.repo.git.update_ref("-d", name)
            self._written.pop(name, None)

    def source_at(self, sha: str) -> str:
        """The `train.py` of commit `sha`."""
        with self._lock:
            blob = self.repo.commit(sha).tree / FILENAME
            return blob.data_stream.read().decode()

    def merge_base(self, a: str, b: str) -> str | None:
        """The best common ancestor of two commits (what a three-way crossover merges from),
        or None when their histories never meet."""
        with self._lock:
            bases = self.repo.merge_base(a, b)
        return bases[0].hexsha if bases else None
