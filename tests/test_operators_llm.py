"""The LLM operator against the real Anthropic SDK and a real loopback HTTP server (no mocks)."""

import random
import re
import threading
import time

import pytest

from evo.operators.base import ArchiveContext, ParentInfo
from evo.operators.llm import DEFAULT_MODEL, LLMOperator, call_cost, price_for
from tests.support import variant_source
from tests.support.messages_server import Fail, MessagesServer, Reply

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SEED = variant_source()
PARENT = ParentInfo(
    12,
    SEED,
    hypothesis="the seed",
    val_bpb=1.8512,
    n_ok=2,
    cell=(3, 4),
    trials=[
        {"seed": 1, "outcome": "ok", "val_bpb": 1.85, "steps": 120, "tokens": 245760, "params": 1.2e6},
        {"seed": 2, "outcome": "oom", "val_bpb": None, "message": "CUDA out of memory", "stderr_tail": "torch.OutOfMemoryError: boom"},
    ],
)
RNG = random.Random(0)


def edit(old, new, hypothesis="a hypothesis"):
    return f"Hypothesis: {hypothesis}\n\n<<<<<<< SEARCH\n{old}\n=======\n{new}\n>>>>>>> REPLACE\n"


GOOD = edit("MATRIX_LR = 0.04", "MATRIX_LR = 0.06", "a higher matrix LR learns faster in 5 minutes")


def operator(server, **kw):
    kw = {"api_key": "test-key", "max_retries": 0, "timeout": 10.0, "seed_source": SEED, **kw}
    return LLMOperator(base_url=server.url, **kw)


def ctx(**kw):
    return ArchiveContext(program="Lower val_bpb. Keep it simple.", **kw)


def test_good_edit_gives_a_child_and_one_recorded_call():
    answer = Reply(GOOD, input_tokens=1200, output_tokens=80, cache_creation_input_tokens=900, delay=0.2)
    with MessagesServer([answer]) as server:
        p = operator(server).mutate(PARENT, ctx(), RNG)
    assert p.rejected is None and p.operator == "llm" and p.parents == [12]
    assert p.hypothesis == "a higher matrix LR learns faster in 5 minutes"
    assert p.source == SEED.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.06")
    [call] = p.llm_calls
    assert call["model"] == DEFAULT_MODEL and call["role"] == "mutate" and call["outcome"] == "ok"
    assert (call["input_tokens"], call["output_tokens"], call["cache_read_tokens"], call["cache_write_tokens"]) == (1200, 80, 0, 900)
    assert call["cost_usd"] == pytest.approx((1200 * 3 + 80 * 15 + 900 * 3.75) / 1e6)
    assert 0.2 <= call["latency_s"] < 10 and call["error"] == ""  # the server took 0.2 s to answer


def test_the_key_arrives_and_the_prompt_has_a_cached_stable_prefix():
    with MessagesServer([GOOD, GOOD]) as server:
        op = operator(server)
        first = op.mutate(PARENT, ctx(), RNG)
        second = op.mutate(PARENT, ctx(), RNG)
        requests = server.requests
    for r in requests:
        assert "test-key" in r.headers.get("x-api-key", "") + r.headers.get("authorization", "")
        [block] = r.system_blocks
        assert block["cache_control"] == {"type": "ephemeral"}
        assert "Lower val_bpb. Keep it simple." in block["text"] and SEED in block["text"]
        assert "<<<<<<< SEARCH" in block["text"]  # the answer format is part of the stable prefix
        assert r.body["model"] == DEFAULT_MODEL and r.body["max_tokens"] == 8192
    assert requests[0].system_blocks == requests[1].system_blocks
    assert first.llm_calls[0]["cache_write_tokens"] > 0 and second.llm_calls[0]["cache_read_tokens"] > 0
    assert second.llm_calls[0]["cost_usd"] < first.llm_calls[0]["cost_usd"]


def test_prompt_carries_parent_results_and_archive_memory():
    elite = ParentInfo(31, SEED.replace("DEPTH = 8 if CUDA else 2", "DEPTH = 8 if CUDA else 3"), hypothesis="one more block", val_bpb=1.80, n_ok=3, cell=(4, 4))
    other = ParentInfo(44, SEED, hypothesis="tiny model corner", val_bpb=2.1, n_ok=1, cell=(0, 1))
    context = ctx(
        elites=[elite, PARENT, other, other, other, ParentInfo(45, SEED, hypothesis="far cell", val_bpb=2.2, cell=(9, 9))],
        failures=[
            {"hypothesis": "fp8 matmuls", "outcome": "crash", "stderr_tail": "RuntimeError: fp8 not supported", "message": "exit 1"},
            {"hypothesis": "", "outcome": "rejected", "stderr_tail": "", "message": "LLM call failed (overloaded)"},
        ],
        tried_from_parent=["doubling SEQ_LEN", "removing the softcap"],
        noise_sd=0.0031,
    )
    with MessagesServer([GOOD]) as server:
        operator(server).mutate(PARENT, context, RNG)
        prompt = server.requests[0].user_text
    assert SEED in prompt and "#12" in prompt and "val_bpb 1.8512" in prompt
    assert "oom" in prompt and "torch.OutOfMemoryError: boom" in prompt
    assert "doubling SEQ_LEN" in prompt and "removing the softcap" in prompt
    assert "one more block" in prompt and "+DEPTH = 8 if CUDA else 3" in prompt
    assert "fp8 matmuls — exit 1" in prompt and "RuntimeError: fp8 not supported" in prompt
    assert "overloaded" not in prompt  # failures without an idea are left out
    assert "far cell" in prompt and "0.0031" in prompt


def test_the_prompt_after_a_duplicate_names_it_and_its_edit():
    dup = {"individual_id": 40, "hypothesis": "a higher matrix LR", "outcome": "rejected", "stderr_tail": "",
           "message": "duplicate of #31", "duplicate_of": 31, "parent_id": 12, "times": 2,
           "edit": "-MATRIX_LR = 0.04\n+MATRIX_LR = 0.06"}
    rejected = {"individual_id": 41, "hypothesis": "deeper", "outcome": "rejected", "stderr_tail": "",
                "message": "SEARCH block 1 does not occur in train.py (after one repair round)"}
    b = ParentInfo(31, SEED.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.06"), hypothesis="higher LR")
    with MessagesServer([GOOD, GOOD]) as server:
        op = operator(server)
        op.mutate(PARENT, ctx(failures=[dup, rejected]), RNG)
        op.crossover(PARENT, b, None, ctx(failures=[dup, rejected]), RNG)
        mutation, crossover = (r.user_text for r in server.requests)
    said = ("- a higher matrix LR (from #12): this exact child was already tried: duplicate of #31 — do not propose "
            "it again, proposed 2 times lately\n```diff\n-MATRIX_LR = 0.04\n+MATRIX_LR = 0.06\n```")
    assert said in mutation and said in crossover
    assert "never one listed as already in the archive" in mutation
    assert "- rejected, never trained: deeper — SEARCH block 1 does not occur" in mutation


def test_prompt_is_fitted_to_the_token_budget():
    context = ctx(
        elites=[ParentInfo(i, SEED + f"\n# variant {i}\n" + "x = 1  # a long line to make the diff heavy\n" * 200, hypothesis=f"idea {i}", val_bpb=1.9) for i in range(40, 80)],
        tried_from_parent=[f"tried idea {i}" for i in range(5)],
    )
    with MessagesServer([GOOD, GOOD]) as server:
        operator(server, prompt_token_budget=100_000).mutate(PARENT, context, RNG)
        # 3,100: the parent fits after the system prefix, which holds the rule for a foreign program
        operator(server, prompt_token_budget=3_100).mutate(PARENT, context, RNG)
        big, small = (r.user_text for r in server.requests)
        system_chars = len(server.requests[1].system_blocks[0]["text"])
    assert "+# variant 42" in big and "idea 79" in big
    assert SEED in small and "tried idea 4" in small  # the parent and its dead ends always come first
    assert "+# variant 40" not in small and len(small) + system_chars <= 3_100 * 4


def test_malformed_answer_gets_one_repair_round_then_is_rejected():
    with MessagesServer(["I think a bigger model.", "Still only prose."]) as server:
        p = operator(server).mutate(PARENT, ctx(), RNG)
        repair = server.requests[1].body["messages"]
    assert p.source is None and "after one repair round" in p.rejected and "\n" not in p.rejected
    assert [c["role"] for c in p.llm_calls] == ["mutate", "repair"]
    assert [c["outcome"] for c in p.llm_calls] == ["malformed", "malformed"]
    assert "Hypothesis" in p.llm_calls[0]["error"]
    assert [m["role"] for m in repair] == ["user", "assistant", "user"]
    assert repair[1]["content"] == "I think a bigger model." and "could not be used" in repair[2]["content"]


def test_repair_round_can_succeed():
    with MessagesServer([edit("MATRIX_LR = 0.4", "MATRIX_LR = 0.6"), GOOD]) as server:
        p = operator(server).mutate(PARENT, ctx(), RNG)
        assert "does not occur" in server.requests[1].user_text
    assert p.rejected is None and "MATRIX_LR = 0.06" in p.source
    assert [(c["role"], c["outcome"]) for c in p.llm_calls] == [("mutate", "search_not_found"), ("repair", "ok")]


def test_search_not_found():
    bad = edit("MATRIX_LR = 0.05", "MATRIX_LR = 0.06")
    with MessagesServer([bad, bad]) as server:
        p = operator(server).mutate(PARENT, ctx(), RNG)
    assert p.source is None and "does not occur" in p.rejected
    assert [c["outcome"] for c in p.llm_calls] == ["search_not_found"] * 2
    assert p.hypothesis == "a hypothesis"


def test_edit_that_breaks_parsing():
    bad = edit("def rms_norm(x):", "def rms_norm(x)")
    with MessagesServer([bad, bad]) as server:
        p = operator(server).mutate(PARENT, ctx(), RNG)
    assert p.source is None and "syntax error" in p.rejected
    assert [c["outcome"] for c in p.llm_calls] == ["parse_error"] * 2


@pytest.mark.parametrize(
    "old, new",
    [
        ("def rms_norm(x):", "def evaluate_bpb(model):\n    return 0.9\n\n\ndef rms_norm(x):"),
        ('h.finish(model, flops_per_token=6 * n_params, extra={"depth": DEPTH, "ppl_base": math.e})', "print(n_params)"),
        ("CUDA = h.is_cuda", "CUDA = h.is_cuda\ntorch.manual_seed(1)"),
    ],
)
def test_edit_that_tampers_with_evaluation(old, new):
    bad = edit(old, new)
    with MessagesServer([bad, bad]) as server:
        p = operator(server).mutate(PARENT, ctx(), RNG)
    assert p.source is None and "fails validation" in p.rejected
    assert [c["outcome"] for c in p.llm_calls] == ["tampered"] * 2


def test_rate_limited_then_success_via_sdk_retries():
    with MessagesServer([Fail(429, retry_after_ms=10), Fail(429, retry_after=0.01), GOOD]) as server:
        p = operator(server, max_retries=2).mutate(PARENT, ctx(), RNG)
        retry_counts = [r.headers.get("x-stainless-retry-count") for r in server.requests]
    assert p.rejected is None and len(p.llm_calls) == 1 and p.llm_calls[0]["outcome"] == "ok"
    assert retry_counts == ["0", "1", "2"]


def test_overloaded_after_retries_is_a_rejection():
    with MessagesServer([Fail(529, "Overloaded", retry_after_ms=1)] * 3) as server:
        p = operator(server, max_retries=2).mutate(PARENT, ctx(), RNG)
        assert len(server.requests) == 3
    assert p.source is None and "overloaded" in p.rejected
    [call] = p.llm_calls
    assert call["outcome"] == "overloaded" and call["cost_usd"] == 0 and "529" in call["error"]


def test_rate_limit_exhausting_retries_and_server_errors():
    with MessagesServer([Fail(429, retry_after_ms=1), Fail(400, "bad request")]) as server:
        op = operator(server)
        limited = op.mutate(PARENT, ctx(), RNG)
        broken = op.mutate(PARENT, ctx(), RNG)
    assert limited.llm_calls[0]["outcome"] == "rate_limited" and limited.source is None
    assert broken.llm_calls[0]["outcome"] == "api_error" and "bad request" in broken.rejected


def test_timeout():
    with MessagesServer([Reply(GOOD, delay=5)]) as server:
        start = time.monotonic()
        p = operator(server, timeout=0.3).mutate(PARENT, ctx(), RNG)
    assert time.monotonic() - start < 3
    assert p.source is None and p.llm_calls[0]["outcome"] == "timeout" and "timeout" in p.rejected


def test_the_api_key_never_appears_in_errors():
    secret = "sk-ant-secret-0123456789"
    with MessagesServer([Fail(401, f"invalid x-api-key {secret}")]) as server:
        p = operator(server, api_key=secret).mutate(PARENT, ctx(), RNG)
    assert secret not in repr(p) and "***" in p.llm_calls[0]["error"]


def test_answer_cut_off_at_max_tokens_is_not_trained():
    with MessagesServer([Reply(GOOD, stop_reason="max_tokens"), GOOD]) as server:
        p = operator(server).mutate(PARENT, ctx(), RNG)
    assert p.rejected is None and [c["outcome"] for c in p.llm_calls] == ["malformed", "ok"]


def test_budget_exhausted():
    # $0.06 at Sonnet prices
    pricey = Reply(GOOD, input_tokens=10_000, output_tokens=2_000, cache_read_input_tokens=0, cache_creation_input_tokens=0)
    with MessagesServer([pricey, pricey]) as server:
        op = operator(server, max_dollars=0.05, max_tokens=1000)
        first = op.mutate(PARENT, ctx(), RNG)
        assert first.rejected is None and op.exhausted
        second = op.mutate(PARENT, ctx(), RNG)
        assert len(server.requests) == 1
    assert second.source is None and "budget" in second.rejected and "spent" in second.rejected
    assert second.llm_calls[0]["outcome"] == "budget" and op.spent_usd == pytest.approx(0.06)


def _answer_for_parent(request):
    """Change MATRIX_LR to a value that names the parent, so answers are told apart."""
    parent_id = int(re.search(r"The parent to improve: #(\d+)", request.user_text).group(1))
    return edit("MATRIX_LR = 0.04", f"MATRIX_LR = 0.{parent_id}5", f"idea for #{parent_id}")


def test_concurrent_proposals_overlap_and_stay_separate():
    n, latency = 8, 2.0  # long enough that all 8 threads are in flight together on a loaded machine
    with MessagesServer(handler=_answer_for_parent, latency=latency) as server:
        op = operator(server)
        results = {}

        def work(i):
            results[i] = op.mutate(ParentInfo(i, SEED, val_bpb=2.0), ctx(), random.Random(i))

        start = time.monotonic()
        threads = [threading.Thread(target=work, args=(i,)) for i in range(1, n + 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
    assert server.max_in_flight == n and elapsed < n * latency, "calls did not overlap"
    for i, p in results.items():
        assert p.rejected is None and p.hypothesis == f"idea for #{i}" and f"MATRIX_LR = 0.{i}5\n" in p.source
        assert len(p.llm_calls) == 1


def test_concurrent_calls_never_overshoot_the_budget():
    cost = call_cost(DEFAULT_MODEL, 1000, 100)
    fixed = Reply(GOOD, input_tokens=1000, output_tokens=100, cache_read_input_tokens=0, cache_creation_input_tokens=0)
    with MessagesServer(handler=lambda r: fixed, latency=0.1) as server:
        op = operator(server, max_dollars=cost * 5.5, max_tokens=100, prompt_token_budget=2000)
        results = []
        threads = [threading.Thread(target=lambda: results.append(op.mutate(PARENT, ctx(), RNG))) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    ok = [p for p in results if p.rejected is None]
    refused = [p for p in results if p.rejected is not None]
    assert op.spent_usd <= cost * 5.5 and len(ok) == len(server.requests) >= 1
    assert refused and all(p.llm_calls[0]["outcome"] == "budget" for p in refused) and op.exhausted


def test_clean_three_way_merge_needs_no_call():
    a = ParentInfo(12, SEED.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.06"), hypothesis="higher LR")
    b = ParentInfo(31, SEED.replace("LOGIT_SOFTCAP = 15.0", "LOGIT_SOFTCAP = 30.0"), hypothesis="softer cap")
    with MessagesServer() as server:
        p = operator(server).crossover(a, b, SEED, ctx(), RNG)
        assert server.requests == []
    assert p.operator == "merge" and p.parents == [12, 31] and p.llm_calls == []
    assert "MATRIX_LR = 0.06" in p.source and "LOGIT_SOFTCAP = 30.0" in p.source
    assert "higher LR" in p.hypothesis and "softer cap" in p.hypothesis


def test_conflicting_merge_asks_the_model_with_the_conflicts():
    a = ParentInfo(12, SEED.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.06"), hypothesis="higher LR")
    b = ParentInfo(31, SEED.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.02\nWEIGHT_DECAY_2 = 0.1"), hypothesis="lower LR")
    answer = edit("MATRIX_LR = 0.06", "MATRIX_LR = 0.03\nWEIGHT_DECAY_2 = 0.1", "split the difference")
    with MessagesServer([answer]) as server:
        p = operator(server).crossover(a, b, SEED, ctx(), RNG)
        prompt = server.requests[0].user_text
    assert "<<<<<<< parent A" in prompt and ">>>>>>> parent B" in prompt
    assert "higher LR" in prompt and "lower LR" in prompt and a.source in prompt
    assert p.operator == "llm" and p.rejected is None and p.parents == [12, 31]
    assert "MATRIX_LR = 0.03\nWEIGHT_DECAY_2 = 0.1\n" in p.source
    assert [c["role"] for c in p.llm_calls] == ["crossover"]


def test_crossover_without_ancestor_shows_the_diff():
    a = ParentInfo(12, SEED.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.06"))
    b = ParentInfo(31, SEED.replace("DEPTH = 8 if CUDA else 2", "DEPTH = 8 if CUDA else 4"))
    answer = edit("DEPTH = 8 if CUDA else 2          # transformer blocks", "DEPTH = 8 if CUDA else 4          # transformer blocks")
    with MessagesServer([answer]) as server:
        p = operator(server).crossover(a, b, None, ctx(), RNG)
        prompt = server.requests[0].user_text
    assert "+DEPTH = 8 if CUDA else 4" in prompt
    assert p.rejected is None and "MATRIX_LR = 0.06" in p.source and "DEPTH = 8 if CUDA else 4 " in p.source


def test_price_table():
    assert price_for("claude-sonnet-4-5-20250929") == price_for("claude-sonnet-4-6")
    assert price_for("claude-opus-4-5").output == 25 and price_for("claude-opus-4-1").output == 75
    assert price_for("some-future-model").output >= max(price_for(m).output for m in ("claude-opus-4-1", "claude-sonnet-4-6"))
