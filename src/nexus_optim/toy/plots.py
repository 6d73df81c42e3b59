"""Matplotlib (Agg) figures for the toy: quadratic law, metrics vs threshold, curves, premise scatter."""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["plot_all"]



def _save(plt, fig, path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_quadratic(quad: dict, path: Path) -> None:
    """MC mean +- 2 SE of E[L_new(th*)] vs variance of minima, with the closed-form line."""
    plt = _plt()
    v = np.asarray(quad["v_grid"])
    fig, ax = plt.subplots(figsize=(6.2, 4.2))
    for i, (name, s) in enumerate(quad["settings"].items()):
        col = f"C{i}"
        ax.errorbar(v, s["mc_mean"], yerr=2 * np.asarray(s["mc_se"]), fmt="o", ms=4, color=col,
                    label=f"{name}: MC (fit slope {s['slope_fit']:.3f})")
        ax.plot(v, s["pred"], "--", color=col, lw=1.2, label=f"theory, slope {s['slope_pred']:.3f}")
    ax.set_xlabel("variance of minima  v = E||m - mu||^2")
    ax.set_ylabel("E[ L_new(theta*) ]")
    ax.set_title(f"Quadratic basins: N={quad['n_sources']} sources, d={quad['d']}, {quad['n_draws']} draws/pt")
    ax.legend(fontsize=7)
    _save(plt, fig, path)


PANELS = [("grad_cos", "mean pairwise grad cosine", "abs"), ("minima_var", "variance of per-source minima", "log"),
          ("heldout", "held-out MSE minus AdamW (paired per seed)", "delta"),
          ("heldout_ft", "held-out MSE after few-shot GD, minus AdamW", "delta")]


def _per_seed(runs, m, c, key):
    return np.array([r["methods"][m]["at"][c][key] if c in r["methods"][m]["at"] else np.nan for r in runs])


def plot_metrics(runs: list[dict], summary: dict, path: Path) -> None:
    """Each panel: metric (mean +- std over seeds) against the matched training-loss threshold;
    "delta" panels show per-seed differences to AdamW (same task and init), mean +- std."""
    plt = _plt()
    th = np.array([float(c) for c in summary["thresholds"]])
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.0 * len(PANELS), 3.6))
    for ax, (key, label, kind) in zip(axes, PANELS):
        for i, m in enumerate(summary["methods"]):
            vals = [_per_seed(runs, m, c, key) for c in summary["thresholds"]]
            if kind == "delta":
                vals = [v - _per_seed(runs, "adamw", c, key) for v, c in zip(vals, summary["thresholds"])]
            mu = [np.nanmean(v) if np.isfinite(v).any() else np.nan for v in vals]
            sd = [np.nanstd(v, ddof=1) if np.isfinite(v).sum() > 1 else np.nan for v in vals]
            ax.errorbar(th * (1 + 0.04 * (i - 2)), mu, yerr=sd, marker="o", ms=4, capsize=2, label=m, color=f"C{i}")
        ax.set_xscale("log")
        ax.set_xticks(th, [f"{t:g}" for t in th])
        ax.minorticks_off()
        if kind == "log":
            ax.set_yscale("log")
        if kind == "delta":
            ax.axhline(0.0, color="gray", lw=0.8)
        ax.set_xlabel("summed train loss (matched)")
        ax.set_title(label, fontsize=9)
    axes[0].legend(fontsize=7)
    _save(plt, fig, path)


def plot_curves(run: dict, thresholds, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, (m, r) in enumerate(run["methods"].items()):
        ax.plot(r["curve"], color=f"C{i}", lw=1.2, label=m)
    for c in thresholds:
        ax.axhline(float(c), color="gray", ls=":", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("outer step")
    ax.set_ylabel("summed train MSE")
    ax.set_title(f"training curves, seed {run['seed']}")
    ax.legend(fontsize=7)
    _save(plt, fig, path)


def plot_premise(runs: list[dict], summary: dict, path: Path) -> None:
    """Seed-centred log minima variance vs seed-centred held-out loss, one marker per threshold."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    markers = "os^Dv"
    for j, c in enumerate(summary["thresholds"]):
        for r in runs:
            ms = [m for m in summary["methods"] if c in r["methods"][m]["at"]]
            if len(ms) < 2:
                continue
            x = np.log([r["methods"][m]["at"][c]["minima_var"] for m in ms])
            y = np.array([r["methods"][m]["at"][c]["heldout"] for m in ms])
            for i, m in enumerate(ms):
                ax.scatter(x[i] - x.mean(), y[i] - y.mean(), color=f"C{summary['methods'].index(m)}",
                           marker=markers[j % len(markers)], s=18,
                           label=f"{m}" if (r is runs[0] and j == 0) else None)
    ax.set_xlabel("log minima variance (centred within seed)")
    ax.set_ylabel("held-out MSE (centred within seed)")
    pr = ", ".join(f"{markers[j % len(markers)]} thr {c}: r={summary['premise'][c]['r']:.2f}"
                   for j, c in enumerate(summary["thresholds"]))
    ax.set_title(f"premise check, marker = matched loss ({pr})", fontsize=7)
    ax.legend(fontsize=7)
    _save(plt, fig, path)


def plot_all(result: dict, out_dir: Path) -> list[str]:
    out_dir = Path(out_dir)
    files = []
    if "quadratic" in result:
        plot_quadratic(result["quadratic"], out_dir / "toy_quadratic.png")
        files.append("toy_quadratic.png")
    ov = result.get("overparam")
    if ov and ov["runs"]:
        plot_metrics(ov["runs"], ov["summary"], out_dir / "toy_overparam_metrics.png")
        plot_curves(ov["runs"][0], ov["summary"]["thresholds"], out_dir / "toy_overparam_curves.png")
        plot_premise(ov["runs"], ov["summary"], out_dir / "toy_premise.png")
        files += ["toy_overparam_metrics.png", "toy_overparam_curves.png", "toy_premise.png"]
    return files
