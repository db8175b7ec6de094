from pathlib import Path

import pytest

from evo.operators.validate import SYNTAX_ERROR_PREFIX, validate_child
from tests.support import variant_source

SEED = variant_source()


REAL_SEED = Path(__file__).resolve().parents[1] / "trainer" / "train.py"


def test_seed_fixture_is_valid():
    assert validate_child(SEED) is None


@pytest.mark.skipif(not REAL_SEED.exists(), reason="trainer/train.py not written yet")
def test_real_seed_is_valid():
    assert validate_child(REAL_SEED.read_text()) is None


def test_harness_aliases_and_allowed_imports_are_fine():
    source = (
        "import os, math, collections\nimport numpy as np\nimport torch.nn.functional as F\n"
        "from trainer import harness as H\nimport trainer.harness\n"
        "run = H.setup()\nprint(getattr(run, 'device'))\nrun.finish(None)\n"
    )
    assert validate_child(source) is None
    assert validate_child("from trainer.harness import setup\nh = setup()\nh.finish(None)\n") is None


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("h = harness.setup()", "h = object()", "harness.setup"),
        ("h.finish(model,", "h.report(model,", ".finish()"),
        ("CUDA = h.is_cuda", "CUDA = h._cfg.device == 'cuda'", "harness internals"),
        ("CUDA = h.is_cuda", "CUDA = harness._load_config().device == 'cuda'", "harness internals"),
        ("CUDA = h.is_cuda", "CUDA = getattr(h, '_cfg')", "harness internals"),
        ("CUDA = h.is_cuda", "h.evaluate_bpb = lambda m: 0.5\nCUDA = h.is_cuda", "evaluate_bpb"),
        ("CUDA = h.is_cuda", "harness.setup = None\nCUDA = h.is_cuda", "modifies harness.setup"),
        ("def rms_norm(x):", "def evaluate_bpb(model):\n    return 0.0\n\n\ndef rms_norm(x):", "defines evaluate_bpb"),
        ("CUDA = h.is_cuda", "CUDA = h.is_cuda\ntorch.manual_seed(0)", "manual_seed"),
        ("CUDA = h.is_cuda", "CUDA = h.is_cuda\ntorch.cuda.manual_seed_all(0)", "manual_seed"),
        ("CUDA = h.is_cuda", "CUDA = h.is_cuda\ng = torch.Generator().manual_seed(0)", "manual_seed"),
        ("import math\n", "import math\nimport random\nrandom.seed(1)\n", "random.seed"),
        ("import math\n", "import math\nimport numpy as np\nnp.random.seed(1)\n", "np.random.seed"),
        ("import math\n", "import math\nfrom random import seed as s\ns(3)\n", "s()"),
        ("import math\n", "import math\nimport os\nX = os.environ.get('EVO_TRIAL_CONFIG')\n", "EVO_"),
        ("import math\n", "import math\nimport einops\n", "einops"),
        ("import math\n", "import math\nfrom trainer import runner\n", "trainer.runner"),
        ("import math\n", "import math\nfrom trainer.dataset import Dataset\n", "trainer.dataset"),
        ("import math\n", "import math\nfrom trainer.harness import _load_config\n", "harness internals"),
        ("import math\n", "import math\nfrom . import helpers\n", "relative import"),
        ("import math\n", "import math\nexec('x = 1')\n", "exec"),
    ],
)
def test_forbidden_things_are_caught(old, new, expected):
    assert old in SEED
    reason = validate_child(SEED.replace(old, new, 1))
    assert reason is not None and expected in reason
    assert "\n" not in reason


def test_syntax_error_is_reported_with_line():
    reason = validate_child(SEED.replace("def rms_norm(x):", "def rms_norm(x)", 1))
    assert reason.startswith(SYNTAX_ERROR_PREFIX) and "line" in reason


def test_mentions_in_comments_and_method_calls_are_not_violations():
    source = SEED + "\n# harness._private and torch.manual_seed(0) and EVO_X in a comment\nmodel.eval()\n"
    assert validate_child(source) is None
