"""The answer format an LLM must reply in, and how an answer becomes a child source.

An answer is a line `Hypothesis: ...` followed by either SEARCH/REPLACE blocks or the whole new
file in one ```python fence; prose around them is ignored. Applying is exact on purpose: a SEARCH
text that is missing or occurs twice is an error sent back to the model in a repair round, never a
fuzzy guess that would train something the model did not write. Each error class carries the
outcome name the operator records for the call.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

ANSWER_FORMAT = """\
Answer format (the reply is parsed by a program):

1. One line `Hypothesis: <what you change and why you expect lower val_bpb>` (one sentence).
2. Then the change, either as one or more SEARCH/REPLACE blocks:

<<<<<<< SEARCH
<lines copied exactly from the current train.py, with their indentation>
=======
<the lines that replace them>
>>>>>>> REPLACE

   Each SEARCH text must occur exactly once in the file: include enough lines to make it unique.
   Blocks are applied in order. An empty REPLACE deletes the lines.
3. Or, for a large rewrite, the complete new train.py in a single ```python fenced block
   (and no SEARCH/REPLACE blocks).

Text outside the hypothesis line and the blocks is ignored.
"""

_HYPOTHESIS = re.compile(r"^[^\w\n]*hypothesis[^\w\n]*:(.*)$", re.IGNORECASE | re.MULTILINE)
_SEARCH = re.compile(r"^\s*<{5,9} ?SEARCH\s*$")
_DIVIDER = re.compile(r"^\s*={5,9}\s*$")
_REPLACE = re.compile(r"^\s*>{5,9} ?REPLACE\s*$")
_FENCE = re.compile(r"^```(?:python|py)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


class EditError(ValueError):
    """An answer that cannot become a child; str(e) is one line for the model and the archive."""

    outcome = "malformed"


class MalformedAnswer(EditError):
    pass


class NoHypothesis(EditError):
    pass


class SearchNotFound(EditError):
    outcome = "search_not_found"


class AmbiguousSearch(EditError):
    # The recorded outcome vocabulary has no separate name; it is the same failure to locate.
    outcome = "search_not_found"


@dataclass
class Edit:
    search: str  # whole lines, each ending in "\n"
    replace: str


@dataclass
class Answer:
    hypothesis: str
    edits: list[Edit]
    whole_file: str | None = None  # set instead of edits for a ```python answer


def parse_answer(text: str) -> Answer:
    match = _HYPOTHESIS.search(text)
    hypothesis = match.group(1).strip(" \t*_`") if match else ""
    if not hypothesis:
        raise NoHypothesis("the answer has no `Hypothesis: ...` line")
    edits = _parse_blocks(text)
    if edits:
        return Answer(hypothesis, edits)
    fences = _FENCE.findall(text)
    if len(fences) == 1:
        return Answer(hypothesis, [], whole_file=fences[0])
    if fences:
        raise MalformedAnswer(f"the answer has {len(fences)} ```python blocks; a whole file must be exactly one")
    raise MalformedAnswer("the answer has neither SEARCH/REPLACE blocks nor a ```python block")


def _parse_blocks(text: str) -> list[Edit]:
    edits: list[Edit] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if not _SEARCH.match(lines[i]):
            if _REPLACE.match(lines[i]):
                raise MalformedAnswer(f"line {i + 1} of the answer: >>>>>>> REPLACE without a SEARCH block")
            i += 1
            continue
        n = len(edits) + 1
        search, i = _until(lines, i + 1, _DIVIDER, n, "=======")
        replace, i = _until(lines, i + 1, _REPLACE, n, ">>>>>>> REPLACE")
        if not search:
            raise MalformedAnswer(f"SEARCH block {n} is empty")
        edits.append(Edit(_join(search), _join(replace)))
        i += 1
    return edits


def _until(lines: list[str], i: int, end: re.Pattern, n: int, marker: str) -> tuple[list[str], int]:
    """The lines from i up to the `end` marker, and the marker's index."""
    start = i
    while i < len(lines):
        if end.match(lines[i]):
            return lines[start:i], i
        if _SEARCH.match(lines[i]) or (end is _REPLACE and _DIVIDER.match(lines[i])):
            break
        i += 1
    raise MalformedAnswer(f"SEARCH block {n} has no {marker} line")


def _join(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


def apply_answer(answer: Answer, source: str) -> str:
    """The child source; raises SearchNotFound / AmbiguousSearch / MalformedAnswer."""
    if answer.whole_file is not None:
        child = answer.whole_file
    else:
        child = source if source.endswith("\n") else source + "\n"
        for n, edit in enumerate(answer.edits, 1):
            child = _apply_one(child, edit, n)
    if child.strip() == source.strip():
        raise MalformedAnswer("the change leaves train.py as it was")
    return child


def _apply_one(source: str, edit: Edit, n: int) -> str:
    """Replace the one place where edit.search occurs as whole lines."""
    found = [i for i in _occurrences(source, edit.search) if i == 0 or source[i - 1] == "\n"]
    first_line = edit.search.splitlines()[0].strip()
    if not found:
        raise SearchNotFound(f"SEARCH block {n} does not occur in train.py (first line: {first_line!r})")
    if len(found) > 1:
        raise AmbiguousSearch(f"SEARCH block {n} occurs {len(found)} times in train.py (first line: {first_line!r}); add lines to make it unique")
    at = found[0]
    return source[:at] + edit.replace + source[at + len(edit.search) :]


def _occurrences(text: str, sub: str):
    at = text.find(sub)
    while at != -1:
        yield at
        at = text.find(sub, at + 1)


def merge3(ancestor: str, a: str, b: str) -> tuple[str, bool]:
    """Three-way merge of a and b against their ancestor with `git merge-file`.

    Returns (text, clean). When not clean, the text holds diff3-style conflict markers (with the
    ancestor's lines) to show a model; when git is missing or fails, ("", False).
    """
    with tempfile.TemporaryDirectory(prefix="evo-merge-") as tmp:
        paths = []
        for name, text in (("a.py", a), ("ancestor.py", ancestor), ("b.py", b)):
            path = Path(tmp) / name
            path.write_text(text, encoding="utf-8")
            paths.append(str(path))
        cmd = ["git", "merge-file", "-p", "--diff3", "-L", "parent A", "-L", "common ancestor", "-L", "parent B", *paths]
        try:
            done = subprocess.run(cmd, capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return "", False
    # Exit status: number of conflicts (0 = clean); negative (>127 here) on error.
    if done.returncode < 0 or done.returncode > 127:
        return "", False
    return done.stdout.decode("utf-8", errors="replace"), done.returncode == 0
