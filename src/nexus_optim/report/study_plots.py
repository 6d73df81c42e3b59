"""PNG plots of the study report (matplotlib, Agg backend):

    ood_vs_id.png          val/ood against val/id along training, every final run (a color per
                           arm), the endpoint levels (dotted: mean of the per-seed AdamW levels;
                           dashed: the pilot's) and the bigram lines
    paired_diffs.png       per comparison: the mean per-seed endpoint difference with its 95% CI,
                           the seeds as dots, 0 and the paper's -0.012 marked
    closeness_vs_ood.png   endpoint OOD against the primary closeness measure, every run with
                           both (pilot runs hollow), the fixed-effects slope through each arm
    grad_sim.png           geom/grad_sim (mean between-source gradient cosine) vs tokens
"""

from __future__ import annotations

from pathlib import Path

from nexus_optim.report.plots import colors_for, pyplot, save_png, series


def _ood_vs_id(plt, runs, report, colors, out: Path) -> str:
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    seen = set()
    for r in runs:
        if r.phase != "final":
            continue
        pts = [(p["val/id"], p["val/ood"]) for p in r.run.curve if "val/id" in p and "val/ood" in p]
        if not pts:
            continue
        ax.plot(*zip(*pts), color=colors[r.arm], lw=0.8, alpha=0.6,
                label=None if r.arm in seen else r.arm)
        seen.add(r.arm)
    for lv in (report.get("selection") or {}).get("levels", []):
        ax.axvline(lv, color="k", ls="--", lw=0.6)  # the pilot levels
    seeds = [r["endpoint"]["levels"] for r in report["runs"] if r["phase"] == "final" and r["arm"] == "adamw"
             and r.get("endpoint") and r["endpoint"].get("levels")]
    for i in range(len(seeds[0]) if seeds else 0):
        ax.axvline(sum(lv[i] for lv in seeds) / len(seeds), color="k", ls=":", lw=0.8)  # mean per-seed level
    lines = (report.get("ngram") or {}).get("lines", {}).get("bigram", {})
    if "val/id" in lines and "val/ood" in lines:
        ax.axvline(lines["val/id"], color="grey", lw=1)
        ax.axhline(lines["val/ood"], color="grey", lw=1)
        ax.annotate("bigram", (lines["val/id"], lines["val/ood"]), fontsize=7, color="grey")
    ax.set_xlabel("val/id (nats/token)")
    ax.set_ylabel("val/ood (nats/token)")
    ax.invert_xaxis()
    if seen:
        ax.legend(fontsize=7)
    ax.set_title("OOD vs in-distribution loss (dotted: mean per-seed endpoint levels; dashed: pilot's)",
                 fontsize=8)
    save_png(plt, fig, out / "ood_vs_id.png")
    return "ood_vs_id.png"


def _comparisons(report) -> list[tuple[str, dict]]:
    rows = [(k, v) for k, v in (report.get("primary") or {}).items() if "diff" in v]
    for name, metrics in (report.get("exploratory") or {}).items():
        if "endpoint" in metrics:
            rows.append((f"{name} (exploratory)", metrics["endpoint"]))
    return rows


def _paired_diffs(plt, runs, report, out: Path) -> str | None:
    rows = _comparisons(report)
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 0.8 + 0.55 * len(rows)))
    for i, (name, r) in enumerate(rows):
        ax.errorbar([r["diff"]], [i], xerr=[[r["diff"] - r["ci_low"]], [r["ci_high"] - r["diff"]]],
                    fmt="o", color="k", capsize=4)
        a, b = (s.strip() for s in name.replace(" (exploratory)", "").split(" - "))
        va = {x.seed: x.endpoint["value"] for x in runs if x.phase == "final" and x.arm == a}
        vb = {x.seed: x.endpoint["value"] for x in runs if x.phase == "final" and x.arm == b}
        ds = [va[s] - vb[s] for s in r.get("seeds", []) if va.get(s) is not None and vb.get(s) is not None]
        ax.scatter(ds, [i + 0.18] * len(ds), s=9, color="tab:blue", alpha=0.7)
    ax.axvline(0, color="grey", lw=1)
    ax.axvline(-report["design"]["paper_ood_effect"], color="tab:green", ls=":", lw=1)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([n for n, _ in rows], fontsize=7)
    ax.set_xlabel("endpoint OOD difference, nats (< 0: first arm better; dotted: the paper's -0.012)", fontsize=8)
    save_png(plt, fig, out / "paired_diffs.png")
    return "paired_diffs.png"


def _closeness_vs_ood(plt, report, colors, out: Path) -> str | None:
    # the primary closeness measure is the regression marked "primary" (study.py decides)
    primary = [(k, r) for k, r in (report.get("regression") or {}).items() if r.get("primary")]
    key, reg = primary[0] if primary else (None, None)
    if not reg or "points" not in reg:
        return None
    fig, ax = plt.subplots(figsize=(6.0, 4.4))
    for p in reg["points"]:
        pilot = p["run"].startswith("pilot/")
        ax.scatter([p["x"]], [p["y"]], s=18, edgecolors=colors.get(p["arm"], "k"),
                   facecolors="none" if pilot else colors.get(p["arm"], "k"))
    if "slope" in reg:
        for arm, b0 in reg["intercepts"].items():
            xs = sorted(p["x"] for p in reg["points"] if p["arm"] == arm)
            if xs:
                ax.plot([xs[0], xs[-1]], [b0 + reg["slope"] * xs[0], b0 + reg["slope"] * xs[-1]],
                        color=colors.get(arm, "k"), lw=1, label=arm)
        ax.set_title(f"slope {reg['slope']:+.3g} [{reg['ci_low']:+.3g}, {reg['ci_high']:+.3g}], "
                     f"p {reg['p']:.3g}, n {reg['n']}", fontsize=9)
    ax.set_xlabel(f"closeness: {key} (fixed AdamW protocol)")
    ax.set_ylabel("endpoint val/ood (nats)")
    ax.legend(fontsize=7)
    save_png(plt, fig, out / "closeness_vs_ood.png")
    return "closeness_vs_ood.png"


def _grad_sim(plt, runs, colors, out: Path) -> str | None:
    finals = [r for r in runs if r.phase == "final" and any("geom/grad_sim" in p for p in r.run.curve)]
    if not finals:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    seen = set()
    for r in finals:
        xs, ys = series(r.run, "geom/grad_sim")
        ax.plot(xs, ys, color=colors[r.arm], lw=0.8, alpha=0.6, label=None if r.arm in seen else r.arm)
        seen.add(r.arm)
    ax.set_xlabel("tokens")
    ax.set_ylabel("mean between-source gradient cosine")
    if seen:
        ax.legend(fontsize=7)
    save_png(plt, fig, out / "grad_sim.png")
    return "grad_sim.png"


def study_plots(runs, report: dict, out: Path) -> list[str]:
    plt = pyplot()
    colors = colors_for(report["arms"] + ["pilot"])
    made = [_ood_vs_id(plt, runs, report, colors, out), _paired_diffs(plt, runs, report, out),
            _closeness_vs_ood(plt, report, colors, out), _grad_sim(plt, runs, colors, out)]
    return [m for m in made if m]


def gamma_guide_plot(windows: dict[str, dict], design: dict, out: Path) -> str | None:
    """gamma_guide.png: per size (columns), the ID cost (top, bits/byte) and the similarity
    gain (bottom) of every Nexus setting against its relative gamma r (log axis); a line per
    reading x schedule; the window's thresholds dashed. ``windows``: size -> <size>-window.json."""
    sizes = [s for s in windows if windows[s].get("rows")]
    if not sizes:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(2, len(sizes), figsize=(4.2 * len(sizes), 6.0), squeeze=False, sharex=True)
    styles = {("trajectory", "fixed"): ("#1f77b4", "-"), ("trajectory", "follow"): ("#1f77b4", "--"),
              ("displacement", "fixed"): ("#d62728", "-"), ("displacement", "follow"): ("#d62728", "--")}
    for j, size in enumerate(sizes):
        rows = windows[size]["rows"]
        for key in sorted({(x["reading"], x["schedule"]) for x in rows}):
            pts = sorted((x["r"], x["cost"], x["gain"], x["window"]) for x in rows
                         if (x["reading"], x["schedule"]) == key and x["cost"] is not None and x["gain"] is not None)
            if not pts:
                continue
            color, ls = styles.get(key, ("0.3", ":"))
            for i, k in ((0, 1), (1, 2)):
                axes[i][j].plot([p[0] for p in pts], [p[k] for p in pts], color=color, ls=ls, marker="o", ms=3,
                                label=f"{key[0]}, {key[1]}")
                win = [p for p in pts if p[3]]
                axes[i][j].plot([p[0] for p in win], [p[k] for p in win], "o", mfc="none", mec="k", ms=8)
        axes[0][j].axhline(design["window_id_bpb"], color="k", ls=":", lw=0.8)
        axes[1][j].axhline(design["similarity_margin"], color="k", ls=":", lw=0.8)
        axes[0][j].set_title(f"size {size} (lr* {windows[size]['lr']:g})", fontsize=9)
        axes[1][j].set_xscale("log")
        axes[1][j].set_xlabel("relative gamma r = gamma / (lr sqrt(#params))", fontsize=8)
    axes[0][0].set_ylabel("ID cost: end bits/byte - AdamW's", fontsize=8)
    axes[1][0].set_ylabel("gain: mean grad cosine - AdamW's", fontsize=8)
    axes[0][0].legend(fontsize=7)
    save_png(plt, fig, out / "gamma_guide.png")
    return "gamma_guide.png"
