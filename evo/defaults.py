"""Every default `evo` falls back on, and the names and strings more than one module spells.

The help texts quote these (f-strings), `RunConfig`'s field defaults are these, and the engine
and the operators import them: a default changed here changes everywhere it is said. Kept free
of heavy imports, since `evo --help` builds every help text. The trial budgets belong to the
trainer (`trainer.trial_config`), which never imports evo; they are re-exported here.
"""

from __future__ import annotations

from pathlib import Path

from trainer.trial_config import CPU_BUDGET, GPU_BUDGET

__all__ = [
    "CHAMPION_SEEDS",
    "CONFIG_FILE",
    "CPU_BUDGET",
    "DEFAULT_DB",
    "GPU_BUDGET",
    "LLM_MAX_RETRIES",
    "LLM_TIMEOUT",
    "MAX_PROPOSALS_PER_CHILD",
    "NOISE_SEEDS",
    "POPULATION",
    "PROPOSAL_BACKOFF_MAX_S",
    "PROPOSAL_BACKOFF_S",
    "PROGRAM_NAME",
    "PROGRAM_PATH",
    "RUN_NAME_FORMAT",
    "SEED_FROM_OPERATOR",
    "SEED_OPERATOR",
    "SEED_OPERATORS",
    "SEED_TRAIN",
    "SEED_TRAIN_NAME",
    "TOP",
    "resume_command",
]

_REPO = Path(__file__).resolve().parent.parent

# Files.
DEFAULT_DB = "archive.db"  # the archive `evo run` writes and every browsing command reads
CONFIG_FILE = "evo.toml"  # settings read from the current directory when --config is not given
PROGRAM_NAME = "program.md"  # the research program the LLM reads unless --program FILE
PROGRAM_PATH = _REPO / PROGRAM_NAME
SEED_TRAIN_NAME = "trainer/train.py"  # generation 0 unless --seed-file or --seed-from
SEED_TRAIN = _REPO / SEED_TRAIN_NAME
RUN_NAME_FORMAT = "run-%Y%m%d-%H%M%S"  # a new run's name unless --name (time.strftime)

# A run's defaults (RunConfig's fields).
POPULATION = 16  # children per generation
NOISE_SEEDS = 3  # replicate trials of the seed program that measure the noise
CHAMPION_SEEDS = 3  # trials a champion must have before it is reported as one
TOP = 8  # with --seed-from: how many of the prior run's elites start the run
# Proposals a new child may cost, on average over a session, before a paid operator whose last
# proposals made no child (duplicates among them) stops proposing (`evo.proposer.Pace`). With a
# model that repeats three fixed edits (tests/support/repeating_model.py) a run at 2 makes 8 LLM
# calls for 3 trained children (2.7 each) and ends; without the limit it never ended (6,436 calls
# for 5 children in 4 minutes). A model that makes a new child 4 times in 5 is stopped well
# under once in a hundred sessions, nearly always in its first proposals.
MAX_PROPOSALS_PER_CHILD = 2.0
# The wait before a paid operator's next proposal after n in a row made no child:
# PROPOSAL_BACKOFF_S * 2**(n-1), at most PROPOSAL_BACKOFF_MAX_S (fewer are in flight, too).
PROPOSAL_BACKOFF_S = 0.25
PROPOSAL_BACKOFF_MAX_S = 60.0

# The LLM operator's request defaults (evo.operators.llm), used where the run does not set them.
LLM_TIMEOUT = 300.0  # seconds per API request
LLM_MAX_RETRIES = 4  # SDK retries of 429/529/timeouts/5xx

# The operator names of generation 0: the seed program, or a prior run's elites (--seed-from).
SEED_OPERATOR = "seed"
SEED_FROM_OPERATOR = "seed-from"
SEED_OPERATORS = (SEED_OPERATOR, SEED_FROM_OPERATOR)


def resume_command(run_name: str, db: str | Path) -> str:
    """The command that continues a stopped run, as the run's messages print it."""
    return f"evo run --resume --name {run_name} --db {db}"
