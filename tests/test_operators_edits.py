import re
from pathlib import Path

import pytest

from evo.operators.edits import (
    AmbiguousSearch,
    MalformedAnswer,
    NoHypothesis,
    SearchNotFound,
    apply_answer,
    merge3,
    parse_answer,
)
from tests.support import variant_source

SEED = variant_source()
PROGRAM = Path(__file__).resolve().parents[1] / "program.md"

ONE_BLOCK = """\
Hypothesis: a higher matrix LR trains faster in a short budget.

<<<<<<< SEARCH
MATRIX_LR = 0.04
=======
MATRIX_LR = 0.06
>>>>>>> REPLACE
"""


def test_one_block():
    answer = parse_answer(ONE_BLOCK)
    assert answer.hypothesis == "a higher matrix LR trains faster in a short budget."
    assert len(answer.edits) == 1 and answer.whole_file is None
    child = apply_answer(answer, SEED)
    assert "MATRIX_LR = 0.06\n" in child and "MATRIX_LR = 0.04" not in child
    assert child.replace("MATRIX_LR = 0.06", "MATRIX_LR = 0.04") == SEED


def test_several_blocks_with_prose_and_fences_around_them():
    text = """Some thinking first.

**Hypothesis:** deeper and a shorter warmdown.

Here is the change:
```python
<<<<<<< SEARCH
DEPTH = 8 if CUDA else 2          # transformer blocks
=======
DEPTH = 8 if CUDA else 3          # transformer blocks
>>>>>>> REPLACE
```
and

```
<<<<<<< SEARCH
def lr_multiplier(progress):
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO
=======
def lr_multiplier(progress):
>>>>>>> REPLACE
```
Hope it helps.
"""
    answer = parse_answer(text)
    assert answer.hypothesis == "deeper and a shorter warmdown."
    assert len(answer.edits) == 2
    child = apply_answer(answer, SEED)
    assert "DEPTH = 8 if CUDA else 3          # transformer blocks\n" in child
    assert "def lr_multiplier(progress):\n    if progress < 1.0 - WARMDOWN_RATIO:" in child


def test_empty_replace_deletes_lines():
    text = "Hypothesis: drop the softcap.\n<<<<<<< SEARCH\nLOGIT_SOFTCAP = 15.0\n=======\n>>>>>>> REPLACE\n"
    child = apply_answer(parse_answer(text), SEED)
    assert "LOGIT_SOFTCAP = 15.0" not in child and "FINAL_LR_FRAC = 0.0\n\n\ndef rms_norm" in child


def test_whole_file_in_a_fence():
    new = SEED.replace("MLP_RATIO = 4", "MLP_RATIO = 3")
    answer = parse_answer(f"Hypothesis: narrower MLP.\n\nThe full file:\n\n```python\n{new}```\nDone.\n")
    assert answer.whole_file == new and answer.edits == []
    assert apply_answer(answer, SEED) == new


def test_blocks_are_applied_in_order():
    text = (
        "Hypothesis: two steps.\n"
        "<<<<<<< SEARCH\nMLP_RATIO = 4\n=======\nMLP_RATIO = 5\n>>>>>>> REPLACE\n"
        "<<<<<<< SEARCH\nMLP_RATIO = 5\n=======\nMLP_RATIO = 6\n>>>>>>> REPLACE\n"
    )
    assert "MLP_RATIO = 6\n" in apply_answer(parse_answer(text), SEED)


@pytest.mark.parametrize(
    "text, error, fragment",
    [
        ("<<<<<<< SEARCH\nA\n=======\nB\n>>>>>>> REPLACE\n", NoHypothesis, "Hypothesis"),
        ("Hypothesis:   \n<<<<<<< SEARCH\nA\n=======\nB\n>>>>>>> REPLACE\n", NoHypothesis, "Hypothesis"),
        ("Hypothesis: x\nI would change the learning rate.", MalformedAnswer, "neither"),
        ("Hypothesis: x\n<<<<<<< SEARCH\nA\nB\n>>>>>>> REPLACE\n", MalformedAnswer, "no ======="),
        ("Hypothesis: x\n<<<<<<< SEARCH\nA\n=======\nB\n", MalformedAnswer, "no >>>>>>> REPLACE"),
        ("Hypothesis: x\n<<<<<<< SEARCH\n=======\nB\n>>>>>>> REPLACE\n", MalformedAnswer, "empty"),
        ("Hypothesis: x\nA\n=======\nB\n>>>>>>> REPLACE\n", MalformedAnswer, "without a SEARCH"),
        ("Hypothesis: x\n```python\na = 1\n```\n```python\nb = 2\n```\n", MalformedAnswer, "2 ```python"),
    ],
)
def test_malformed_answers(text, error, fragment):
    with pytest.raises(error) as info:
        parse_answer(text)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_search_not_found_is_exact_not_fuzzy():
    # Same line with different spacing: a fuzzy matcher would accept it, this one must not.
    text = "Hypothesis: x\n<<<<<<< SEARCH\nMATRIX_LR  = 0.04\n=======\nMATRIX_LR = 0.06\n>>>>>>> REPLACE\n"
    with pytest.raises(SearchNotFound) as info:
        apply_answer(parse_answer(text), SEED)
    assert "SEARCH block 1" in str(info.value) and info.value.outcome == "search_not_found"


def test_search_must_match_whole_lines():
    text = "Hypothesis: x\n<<<<<<< SEARCH\nLR = 0.04\n=======\nLR = 0.06\n>>>>>>> REPLACE\n"
    with pytest.raises(SearchNotFound):
        apply_answer(parse_answer(text), SEED)  # "MATRIX_LR = 0.04" contains it mid-line


def test_ambiguous_search():
    text = "Hypothesis: x\n<<<<<<< SEARCH\n    def __init__(self):\n=======\n    def __init__(self):  # x\n>>>>>>> REPLACE\n"
    source = SEED + "\n\nclass Other:\n    def __init__(self):\n        pass\n"
    with pytest.raises(AmbiguousSearch) as info:
        apply_answer(parse_answer(text), source)
    assert "occurs 2 times" in str(info.value)


def test_a_change_that_changes_nothing_is_malformed():
    text = "Hypothesis: x\n<<<<<<< SEARCH\nMLP_RATIO = 4\n=======\nMLP_RATIO = 4\n>>>>>>> REPLACE\n"
    with pytest.raises(MalformedAnswer):
        apply_answer(parse_answer(text), SEED)


def test_the_example_in_program_md_is_a_valid_answer():
    """program.md documents the answer format; its example must parse and apply to the seed shape."""
    example = PROGRAM.read_text().split("Example:", 1)[1]
    child = apply_answer(parse_answer(example), SEED)
    assert "MATRIX_LR = 0.06" in child and "WARMDOWN_RATIO = 0.6" in child


def test_merge3_clean_and_conflicting():
    a = SEED.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.06")
    b = SEED.replace("LOGIT_SOFTCAP = 15.0", "LOGIT_SOFTCAP = 30.0")
    merged, clean = merge3(SEED, a, b)
    assert clean and "MATRIX_LR = 0.06" in merged and "LOGIT_SOFTCAP = 30.0" in merged
    c = SEED.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.02")
    merged, clean = merge3(SEED, a, c)
    assert not clean
    assert re.search(r"<<<<<<< parent A\nMATRIX_LR = 0.06\n\|\|\|\|\|\|\| common ancestor\nMATRIX_LR = 0.04\n=======\nMATRIX_LR = 0.02\n>>>>>>> parent B", merged)
