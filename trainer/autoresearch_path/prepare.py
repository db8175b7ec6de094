"""autoresearch's `prepare` module inside an evo trial: evo's implementation (trainer.autoresearch)."""

from trainer.autoresearch import *  # noqa: F401,F403
from trainer.autoresearch import __all__  # noqa: F401
