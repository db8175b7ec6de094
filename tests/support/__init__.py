"""Helpers shared by the operator tests."""

from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def variant_source() -> str:
    """A train.py in the seed's shape (the operators' tests edit it, never run it)."""
    return (FIXTURES / "variant_train.py").read_text(encoding="utf-8")
