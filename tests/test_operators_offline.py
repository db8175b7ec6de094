import ast
import random
import re
from pathlib import Path

import pytest

from evo.operators.base import ArchiveContext, ParentInfo
from evo.operators.offline import OfflineOperator, read_constants
from tests.support import variant_source

SEED = variant_source()
CTX = ArchiveContext()
REAL_SEED = Path(__file__).resolve().parents[1] / "trainer" / "train.py"


def values(source, device):
    return {name: c.value for name, c in read_constants(source, device).items()}


def check_valid(v):
    """Every validity rule the operator promises."""
    assert v["DEPTH"] >= 1
    assert v["HEAD_DIM"] > 0 and v["HEAD_DIM"] % 2 == 0
    assert v["MODEL_DIM"] > 0 and v["MODEL_DIM"] % v["HEAD_DIM"] == 0
    assert v["SEQ_LEN"] >= 16 and v["SEQ_LEN"] & (v["SEQ_LEN"] - 1) == 0
    assert v["DEVICE_BATCH"] >= 1 and v["GRAD_ACCUM"] >= 1 and v["MLP_RATIO"] >= 1
    for name in ("WARMUP_RATIO", "WARMDOWN_RATIO", "FINAL_LR_FRAC"):
        assert 0 <= v[name] <= 1
    assert v["WARMUP_RATIO"] + v["WARMDOWN_RATIO"] <= 1
    for name in ("ADAM_BETA1", "ADAM_BETA2", "MUON_MOMENTUM"):
        assert 0 < v[name] < 1
    for name in ("EMBED_LR", "UNEMBED_LR", "MATRIX_LR", "SCALAR_LR", "LOGIT_SOFTCAP"):
        assert v[name] > 0
    assert v["WEIGHT_DECAY"] >= 0
    for name in ("DEPTH", "MODEL_DIM", "HEAD_DIM", "SEQ_LEN", "DEVICE_BATCH", "GRAD_ACCUM", "MLP_RATIO"):
        assert type(v[name]) is int


def test_reads_the_applicable_branch():
    cpu, cuda = values(SEED, "cpu"), values(SEED, "cuda")
    assert (cpu["DEPTH"], cuda["DEPTH"]) == (2, 8)
    assert cpu["MATRIX_LR"] == cuda["MATRIX_LR"] == 0.04
    assert "CUDA" not in cpu and "h" not in cpu


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_mutation_changes_exactly_the_named_constants(device):
    op = OfflineOperator(device)
    rng = random.Random(1)
    before = values(SEED, device)
    for _ in range(60):
        p = op.mutate(ParentInfo(1, SEED), CTX, rng)
        assert p.rejected is None and p.operator == "offline" and p.parents == [1]
        ast.parse(p.source)
        assert p.source != SEED
        after = values(p.source, device)
        changed = {n for n in before if before[n] != after[n]}
        parts = [part.split(" ") for part in p.hypothesis.split("; ")]
        assert changed == {name for name, *_ in parts} and 1 <= len(parts) <= 2, p.hypothesis
        for name, old, arrow, new in parts:
            assert arrow == "→" and float(old) == before[name] and float(new) == after[name]


@pytest.mark.parametrize("device, other", [("cpu", "cuda"), ("cuda", "cpu")])
def test_only_the_devices_branch_changes_and_layout_survives(device, other):
    op = OfflineOperator(device)
    rng = random.Random(2)
    switched = [n for n, v in values(SEED, device).items() if values(SEED, other)[n] != v]
    assert "DEPTH" in switched and "MATRIX_LR" not in switched
    for _ in range(60):
        child = op.mutate(ParentInfo(1, SEED), CTX, rng).source
        theirs, ours = values(child, other), values(SEED, other)
        assert all(theirs[n] == ours[n] for n in switched)
        old_lines, new_lines = SEED.splitlines(), child.splitlines()
        assert len(old_lines) == len(new_lines)
        for old, new in zip(old_lines, new_lines):
            if old != new:  # only constant lines change, and only their literal
                assert re.match(r"[A-Z_0-9]+ = ", old)
                assert old.partition("#")[2] == new.partition("#")[2]
                assert old.split(" = ")[0] == new.split(" = ")[0]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_every_validity_rule_holds_over_long_random_walks(device):
    op = OfflineOperator(device)
    rng = random.Random(3)
    for walk in range(4):
        source = SEED
        for _ in range(30):
            p = op.mutate(ParentInfo(1, source), CTX, rng)
            assert p.rejected is None
            source = p.source
            check_valid(values(source, device))


def test_weight_decay_steps_up_from_zero():
    op = OfflineOperator("cpu")
    rng = random.Random(4)
    decays = set()
    for _ in range(80):
        decays.add(values(op.mutate(ParentInfo(1, SEED), CTX, rng).source, "cpu")["WEIGHT_DECAY"])
    assert decays - {0.0}, "WEIGHT_DECAY never left 0"


def test_same_rng_seed_same_child():
    a = OfflineOperator("cpu").mutate(ParentInfo(1, SEED), CTX, random.Random(9))
    b = OfflineOperator("cpu").mutate(ParentInfo(1, SEED), CTX, random.Random(9))
    assert a.source == b.source and a.hypothesis == b.hypothesis


def test_shapes_it_does_not_understand_are_left_alone():
    source = (
        "import os\nfrom trainer import harness\nh = harness.setup()\nCUDA = h.is_cuda\n"
        "DEPTH = int(os.environ.get('X', '3'))\n"  # not a literal
        "MODEL_DIM = 256 if FAST else 128\n"  # not a CUDA switch
        "HEAD_DIM: int = 32\n"  # annotated literal: fine
        "SEQ_LEN = 128\nSEQ_LEN = 256\n"  # assigned twice: no single literal decides
        "GRAD_ACCUM = 2\nGRAD_ACCUM += 1\n"
        "SIZES = (1, 2)\nlower_case = 0.1\nNEG = -1\nNAME = 'gpt'\nUSE_BIAS = False\n"
        "h.finish(None)\n"
    )
    assert set(read_constants(source, "cpu")) == {"HEAD_DIM", "NEG", "USE_BIAS"}
    op = OfflineOperator("cpu")
    rng = random.Random(5)
    for _ in range(50):
        p = op.mutate(ParentInfo(1, source), CTX, rng)
        assert p.rejected is None
        assert set(re.findall(r"([A-Z_]+) \S+ →", p.hypothesis)) <= {"HEAD_DIM", "USE_BIAS"}


def test_nothing_to_change_or_unparsable_is_a_rejection_not_a_crash():
    op = OfflineOperator("cpu")
    for source in ("from trainer import harness\nh = harness.setup()\nh.finish(None)\n", "def (:\n"):
        p = op.mutate(ParentInfo(7, source), CTX, random.Random(0))
        assert p.source is None and "no hyperparameter constant" in p.rejected


def test_bad_device_kind():
    with pytest.raises(ValueError):
        OfflineOperator("tpu")


def _variant(**changes):
    source = SEED
    for name, (old, new) in changes.items():
        source = source.replace(f"{name} = {old}", f"{name} = {new}", 1)
    return source


def test_crossover_takes_each_constant_from_one_parent_and_something_from_each():
    a = ParentInfo(12, _variant(MATRIX_LR=("0.04", "0.06"), EMBED_LR=("0.6", "0.9")))
    b = ParentInfo(31, _variant(DEPTH=("8 if CUDA else 2", "8 if CUDA else 3"), ADAM_BETA2=("0.95", "0.99")))
    op = OfflineOperator("cpu")
    va, vb = values(a.source, "cpu"), values(b.source, "cpu")
    differ = [n for n in va if va[n] != vb[n]]
    seen_children = set()
    rng = random.Random(6)
    for _ in range(30):
        p = op.crossover(a, b, SEED, CTX, rng)
        assert p.rejected is None and p.parents == [12, 31] and p.operator == "offline"
        assert p.hypothesis.startswith("crossover #12×#31: ")
        vc = values(p.source, "cpu")
        from_a = [n for n in differ if vc[n] == va[n]]
        from_b = [n for n in differ if vc[n] == vb[n]]
        assert sorted(from_a + from_b) == sorted(differ) and from_a and from_b
        for n in from_a:
            assert f"{n} {read_constants(a.source, 'cpu')[n].text} (from #12)" in p.hypothesis
        for n in from_b:
            assert f"{n} {read_constants(b.source, 'cpu')[n].text} (from #31)" in p.hypothesis
        seen_children.add(p.source)
    assert len(seen_children) > 3


def test_crossover_keeps_linked_constants_together():
    a = ParentInfo(1, _variant(MODEL_DIM=("512 if CUDA else 128", "512 if CUDA else 96"), HEAD_DIM=("128 if CUDA else 32", "128 if CUDA else 48"), MATRIX_LR=("0.04", "0.05")))
    b = ParentInfo(2, _variant(MODEL_DIM=("512 if CUDA else 128", "512 if CUDA else 256"), HEAD_DIM=("128 if CUDA else 32", "128 if CUDA else 64")))
    rng = random.Random(7)
    for _ in range(40):
        v = values(OfflineOperator("cpu").crossover(a, b, None, CTX, rng).source, "cpu")
        assert (v["MODEL_DIM"], v["HEAD_DIM"]) in {(96, 48), (256, 64)}


def test_crossover_of_identical_constants_is_rejected():
    a = ParentInfo(1, SEED)
    b = ParentInfo(2, SEED.replace("def rms_norm(x):", "def rms_norm(x):  # same constants", 1))
    p = OfflineOperator("cpu").crossover(a, b, None, CTX, random.Random(0))
    assert p.source is None and "same hyperparameter constants" in p.rejected


def test_crossover_that_would_copy_a_parent_is_rejected():
    a, b = ParentInfo(1, SEED), ParentInfo(2, _variant(MATRIX_LR=("0.04", "0.06")))
    p = OfflineOperator("cpu").crossover(a, b, None, CTX, random.Random(0))
    assert p.source is None and "copy #2" in p.rejected


@pytest.mark.skipif(not REAL_SEED.exists(), reason="trainer/train.py not written yet")
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_mutates_the_real_seed(device):
    source = REAL_SEED.read_text()
    op = OfflineOperator(device)
    rng = random.Random(8)
    for _ in range(20):
        p = op.mutate(ParentInfo(1, source), CTX, rng)
        assert p.rejected is None, p.rejected
        ast.parse(p.source)
        assert p.source != source
