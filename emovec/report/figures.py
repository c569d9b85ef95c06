"""The report's figures, each a `matplotlib.figure.Figure` of its own (see `emovec.plotting`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..plotting import figure


def fig_layer_sweep(sweep: dict[str, Any]) -> Any:
    """Held-out accuracy (top) and PC1/PC2 correlation with human valence/arousal (bottom) per layer, to pick a layer."""
    rows = sweep["rows"]
    x = [r["layer"] for r in rows]
    fig, (a1, a2) = figure(2, 1, figsize=(8, 5.2), sharex=True)
    if any(r["top1"] is not None for r in rows):
        a1.plot(x, [r["top1"] for r in rows], "o-", ms=3, label="held-out top-1")
        a1.plot(x, [r["top5"] for r in rows], "s-", ms=3, label="held-out top-5")
        for key, style in (("chance_top1", ":"), ("chance_top5", "--")):
            if sweep.get(key) is not None:
                a1.axhline(sweep[key], color="grey", ls=style, lw=1, label=key.replace("_", " "))
    a1.set_ylabel("accuracy")
    a1.set_ylim(0, 1.05)
    a2.plot(x, [r["pc1_valence_r"] for r in rows], "o-", ms=3, color="tab:green", label="PC1 vs valence r")
    a2.plot(x, [r["pc2_arousal_r"] for r in rows], "o-", ms=3, color="tab:purple", label="PC2 vs arousal r")
    a2.axhline(0, color="grey", lw=0.8)
    a2.set_ylabel("Pearson r")
    a2.set_xlabel("layer")
    for ax in (a1, a2):
        if sweep.get("best_layer") is not None:
            ax.axvline(sweep["best_layer"], color="tab:red", lw=1.2, label=f"best layer ({sweep['best_layer']})")
        ax.axvline(sweep["two_thirds_layer"], color="black", ls="--", lw=1.2, label=f"2/3 depth ({sweep['two_thirds_layer']})")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def fig_cosine(geo: dict[str, Any]) -> Any:
    """Heat map of cosine similarity between emotion vectors, in cluster order so related emotions sit together."""
    names = geo["emotions"]
    idx = [names.index(e) for e in geo["cluster_order"]]
    m = np.array(geo["cosine"])[np.ix_(idx, idx)]
    n = len(names)
    size = max(4.5, min(24, 0.14 * n + 2))
    fig, ax = figure(figsize=(size + 1, size))
    im = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1)
    fs = max(3, min(9, 400 / max(n, 1)))
    ax.set_xticks(range(n), [names[i] for i in idx], rotation=90, fontsize=fs)
    ax.set_yticks(range(n), [names[i] for i in idx], fontsize=fs)
    fig.colorbar(im, ax=ax, shrink=0.7, label="cosine similarity")
    ax.set_title(f"cosine similarity, layer {geo['layer']} (hierarchical-cluster order)")
    return fig


def fig_pca(geo: dict[str, Any]) -> Any:
    """PC1/PC2 scatter of the emotion vectors coloured by human valence, to show the valence axis the paper reports."""
    n = len(geo["emotions"])
    fig, ax = figure(figsize=(8, 7) if n > 40 else (6.5, 5))
    val = (geo.get("norms") or {}).get("valence", {})
    xs = {e: p[0] for e, p in geo["pcs"].items()}
    ys = {e: p[1] for e, p in geo["pcs"].items()}
    grey = [e for e in geo["emotions"] if e not in val]
    ax.scatter([xs[e] for e in grey], [ys[e] for e in grey], c="lightgrey", s=18, label="no human rating")
    if val:
        sc = ax.scatter([xs[e] for e in val], [ys[e] for e in val], c=list(val.values()), cmap="RdYlGn", vmin=1, vmax=9,
                        s=26, edgecolors="black", linewidths=0.3)
        fig.colorbar(sc, ax=ax, label="human valence (Warriner et al. 2013, 1-9)")
    fs = 6 if n > 40 else 8
    for e in geo["emotions"]:
        ax.annotate(e, (xs[e], ys[e]), fontsize=fs, xytext=(2, 2), textcoords="offset points")
    ev = geo["explained_variance"]
    ax.set_xlabel(f"PC1 ({ev[0]:.0%} of variance)")
    ax.set_ylabel(f"PC2 ({ev[1]:.0%} of variance)" if len(ev) > 1 else "PC2")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_title(f"PCA of emotion vectors, layer {geo['layer']}")
    if grey:
        ax.legend(fontsize=7, loc="best")
    return fig


def fig_severity(sev: dict[str, Any]) -> Any:
    """One panel per severity template: score change against the quantity, to show scores track how bad things are."""
    curves = sev["curves"]
    cols = 2
    rows = max(1, math.ceil(len(curves) / cols))
    fig, axes = figure(rows, cols, figsize=(10, 3.1 * rows), squeeze=False)
    rho = {(r["template"], r["emotion"]): r["rho"] for r in sev["rows"]}
    for ax, (name, c) in zip(axes.flat, curves.items()):
        q = c["quantities"]
        for e, ys in c["scores"].items():
            ys = [y - ys[0] for y in ys]
            style = "-" if c["expected"][e] == "rise" else "--"
            r = rho.get((name, e))
            way = "up" if c["expected"][e] == "rise" else "down"
            ax.plot(q, ys, style, marker="o", ms=3, label=f"{e} ({way} expected; rho {r:+.2f})" if r is not None else e)
        if min(q) > 0 and max(q) / min(q) > 20:
            ax.set_xscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(c.get("unit") or "quantity", fontsize=8)
        ax.set_ylabel(f"score change from {q[0]:,}", fontsize=8)
        ax.axhline(0, color="grey", lw=0.6)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6.5)
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    fig.suptitle(f"severity: scores at the reply-start token, layer {sev['layer']} (solid: expected to rise, dashed: to fall)", fontsize=10)
    fig.tight_layout()
    return fig


def fig_implicit(imp: dict[str, Any]) -> Any:
    """Heat map of implicit-scenario prompts x emotion scores, the intended emotion boxed, to check it stands out."""
    from matplotlib.patches import Rectangle

    m = np.array(imp["scores"])
    names = imp["emotions"]
    n_p, n_e = m.shape
    fig, ax = figure(figsize=(max(6, 0.32 * n_e + 4), max(3, 0.32 * n_p + 1.5)))
    lim = float(np.abs(m).max()) or 1.0
    im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    for i, p in enumerate(imp["prompts"]):
        j = names.index(p["intended"])
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="black", lw=1.5))
    ax.set_xticks(range(n_e), names, rotation=90, fontsize=7)
    ax.set_yticks(range(n_p), [f"{p['intended']}: {p['text'][:38]}..." for p in imp["prompts"]], fontsize=7)
    fig.colorbar(im, ax=ax, shrink=0.8, label="score" + (" (centred per emotion)" if imp.get("centered") else ""))
    ax.set_title(f"implicit scenarios x emotion vectors, layer {imp['layer']} (boxes: intended emotion)", fontsize=9)
    return fig




def fig_scaling(sc: dict[str, Any]) -> Any:
    """Held-out recognition, split-half agreement and norm correlations against stories per emotion, with seed spread.

    Lines are means over seeds, bands min..max; grey lines are chance (recognition) and
    the expected |r| of unrelated data (correlations, whose sign the PCA convention fixes).
    """
    rows = sc["rows"]
    k = [r["k"] for r in rows]
    fig, axes = figure(1, 3, figsize=(13, 3.8))

    def band(ax: Any, key: str, label: str, color: str) -> None:
        pts = [(r["k"], r[key]) for r in rows if r[key]["mean"] is not None]
        if not pts:
            return
        xs = [x for x, _ in pts]
        ax.plot(xs, [v["mean"] for _, v in pts], "o-", ms=3, color=color, label=label)
        ax.fill_between(xs, [v["min"] for _, v in pts], [v["max"] for _, v in pts], color=color, alpha=0.18, lw=0)

    band(axes[0], "top1", "held-out top-1", "tab:blue")
    band(axes[0], "top5", "held-out top-5", "tab:orange")
    axes[0].axhline(sc["chance_top1"], color="tab:blue", ls=":", lw=1, label="chance top-1")
    axes[0].axhline(sc["chance_top5"], color="tab:orange", ls=":", lw=1, label="chance top-5")
    axes[0].set_ylabel("accuracy")
    axes[0].set_ylim(0, 1.02)
    band(axes[1], "split_half", "split-half cosine", "tab:green")
    axes[1].axhline(0, color="grey", ls=":", lw=1, label="no signal")
    axes[1].set_ylabel("mean cosine, two disjoint draws")
    band(axes[2], "valence_r", "PC1 vs valence r", "tab:red")
    band(axes[2], "arousal_r_best", "best |r| PC1-3 vs arousal", "tab:purple")
    if sc.get("null_abs_r") is not None:
        axes[2].axhline(sc["null_abs_r"], color="grey", ls=":", lw=1, label="chance |r| (one PC)")
    axes[2].axhline(0.81, color="tab:red", ls="--", lw=0.8, label="paper valence 0.81")
    axes[2].axhline(0.66, color="tab:purple", ls="--", lw=0.8, label="paper arousal 0.66")
    axes[2].set_ylabel(f"Pearson r (n={sc['n_norms_matched']} rated emotions)")
    axes[2].set_ylim(-0.05, 1.02)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(k, [str(x) for x in k])
        ax.set_xlabel("stories per emotion (k)")
        ax.legend(fontsize=7)
    fig.suptitle(f"corpus scaling, layer {sc['layer']}: {sc['n_emotions']} emotions, {sc['seeds']} seeds "
                 "(line: mean, band: min..max)", fontsize=10)
    fig.tight_layout()
    return fig


def fig_steering(st: dict[str, Any]) -> Any:
    """Dose-response of the external judge per emotion (95% CIs, one line per layer) and a fluency panel.

    Filled markers are fluent strengths, hollow ones broke the fluency bound; the grey
    line is the unsteered mean. The last two panels show perplexity ratio and repetition.
    """
    emotions = list(dict.fromkeys(c["emotion"] for c in st["curves"]))
    layers = sorted({c["layer"] for c in st["curves"]})
    colors = dict(zip(layers, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")))
    n = len(emotions) + 2
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = figure(rows, cols, figsize=(3.4 * cols, 2.9 * rows), squeeze=False)
    flat = list(axes.flat)
    base = st["unsteered"]["judge"]["mean"]
    for ax, e in zip(flat, emotions):
        for c in (c for c in st["curves"] if c["emotion"] == e):
            pts = c["points"]
            xs = [p["strength"] for p in pts]
            ys = [p["judge"]["mean"] for p in pts]
            err = [[p["judge"]["mean"] - p["judge"]["ci95"][0] if p["judge"]["ci95"] else 0 for p in pts],
                   [p["judge"]["ci95"][1] - p["judge"]["mean"] if p["judge"]["ci95"] else 0 for p in pts]]
            col = colors.get(c["layer"], "black")
            ax.errorbar(xs, ys, yerr=err, color=col, lw=1, capsize=2, label=f"layer {c['layer']}")
            for p, y in zip(pts, ys):
                ax.plot(p["strength"], y, "o", ms=4, color=col, mfc=col if p["fluent"] else "white")
        if base is not None:
            ax.axhline(base, color="grey", lw=0.8)
        way = {1: "up", -1: "down"}.get(st["curves"][[c["emotion"] for c in st["curves"]].index(e)]["expected"], "?")
        ax.set_title(f"{e} (expected {way})", fontsize=9)
        ax.set_ylim(-1.05, 1.05)
        ax.set_xlabel("strength", fontsize=8)
        ax.set_ylabel("VADER compound", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    first = st["settings"]["layers"][0]
    for ax, key, label in ((flat[len(emotions)], "ppl_ratio", "perplexity / unsteered"),
                           (flat[len(emotions) + 1], "repetition", "repeated bigram rate")):
        for c in (c for c in st["curves"] if c["layer"] == first):
            ax.plot([p["strength"] for p in c["points"]], [p[key] for p in c["points"]], "o-", ms=3, label=c["emotion"])
        ax.set_title(f"fluency, layer {first}", fontsize=9)
        ax.set_ylabel(label, fontsize=8)
        ax.set_xlabel("strength", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    cfg = st["settings"]
    flat[len(emotions)].axhline(cfg["max_ppl_ratio"], color="grey", ls="--", lw=0.8)
    for ax in flat[n:]:
        ax.axis("off")
    fig.suptitle("steering judged from outside: VADER valence of the replies (mean, 95% CI; hollow = not fluent)", fontsize=10)
    fig.tight_layout()
    return fig
