"""PNG plots of a comparison (matplotlib, Agg backend).

    loss_curves.png   every val/* loss vs tokens, one panel per source; a color per group
    ood_vs_id.png     val/ood against val/id along training; markers at the matched point;
                      grey unigram/bigram reference lines (report.json ``ngram``) when available
    grad_sim.png      geom/grad_sim vs tokens (when logged during training)
    closeness.png     closeness variance and mean distance from start per group (geometry.json)
    downstream.png    downstream scores per group (downstream.json)
"""

from __future__ import annotations

import math
from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def colors_for(labels):
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
               "#7f7f7f", "#bcbd22", "#17becf"]
    return {l: palette[i % len(palette)] for i, l in enumerate(labels)}


def series(run, key):
    pts = [(r["tokens"], r[key]) for r in run.curve if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _bars(plt, groups, report, keys, titles, path):
    colors = colors_for(list(groups))
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    for ax, key, title in zip(axes[0], keys, titles):
        summ = report["extra"]["summary"].get(key, {})
        labels = [l for l in groups if summ.get(l, {}).get("n")]
        means = [summ[l]["mean"] for l in labels]
        errs = [summ[l]["std"] or 0.0 for l in labels]
        ax.bar(range(len(labels)), means, yerr=errs, capsize=4, color=[colors[l] for l in labels])
        for i, l in enumerate(labels):
            ax.scatter([i] * len(summ[l]["values"]), summ[l]["values"], color="k", s=10, zorder=3)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
    save_png(plt, fig, path)


def save_png(plt, fig, path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _loss_curves(plt, groups, runs, colors, metric, target, out: Path) -> list[str]:
    keys = sorted({k for r in runs for x in r.curve for k in x if k.startswith("val/")},
                  key=lambda k: (k != "val/id", k != "val/ood", k))
    if not keys:
        return []
    ncol = min(3, len(keys))
    nrow = math.ceil(len(keys) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.3 * ncol, 3.3 * nrow), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for label, rs in groups.items():
            for j, r in enumerate(rs):
                x, y = series(r, key)
                ax.plot(x, y, color=colors[label], alpha=0.8, lw=1.2,
                        label=label if j == 0 else None)
        if key == metric:
            ax.axhline(target, color="k", ls="--", lw=0.8, label="matched loss")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("tokens", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    save_png(plt, fig, out / "loss_curves.png")
    return ["loss_curves.png"]


def _ngram_refs(ax, ngram: dict | None, metric: str) -> None:
    """n-gram reference lines: val/ood horizontal, the matched metric vertical (grey)."""
    styles = {"unigram": ":", "bigram": "-."}
    for order, line in ((ngram or {}).get("lines") or {}).items():
        ls = styles.get(order, ":")
        if isinstance(line.get("val/ood"), (int, float)):
            ax.axhline(line["val/ood"], color="0.45", ls=ls, lw=0.9, label=f"{order} (n-gram)")
        if isinstance(line.get(metric), (int, float)):
            ax.axvline(line[metric], color="0.45", ls=ls, lw=0.9)


def _ood_vs_id(plt, groups, runs, colors, metric, target, matched, out: Path, ngram=None) -> list[str]:
    if not (any(series(r, "val/ood")[0] for r in runs) and any(series(r, metric)[0] for r in runs)):
        return []
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    for label, rs in groups.items():
        for j, r in enumerate(rs):
            pts = [(x[metric], x["val/ood"]) for x in r.curve
                   if isinstance(x.get(metric), (int, float))
                   and isinstance(x.get("val/ood"), (int, float))]
            if pts:
                ax.plot(*zip(*pts), "-", color=colors[label], alpha=0.8, lw=1.2,
                        label=label if j == 0 else None)
            m = matched.get(str(r.path))
            if m and "val/ood" in m:
                ax.plot([m[metric]], [m["val/ood"]], "o", color=colors[label], ms=5)
    ax.axvline(target, color="k", ls="--", lw=0.8)
    _ngram_refs(ax, ngram, metric)
    ax.invert_xaxis()
    ax.set_xlabel(f"{metric} (training goes right)", fontsize=8)
    ax.set_ylabel("val/ood", fontsize=8)
    ax.set_title("OOD loss vs in-distribution loss (dots: matched loss; grey: n-gram)", fontsize=9)
    ax.legend(fontsize=7)
    save_png(plt, fig, out / "ood_vs_id.png")
    return ["ood_vs_id.png"]


def _grad_sim(plt, groups, runs, colors, out: Path) -> list[str]:
    if not any(series(r, "geom/grad_sim")[0] for r in runs):
        return []
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for label, rs in groups.items():
        for j, r in enumerate(rs):
            x, y = series(r, "geom/grad_sim")
            if x:
                ax.plot(x, y, "-o", ms=3, color=colors[label], alpha=0.8,
                        label=label if j == 0 else None)
    ax.axhline(0.0, color="k", lw=0.5)
    ax.set_xlabel("tokens", fontsize=8)
    ax.set_ylabel("mean off-diagonal cosine", fontsize=8)
    ax.set_title("source gradient similarity (geom/grad_sim)", fontsize=9)
    ax.legend(fontsize=7)
    save_png(plt, fig, out / "grad_sim.png")
    return ["grad_sim.png"]


def make_plots(groups: dict, report: dict, out: Path) -> list[str]:
    """Write the plots that the data allows; returns their file names."""
    plt = pyplot()
    out = Path(out)
    colors = colors_for(list(groups))
    runs = [r for rs in groups.values() for r in rs]
    target = report["target"]["value"]
    metric = report["metric"]
    matched = {r["dir"]: r["matched"] for r in report["runs"]}
    written = _loss_curves(plt, groups, runs, colors, metric, target, out)
    written += _ood_vs_id(plt, groups, runs, colors, metric, target, matched, out, report.get("ngram"))
    written += _grad_sim(plt, groups, runs, colors, out)
    summ = report["extra"]["summary"]
    if summ.get("closeness/variance"):
        keys = [k for k in ("closeness/variance", "closeness/mean_distance_from_start",
                            "closeness/cross_loss_gap") if k in summ]
        _bars(plt, groups, report, keys, [k.split("/", 1)[1] for k in keys], out / "closeness.png")
        written.append("closeness.png")
    down = [k for k in summ if k.startswith("downstream/")]
    if down:
        _bars(plt, groups, report, down[:6], [k.split("/", 1)[1] for k in down[:6]],
              out / "downstream.png")
        written.append("downstream.png")
    return written
