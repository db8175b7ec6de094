"""`evo import autoresearch PATH`: an autoresearch night (its git branch and results.tsv) as a run.

autoresearch's agent commits each experiment on a branch, logs it to an untracked results.tsv
(`commit val_bpb memory_gb status description`, status keep / discard / crash) and `git reset`s
the branch back after a discard or a crash. So the branch holds the kept line and the log holds
everything tried. Imported into the archive:

- every logged commit whose object is still in the repository becomes an individual (status
  "imported", operator "autoresearch") with its train.py at that commit and the description as its
  hypothesis; its parent is its nearest logged first-parent ancestor, so `evo lineage` of the
  branch tip is the branch's kept line;
- the recorded val_bpb (and memory, status, short commit) stays with the run, in
  `run.config["imported"]`: an imported score, shown as such, never a measurement. Imported
  individuals have no trial, so nothing of them enters an elite archive or a comparison;
- rows whose commit is gone (discarded and garbage-collected, or a typo) are counted and named.

`evo run --seed-from archive.db:RUN` then starts a new run from the best kept ones, which are
re-trained under evo's harness (the bootstrap) before anything competes.
"""

from __future__ import annotations

import csv
import subprocess
from dataclasses import dataclass
from pathlib import Path

from evo.errors import EvoError
from population.store import Store

RESULTS_NAME = "results.tsv"
HEADER = ("commit", "val_bpb", "memory_gb", "status", "description")
STATUSES = ("keep", "discard", "crash")
OPERATOR = "autoresearch"
RUN_STATUS = "finished"  # nothing left to do in it: it is a record, and a seed for new runs
IMPORTED_KEY = "imported"  # the run's config entry holding what autoresearch recorded


@dataclass(frozen=True)
class Row:
    line: int
    commit: str
    val_bpb: float | None  # None for a crash (autoresearch writes 0.000000)
    memory_gb: float | None
    status: str
    description: str


def read_results(path: Path) -> list[Row]:
    """results.tsv's rows; a malformed file fails with one line naming it, the line and what was expected."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise EvoError(f"{path}: not a readable results.tsv ({type(e).__name__}: {e})") from None
    lines = list(csv.reader(text.splitlines(), delimiter="\t"))
    if not lines or tuple(c.strip() for c in lines[0][:5]) != HEADER:
        raise EvoError(f"{path}: line 1 should be the header {chr(9).join(HEADER)!r} (tab-separated, as "
                       f"autoresearch writes it)")
    rows = []
    for n, cells in enumerate(lines[1:], start=2):
        if not any(c.strip() for c in cells):
            continue
        if len(cells) < 4:
            raise EvoError(f"{path}: line {n} has {len(cells)} tab-separated fields, expected 5 ({', '.join(HEADER)})")
        commit, bpb, mem, status = (c.strip() for c in cells[:4])
        description = " ".join("\t".join(cells[4:]).split())
        status = status.lower()
        if status not in STATUSES:
            raise EvoError(f"{path}: line {n}: status {status!r}, expected one of {', '.join(STATUSES)}")
        if not commit or not all(ch in "0123456789abcdefABCDEF" for ch in commit):
            raise EvoError(f"{path}: line {n}: commit {commit!r} is not a git commit hash")
        try:
            value, memory = float(bpb), float(mem)
        except ValueError:
            raise EvoError(f"{path}: line {n}: val_bpb {bpb!r} / memory_gb {mem!r} are not numbers") from None
        scored = status != "crash" and value > 0
        rows.append(Row(n, commit.lower(), value if scored else None, memory if scored else None, status, description))
    return rows


def _git(repo: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise EvoError(f"{repo}: git {' '.join(args)} failed: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    return proc.stdout if proc.returncode == 0 else ""


def _resolve(repo: Path, commit: str) -> str | None:
    out = _git(repo, "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}", check=False).strip()
    return out or None


@dataclass
class ImportSummary:
    run_name: str
    branch: str
    individuals: int
    kept: int
    discarded: int
    crashed: int
    tip: int | None  # the individual of the branch's newest logged commit
    skipped: list[str]


def import_autoresearch(store: Store, repo: Path, *, branch: str | None = None, results: Path | None = None,
                        name: str | None = None, train_file: str = "train.py") -> ImportSummary:
    """Read `repo`'s branch (default: the checked-out one) and results.tsv into a new run of `store`."""
    repo = Path(repo)
    if not repo.is_dir():
        raise EvoError(f"{repo}: no such directory (give the path to an autoresearch repository)")
    if _git(repo, "rev-parse", "--is-inside-work-tree", check=False).strip() != "true":
        raise EvoError(f"{repo}: not a git repository (autoresearch commits each experiment; give its checkout)")
    results = Path(results) if results else repo / RESULTS_NAME
    if not results.is_file():
        raise EvoError(f"{results}: no such file (autoresearch logs its experiments to {RESULTS_NAME}; "
                       f"pass --results FILE if it is elsewhere)")
    rows = read_results(results)
    if not rows:
        raise EvoError(f"{results}: no experiments after the header")
    branch = branch or _git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip()
    tip_sha = _resolve(repo, branch)
    if tip_sha is None:
        raise EvoError(f"{repo}: no branch or commit {branch!r} (pass --branch NAME)")
    on_branch = _git(repo, "rev-list", "--first-parent", tip_sha).split()

    skipped: list[str] = []
    found: dict[str, tuple[Row, str]] = {}  # full sha -> (its last row, train.py)
    for row in rows:
        sha = _resolve(repo, row.commit)
        if sha is None:
            skipped.append(f"line {row.line} ({row.commit}, {row.status}): commit not in the repository")
            continue
        source = _git(repo, "show", f"{sha}:{train_file}", check=False)
        if not source:
            skipped.append(f"line {row.line} ({row.commit}): no {train_file} at that commit")
            continue
        found[sha] = (row, source)
    if not found:
        raise EvoError(f"{results}: none of its {len(rows)} commits is in {repo} ({skipped[0]})")

    depth = {sha: int(_git(repo, "rev-list", "--first-parent", "--count", sha).strip()) for sha in found}
    run_name = name or _default_name(branch)
    if any(r.name == run_name for r in store.list_runs()):
        raise EvoError(f"run '{run_name}' already exists in {store.name} (pass --name)")
    head = {"kind": "autoresearch", "repo": str(repo.resolve()), "branch": branch, "head": tip_sha,
            "results": str(results.resolve())}
    with store.transaction():  # all of it or nothing: a failed import leaves the archive as it was
        run = store.create_run(run_name, {IMPORTED_KEY: head})
        ids: dict[str, int] = {}
        recorded: dict[str, dict] = {}
        for sha in sorted(found, key=lambda s: (depth[s], found[s][0].line)):
            row, source = found[sha]
            parent = next((ids[a] for a in _git(repo, "rev-list", "--first-parent", f"{sha}~1", check=False).split()
                           if a in ids), None)
            ind = store.add_imported(run.id, source, [parent] if parent else [], OPERATOR, row.description,
                                     generation=depth[sha])
            if str(ind.id) in recorded:
                skipped.append(f"line {row.line} ({row.commit}): the same train.py as #{ind.id}")
                continue
            ids[sha] = ind.id
            recorded[str(ind.id)] = {"commit": row.commit, "sha": sha, "val_bpb": row.val_bpb,
                                     "memory_gb": row.memory_gb, "status": row.status, "on_branch": sha in on_branch}
        store.update_run(run.id, status=RUN_STATUS, config={IMPORTED_KEY: {**head, "rows": recorded, "skipped": skipped}})
    tip = next((ids[s] for s in on_branch if s in ids), None)
    statuses = [r["status"] for r in recorded.values()]
    return ImportSummary(run_name, branch, len(recorded), statuses.count("keep"), statuses.count("discard"),
                         statuses.count("crash"), tip, skipped)


def _default_name(branch: str) -> str:
    tail = branch.rsplit("/", 1)[-1]
    clean = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in tail).strip(".-") or "branch"
    return f"autoresearch-{clean}"[:100]


def imported_rows(run) -> dict[int, dict]:
    """What the other tool recorded, by individual id ({} for a run evo trained itself)."""
    rows = (run.config or {}).get(IMPORTED_KEY, {}).get("rows") or {}
    return {int(k): v for k, v in rows.items()}


def seeds_from_import(run, top: int) -> list[int]:
    """The best kept individuals of an imported run, best recorded val_bpb first: the programs
    `--seed-from` re-trains (their recorded scores only order them)."""
    kept = [(row["val_bpb"], ind_id) for ind_id, row in imported_rows(run).items()
            if row["status"] == "keep" and row["val_bpb"] is not None]
    return [ind_id for _, ind_id in sorted(kept)[:top]]
