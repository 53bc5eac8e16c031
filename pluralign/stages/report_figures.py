"""The report's figures (matplotlib, written as PNG beside report.md): the EM objective, the
posterior confidence, the regret heatmap, accuracy per type, the MMRA weights and the
personalization curve."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from pluralign.stages.report_content import FIGURES, TITLES
from pluralign.stages.report_distributional import draw_distributional


# -- figures --------------------------------------------------------------------------------
def figures(em: dict[str, Any], agg: dict[str, Any], ev: dict[str, Any]) -> dict[str, bytes]:
    """PNG bytes of every figure, drawn with matplotlib's Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    drawers = {"em_objective": _em_objective, "confidence": _confidence,
               "regret_heatmap": _regret_heatmap, "accuracy": _accuracy,
               "mmra_weights": _mmra_weights, "personalization": _personalization,
               "predictive": lambda *a: _predictive(*a, key="curve"),
               "predictive_seen": lambda *a: _predictive(*a, key="seen_curve"),
               "queries": lambda *a: _predictive(*a, key="queries"),
               "distributional": lambda ax, em, agg, ev: draw_distributional(ax, ev)}
    out = {}
    for name in FIGURES:
        fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
        drawers[name](ax, em, agg, ev)
        ax.set_title(TITLES[name], fontsize=10)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        out[name] = buf.getvalue()
    return out


def _em_objective(ax, em, agg, ev) -> None:
    from matplotlib.ticker import MaxNLocator
    history = em["loglik_history"]
    ax.plot(range(1, len(history) + 1), history, marker="o", label=f"K={em['n_types']}")
    k1 = (em.get("heterogeneity") or {}).get("k1_loglik")
    if k1 is not None and em["n_types"] > 1:  # what one pooled policy reaches: the types' gain
        ax.axhline(k1, color="grey", linestyle="--", label="K=1 (pooled)")
        ax.legend(fontsize=8)
    ax.set_xlim(0.5, len(history) + 0.5)  # integer iterations, even for a single one
    if len(history) <= 12:
        ax.set_xticks(range(1, len(history) + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("EM iteration")
    ax.set_ylabel("objective (nats)")


def _confidence(ax, em, agg, ev) -> None:
    counts = ev["confidence_histogram"]
    edges = np.linspace(0, 1, len(counts) + 1)
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", edgecolor="white")
    ax.set_xlabel(f"max posterior probability ({ev['annotators']} annotators)")
    ax.set_ylabel("annotators")


def _regret_heatmap(ax, em, agg, ev) -> None:
    r = np.asarray(ev["regret"]["matrix"])
    image = ax.imshow(r, cmap="Reds", aspect="auto")
    ax.set_xticks(range(r.shape[1]), ev["policies"], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(r.shape[0]), ev["regret"]["types"], fontsize=8)
    low, high = image.get_clim()
    for (i, j), v in np.ndenumerate(r):  # white on dark cells, black on light ones
        dark = high > low and (v - low) / (high - low) > 0.55
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                color="white" if dark else "black")
    ax.figure.colorbar(image, ax=ax, label="regret (nats)")


def _accuracy(ax, em, agg, ev) -> None:
    table = ev["metrics"]["pairwise"]
    iv = (((ev.get("intervals") or {}).get("metrics") or {}).get("pairwise") or {})
    groups, policies = list(table), ev["policies"]
    width = 0.8 / len(groups)
    sizes = ev.get("group_sizes", {})
    for g, group in enumerate(groups):
        values = np.array([table[group][p] for p in policies])
        err = None
        if group in iv:
            lohi = np.array([iv[group][p] for p in policies])
            err = np.clip(np.vstack([values - lohi[:, 0], lohi[:, 1] - values]), 0, None)
        n = sizes.get(group, {}).get("annotators")
        ax.bar(np.arange(len(policies)) + g * width, values, width, yerr=err, capsize=2,
               label=f"{group} (n={n})" if n is not None else group)
    ax.set_xticks(np.arange(len(policies)) + 0.4 - width / 2, policies, rotation=30,
                  ha="right", fontsize=8)
    ax.set_ylabel("pairwise accuracy")
    ax.set_ylim(0, 1)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.legend(fontsize=7, ncol=min(4, len(groups)))


def _mmra_weights(ax, em, agg, ev) -> None:
    ax.bar(agg["types"], agg["weights"], color="tab:green", label="MMRA")
    ax.plot(agg["types"], em["priors"], "ko", label="type prior")
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)


def _personalization(ax, em, agg, ev) -> None:
    curve = ev["personalization"]["curve"]
    if curve:
        x = [c["annotations"] for c in curve]
        y = np.array([c["accuracy"] for c in curve])
        ax.plot(x, y, marker="o")
        if all("interval" in c for c in curve):
            lohi = np.array([c["interval"] for c in curve])
            ax.fill_between(x, lohi[:, 0], lohi[:, 1], alpha=0.2)
        ax.set_xscale("log", base=2)
    ax.set_xlabel("annotations seen")
    ax.set_ylabel("assignment accuracy")
    ax.set_ylim(0, 1.02)


def _predictive(ax, em, agg, ev, key: str) -> None:
    """A predictive personalization curve (`key`: unseen users' curve, seen users' or the
    query strategies'), one line per predictor (DESIGN §10)."""
    found = ev["personalization"].get("predictive")
    if not found or not found.get(key):
        why = "set evaluate.predictive_orders > 0" if not found else \
            "set ingest.seen_fraction > 0 (no seen users' held-out annotations)"
        ax.text(0.5, 0.5, f"not measured: {why}", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return
    curve = found[key]
    x = np.array([max(c["annotations"], 0.5) for c in curve])  # n = 0 drawn at 1/2
    for name in curve[0]["predictors"]:
        rows = [c["predictors"].get(name) for c in curve]
        if any(r is None for r in rows):
            continue
        ax.plot(x, [r["log_loss"] for r in rows], marker="o", label=name.replace("_", " "))
        if all("log_loss_interval" in r for r in rows):
            lohi = np.array([r["log_loss_interval"] for r in rows])
            ax.fill_between(x, lohi[:, 0], lohi[:, 1], alpha=0.15)
    ax.set_xscale("log", base=2)
    who = "seen users" if key == "seen_curve" else found.get("users", "users")
    ax.set_xlabel(f"annotations revealed ({who}; 0 at 1/2)")
    ax.set_ylabel("log-loss of the rest")
    ax.legend(fontsize=7)
