"""`evo ui`: a local, read-only web page over an archive, fit to leave open beside a running search.

The stdlib's threading HTTP server on 127.0.0.1 serves one static page (`static/`, plain JS, no
build step, nothing fetched from the internet) and a small JSON API. The archive is opened
read-only; in WAL mode its readers never block `evo run`'s writes.

The page polls `/api/version` every few seconds. For an SQLite archive the version is the size
and modification time of the database file and its WAL, which change with every commit: the
poll costs two `stat` calls, and every other answer is computed once per version and then served
from a cache, so a page left open all night costs the engine nothing.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import click

from evo.browse import data, fmt
from evo.errors import EvoError
from population.store import ArchiveError, Store

STATIC = Path(__file__).parent / "static"
FILES = {"/": "index.html", "/static/app.js": "app.js", "/static/style.css": "style.css"}
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
CACHE_ENTRIES = 256
URL_VERSION_SECONDS = 5  # a database server has no file to stat: its answers live this long
TRIALS_PAGE = 100
LOCAL_NAMES = ("127.0.0.1", "localhost")


class Api:
    """The JSON answers, keyed by path and query, cached per archive version."""

    def __init__(self, store: Store):
        self.store = store
        url = store.engine.url  # an SQLite file, named by its path or by a sqlite:/// URL, has files to stat
        path = Path(url.database) if url.get_backend_name() == "sqlite" and url.database else None
        self._files = [path, path.with_name(path.name + "-wal")] if path else None
        self._lock = threading.Lock()
        self._version: str | None = None
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._computing: dict[str, threading.Lock] = {}

    def version(self) -> str:
        if self._files is None:
            return str(int(time.time() // URL_VERSION_SECONDS))
        parts = []
        for f in self._files:
            try:
                st = f.stat()
                parts.append(f"{st.st_size}.{st.st_mtime_ns}")
            except FileNotFoundError:
                parts.append("-")
        return "-".join(parts)

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """`compute()` once per archive version. Requests that miss together wait for the one
        computing (after a write, the page asks for the run, progress and trials at once, and
        the last two share the run's replayed history)."""
        version = self.version()
        with self._lock:
            if version != self._version:
                self._cache.clear()
                self._computing.clear()
                self._version = version
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            gate = self._computing.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if key in self._cache and self._version == version:
                    return self._cache[key]
            value = compute()
            with self._lock:
                if self._version == version:
                    self._cache[key] = value
                    while len(self._cache) > CACHE_ENTRIES:
                        self._cache.popitem(last=False)
                self._computing.pop(key, None)
        return value

    def answer(self, path: str, query: dict[str, str]) -> bytes:
        """The JSON answer to a GET of `path`, encoded (the cache keeps it so); ArchiveError
        for what does not exist."""
        if path == "/api/version":
            return encode({"version": self.version()})
        key = path + "?" + "&".join(f"{k}={v}" for k, v in sorted(query.items()))
        route, _, ref = path.removeprefix("/api/").partition("/")
        handlers: dict[str, Callable[[], Any]] = {
            "runs": self._runs,
            "run": lambda: self._run(query.get("run")),
            "progress": lambda: self._progress(query.get("run")),
            "trials": lambda: self._trials(query),
            "individual": lambda: self._individual(unquote(ref)),
            "lineage": lambda: self._lineage(unquote(ref)),
        }
        if route not in handlers or bool(ref) != (route in ("individual", "lineage")):
            raise ArchiveError(f"no such API endpoint: {path}")
        return self.cached(key, lambda: encode(handlers[route]()))

    # ------------------------------------------------------------------ answers

    def _runs(self) -> list[dict[str, Any]]:
        return [_summary(data.summarize(self.store, run)) for run in reversed(self.store.list_runs())]

    def _run(self, name: str | None) -> dict[str, Any]:
        run = data.pick_run(self.store, name)
        grid = data.grid_of(run)
        elites = []
        for elite, ind in self.store.elites(run.id):
            measured = ind.descriptors or {}
            elites.append({**_brief(ind), "cell": elite.cell, "index": list(map(int, elite.cell.split(","))),
                           "params": _num(measured.get("params")), "tokens": _num(measured.get("tokens")),
                           "descriptors": {k: _num(v) for k, v in measured.items()}})
        dims = [{"name": d.name, "lo": d.lo, "hi": d.hi, "bins": d.bins, "log": d.log} for d in grid.dims] if grid else []
        return {"summary": _summary(data.summarize(self.store, run)), "dims": dims, "elites": elites,
                "noise_sd": _num(run.noise_sd)}

    def _history(self, name: str | None) -> tuple[Any, data.History]:
        run = data.pick_run(self.store, name)
        return run, self.cached(f"history:{run.id}", lambda: data.history(self.store, run))

    def _progress(self, name: str | None) -> dict[str, Any]:
        run, hist = self._history(name)
        best, last = [], None
        for p in hist.points:  # the step line needs only the points where the best changed
            if p.best is not None and p.best != last:
                best.append([p.order, p.best])
                last = p.best
        return {
            "run": run.name,
            "trials": len(hist.points),
            # [order, val_bpb or null (failed), individual id, 1 if that individual was kept]
            "points": [[p.order, _num(p.val_bpb), p.individual_id, int(p.individual_id in hist.kept)]
                       for p in hist.points],
            "best": best,
            "improvements": [{**_brief(hist.individuals[i.individual_id]), "order": i.order, "value": i.val_bpb}
                             for i in hist.improvements],
        }

    def _trials(self, query: dict[str, str]) -> dict[str, Any]:
        """Newest first, filtered by outcome ("failed": any but ok) and operator, a page at a time."""
        run, hist = self._history(query.get("run"))
        outcome, operator = query.get("outcome", ""), query.get("operator", "")
        offset, limit = _int(query.get("offset"), 0), min(_int(query.get("limit"), TRIALS_PAGE), 1000)
        inds = hist.individuals
        rows = []
        for order in range(len(hist.trials) - 1, -1, -1):
            t = hist.trials[order]
            ind = inds[t.individual_id]
            if outcome and (t.outcome != outcome if outcome != "failed" else t.outcome == "ok"):
                continue
            if operator and ind.operator != operator:
                continue
            rows.append((order, t, ind))
        page = [{"order": order, "trial": t.id, "id": ind.id, "short": fmt.short_id(ind), "seed": t.seed,
                 "outcome": t.outcome, "val_bpb": _num(t.val_bpb), "params": t.params, "tokens": t.tokens,
                 "memory_mb": _num(t.peak_memory_mb), "seconds": _num(t.training_seconds),
                 "operator": ind.operator, "hypothesis": fmt.first_line(ind.hypothesis),
                 "message": "" if t.outcome == "ok" else fmt.first_line(t.message)}
                for order, t, ind in rows[offset:offset + limit]]
        return {"run": run.name, "total": len(rows), "offset": offset, "rows": page,
                "outcomes": sorted({t.outcome for t in hist.trials if t.outcome}),
                "operators": sorted({i.operator for i in inds.values() if i.operator})}

    def _individual(self, ref: str) -> dict[str, Any]:
        store = self.store
        ind = store.get_individual(ref)
        run = store.get_run(ind.run_id)
        elite_cell = next((e.cell for e, i in store.elites(ind.run_id) if i.id == ind.id), None)
        parents = [store.get_individual(p) for p in ind.parents]
        trials = [{"seed": t.seed, "status": t.status, "outcome": t.outcome, "val_bpb": _num(t.val_bpb),
                   "params": t.params, "tokens": t.tokens, "steps": t.steps, "memory_mb": _num(t.peak_memory_mb),
                   "seconds": _num(t.training_seconds), "message": t.message or "", "device": t.device,
                   "stderr_tail": "" if t.ok else (t.stderr_tail or "")}
                  for t in store.trials(individual_id=ind.id)]
        return {
            **_brief(ind), "run": run.name, "generation": ind.generation, "status": ind.status,
            "rejected_reason": ind.rejected_reason, "n_trials": ind.n_trials, "cell": ind.cell,
            "elite_cell": elite_cell, "commit": ind.commit, "source_hash": ind.source_hash,
            "descriptors": {k: _num(v) for k, v in (ind.descriptors or {}).items()},
            "parents": [_brief(p) for p in parents],
            "children": [_brief(c) for c in store.children_of(ind.id)[:50]],
            "trials": trials, "source": ind.source,
            "diffs": [{"parent": _brief(p), "diff": data.diff(p, ind)} for p in parents if ind.source is not None],
        }

    def _lineage(self, ref: str) -> dict[str, Any]:
        ind = self.store.get_individual(ref)
        steps = data.lineage(self.store, ind)
        return {"id": ind.id, "steps": [{**_brief(s.ind), "delta": _num(s.delta),
                                         "other": _brief(s.other) if s.other is not None else None} for s in steps]}


def encode(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def _num(value: Any) -> float | None:
    """JSON has no NaN or infinity."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _int(text: str | None, default: int) -> int:
    return int(text) if text and text.isdigit() else default


def _brief(ind: Any) -> dict[str, Any]:
    """What any list of individuals shows: enough to draw a row and to click through."""
    return {"id": ind.id, "short": fmt.short_id(ind), "operator": ind.operator, "hypothesis": ind.hypothesis or "",
            "val_bpb": _num(ind.val_bpb_mean), "sd": _num(ind.val_bpb_sd), "n": ind.n_ok,
            "parents": [p for p in (ind.parent1_id, ind.parent2_id) if p is not None]}


def _summary(s: data.RunSummary) -> dict[str, Any]:
    return {"id": s.run.id, "name": s.run.name, "status": s.run.status,
            "created_at": s.run.created_at.isoformat(timespec="seconds") + "Z", **s.counts,
            "best": _brief(s.best) if s.best else None, "elites": s.elites, "cells": s.cells}


class Handler(BaseHTTPRequestHandler):
    server: BrowserServer

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        # Only pages this machine opened: a web site that re-points its own name at 127.0.0.1
        # (DNS rebinding) must not read the archive's code through the visitor's browser.
        if urlsplit("//" + (self.headers.get("Host") or "")).hostname not in LOCAL_NAMES:
            self._json(HTTPStatus.FORBIDDEN, {"error": "evo ui answers only to http://127.0.0.1 or localhost"})
            return
        url = urlsplit(self.path)
        if url.path in FILES:
            name = FILES[url.path]
            self._send(HTTPStatus.OK, self.server.files[name], TYPES[Path(name).suffix])
            return
        if not url.path.startswith("/api/"):
            self._json(HTTPStatus.NOT_FOUND, {"error": f"not found: {url.path}"})
            return
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            self._send(HTTPStatus.OK, self.server.api.answer(url.path, query), "application/json")
        except ArchiveError as e:
            self._json(HTTPStatus.NOT_FOUND, {"error": str(e)})
        except Exception as e:  # one bad answer must not take the page down; say what it was
            print(f"evo ui: {url.path}: {type(e).__name__}: {e}", file=sys.stderr)
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(e).__name__}: {e}"})

    def _json(self, status: HTTPStatus, body: Any) -> None:
        self._send(status, encode(body), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the page polls every few seconds."""


class BrowserServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, api: Api, port: int):
        self.api = api
        self.files = {name: (STATIC / name).read_bytes() for name in FILES.values()}
        super().__init__(("127.0.0.1", port), Handler)


def make_server(db: str, port: int) -> BrowserServer:
    """The server, bound but not yet serving; the archive is opened (and checked) first."""
    store = data.open_archive(db)
    try:
        return BrowserServer(Api(store), port)
    except OSError as e:
        store.close()
        raise EvoError(f"cannot listen on 127.0.0.1:{port} ({e.strerror}); pass --port N, or --port 0 for any free port")


def serve(db: str, port: int) -> None:
    server = make_server(db, port)
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    click.echo(f"evo ui: {db} at {url} (read-only; Ctrl-C to stop)")
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        server.api.store.close()
