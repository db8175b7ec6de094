"""How the browser names and prints things, the same way in tables, plots, files and the page.

Short ids are the first 8 hex characters of the git commit (what `git show` and `git log` print
next to it), else of the source hash; `Store.get_individual` resolves either prefix back, so
whatever the browser prints can be pasted into any other `evo` command.
"""

from __future__ import annotations

import math

from population.records import Individual

SHORT = 8


def short_id(ind: Individual) -> str:
    """A rejected proposal has neither hash, so it is named by its number instead."""
    digest = ind.commit or ind.source_hash
    return digest[:SHORT] if digest else f"#{ind.id}"


def label(ind: Individual) -> str:
    """`#12 3f2a9c1d`: the number orders individuals in time, the hash names them for good."""
    digest = ind.commit or ind.source_hash
    return f"#{ind.id} {digest[:SHORT]}" if digest else f"#{ind.id}"


def bpb(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


def delta(value: float | None) -> str:
    """Signed, with a real minus sign: a lower val_bpb (negative Δ) is the good direction."""
    if value is None or not math.isfinite(value):
        return ""
    return f"{value:+.4f}".replace("-", "−")


def score(ind: Individual) -> str:
    """`2.9288 ± 0.0185 (n=3)`: a mean means little without its spread and trial count."""
    if ind.val_bpb_mean is None:
        return "-"
    spread = f" ± {ind.val_bpb_sd:.4f}" if ind.val_bpb_sd is not None else ""
    return f"{ind.val_bpb_mean:.4f}{spread} (n={ind.n_ok})"


def count(value: float | None) -> str:
    """918K, 20.5M: parameter and token counts span decades, so three digits are enough."""
    if value is None or not math.isfinite(value):
        return "-"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            scaled = value / scale
            return f"{scaled:.3g}{suffix}" if scaled < 1000 else f"{scaled:.0f}{suffix}"
    return f"{value:.3g}" if value != int(value) else str(int(value))


def first_line(text: str | None, width: int | None = None) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if width is None or len(line) <= width else line[: width - 1] + "…"
