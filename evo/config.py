"""A run's configuration: flags, `evo.toml`, and defaults that fit the machine.

The whole config is stored with the run, so `--resume` continues with exactly the settings the
run started with, whatever flags the resuming command carries.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from evo.defaults import CHAMPION_SEEDS, CPU_BUDGET, MAX_PROPOSALS_PER_CHILD, NOISE_SEEDS, POPULATION, TOP
from evo.errors import EvoError

# Trial measurements that can serve as behaviour descriptors (positive, so log scales work).
DESCRIPTORS = ("params", "tokens", "steps", "peak_memory_mb", "tokens_per_second", "training_seconds")


@dataclass
class RunConfig:
    population: int = POPULATION
    budget: float = CPU_BUDGET  # evo run: GPU_BUDGET on CUDA unless set
    generations: int | None = None  # stop after this many generations of `population` children
    trials: int | None = None  # stop after this many finished trials
    hours: float | None = None  # stop dispatching after this long
    operator: str = "offline"
    device: str = "auto"
    device_kind: str = "cpu"  # "cuda" or "cpu": which branch of `A if CUDA else B` the operators edit
    workers: int | None = None
    executor: str = "local"  # local | ray: where trials run (evo.executors, evo.ray_executor)
    ray_address: str | None = None  # the Ray cluster (`ray start --head` prints it); None: this machine's
    noise_seeds: int = NOISE_SEEDS  # replicate trials of the seed program that measure the noise
    champion_seeds: int = CHAMPION_SEEDS  # trials a champion must have before it is reported as one
    crossover_rate: float = 0.25
    tournament_size: int = 3
    uniform_share: float = 0.3
    rng_seed: int = 0
    grid: dict = field(default_factory=lambda: {"descriptors": ["params", "tokens"], "bins": 10, "decades": 2.0})
    dataset_dir: str = ""
    eval_tokens: int | None = None
    eval_seq_len: int | None = None
    model: str | None = None  # LLM options
    max_llm_dollars: float | None = None
    llm_concurrency: int | None = None
    llm_temperature: float | None = None  # sent only when set
    llm_timeout: float | None = None  # seconds per API request [the operator's default, LLM_TIMEOUT]
    llm_max_retries: int | None = None  # SDK retries of 429/529/timeouts/5xx [the operator's default, LLM_MAX_RETRIES]
    max_proposals_per_child: float = MAX_PROPOSALS_PER_CHILD  # a paid operator that repeats itself stops here
    seed_from: str | None = None
    top: int = TOP
    sandbox: str = "auto"  # auto | strict | off: the OS sandbox around each trial (trainer.sandbox)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def proposal_threads(self, workers: int) -> int:
        """How many proposals may be in flight at once: enough LLM calls that a freed worker
        finds a child ready (two per worker, plus two), one for the instant offline operator."""
        if self.llm_concurrency:
            return self.llm_concurrency
        return 2 * workers + 2 if self.operator == "llm" else 1

    def llm_failure_limit(self, workers: int) -> int:
        """API failures in a row that stop the LLM operator: a revoked key fails every proposal
        in flight at once, so the limit grows with how many can be (at least 8)."""
        return max(8, 2 * self.proposal_threads(workers))

    def harness_options(self) -> dict:
        """What every trial of the run is given besides its source and seed."""
        opts = {k: v for k, v in (("eval_tokens", self.eval_tokens), ("eval_seq_len", self.eval_seq_len)) if v}
        return {**opts, "sandbox": self.sandbox}


def load_toml(path: Path) -> dict:
    """Settings from evo.toml: top-level keys are RunConfig fields, `[grid]` the archive grid."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise EvoError(f"{path}: not a readable TOML file ({e})")
    known = {f.name for f in fields(RunConfig)}
    unknown = set(data) - known
    if unknown:
        raise EvoError(f"{path}: unknown settings {sorted(unknown)} (known: {', '.join(sorted(known))})")
    if "grid" in data:
        grid = {**RunConfig().grid, **data["grid"]}
        bad = [d for d in grid["descriptors"] if d not in DESCRIPTORS]
        if bad or not grid["descriptors"]:
            raise EvoError(f"{path}: [grid] descriptors must be trial measurements from {', '.join(DESCRIPTORS)}")
        if not isinstance(grid["bins"], int) or grid["bins"] < 1:
            raise EvoError(f"{path}: [grid] bins must be a positive integer")
        data["grid"] = grid
    return data
