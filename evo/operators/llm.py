"""The LLM operator: Anthropic-written mutations and crossovers of `train.py`.

One proposal is at most two calls: the model's answer, and, when that answer cannot become a valid
child (malformed, SEARCH not found, broken syntax, tampering), one repair round that shows the
model its error. Then the proposal is rejected with the reason, which the archive keeps as a dead
end. API failures that survive the SDK's own retries become rejected proposals too: the engine
never sees an exception from here.

The engine calls one operator from several threads so that children are ready before a worker
frees; the shared state is the dollar budget, guarded by a condition variable, and the circuit
breaker that stops an operator whose every call fails (a revoked key, no network).
"""

from __future__ import annotations

import difflib
import importlib.util
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import anthropic

from evo.defaults import LLM_MAX_RETRIES, LLM_TIMEOUT, PROGRAM_PATH
from evo.operators.base import FREE_MERGE, ArchiveContext, ParentInfo, Proposal
from evo.operators.edits import ANSWER_FORMAT, EditError, apply_answer, merge3, parse_answer
from evo.operators.validate import SYNTAX_ERROR_PREFIX, uses_prepare, validate_child

DEFAULT_MODEL = "claude-sonnet-4-6"
CHARS_PER_TOKEN = 4  # a rough estimate is enough to fit a prompt and reserve budget


# ---------------------------------------------------------------------------------------------
# Cost
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens."""

    input: float
    output: float
    cache_read: float
    cache_write: float  # 5-minute cache writes


# Matched by longest prefix, so dated ids (claude-sonnet-4-5-20250929) find their family.
PRICES: dict[str, Price] = {
    "claude-opus-4-5": Price(5.0, 25.0, 0.50, 6.25),
    "claude-opus-4": Price(15.0, 75.0, 1.50, 18.75),
    "claude-sonnet-4": Price(3.0, 15.0, 0.30, 3.75),
    "claude-3-7-sonnet": Price(3.0, 15.0, 0.30, 3.75),
    "claude-haiku-4-5": Price(1.0, 5.0, 0.10, 1.25),
    "claude-3-5-haiku": Price(0.80, 4.0, 0.08, 1.0),
    "claude-3-haiku": Price(0.25, 1.25, 0.03, 0.30),
}
# An unknown model is priced like the dearest family: a budget cap must not under-count.
UNKNOWN_MODEL_PRICE = Price(15.0, 75.0, 1.50, 18.75)


def price_for(model: str) -> Price:
    matches = [prefix for prefix in PRICES if model.startswith(prefix)]
    return PRICES[max(matches, key=len)] if matches else UNKNOWN_MODEL_PRICE


def call_cost(model: str, input_tokens: int, output_tokens: int, cache_read: int = 0, cache_write: int = 0) -> float:
    p = price_for(model)
    total = input_tokens * p.input + output_tokens * p.output + cache_read * p.cache_read + cache_write * p.cache_write
    return total / 1e6


class _Budget:
    """A dollar cap shared by concurrent calls.

    Each call reserves its worst case before it starts and settles the real cost after, so calls
    in flight together cannot overshoot the cap; a call that would overshoot only because of
    others in flight waits for them to settle instead of being refused.
    """

    def __init__(self, max_dollars: float | None, spent: float = 0.0):
        self.max = max_dollars
        self.spent = spent
        self._reserved = 0.0
        self._refused = False
        self._cond = threading.Condition()

    @property
    def exhausted(self) -> bool:
        with self._cond:
            return self._refused or (self.max is not None and self.spent >= self.max)

    def reserve(self, estimate: float) -> bool:
        if self.max is None:
            return True
        with self._cond:
            while True:
                if self.spent + estimate > self.max:
                    self._refused = True
                    return False
                if self.spent + self._reserved + estimate <= self.max:
                    self._reserved += estimate
                    return True
                self._cond.wait()

    def settle(self, estimate: float, cost: float) -> None:
        with self._cond:
            if self.max is not None:
                self._reserved -= estimate
            self.spent += cost
            self._cond.notify_all()

    def spent_message(self) -> str:
        with self._cond:
            return f"the LLM budget of ${self.max:.2f} is spent (${self.spent:.4f} used)"


class _Breaker:
    """Opens after `limit` proposals in a row end on an API error the SDK did not retry away.

    A run whose every call fails would otherwise propose (and record a rejection) forever. Rate
    limits, overload and timeouts were already retried with backoff by the SDK; what reaches here
    is a refused key, a bad request, an unreachable host. A proposal that got any answer (even one
    that was then rejected) closes the count; one that made no call (a clean merge) leaves it.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.reason: str | None = None
        self._in_a_row = 0
        self._lock = threading.Lock()

    def note(self, proposal: Proposal) -> None:
        calls = proposal.llm_calls
        if not calls:
            return
        with self._lock:
            if calls[-1].get("outcome") != "api_error":
                self._in_a_row = 0
                return
            self._in_a_row += 1
            if self._in_a_row >= self.limit and self.reason is None:
                self.reason = f"the LLM failed {self._in_a_row} proposals in a row ({proposal.rejected})"


# ---------------------------------------------------------------------------------------------
# The operator
# ---------------------------------------------------------------------------------------------


class _InvalidChild(EditError):
    """An edit that applied but produced a child validate_child refuses."""

    def __init__(self, reason: str):
        super().__init__(f"the child fails validation: {reason}")
        self.outcome = "parse_error" if reason.startswith(SYNTAX_ERROR_PREFIX) else "tampered"


class LLMOperator:
    name = "llm"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        temperature: float | None = None,
        max_tokens: int = 8192,
        max_dollars: float | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = LLM_TIMEOUT,
        max_retries: int = LLM_MAX_RETRIES,
        prompt_token_budget: int = 30_000,
        seed_source: str | None = None,
        spent_usd: float = 0.0,
        failure_limit: int = 8,
    ):
        """`api_key` comes from the caller (who reads the environment); it is sent to the API and
        scrubbed from every error text this operator produces. `seed_source` is the run's
        starting train.py, part of the cached prompt prefix; by default the packaged seed.
        `spent_usd` is what the run already spent (a resumed run's calls count against
        `max_dollars` too). After `failure_limit` proposals in a row fail on the API, `broken`
        says why and the engine stops (the caller sizes it to the proposals that can be in flight
        at once, which all fail together when a key is revoked). `temperature` is sent only when given: the current SDK has no sampling parameters, so it
        travels in the request body for models and gateways that still accept it."""
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.prompt_token_budget = prompt_token_budget
        self._secret = api_key or ""
        self._client = anthropic.Anthropic(api_key=api_key, base_url=base_url, max_retries=max_retries, timeout=timeout)
        self._budget = _Budget(max_dollars, spent_usd)
        self._breaker = _Breaker(failure_limit)
        self._seed_source = seed_source if seed_source is not None else _packaged_seed()
        self._default_program = PROGRAM_PATH.read_text(encoding="utf-8") if PROGRAM_PATH.exists() else ""

    @property
    def exhausted(self) -> bool:
        """True once the dollar budget allows no further call."""
        return self._budget.exhausted

    @property
    def broken(self) -> str | None:
        """Why this operator stopped proposing for good (see `_Breaker`), or None."""
        return self._breaker.reason

    @property
    def spent_usd(self) -> float:
        return self._budget.spent

    def mutate(self, parent: ParentInfo, ctx: ArchiveContext, rng: random.Random) -> Proposal:
        prompt = _mutation_prompt(parent, ctx, self._room_for_user(ctx))
        return self._evolve("mutate", [parent.id], parent.source, prompt, ctx)

    def crossover(
        self,
        a: ParentInfo,
        b: ParentInfo,
        ancestor_source: str | None,
        ctx: ArchiveContext,
        rng: random.Random,
    ) -> Proposal:
        """A clean three-way merge that validates is the child for free; else the model merges."""
        conflicts = ""
        if ancestor_source is not None:
            merged, clean = merge3(ancestor_source, a.source, b.source)
            if clean and merged not in (a.source, b.source) and validate_child(merged) is None:
                hypothesis = f"merge #{a.id}×#{b.id}: {a.hypothesis or '(no hypothesis)'} + {b.hypothesis or '(no hypothesis)'}"
                return Proposal(operator=FREE_MERGE, parents=[a.id, b.id], hypothesis=hypothesis, source=merged)
            if not clean:
                conflicts = merged
        prompt = _crossover_prompt(a, b, ancestor_source, conflicts, self._room_for_user(ctx), ctx)
        return self._evolve("crossover", [a.id, b.id], a.source, prompt, ctx)

    # -- one proposal: an answer, maybe one repair -----------------------------------------

    def _evolve(self, role: str, parents: list[int], base: str, prompt: str, ctx: ArchiveContext) -> Proposal:
        proposal = self._answer_and_repair(role, parents, base, prompt, ctx)
        self._breaker.note(proposal)
        return proposal

    def _answer_and_repair(self, role: str, parents: list[int], base: str, prompt: str,
                           ctx: ArchiveContext) -> Proposal:
        system = self._system(ctx)
        messages: list[dict] = [{"role": "user", "content": prompt}]
        calls: list[dict] = []
        hypothesis = ""
        for attempt in (role, "repair"):
            text, call = self._call(attempt, system, messages)
            calls.append(call)
            if text is None:
                return Proposal(self.name, parents, hypothesis, rejected=call["error"], llm_calls=calls)
            try:
                answer = parse_answer(text)
                hypothesis = answer.hypothesis
                child = apply_answer(answer, base)
                reason = validate_child(child)
                if reason is not None:
                    raise _InvalidChild(reason)
            except EditError as e:
                call.update(outcome=e.outcome, error=str(e))
                messages += [
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": _REPAIR.format(error=e)},
                ]
                continue
            return Proposal(self.name, parents, hypothesis, source=child, llm_calls=calls)
        reason = f"{calls[-1]['error']} (after one repair round)"
        return Proposal(self.name, parents, hypothesis, rejected=reason, llm_calls=calls)

    def _call(self, role: str, system: list[dict], messages: list[dict]) -> tuple[str | None, dict]:
        """The answer text (None on failure) and the call's record."""
        record = {
            "model": self.model,
            "role": role,
            "input_tokens": 0,
            "output_tokens": 0,
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "cost_usd": 0.0,
            "latency_s": 0.0,
            "outcome": "ok",
            "error": "",
        }
        estimate = self._worst_case_cost(system, messages)
        if not self._budget.reserve(estimate):
            record.update(outcome="budget", error=self._budget.spent_message())
            return None, record
        try:  # the reservation is settled whatever happens, or other threads would wait forever
            start = time.monotonic()
            try:
                response = self._client.messages.create(
                    model=self.model,
                    max_tokens=self.max_tokens,
                    system=system,
                    messages=messages,
                    extra_body=None if self.temperature is None else {"temperature": self.temperature},
                )
            except anthropic.AnthropicError as e:
                outcome = _api_outcome(e)
                record.update(outcome=outcome, error=f"LLM call failed ({outcome}): {self._scrub(e)}")
                return None, record
            finally:
                record["latency_s"] = round(time.monotonic() - start, 3)
            usage = response.usage
            record.update(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_read_tokens=usage.cache_read_input_tokens or 0,
                cache_write_tokens=usage.cache_creation_input_tokens or 0,
            )
            record["cost_usd"] = call_cost(
                self.model,
                record["input_tokens"],
                record["output_tokens"],
                record["cache_read_tokens"],
                record["cache_write_tokens"],
            )
        finally:
            self._budget.settle(estimate, record["cost_usd"])
        text = "".join(block.text for block in response.content if block.type == "text")
        if response.stop_reason == "max_tokens":
            # A cut-off answer may parse yet miss its last blocks: never train half an edit.
            text = "(answer cut off at max_tokens)"
        return text, record

    def _worst_case_cost(self, system: list[dict], messages: list[dict]) -> float:
        chars = sum(len(b["text"]) for b in system) + sum(len(m["content"]) for m in messages)
        p = price_for(self.model)
        return (chars / CHARS_PER_TOKEN * max(p.input, p.cache_write) + self.max_tokens * p.output) / 1e6

    def _system(self, ctx: ArchiveContext) -> list[dict]:
        """The stable prefix, cached: the program and the seed change only between runs."""
        program = ctx.program or self._default_program
        rules = contract_for(self._seed_source)
        if program.strip() != self._default_program.strip():
            rules += FOREIGN_PROGRAM_RULE
        text = _SYSTEM.format(program=program, contract=rules, answer_format=ANSWER_FORMAT)
        if self._seed_source:
            text += f"\n\n# The seed train.py this run started from\n\n```python\n{self._seed_source}```\n"
        return [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]

    def _room_for_user(self, ctx: ArchiveContext) -> int:
        """Characters left for the user message once the system prefix is counted."""
        system_chars = sum(len(b["text"]) for b in self._system(ctx))
        return self.prompt_token_budget * CHARS_PER_TOKEN - system_chars

    def _scrub(self, error: Exception) -> str:
        text = " ".join(str(error).split())[:400]
        return text.replace(self._secret, "***") if self._secret else text


def _api_outcome(e: anthropic.AnthropicError) -> str:
    if isinstance(e, anthropic.APITimeoutError):
        return "timeout"
    if isinstance(e, anthropic.RateLimitError):
        return "rate_limited"
    if isinstance(e, anthropic.APIStatusError) and e.status_code == 529:
        return "overloaded"
    return "api_error"


def _packaged_seed() -> str:
    spec = importlib.util.find_spec("trainer")
    if spec is None or not spec.submodule_search_locations:
        return ""
    path = Path(list(spec.submodule_search_locations)[0]) / "train.py"
    return path.read_text(encoding="utf-8") if path.exists() else ""


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------

_SYSTEM = """\
You improve a small GPT training script, train.py, inside an evolutionary search. Every variant is
trained for the same fixed wall-clock budget and scored outside it on held-out data by val_bpb
(validation bits per byte, lower is better). Your children compete in a MAP-Elites archive.

# The research program

{program}

# How every variant is run and scored (fixed by evo, whatever the program says)

{contract}

# {answer_format}"""

# evo's own rules, shown after any program (a user's program.md may not mention them).
_HARNESS_RULES = """- train.py imports `from trainer import harness`; `h = harness.setup()` first, training batches only
  from `h.train_batches(B, T)`, `while not h.done:` ... `h.step(tokens=..., loss=...)`, and
  `h.finish(model, ...)` last. `h.finish` exports the model with torch.export (eval mode, at a fixed
  (batch, seq_len) shape) and a separate process scores that graph: the forward pass must be
  exportable (no control flow on tensor values, no `.item()` in forward, no custom or downloaded
  kernels, no randomness in eval mode, no writes to buffers) and return (B, T, vocab) logits.
"""
# The same rules for a run whose seed uses autoresearch's `prepare` interface (trainer.autoresearch).
_PREPARE_RULES = """- train.py keeps autoresearch's interface: `from prepare import MAX_SEQ_LEN, TIME_BUDGET, Tokenizer,
  make_dataloader, evaluate_bpb` (evo's implementation; prepare.py itself cannot be edited), batches
  only from `make_dataloader(tokenizer, B, T, "train")` ("val" is refused), its own clock against
  TIME_BUDGET, and `evaluate_bpb(model, tokenizer, batch_size)` last: that call hands the model to
  evo's scorer (once), which exports it with torch.export (eval mode, at a fixed (batch, MAX_SEQ_LEN)
  shape) and calls `model(idx)` with no targets: the forward pass must return (B, T, vocab) logits
  then, and be exportable (no control flow on tensor values, no `.item()` in forward, no randomness
  in eval mode, no writes to buffers). FA3 from `kernels.get_kernel` is PyTorch SDPA in a trial.
"""
_COMMON_RULES = """- The trial runs sandboxed: no network, no validation data, no files outside its directory and the
  training split, no API keys. Scores from anything but the exported model do not exist.
- The runner's own clock bounds launch -> hand-over at the budget plus a fixed allowance; a trial
  over it is `over_budget`. Trials are bounded: over 8 MiB of output is `log_flood`; a huge file or
  trial directory `disk_limit`; hundreds of processes `process_limit`; half the machine's RAM
  `memory_limit`; a trial cannot start a new session (`setsid`). Failures (unexportable,
  over_budget, cheated, crash, ...) are shown to you with their error tail."""
# Shown after a program that is not evo's own (`--program`, e.g. autoresearch's program.md, which
# is written for an agent that runs a loop itself).
FOREIGN_PROGRAM_RULE = """
- Answer once, in the answer format: a program's own loop (git, results.tsv, keep/discard, never
  stop) is evo's job; take its research guidance."""
CONTRACT = _HARNESS_RULES + _COMMON_RULES
PREPARE_CONTRACT = _PREPARE_RULES + _COMMON_RULES


def contract_for(seed_source: str | None) -> str:
    """evo's rules for the interface the run's seed uses (a child keeps its seed's interface)."""
    return PREPARE_CONTRACT if seed_source and uses_prepare(seed_source) else CONTRACT


_REPAIR = """\
Your answer could not be used: {error}

Reply again, in the answer format, with the complete answer: the Hypothesis line and edits that
apply to the ORIGINAL train.py from my first message (not to your previous attempt)."""

_TOP_ELITES = 3  # elites shown with their diff to the parent; the rest get one line each
_DIFF_LINES = 120
_STDERR_CHARS = 800
_FRAME_CHARS = 600  # section titles and the noise line around the optional sections


class _Room:
    """A character allowance that optional prompt sections draw from, most useful first."""

    def __init__(self, chars: int):
        self.left = chars

    def take(self, text: str) -> bool:
        if len(text) > self.left:
            return False
        self.left -= len(text)
        return True

    def fill(self, items: list[str]) -> list[str]:
        return [item for item in items if self.take(item)]


def _mutation_prompt(parent: ParentInfo, ctx: ArchiveContext, room_chars: int) -> str:
    head = f"# The parent to improve: {_describe(parent)}\n{_trials(parent.trials)}\n\n```python\n{parent.source}```\n"
    duplicates = [f for f in ctx.failures if f.get("duplicate_of") is not None]
    task = (
        "\n# Your task\n\nPropose ONE change to the parent that you expect to lower val_bpb within the same "
        "time budget. Prefer an idea that is not listed above as tried"
        + (", and never one listed as already in the archive: it would be a duplicate, and is not trained again"
           if duplicates else "")
        + ". Reply in the answer format; SEARCH texts must be copied from the parent's source above.\n"
    )
    room = _Room(room_chars - len(head) - len(task) - _FRAME_CHARS)
    others = [e for e in ctx.elites if e.id != parent.id]
    tried = room.fill([f"- {h}\n" for h in ctx.tried_from_parent])
    repeated = room.fill([_duplicate(f) for f in duplicates])
    best = room.fill([_elite_with_diff(e, parent) for e in others[:_TOP_ELITES]])
    # A failure without a hypothesis (an API error, say) teaches nothing about ideas.
    failures = room.fill([_failure(f) for f in ctx.failures if f.get("hypothesis") and f.get("duplicate_of") is None])
    cells = room.fill([f"- {_describe(e)}\n" for e in others[_TOP_ELITES:]])
    sections = [head]
    if ctx.noise_sd is not None:
        sections.append(
            f"\nSeed-to-seed noise: val_bpb varies by about {ctx.noise_sd:.4f} (sd) between runs of the "
            "same file; smaller differences are not evidence.\n"
        )
    for title, items in (
        ("Ideas already tried from this parent (do not repeat them)", tried),
        (_DUPLICATES_TITLE, repeated),
        ("The best elites of the archive, with their diff against the parent", best),
        ("Recent failures (avoid their mistakes)", failures),
        ("Elites of other cells", cells),
    ):
        if items:
            sections.append(f"\n# {title}\n\n" + "".join(items))
    sections.append(task)
    return "".join(sections)


_DUPLICATES_TITLE = "Children already in the archive (proposed again, so not trained: do not propose them again)"


def _crossover_prompt(a: ParentInfo, b: ParentInfo, ancestor: str | None, conflicts: str, room_chars: int,
                      ctx: ArchiveContext | None = None) -> str:
    head = (
        f"# Parent A: {_describe(a)}\n\n```python\n{a.source}```\n\n# Parent B: {_describe(b)}\n\n"
    )
    if ancestor is None:
        head += "Parent B differs from parent A by:\n\n" + _diff(a.source, b.source, "A", "B")
    else:
        head += (
            "What parent A changed from their common ancestor:\n\n" + _diff(ancestor, a.source, "ancestor", "A")
            + "\nWhat parent B changed from their common ancestor:\n\n" + _diff(ancestor, b.source, "ancestor", "B")
        )
    task = (
        "\n# Your task\n\nWrite ONE child that combines the ideas of both parents into a variant you expect "
        "to beat both. Reply in the answer format; the edits apply to parent A's source above.\n"
    )
    room = _Room(room_chars - len(head) - len(task) - _FRAME_CHARS)
    middle = ""
    if conflicts:
        shown = room.fill([_conflict_regions(conflicts)])
        if shown:
            middle = "\n# Where a plain three-way merge conflicts (git merge-file --diff3)\n\n" + shown[0]
    repeated = room.fill([_duplicate(f) for f in (ctx.failures if ctx else []) if f.get("duplicate_of") is not None])
    if repeated:
        middle += f"\n# {_DUPLICATES_TITLE}\n\n" + "".join(repeated)
    return head + middle + task


def _describe(p: ParentInfo) -> str:
    score = f"val_bpb {p.val_bpb:.4f} over {p.n_ok} successful trial(s)" if p.val_bpb is not None else "no score yet"
    cell = f", cell {p.cell}" if p.cell is not None else ""
    return f"#{p.id} ({score}{cell}): {p.hypothesis or 'no hypothesis'}"


def _trials(trials: list[dict]) -> str:
    lines = []
    for t in trials:
        parts = [f"- seed {t.get('seed')}: {t.get('outcome')}"]
        if t.get("val_bpb") is not None:
            parts.append(f"val_bpb {t['val_bpb']:.4f}")
        for key, label in (("steps", "steps"), ("tokens", "tokens"), ("params", "params"), ("peak_memory_mb", "MB peak")):
            if t.get(key) is not None:
                parts.append(f"{_si(t[key])} {label}")
        if t.get("mfu") is not None:
            parts.append(f"MFU {t['mfu']:.1%}")
        line = ", ".join(parts)
        if t.get("outcome") != "ok":
            line += f" — {t.get('message', '')}" + _tail(t.get("stderr_tail") or "")
        lines.append(line)
    return ("\nIts trials:\n" + "\n".join(lines)) if lines else ""


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:g}"


def _tail(stderr: str) -> str:
    stderr = stderr.strip()
    return f"\n  stderr tail:\n```\n{stderr[-_STDERR_CHARS:]}\n```" if stderr else ""


def _failure(f: dict) -> str:
    message = f" — {f['message']}" if f.get("message") else ""
    outcome = f.get("outcome", "failed")
    label = "rejected, never trained" if outcome == "rejected" else outcome
    return f"- {label}: {f['hypothesis']}{message}{_tail(f.get('stderr_tail') or '')}\n"


def _duplicate(f: dict) -> str:
    """A proposal that came back as a child the archive already had (see `evo.proposer`)."""
    origin = f" (from #{f['parent_id']})" if f.get("parent_id") is not None else ""
    times = f", proposed {f['times']} times lately" if f.get("times", 1) > 1 else ""
    edit = f"\n```diff\n{f['edit']}\n```" if f.get("edit") else ""
    return (f"- {f.get('hypothesis') or 'no hypothesis'}{origin}: this exact child was already tried: "
            f"duplicate of #{f['duplicate_of']} — do not propose it again{times}{edit}\n")


def _elite_with_diff(e: ParentInfo, parent: ParentInfo) -> str:
    return f"## {_describe(e)}\n\n{_diff(parent.source, e.source, f'#{parent.id}', f'#{e.id}')}\n"


def _diff(old: str, new: str, old_name: str, new_name: str) -> str:
    lines = list(difflib.unified_diff(old.splitlines(), new.splitlines(), old_name, new_name, n=2, lineterm=""))
    if not lines:
        return "(no difference)\n"
    if len(lines) > _DIFF_LINES:
        lines = lines[:_DIFF_LINES] + [f"... ({len(lines) - _DIFF_LINES} more diff lines)"]
    return "```diff\n" + "\n".join(lines) + "\n```\n"


def _conflict_regions(merged: str, context: int = 3) -> str:
    """Only the conflicting hunks of a merged text, with a few lines around each."""
    lines = merged.splitlines()
    keep: set[int] = set()
    start = None
    for i, line in enumerate(lines):
        if line.startswith("<<<<<<< "):
            start = i
        elif line.startswith(">>>>>>> ") and start is not None:
            keep.update(range(max(0, start - context), min(len(lines), i + context + 1)))
            start = None
    out, last = [], -2
    for i in sorted(keep):
        if i != last + 1:
            out.append("...")
        out.append(lines[i])
        last = i
    return "```\n" + "\n".join(out) + "\n```\n"
