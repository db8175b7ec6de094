"""The offline operator: mutate and cross the hyperparameter constants of `train.py`, no LLM needed.

It lets the whole product run on a machine with no API key, and it is the baseline an LLM operator
has to beat. It only rewrites literals of module-level UPPER_CASE constants of the forms
`NAME = <literal>` and `NAME = <literal> if CUDA else <literal>`, where a literal is a number, a
bool, a power written `2**19`, a tuple of numbers (`ADAM_BETAS = (0.8, 0.95)`) or a window pattern
string of S and L (`WINDOW_PATTERN = "SSSL"`): autoresearch's constant block as well as evo's; anything else in a variant (which
an LLM may have rewritten freely) is left alone, never an error. Edits replace the literal's text
at its syntax-tree offsets, so comments and layout survive and diffs stay one token wide.
"""

from __future__ import annotations

import ast
import math
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable, Union

from evo.operators.base import ArchiveContext, ParentInfo, Proposal
from evo.operators.validate import parse, validate_child, vouch

Value = Union[bool, int, float, str, tuple]

_CONSTANT_NAME = re.compile(r"[A-Z][A-Z0-9_]*\Z")
_LOG_FACTORS = (1.25, 1.5, 2.0)
_UNIT_STEPS = (0.05, 0.1, 0.2)
# Constants that are only valid together; crossover inherits each group from one parent.
_LINKED = (("MODEL_DIM", "HEAD_DIM"), ("WARMUP_RATIO", "WARMDOWN_RATIO"), ("TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE"))
# Not hyperparameters: constants a script uses to report (autoresearch's H100_BF16_PEAK_FLOPS).
_MEASUREMENT = re.compile(r".*(FLOPS|_PEAK)\Z")
# autoresearch's MAX_SEQ_LEN (imported from prepare: evo's evaluation length) by device, for the
# rule that TOTAL_BATCH_SIZE be a whole number of DEVICE_BATCH_SIZE x MAX_SEQ_LEN micro-batches.
_PREPARE_SEQ_LEN = {"cuda": 2048, "cpu": 128}
_WINDOW_CHARS = frozenset("SL")


# ---------------------------------------------------------------------------------------------
# Reading constants
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Constant:
    """The literal of one constant that applies to the operator's device."""

    name: str
    value: Value
    text: str  # the literal as written
    start: int  # character offsets of the literal in the source
    end: int


def read_constants(source: str, device_kind: str) -> dict[str, Constant]:
    """The module-level constants this operator can change (a fresh dict over a cached parse:
    the engine mutates the same few elites again and again)."""
    return dict(_read_constants(source, device_kind))


@lru_cache(maxsize=256)
def _read_constants(source: str, device_kind: str) -> dict[str, Constant]:
    """The editable constants of `source`, in file order; {} if it does not parse."""
    try:
        tree = parse(source)
    except SyntaxError:
        return {}
    offsets = _LineOffsets(source)
    assigned: dict[str, int] = {}
    found: dict[str, Constant] = {}
    for stmt in tree.body:
        for name in _assigned_names(stmt):
            assigned[name] = assigned.get(name, 0) + 1
        literal = _applicable_literal(stmt, device_kind)
        if literal is None:
            continue
        name, node, value = literal
        start, end = offsets.span(node)
        found[name] = Constant(name, value, source[start:end], start, end)
    # A name assigned twice (or augmented) has no single literal that decides its value.
    return {n: c for n, c in found.items() if assigned[n] == 1}


def _assigned_names(stmt: ast.stmt) -> Iterable[str]:
    targets: list[ast.expr] = []
    if isinstance(stmt, ast.Assign):
        targets = stmt.targets
    elif isinstance(stmt, (ast.AnnAssign, ast.AugAssign)):
        targets = [stmt.target]
    for target in targets:
        for node in ast.walk(target):
            if isinstance(node, ast.Name):
                yield node.id


def _applicable_literal(stmt: ast.stmt, device_kind: str) -> tuple[str, ast.expr, Value] | None:
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
        target, expr = stmt.targets[0], stmt.value
    elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
        target, expr = stmt.target, stmt.value
    else:
        return None
    if not isinstance(target, ast.Name) or not _CONSTANT_NAME.match(target.id) or _MEASUREMENT.match(target.id):
        return None
    if isinstance(expr, ast.IfExp):
        if not (isinstance(expr.test, ast.Name) and expr.test.id == "CUDA"):
            return None
        expr = expr.body if device_kind == "cuda" else expr.orelse
    value = _literal_value(expr)
    return None if value is None else (target.id, expr, value)


def _literal_value(node: ast.expr) -> Value | None:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):  # 2**19
        base, exp = node.left, node.right
        if all(isinstance(n, ast.Constant) and type(n.value) is int for n in (base, exp)) and 2 <= base.value \
                and 0 <= exp.value <= 62:
            return base.value ** exp.value
        return None
    if isinstance(node, ast.Tuple) and node.elts:
        items = tuple(_literal_value(e) for e in node.elts)
        ok = all(type(i) is float for i in items)  # betas, momenta: (0.8, 0.95); not sizes
        return items if ok else None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        v = node.value
        return v if v and set(v.upper()) <= _WINDOW_CHARS and len(v) <= 16 else None
    sign = 1
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        sign = -1 if isinstance(node.op, ast.USub) else 1
        node = node.operand
        if isinstance(node, ast.Constant) and isinstance(node.value, bool):
            return None
    if not isinstance(node, ast.Constant) or not isinstance(node.value, (bool, int, float)):
        return None
    return node.value if isinstance(node.value, bool) else sign * node.value


class _LineOffsets:
    """Syntax-tree positions (line, UTF-8 byte column) to character offsets in the source."""

    def __init__(self, source: str):
        self.lines = source.splitlines(keepends=True)
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))

    def _offset(self, lineno: int, col: int) -> int:
        line = self.lines[lineno - 1]
        return self.starts[lineno - 1] + len(line.encode("utf-8")[:col].decode("utf-8"))

    def span(self, node: ast.expr) -> tuple[int, int]:
        return self._offset(node.lineno, node.col_offset), self._offset(node.end_lineno, node.end_col_offset)


def literal_text(const: Constant, value: Value) -> str:
    """`value` written as the parent wrote its literal: `2**20` for `2**19`, the same quotes."""
    power = re.fullmatch(r"(\d+)\s*\*\*\s*(\d+)", const.text)
    if power and isinstance(value, int) and value > 0:
        base, exp = int(power.group(1)), round(math.log(value, int(power.group(1))))
        if base ** exp == value:
            return f"{base}**{exp}"
    if isinstance(value, str):
        quote = const.text[0] if const.text[:1] in "'\"" else '"'
        return f"{quote}{value}{quote}"
    return repr(value)


def _rewrite(source: str, replacements: dict[Constant, str]) -> str:
    for const in sorted(replacements, key=lambda c: c.start, reverse=True):
        source = source[: const.start] + replacements[const] + source[const.end :]
    return source


# ---------------------------------------------------------------------------------------------
# The rule table: which steps a constant may take and which values are valid
# ---------------------------------------------------------------------------------------------

Env = dict[str, Value]


@dataclass(frozen=True)
class Rule:
    steps: Callable[[Value, Env], Iterable[Value]]
    valid: Callable[[Value], bool]
    kind: type  # the literal type the rule is for; `DEPTH = 2.5` is not a depth this table knows


def _log_steps(v, env):
    return [v * f for f in _LOG_FACTORS] + [v / f for f in _LOG_FACTORS]


def _int_steps(v, env):
    return [v - 1, v + 1, v * 2, v // 2]


def _pow2_steps(v, env):
    return [v * 2, v // 2]


def _model_dim_steps(v, env):
    head = env.get("HEAD_DIM")
    return [v * 2, v // 2] + ([v + head, v - head] if isinstance(head, int) else [])


def _unit_steps(v, env):
    return [v + d for d in _UNIT_STEPS] + [v - d for d in _UNIT_STEPS]


def _beta_steps(v, env):
    """Betas and momenta live near 1: step (1 - v) on a log scale so 0.95 goes to 0.925 or 0.967."""
    return [1 - (1 - v) * f for f in _LOG_FACTORS] + [1 - (1 - v) / f for f in _LOG_FACTORS]


def _decay_steps(v, env):
    return [0.01, 0.05, 0.1] if v == 0 else _log_steps(v, env) + [0.0]


def _flip(v, env):
    return [not v]


def _window_steps(v, env):
    """One layer's window flipped, one more or one fewer entry in the pattern, or all long."""
    flips = [v[:i] + ("L" if c in "Ss" else "S") + v[i + 1:] for i, c in enumerate(v)]
    return flips + [v + v[-1], v[:-1], "L"]


def _tuple_steps(v, env):
    """Each entry of a tuple of betas or momenta stepped on its own (1 - x) log scale."""
    return [v[:i] + (step,) + v[i + 1:] for i, x in enumerate(v) for step in _beta_steps(x, env)]


def _is_pow2(v):
    return v > 0 and v & (v - 1) == 0


_POSITIVE_INT = Rule(_int_steps, lambda v: v >= 1, int)
_RULES: dict[str, Rule] = {
    "DEPTH": _POSITIVE_INT,
    "MLP_RATIO": _POSITIVE_INT,
    "DEVICE_BATCH": _POSITIVE_INT,
    "GRAD_ACCUM": _POSITIVE_INT,
    "MODEL_DIM": Rule(_model_dim_steps, lambda v: v >= 1, int),
    "HEAD_DIM": Rule(_pow2_steps, lambda v: v >= 2 and v % 2 == 0, int),
    "SEQ_LEN": Rule(_pow2_steps, lambda v: _is_pow2(v) and v >= 16, int),
    "TOTAL_BATCH_SIZE": Rule(_pow2_steps, lambda v: _is_pow2(v) and v >= 16, int),
    "DEVICE_BATCH_SIZE": Rule(_pow2_steps, lambda v: _is_pow2(v), int),
    "WINDOW_PATTERN": Rule(_window_steps, lambda v: bool(v) and set(v.upper()) <= _WINDOW_CHARS, str),
    "WEIGHT_DECAY": Rule(_decay_steps, lambda v: v >= 0, float),
}
_POSITIVE = Rule(_log_steps, lambda v: v > 0, float)
_UNIT = Rule(_unit_steps, lambda v: 0 <= v <= 1, float)
_BETA = Rule(_beta_steps, lambda v: 0 < v < 1, float)
_BOOL = Rule(_flip, lambda v: True, bool)


def rule_for(name: str, value: Value) -> Rule | None:
    """The named rule, else a fallback by name pattern, else by value type; None: leave it alone."""
    if name in _RULES:
        return _RULES[name] if type(value) is _RULES[name].kind else None
    if isinstance(value, bool):
        return _BOOL
    if isinstance(value, tuple):
        betas = ("BETA" in name or "MOMENTUM" in name) and all(isinstance(x, float) and 0 < x < 1 for x in value)
        return Rule(_tuple_steps, lambda v: all(0 < x < 1 for x in v), tuple) if betas else None
    if isinstance(value, str):
        return None  # a string this table does not know (WINDOW_PATTERN is named above)
    if isinstance(value, float):
        if ("BETA" in name or "MOMENTUM" in name) and 0 < value < 1:
            return _BETA
        if name.endswith(("_RATIO", "_FRAC")) and 0 <= value <= 1:
            return _UNIT
        return _POSITIVE if value > 0 else None  # learning rates, scales, caps: log steps
    if isinstance(value, int) and value >= 1:
        return _POSITIVE_INT
    return None


def _consistent(env: Env, changed: str) -> bool:
    """The constraints between constants that involve `changed` still hold."""
    model, head = env.get("MODEL_DIM"), env.get("HEAD_DIM")
    if changed in ("MODEL_DIM", "HEAD_DIM") and isinstance(model, int) and isinstance(head, int):
        if head <= 0 or model % head:
            return False
    total, device, seq = env.get("TOTAL_BATCH_SIZE"), env.get("DEVICE_BATCH_SIZE"), env.get("MAX_SEQ_LEN")
    if changed in ("TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE") and all(type(v) is int for v in (total, device, seq)):
        if total % (device * seq):  # autoresearch asserts it: a whole number of micro-batches per step
            return False
    warmup, warmdown = env.get("WARMUP_RATIO"), env.get("WARMDOWN_RATIO")
    if changed in ("WARMUP_RATIO", "WARMDOWN_RATIO") and isinstance(warmup, float) and isinstance(warmdown, float):
        if warmup + warmdown > 1:
            return False
    return True


def _tidy(value: Value, like: Value) -> Value:
    """Keep the parent's type; round floats to 4 significant digits so literals stay readable."""
    if isinstance(like, bool):
        return bool(value)
    if isinstance(like, tuple):
        return tuple(_tidy(x, y) for x, y in zip(value, like))
    if isinstance(like, str):
        return value
    if isinstance(like, int):
        return int(value)
    return float(f"{value:.4g}")


def candidates(name: str, env: Env) -> list[Value]:
    """Every valid value one step away from env[name], deduplicated, in a fixed order."""
    current = env[name]
    rule = rule_for(name, current)
    if rule is None:
        return []
    out: list[Value] = []
    for raw in rule.steps(current, env):
        value = _tidy(raw, current)
        if value == current or value in out or (isinstance(value, float) and not math.isfinite(value)):
            continue
        if rule.valid(value) and _consistent({**env, name: value}, name):
            out.append(value)
    return out


# ---------------------------------------------------------------------------------------------
# The operator
# ---------------------------------------------------------------------------------------------


class OfflineOperator:
    """Hyperparameter mutation and crossover for the device the trials run on."""

    name = "offline"
    exhausted = False  # never runs out of budget
    broken = None  # and never fails for outside reasons
    spent_usd = None  # costs nothing

    def __init__(self, device_kind: str = "cpu"):
        if device_kind not in ("cpu", "cuda"):
            raise ValueError(f"device_kind must be 'cpu' or 'cuda', not {device_kind!r}")
        self.device_kind = device_kind

    def mutate(self, parent: ParentInfo, ctx: ArchiveContext, rng: random.Random) -> Proposal:
        consts = read_constants(parent.source, self.device_kind)
        env: Env = {n: c.value for n, c in consts.items()}
        env.setdefault("MAX_SEQ_LEN", _PREPARE_SEQ_LEN[self.device_kind])  # autoresearch imports it
        want = rng.choice((1, 2))
        changes: dict[Constant, str] = {}
        for name in rng.sample(list(consts), len(consts)):
            options = candidates(name, env)
            if not options:
                continue
            env[name] = rng.choice(options)
            changes[consts[name]] = literal_text(consts[name], env[name])
            if len(changes) == want:
                break
        if not changes:
            return self._reject([parent.id], "no hyperparameter constant this operator can change")
        hypothesis = "; ".join(f"{c.name} {c.text} → {new}" for c, new in changes.items())
        return self._finish([parent.id], hypothesis, _rewrite(parent.source, changes), (parent.source,))

    def crossover(
        self,
        a: ParentInfo,
        b: ParentInfo,
        ancestor_source: str | None,
        ctx: ArchiveContext,
        rng: random.Random,
    ) -> Proposal:
        """Child = a's code with each differing constant (or linked group) from a or b."""
        ca, cb = read_constants(a.source, self.device_kind), read_constants(b.source, self.device_kind)
        differ = [n for n in ca if n in cb and ca[n].value != cb[n].value]
        parents = [a.id, b.id]
        if not differ:
            return self._reject(parents, f"#{a.id} and #{b.id} have the same hyperparameter constants")
        units = _linked_units(differ)
        from_b = [rng.random() < 0.5 for _ in units]
        if len(units) == 1:
            from_b = [True]  # a's code is the base, so b must give something
        elif all(from_b) or not any(from_b):
            i = rng.randrange(len(units))
            from_b[i] = not from_b[i]
        changes: dict[Constant, str] = {}
        credits = []
        for unit, take_b in zip(units, from_b):
            for name in unit:
                donor, donor_id = (cb, b.id) if take_b else (ca, a.id)
                if take_b:
                    changes[ca[name]] = donor[name].text
                credits.append(f"{name} {donor[name].text} (from #{donor_id})")
        child = _rewrite(a.source, changes)
        if child == b.source:
            return self._reject(parents, f"#{a.id} and #{b.id} differ only in {', '.join(differ)}; the child would copy #{b.id}")
        return self._finish(parents, f"crossover #{a.id}×#{b.id}: " + ", ".join(credits), child, (a.source, b.source))

    def _finish(self, parents: list[int], hypothesis: str, child: str, sources: tuple[str, ...]) -> Proposal:
        # The child differs from its parents only in numeric/bool literals, which no validation
        # rule looks at: the parents' verdicts are the child's, vouched for so that it needs no
        # parse when it becomes a parent itself.
        reason = next((r for r in map(validate_child, sources) if r is not None), None)
        vouch(child, reason)
        if reason is not None:
            return self._reject(parents, f"child fails validation: {reason}", hypothesis)
        return Proposal(operator=self.name, parents=parents, hypothesis=hypothesis, source=child)

    def _reject(self, parents: list[int], reason: str, hypothesis: str = "") -> Proposal:
        return Proposal(operator=self.name, parents=parents, hypothesis=hypothesis, rejected=reason)


def _linked_units(names: list[str]) -> list[list[str]]:
    """Group differing names so that linked constants travel together, in file order."""
    units: list[list[str]] = []
    placed: set[str] = set()
    for name in names:
        if name in placed:
            continue
        group = next((g for g in _LINKED if name in g), (name,))
        unit = [n for n in names if n in group]
        placed.update(unit)
        units.append(unit)
    return units
