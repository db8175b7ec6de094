"""A model that repeats itself costs a bounded number of LLM calls per child (issue 14, part 3).

The pacing rule on its own (`evo.proposer.Pace`), the proposer's memory of duplicates (what the
next prompt shows, the merges it does not make again) on a real archive, and one real `evo run
--operator llm` against the loopback Messages server answering from three fixed edits
(`tests.support.repeating_model`), with real 1 s CPU trials.
"""

from __future__ import annotations

import random
import re

import pytest

from evo.config import RunConfig
from evo.operators.base import FREE_MERGE, Proposal
from evo.operators.llm import _mutation_prompt
from evo.proposer import Pace, Proposer
from evo.reporting import ConsoleReporter, RunStatus
from population.store import Store
from tests.support.archive import trained
from tests.support.repeating_model import run_repeating

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def answered(rejected: str | None = None, outcome: str = "ok") -> tuple[Proposal, str | None]:
    """A proposal the model answered: a child, or rejected for `rejected`."""
    proposal = Proposal("llm", [1], "an idea", source=None if rejected else "x = 1\n", rejected=rejected,
                        llm_calls=[{"outcome": outcome}])
    return proposal, rejected


DUP = "duplicate of #3"
SEARCH = "SEARCH block 1 does not occur in train.py (first line: 'x') (after one repair round)"


def test_pace_backs_off_while_proposals_make_no_child_and_a_child_resets_it():
    clock = Clock()
    pace = Pace(2.0, clock=clock)
    pace.note(*answered())
    assert pace.in_flight(8) == 8 and pace.wait_s() == 0
    pace.note(*answered(DUP))
    assert pace.in_flight(8) == 4 and pace.wait_s() == pytest.approx(0.25)
    pace.note(*answered(SEARCH))
    assert pace.in_flight(8) == 2 and pace.wait_s() == pytest.approx(0.5)
    clock.t += 0.3
    assert pace.wait_s() == pytest.approx(0.2)
    for _ in range(3):
        pace.note(*answered(SEARCH))
    assert pace.in_flight(8) == 1 and pace.wait_s() == pytest.approx(4.0)
    pace.note(*answered())
    assert pace.in_flight(8) == 8 and pace.wait_s() == 0 and pace.stopped is None
    for _ in range(40):
        pace.note(*answered(SEARCH))
        pace.note(*answered())
    assert pace.wait_s() == 0 and pace.stopped is None  # a child every other proposal: never stopped


def test_pace_stops_a_model_that_repeats_itself_with_one_line():
    pace = Pace(2.0, clock=Clock())
    for _ in range(4):
        pace.note(*answered())
    failed = 0
    while pace.stopped is None:
        pace.note(*answered(DUP if failed % 3 else SEARCH))
        failed += 1
    # 4 children allow 2 * 4 = 8 proposals; the 9th, 5th in a row without a child, stops it
    assert failed == 5 and "\n" not in pace.stopped
    assert pace.stopped.startswith("the LLM keeps repeating itself: its last 5 proposals made no new child "
                                   "(3 duplicates, 2 rejected; 9 proposals for 4 children")
    assert "max_proposals_per_child 2" in pace.stopped

    early = Pace(2.0, clock=Clock())  # a few failures at the start are not a trend: 4 * 2 proposals first
    early.note(*answered())
    for n in range(2, 8):
        early.note(*answered(DUP))
        assert early.stopped is None, n
    early.note(*answered(DUP))
    assert early.stopped and "its last 7 proposals" in early.stopped


def test_pace_stops_errors_without_duplicates_only_after_a_long_streak():
    pace = Pace(2.0, clock=Clock())
    for _ in range(19):  # past the average from the start, but no duplicate: an erring model, not a repeating one
        pace.note(*answered(SEARCH))
    assert pace.stopped is None
    pace.note(*answered(SEARCH))
    assert pace.stopped.startswith("the LLM makes no new children: its last 20 proposals made no new child")


def test_unanswered_proposals_and_free_operators_are_not_paced():
    pace = Pace(2.0, clock=Clock())
    for outcome in ("api_error", "timeout", "overloaded", "rate_limited", "budget"):
        for _ in range(30):
            pace.note(*answered("LLM call failed", outcome=outcome))
    assert pace.stopped is None and pace.streak == 0 and pace.proposals == 0 and pace.wait_s() == 0
    free = Pace(None)
    for _ in range(100):
        free.note(Proposal("offline", [1], "h", rejected=DUP), DUP)
    assert free.stopped is None and free.in_flight(3) == 3 and free.wait_s() == 0


def test_a_model_that_is_mostly_right_is_not_stopped():
    rng = random.Random(14)
    stopped = 0
    for _ in range(200):
        pace = Pace(2.0, clock=Clock())
        for _ in range(300):  # 80% new children; of the rest, a third exact duplicates
            roll = rng.random()
            pace.note(*answered(None if roll < 0.8 else DUP if roll < 0.867 else SEARCH))
        stopped += pace.stopped is not None
    assert stopped == 0


# ---------------------------------------------------------------- the proposer's memory


class Recorder:
    """An operator that says what it was asked: a fixed merge for every crossover, a new mutant
    for every mutation."""

    name = "llm"
    exhausted = False
    broken = None
    spent_usd = 0.0

    def __init__(self, merged: str):
        self.merged = merged
        self.crossovers = 0
        self.contexts = []

    def crossover(self, a, b, ancestor, ctx, rng):
        self.crossovers += 1
        return Proposal(FREE_MERGE, [a.id, b.id], f"merge #{a.id}×#{b.id}", source=self.merged)

    def mutate(self, parent, ctx, rng):
        self.contexts.append(ctx)
        return Proposal("llm", [parent.id], "a mutant", source=f"{parent.source}# mutant {rng.random()}\n")


@pytest.fixture
def archive(tmp_path):
    store = Store.open(tmp_path / "archive.db", create=True)
    run = store.create_run("r", RunConfig(operator="llm", crossover_rate=1.0).to_dict())
    seed = trained(store, run, "A = 1\nB = 2\n")
    a = trained(store, run, "A = 5\nB = 2\n", parents=[seed.id])
    b = trained(store, run, "A = 1\nB = 7\n", parents=[seed.id], params=2_000_000)
    merged = trained(store, run, "A = 5\nB = 7\n", parents=[a.id, b.id])
    store.set_elite(run.id, "0,0", a.id)
    store.set_elite(run.id, "1,1", b.id)
    yield store, run, seed, a, b, merged
    store.close()


def test_a_pair_whose_merge_is_a_known_child_is_not_merged_again(archive):
    store, run, _, a, b, merged = archive
    op = Recorder(merged.source)
    proposer = Proposer(store, run, RunConfig(operator="llm", crossover_rate=1.0), op)
    first, parents = proposer.propose(random.Random(1))
    assert op.crossovers == 1 and first.operator == "llm" and len(parents) == 1  # a mutation instead
    for i in range(5):
        proposal, parents = proposer.propose(random.Random(i))
        assert proposal.operator == "llm" and len(parents) == 1
    assert op.crossovers == 1  # the pair was remembered: no merge of it again
    assert not [i for i in store.individuals(run.id) if i.status == "rejected"]  # nothing to record


def test_the_next_prompt_names_each_duplicate_once_with_its_edit(archive):
    store, run, seed, a, _, _ = archive
    for _ in range(3):
        store.add_rejected(run.id, [seed.id], "llm", "raise A to 5", f"duplicate of #{a.id}", 1)
    store.add_rejected(run.id, [seed.id], "llm", "halve B", SEARCH, 1)
    proposer = Proposer(store, run, RunConfig(operator="llm"), Recorder(""))
    ctx = proposer.context(seed.id)
    [dup] = [f for f in ctx.failures if f.get("duplicate_of") is not None]
    assert (dup["duplicate_of"], dup["parent_id"], dup["times"]) == (a.id, seed.id, 3)
    assert dup["edit"] == "-A = 1\n+A = 5"
    assert any(f["hypothesis"] == "halve B" for f in ctx.failures)
    prompt = _mutation_prompt(proposer.parent_info(seed.id), ctx, 100_000)
    line = f"- raise A to 5 (from #{seed.id}): this exact child was already tried: duplicate of #{a.id} — " \
           "do not propose it again, proposed 3 times lately"
    assert line in prompt and "```diff\n-A = 1\n+A = 5\n```" in prompt
    assert prompt.count(f"duplicate of #{a.id}") == 1
    assert "- rejected, never trained: halve B — SEARCH block 1 does not occur" in prompt


def test_the_status_line_shows_llm_calls_per_trained_child():
    class Live:
        def update(self, text):
            self.text = text.plain

    reporter = ConsoleReporter(console=None)
    reporter.live = Live()
    status = dict(run_name="r", finished_trials=9, failed_trials=0, in_flight=1, proposing=0, best=None, elites=2,
                  cells=100, elapsed_s=60)
    reporter.status(RunStatus(**status, llm_calls=14, trained_children=5))
    assert "| LLM 14 calls, 2.8/child |" in reporter.live.text
    reporter.status(RunStatus(**status))  # an operator that makes no calls: nothing said
    assert "LLM" not in reporter.live.text


# ---------------------------------------------------------------- a real run


def test_a_repeating_model_costs_at_most_3_calls_per_trained_child_and_ends_with_one_line(dataset, tmp_path):
    result = run_repeating(tmp_path, data_dir=dataset.path, population=4, trials=16, budget=1)
    assert result.returncode == 0, result.stderr[-3000:]
    out = " ".join(result.stderr.split())  # rich wraps long lines
    assert result.trained_children >= 3 and result.calls_per_trained_child <= 3.0, result.line()
    assert result.trials < 16  # it ended because the model could make no more children, not at the trial cap
    [end] = re.findall(r"run ended after \d+ trials: .*?--db \S+", out)
    assert "the LLM keeps repeating itself: its last" in end and "max_proposals_per_child 2" in end
    assert "evo run --resume --name repeating" in end
    # the run's summary says what a child cost
    per = re.search(r"LLM: (\d+) calls \(\$[\d.]+\) for (\d+) trained child(?:ren)?: (\d+\.\d) LLM calls per "
                    r"trained child; (\d+) proposals rejected \((\d+) duplicates\)", out)
    assert per, out[-2000:]
    assert (int(per[1]), int(per[2])) == (result.calls, result.trained_children)
    assert float(per[3]) == pytest.approx(result.calls_per_trained_child, abs=0.05)
    # the prompts after the first duplicate name it, with its edit
    first = next(i for i, p in enumerate(result.prompts) if "duplicate of #" in p)
    assert first > 0 and "this exact child was already tried: duplicate of #" in result.prompts[first]
    assert "do not propose it again" in result.prompts[first] and "```diff\n-" in result.prompts[first]
    # a free merge that repeats a known child is not made (nor recorded) again; two proposal
    # threads can merge the same new pair at once, once
    assert result.merge_duplicates <= 2, result.line()
