"""An autoresearch night built for real: a git repository whose branch and results.tsv look like
the ones autoresearch's agent loop leaves (kept commits advance the branch; a discarded or crashed
one is committed, logged, then `git reset --hard` away; the baseline is the branch's start)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "autoresearch" / "train.py"


def git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "agent", "GIT_AUTHOR_EMAIL": "agent@example.com", "GIT_COMMITTER_NAME": "agent",
           "GIT_COMMITTER_EMAIL": "agent@example.com", "PATH": "/usr/bin:/bin", "HOME": str(repo)}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


@dataclass
class Night:
    repo: Path
    kept: list[str]  # short commits on the branch, oldest first
    discarded: str
    crashed: str
    gone: str  # logged, but not in the repository


def build_night(root: Path) -> Night:
    repo = root / "autoresearch"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "master")
    base = FIXTURE.read_text()
    (repo / "train.py").write_text(base)
    (repo / "prepare.py").write_text("# autoresearch's prepare.py would be here; evo brings its own\n")
    (repo / ".gitignore").write_text("results.tsv\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "initial")
    git(repo, "checkout", "-q", "-b", "autoresearch/mar5")

    def experiment(old: str, new: str, message: str) -> str:
        text = (repo / "train.py").read_text()
        assert old in text, old
        (repo / "train.py").write_text(text.replace(old, new))
        git(repo, "commit", "-qam", message)
        return git(repo, "rev-parse", "--short=7", "HEAD")

    baseline = git(repo, "rev-parse", "--short=7", "HEAD")
    lr = experiment("MATRIX_LR = 0.01 ", "MATRIX_LR = 0.02 ", "increase LR to 0.02")
    discarded = experiment('WINDOW_PATTERN = "SL"', 'WINDOW_PATTERN = "L" ', "full attention everywhere")
    git(repo, "reset", "-q", "--hard", "HEAD~1")
    crashed = experiment("DEPTH = 2 ", "DEPTH = 0 ", "no layers at all")
    git(repo, "reset", "-q", "--hard", "HEAD~1")
    batch = experiment("DEVICE_BATCH_SIZE = 8 ", "DEVICE_BATCH_SIZE = 4 ", "halve the device batch")
    rows = [
        ("commit", "val_bpb", "memory_gb", "status", "description"),
        (baseline, "3.100000", "0.5", "keep", "baseline"),
        (lr, "3.050000", "0.5", "keep", "increase LR to 0.02"),
        (discarded, "3.060000", "0.5", "discard", "full attention everywhere"),
        (crashed, "0.000000", "0.0", "crash", "no layers at all"),
        ("deadbee", "0.000000", "0.0", "crash", "double model width (OOM)"),
        (batch, "3.010000", "0.4", "keep", "halve the device batch"),
    ]
    (repo / "results.tsv").write_text("".join("\t".join(r) + "\n" for r in rows))
    return Night(repo, [baseline, lr, batch], discarded, crashed, "deadbee")
