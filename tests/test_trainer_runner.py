"""Real subprocess trials: the seed learns, and every failure kind is recognised from a real variant."""

from __future__ import annotations

import pytest

from tests.conftest import FAST, SEED_TRAIN, variant
from trainer.runner import run_trial


def trial(dataset, source, **kw):
    opts = dict(dataset_dir=dataset.path, budget=2.0, seed=0, device="cpu", **FAST)
    opts.update(kw)
    return run_trial(source, **opts)


def test_seed_train_py_learns_well_below_uniform(dataset):
    # A step cap, not the clock, bounds this test: CI machines differ in speed and load.
    r = trial(dataset, SEED_TRAIN, budget=120, max_steps=40)
    assert r.ok, r.stderr_tail
    uniform = dataset.uniform_bpb((4096 // 64) * 64)
    assert r.val_bpb < 0.8 * uniform
    assert r.params > 0 and r.steps == 40 and r.tokens == 40 * 8 * 128
    assert 0 < r.training_seconds < 120
    assert r.total_seconds > r.training_seconds
    assert r.startup_seconds > 0 and r.eval_seconds > 0 and r.peak_memory_mb > 0


def test_same_seed_same_steps_reproduces_exactly(dataset):
    a = trial(dataset, variant("bigram.py"), budget=60, max_steps=5, seed=7)
    b = trial(dataset, variant("bigram.py"), budget=60, max_steps=5, seed=7)
    c = trial(dataset, variant("bigram.py"), budget=60, max_steps=5, seed=8)
    assert a.ok and b.ok and c.ok
    assert a.steps == 5 and a.val_bpb == b.val_bpb and a.val_bpb != c.val_bpb


@pytest.mark.parametrize(
    "name, outcome, needle",
    [
        ("peek.py", "cheated", "causality"),
        ("nan.py", "nan", "loss nan"),
        ("crash.py", "crash", "RuntimeError: shapes do not match"),
        ("oom.py", "oom", "alloc"),
        ("import_error.py", "import_error", "flash_attn_that_is_not_installed"),
        ("no_result.py", "no_result", "h.finish"),
    ],
)
def test_failure_kinds_from_real_variants(dataset, name, outcome, needle):
    r = trial(dataset, variant(name), budget=1.0)
    assert r.outcome == outcome, (r.message, r.stderr_tail[-800:])
    assert needle.lower() in (r.message + r.stderr_tail).lower()
    assert r.val_bpb is None
    assert "\n" not in r.message


def test_syntax_error_is_an_outcome_not_an_exception(dataset):
    r = trial(dataset, "import torch\ndef broken(:\n    pass\n")
    assert r.outcome == "syntax_error" and "line 2" in r.message


def test_timeout_kills_the_process_group(dataset):
    r = trial(dataset, variant("timeout.py"), budget=0.5, limit=12.0)
    assert r.outcome == "timeout"
    assert 12.0 <= r.total_seconds < 20.0


def test_trial_environment_holds_no_keys_or_tokens(dataset, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-must-not-leak")
    monkeypatch.setenv("HF_TOKEN", "hf-must-not-leak")
    monkeypatch.setenv("SOME_SERVICE_SECRET", "x")
    r = trial(dataset, variant("env_probe.py"), budget=0.5)
    assert r.ok, r.stderr_tail[-500:]


def test_budget_must_be_positive(dataset):
    with pytest.raises(ValueError, match="budget"):
        trial(dataset, SEED_TRAIN, budget=0)
