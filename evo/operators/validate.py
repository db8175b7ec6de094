"""Static checks on a child `train.py` before any GPU time is spent on it.

The harness, not the variant, measures val_bpb; these checks keep a variant from reaching around
that contract (see docs/internals.md, "The variant <-> harness contract"). They read the syntax
tree rather than the text so that comments and strings mentioning the forbidden names do not
trip them, and so that aliases (`from trainer import harness as H`, `h = H.setup()`) are followed.
They are a gate against accidents and lazy cheating by an LLM, not a sandbox: the runner's
scrubbed environment and the harness's own checks remain the real guarantees.
"""

from __future__ import annotations

import ast
import hashlib
import sys
import threading
from collections import OrderedDict

# Third-party packages a variant may import: the ones the harness itself already needs.
ALLOWED_PACKAGES = frozenset({"torch", "numpy"})
HARNESS_MODULE = "trainer.harness"
# autoresearch's interface (trainer.autoresearch inside a trial): `prepare`, and the FA3 kernel it
# fetches, which a trial gets as PyTorch SDPA. A variant uses one interface or the other.
PREPARE_MODULE = "prepare"
PREPARE_COMPANIONS = frozenset({"kernels", "flash_attn_interface"})
# validate_child reasons for unparsable sources start with this, so callers can tell a broken
# edit from a contract violation.
SYNTAX_ERROR_PREFIX = "syntax error"

_GLOBAL_SEEDERS = frozenset(
    {
        "random.seed",
        "np.random.seed",
        "numpy.random.seed",
        "torch.seed",
        "torch.random.seed",
        "torch.cuda.seed",
        "torch.cuda.seed_all",
    }
)
_SEED_MODULES = frozenset({"random", "numpy.random", "torch", "torch.random", "torch.cuda"})
_DYNAMIC_CODE = frozenset({"exec", "eval", "compile", "__import__"})


_PARSE_LOCK = threading.Lock()


class _Violation(Exception):
    pass


def parse(source: str) -> ast.Module:
    """ast.parse, one thread at a time: CPython 3.11 before 3.11.8 can fail concurrent parses with
    "SystemError: AST constructor recursion depth mismatch" (gh-106905), and operators run in
    several threads at once."""
    with _PARSE_LOCK:
        return ast.parse(source)


def validate_child(source: str) -> str | None:
    """None if `source` may be trained, else a one-line reason it may not.

    Remembered by source: an elite is validated when it is made and again each time it becomes a
    parent, and a parse of the seed-size file costs ~10 ms of the engine's per-trial budget.
    """
    known, reason = _VERDICTS.get(source)
    if known:
        return reason
    try:
        tree = parse(source)
    except SyntaxError as e:
        reason = f"{SYNTAX_ERROR_PREFIX} at line {e.lineno}: {e.msg}"
    else:
        try:
            _Checker(tree).check()
        except _Violation as v:
            reason = str(v)
    _VERDICTS.put(source, reason)
    return reason


def uses_prepare(source: str) -> bool:
    """Whether `source` imports autoresearch's `prepare` (its interface, not trainer.harness)."""
    try:
        tree = parse(source)
    except SyntaxError:
        return False
    return any((isinstance(n, ast.ImportFrom) and n.module == PREPARE_MODULE and not n.level)
               or (isinstance(n, ast.Import) and any(a.name == PREPARE_MODULE for a in n.names))
               for n in ast.walk(tree))


def vouch(source: str, reason: str | None) -> None:
    """Record a verdict known without a parse: the offline operator's children differ from their
    parents only in literals, which no rule looks at, so they inherit their parents' verdict."""
    _VERDICTS.put(source, reason)


class _VerdictCache:
    """Verdicts by source digest, most recent kept; shared by the operators' proposal threads.

    Keyed by a 16-byte digest, so it remembers every variant of a long run (an elite may become a
    parent thousands of proposals after it was made) without holding the sources.
    """

    def __init__(self, size: int):
        self._size, self._items, self._lock = size, OrderedDict(), threading.Lock()

    def get(self, source: str) -> tuple[bool, str | None]:
        key = _digest(source)
        with self._lock:
            if key not in self._items:
                return False, None
            self._items.move_to_end(key)
            return True, self._items[key]

    def put(self, source: str, reason: str | None) -> None:
        key = _digest(source)
        with self._lock:
            self._items[key] = reason
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


def _digest(source: str) -> bytes:
    return hashlib.blake2b(source.encode(), digest_size=16).digest()


_VERDICTS = _VerdictCache(100_000)


def _dotted(node: ast.AST) -> str | None:
    """'a.b.c' for a chain of attribute lookups on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


class _Checker:
    def __init__(self, tree: ast.Module):
        self.nodes = list(ast.walk(tree))
        # Names bound to the harness module, to names imported from it, or to a Harness object.
        self.harness_names: set[str] = set()
        self.seed_functions: set[str] = set()  # `from random import seed` and the like
        self.uses_harness = self.uses_prepare = False
        self.companions: list[tuple[str, int]] = []

    def check(self) -> None:
        for node in self.nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                self._import(node)
        if self.uses_harness and self.uses_prepare:
            raise _Violation("imports both trainer.harness and prepare (one interface per variant)")
        if self.companions and not self.uses_prepare:
            name, lineno = self.companions[0]
            raise _Violation(f"line {lineno}: imports {name} (only with autoresearch's `prepare` interface)")
        if self.uses_prepare:
            return self._check_prepare()
        self._collect_harness_objects()
        calls_setup = calls_finish = False
        for node in self.nodes:
            if isinstance(node, ast.Call):
                name = _dotted(node.func)
                if name is not None and self._is_harness(name) and name.rsplit(".", 1)[-1] == "setup":
                    calls_setup = True
                if isinstance(node.func, ast.Attribute) and node.func.attr == "finish":
                    calls_finish = True
                self._call(node, name)
            elif isinstance(node, ast.Attribute):
                self._attribute(node)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.name == "evaluate_bpb":
                    raise _Violation(f"line {node.lineno}: defines evaluate_bpb (the harness evaluates)")
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                if node.id == "evaluate_bpb":
                    raise _Violation(f"line {node.lineno}: assigns evaluate_bpb (the harness evaluates)")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "EVO_" in node.value:
                raise _Violation(f"line {node.lineno}: refers to an EVO_ variable (trial config is the harness's)")
        if not calls_setup:
            raise _Violation("does not call harness.setup()")
        if not calls_finish:
            raise _Violation("does not call .finish() on the harness")

    def _check_prepare(self) -> None:
        """autoresearch's interface: `evaluate_bpb(model, ...)` from prepare is the hand-over, and
        `torch.manual_seed(n)` is allowed (trainer.autoresearch adds the trial's seed to n)."""
        self._collect_harness_objects()
        hands_over = False
        for node in self.nodes:
            if isinstance(node, ast.Call):
                name = _dotted(node.func)
                if name is not None and self._is_harness(name) and name.rsplit(".", 1)[-1] == "evaluate_bpb":
                    hands_over = True
                if not (isinstance(node.func, ast.Attribute) and node.func.attr.startswith("manual_seed")):
                    self._call(node, name)
            elif isinstance(node, ast.Attribute):
                self._attribute(node)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "evaluate_bpb":
                raise _Violation(f"line {node.lineno}: defines evaluate_bpb (evo's scorer evaluates)")
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and node.id == "evaluate_bpb":
                raise _Violation(f"line {node.lineno}: assigns evaluate_bpb (evo's scorer evaluates)")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "EVO_" in node.value:
                raise _Violation(f"line {node.lineno}: refers to an EVO_ variable (trial config is the harness's)")
        if not hands_over:
            raise _Violation("does not call evaluate_bpb(model, ...) from prepare (the hand-over to evo's scorer)")

    def _import(self, node: ast.Import | ast.ImportFrom) -> None:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                raise _Violation(f"line {node.lineno}: relative import")
            module = node.module or ""
            if module == PREPARE_MODULE:
                self.uses_prepare = True
                for alias in node.names:
                    if alias.name.startswith("_") or alias.name == "*":
                        raise _Violation(f"line {node.lineno}: imports prepare.{alias.name} (prepare internals)")
                    self.harness_names.add(alias.asname or alias.name)
                return
            for alias in node.names:
                full = f"{module}.{alias.name}"
                if module == "trainer" and alias.name == "harness":
                    self.uses_harness = True
                    self.harness_names.add(alias.asname or alias.name)
                    continue
                if module == HARNESS_MODULE:
                    self.uses_harness = True
                    if alias.name.startswith("_") or alias.name == "*":
                        raise _Violation(f"line {node.lineno}: imports {full} (harness internals)")
                    self.harness_names.add(alias.asname or alias.name)
                if module in _SEED_MODULES and alias.name.startswith(("seed", "manual_seed")):
                    self.seed_functions.add(alias.asname or alias.name)
                self._allowed_module(full if module == "trainer" else module, node.lineno)
        else:
            for alias in node.names:
                if alias.name == PREPARE_MODULE:
                    self.uses_prepare = True
                    self.harness_names.add(alias.asname or PREPARE_MODULE)
                    continue
                self._allowed_module(alias.name, node.lineno)
                if alias.name == HARNESS_MODULE:
                    self.uses_harness = True
                    self.harness_names.add(alias.asname or HARNESS_MODULE)

    def _allowed_module(self, module: str, lineno: int) -> None:
        top = module.split(".")[0]
        if top in PREPARE_COMPANIONS:
            self.companions.append((module, lineno))
            return
        if top == "trainer":
            if module == HARNESS_MODULE or module.startswith(HARNESS_MODULE + "."):
                return
            raise _Violation(f"line {lineno}: imports {module} (only trainer.harness is part of the contract)")
        if top not in sys.stdlib_module_names and top not in ALLOWED_PACKAGES:
            raise _Violation(f"line {lineno}: imports {top} (no new dependencies: stdlib, torch, numpy only)")

    def _collect_harness_objects(self) -> None:
        """Add `h` for every `h = harness.setup()`, so `h._x` counts as reaching into the harness."""
        for node in self.nodes:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                name = _dotted(node.value.func)
                if name is not None and self._is_harness(name):
                    for target in node.targets:
                        if isinstance(target, ast.Name):
                            self.harness_names.add(target.id)

    def _is_harness(self, dotted: str) -> bool:
        return any(dotted == h or dotted.startswith(h + ".") for h in self.harness_names)

    def _attribute(self, node: ast.Attribute) -> None:
        owner = _dotted(node.value)
        if owner is None or not self._is_harness(owner):
            return
        if node.attr.startswith("_"):
            raise _Violation(f"line {node.lineno}: touches {owner}.{node.attr} (harness internals)")
        if isinstance(node.ctx, (ast.Store, ast.Del)):
            raise _Violation(f"line {node.lineno}: modifies {owner}.{node.attr} (the harness is fixed)")

    def _call(self, node: ast.Call, name: str | None) -> None:
        if isinstance(node.func, ast.Attribute) and node.func.attr.startswith("manual_seed"):
            raise _Violation(f"line {node.lineno}: calls {node.func.attr}() (the harness seeds everything)")
        if name is None:
            return
        if name in _GLOBAL_SEEDERS or name in self.seed_functions:
            raise _Violation(f"line {node.lineno}: calls {name}() (the harness seeds everything)")
        if name in _DYNAMIC_CODE:
            raise _Violation(f"line {node.lineno}: calls {name}() (dynamic code cannot be checked)")
        if name in ("getattr", "setattr", "delattr", "vars") and node.args:
            owner = _dotted(node.args[0])
            if owner is None or not self._is_harness(owner):
                return
            attr = node.args[1] if len(node.args) > 1 else None
            public_read = (
                name == "getattr"
                and isinstance(attr, ast.Constant)
                and isinstance(attr.value, str)
                and not attr.value.startswith("_")
            )
            if not public_read:
                raise _Violation(f"line {node.lineno}: {name}() on {owner} (harness internals)")
