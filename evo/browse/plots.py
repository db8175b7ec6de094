"""The two pictures of a run, as PNG and SVG: the progress chart (like autoresearch's progress.png)
and the archive heatmap. Matplotlib on the Agg backend, so they render on a headless machine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patheffects import withStroke  # noqa: E402

from evo.browse import fmt  # noqa: E402
from evo.browse.data import History  # noqa: E402
from population.mapelites import Dim, Grid  # noqa: E402
from population.records import Elite, Individual, Run  # noqa: E402

# Beyond this many, only the largest improvements get a caption: the others still get a marker.
MAX_CAPTIONS = 14
KEPT, DISCARDED, FAILED, BEST = "#2a9d55", "#a8adb3", "#d1495b", "#1d3557"


def _save(fig, stem: Path) -> list[Path]:
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    with plt.rc_context({"svg.fonttype": "none"}):  # text stays text: searchable, and a third the size
        fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def progress_chart(run: Run, hist: History, stem: Path) -> list[Path]:
    """Every trial a dot in the order trials finished (green: its individual was kept), failures
    as red marks along the bottom (under the running best, where no trial can be), the running best (best mean over seeds) as a step line, and its
    improvements captioned with their hypotheses."""
    fig, ax = plt.subplots(figsize=(12, 6.5))
    pts = hist.points
    ok = [p for p in pts if p.val_bpb is not None]
    failed = [p for p in pts if p.val_bpb is None]
    if ok:
        values = np.array([p.val_bpb for p in ok])
        best_values = [p.best for p in pts if p.best is not None]
        lo = min(values.min(), min(best_values))
        # a broken model scoring 8 bpb must not flatten the rest: clip at the 95th percentile
        hi = max(float(np.quantile(values, 0.95)), max(best_values))
        pad = max(hi - lo, 1e-3) * 0.06
        top = hi + 2 * pad
        ax.set_ylim(lo - 3 * pad, top)  # a strip under everything for the failures
        for kept, colour, size, name in ((False, DISCARDED, 14, "discarded"), (True, KEPT, 26, "kept")):
            sel = [p for p in ok if (p.individual_id in hist.kept) == kept]
            if sel:
                ax.scatter([p.order for p in sel], [min(p.val_bpb, top - pad / 2) for p in sel], s=size,
                           color=colour, alpha=0.75 if kept else 0.5, label=f"{name} ({len(sel)})",
                           zorder=3 if kept else 2, linewidths=0)
        steps = [(p.order, p.best) for p in pts if p.best is not None]
        ax.step([o for o, _ in steps] + [len(pts) - 1], [b for _, b in steps] + [steps[-1][1]], where="post",
                color=BEST, linewidth=1.8, label="running best (mean over seeds)", zorder=4)
        if failed:
            ax.scatter([p.order for p in failed], [lo - 2 * pad] * len(failed), marker="x", s=18, color=FAILED,
                       label=f"failed ({len(failed)})", zorder=3, clip_on=False)
        _caption_improvements(ax, hist)
    else:
        ax.text(0.5, 0.5, "no finished trial with a score yet", ha="center", va="center", transform=ax.transAxes)
    scored = [i for i in hist.individuals.values() if i.n_ok and i.val_bpb_mean is not None]
    best = min(scored, key=lambda i: (i.val_bpb_mean, i.id), default=None)
    title = f"{run.name}: {len(pts)} trials, {len(failed)} failed"
    if best is not None:
        title += f"; best now {fmt.label(best)}: {fmt.score(best)}"
    ax.set_title(title, loc="left", fontsize=12)
    ax.set_xlabel("trial (in the order trials finished)")
    ax.set_ylabel("val_bpb (lower is better)")
    ax.grid(True, alpha=0.25)
    if ok:
        ax.legend(loc="upper right", fontsize=9, framealpha=0.95).set_zorder(10)
    return _save(fig, stem)


def _caption_improvements(ax, hist: History) -> None:
    """Mark every improvement; number at most MAX_CAPTIONS of them, the largest gain in each of
    as many stretches of the x axis, and list their hypotheses under the chart. Inline captions
    (autoresearch's) pile up where progress was fast, which in a long run is where most of it is."""
    imps = hist.improvements
    ax.scatter([i.order for i in imps], [i.val_bpb for i in imps], s=46, facecolors="none", edgecolors=BEST,
               linewidths=1.2, zorder=5)
    gains = [imps[k - 1].val_bpb - imp.val_bpb if k else 0.0 for k, imp in enumerate(imps)]
    width = max(len(hist.points), 1) / MAX_CAPTIONS
    chosen: dict[int, int] = {}
    for k, imp in enumerate(imps):
        stretch = int(imp.order // width)
        if stretch not in chosen or gains[k] > gains[chosen[stretch]]:
            chosen[stretch] = k
    for n, k in enumerate(sorted(chosen.values()), 1):
        imp = imps[k]
        ind = hist.individuals[imp.individual_id]
        ax.annotate(str(n), (imp.order, imp.val_bpb), xytext=(3, -11), textcoords="offset points", fontsize=8,
                    weight="bold", color=BEST, zorder=6, path_effects=[withStroke(linewidth=2.5, foreground="white")])
        caption = f"{n:>2}  {fmt.short_id(ind)}  {fmt.bpb(imp.val_bpb)}  {fmt.first_line(ind.hypothesis or ind.operator, 150)}"
        ax.text(0.0, -0.12 - 0.042 * (n - 1), caption, transform=ax.transAxes, fontsize=8, va="top",
                family="monospace", color="#222222")


def heatmap(run: Run, grid: Grid, elites: Sequence[tuple[Elite, Individual]], stem: Path) -> list[Path]:
    """Cells coloured by their elite's val_bpb on the grid's first two descriptors, whose
    log-scale bin edges are the axes' ticks; further descriptors are folded (best over them)."""
    xdim = grid.dims[0]
    ydim = grid.dims[1] if len(grid.dims) > 1 else None
    values = np.full((ydim.bins if ydim else 1, xdim.bins), np.nan)
    ids = {}
    for elite, ind in elites:
        if ind.val_bpb_mean is None:
            continue
        cell = Grid.parse_key(elite.cell)
        x, y = cell[0], (cell[1] if ydim else 0)
        if np.isnan(values[y, x]) or ind.val_bpb_mean < values[y, x]:
            values[y, x] = ind.val_bpb_mean
            ids[(y, x)] = ind
    xe = _edges(xdim)
    ye = _edges(ydim) if ydim else np.array([0.0, 1.0])
    fig, ax = plt.subplots(figsize=(9.5, 7.5))
    ax.set_facecolor("#f1f2f4")
    cmap = plt.get_cmap("viridis_r").copy()
    mesh = ax.pcolormesh(xe, ye, np.ma.masked_invalid(values), cmap=cmap, edgecolors="white", linewidth=0.6)
    _axis(ax.xaxis, xdim, xe, ax.set_xscale)
    if ydim:
        _axis(ax.yaxis, ydim, ye, ax.set_yscale)
    else:
        ax.set_yticks([])
    if ids:
        best = min(ids.values(), key=lambda i: i.val_bpb_mean)
        finite = values[~np.isnan(values)]
        middle = (finite.min() + finite.max()) / 2
        small = xdim.bins > 12 or (ydim is not None and ydim.bins > 12)
        for (y, x), ind in ids.items():
            cx, cy = _centre(xe, x, xdim.log), _centre(ye, y, ydim.log if ydim else False)
            colour = "white" if values[y, x] > middle else "black"
            text = fmt.bpb(ind.val_bpb_mean) if small else f"{fmt.bpb(ind.val_bpb_mean)}\n{fmt.short_id(ind)}"
            weight = "bold" if ind is best else "normal"
            ax.text(cx, cy, text, ha="center", va="center", fontsize=6 if small else 7, color=colour, weight=weight)
        fig.colorbar(mesh, ax=ax, label="elite val_bpb (lower is better)", shrink=0.85)
    folded = f"; best over {', '.join(d.name for d in grid.dims[2:])}" if len(grid.dims) > 2 else ""
    ax.set_title(f"{run.name}: {len(ids)} of {xdim.bins * (ydim.bins if ydim else 1)} cells filled{folded}",
                 loc="left", fontsize=12)
    return _save(fig, stem)


def _edges(dim: Dim) -> np.ndarray:
    if dim.log:
        return np.logspace(math.log10(dim.lo), math.log10(dim.hi), dim.bins + 1)
    return np.linspace(dim.lo, dim.hi, dim.bins + 1)


def _centre(edges: np.ndarray, i: int, log: bool) -> float:
    return math.sqrt(edges[i] * edges[i + 1]) if log else (edges[i] + edges[i + 1]) / 2


def _axis(axis, dim: Dim, edges: np.ndarray, set_scale) -> None:
    set_scale("log" if dim.log else "linear")
    axis.set_ticks(edges, [fmt.count(e) for e in edges])
    axis.set_minor_locator(matplotlib.ticker.NullLocator())
    axis.set_label_text(f"{dim.name} ({'log scale, ' if dim.log else ''}bin edges)")
    if axis.axis_name == "x":
        for tick in axis.get_ticklabels():
            tick.set_rotation(45)
            tick.set_horizontalalignment("right")
