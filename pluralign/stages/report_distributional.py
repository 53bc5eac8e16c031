"""The report's distributional alignment (pluralign.aggregate.distributional): every policy's
worst-group distance to the groups' answer distributions, as a table, a figure and findings;
and the ceilings simulate --from-groups wrote beside a group population."""

from __future__ import annotations

from typing import Any

import numpy as np

from pluralign.core.bootstrap import show

DEFINITIONS = (
    ("JS / TV / EMD (distributional)", "Distance between a policy's answer distribution over a "
     "question's options (its candidates distribution) and a group's, averaged over the "
     "group's questions: Jensen–Shannon distance in bits (sqrt of the divergence, as scipy and "
     "GlobalOpinionQA), total variation, and for ordered options the Wasserstein-1 distance "
     "over the span of the ordinal values (OpinionQA). 0 = the group's own distribution; the "
     "worst group's is the fairness figure. `uniform answer` answers every option equally, "
     "`personalised` serves each annotator their posterior's policy (the posterior from their "
     "own evaluation answers, questions included: optimistic) and averages over a group's "
     "annotators."),
    ("oracle / supervised (group population)", "Written by simulate --from-groups over all "
     "annotators: the Bayes oracle assigns with the true shares; the supervised ceiling with "
     "a Plackett–Luce utility per (question, option, group) fitted with the labels known on "
     "the other half of the annotators. Discovery is judged against the supervised one."),
)


def distributional_summary(ev: dict[str, Any]) -> dict[str, Any] | None:
    """Worst-group JS of every policy with its interval, the best single policy's, and the
    group ceilings, for report.json."""
    d = ev.get("distributional")
    if not d or "js" not in d:
        return None
    js = d["js"]
    worst, iv = js["worst"], js.get("worst_interval", {})
    singles = [p for p in d["policies"] if p not in ("uniform answer", "personalised")]
    best = min(singles, key=lambda p: worst[p])
    return {"questions": d["questions"], "target": d["target"], "groups": d["groups"],
            "worst_js": worst, "worst_js_interval": iv, "worst_group": js["worst_group"],
            "best_single": best, "unseen_questions": d.get("unseen_questions"),
            "group_ceilings": ev.get("group_ceilings")}


def distributional_findings(s: dict[str, Any] | None, discovery_ari: float | None) -> list[str]:
    """Sentences for the top of the page."""
    if not s:
        return []
    worst, iv, group = s["worst_js"], s["worst_js_interval"], s["worst_group"]

    def shown(p: str) -> str:
        return f"{p} {worst[p]:.3f}{show(iv.get(p))} ({group[p]})"
    named = [p for p in (s["best_single"], "pooled", "personalised", "uniform answer")
             if p in worst]
    out = [f"Distributional alignment on {s['questions']} questions against "
           f"{s['target']}: worst-group Jensen–Shannon distance (worst group in brackets) "
           f"{'; '.join(shown(p) for p in dict.fromkeys(named))}."]
    c = s.get("group_ceilings")
    if c:
        ratio = "" if discovery_ari is None or not c["supervised"]["ari"] else \
            f"; discovery's ARI here is {discovery_ari / c['supervised']['ari']:.2f} of it"
        out.append(f"Ceilings of the group population (simulate --from-groups, "
                   f"{c['annotators']} annotators): Bayes oracle ARI {c['oracle']['ari']:.3f}, "
                   f"supervised ARI {c['supervised']['ari']:.3f}{ratio}.")
    return out


def distributional_table(ev: dict[str, Any]) -> tuple[str, list[str], list[list[str]]] | None:
    """(title, header, rows): each policy's worst-group JS with its interval, worst group,
    JS per group, worst TV and worst EMD."""
    d = ev.get("distributional")
    if not d or "js" not in d:
        return None
    groups = d["groups"]
    header = ["policy", "worst JS", "worst group", *[f"JS {g}" for g in groups], "worst TV",
              "worst EMD"]
    rows = []
    for p in d["policies"]:
        iv = d["js"].get("worst_interval", {}).get(p)
        by = d["js"]["by_group"][p]
        rows.append([p, f"{d['js']['worst'][p]:.3f}{show(iv)}", str(d["js"]["worst_group"][p]),
                     *[_num(by.get(g)) for g in groups], _num(d["tv"]["worst"][p]),
                     _num((d.get("emd") or {}).get("worst", {}).get(p))])
    title = (f"{d['questions']} questions, target: {d['target']}"
             + (f"; {d['unseen_questions']} of them unseen in training"
                if d.get("unseen_questions") is not None else ""))
    return title, header, rows


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def draw_distributional(ax: Any, ev: dict[str, Any]) -> None:
    """Bars: each policy's worst-group JS with its interval; dots: every group's JS."""
    d = ev.get("distributional")
    if not d or "js" not in d:
        ax.text(0.5, 0.5, "no labelled groups with answer distributions", ha="center",
                va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    js, names = d["js"], d["policies"]
    worst = np.array([js["worst"][p] for p in names])
    iv = js.get("worst_interval") or {}
    err = None
    if iv:
        lohi = np.array([iv[p] for p in names])
        err = np.clip(np.vstack([worst - lohi[:, 0], lohi[:, 1] - worst]), 0, None)
    x = np.arange(len(names))
    ax.bar(x, worst, 0.6, yerr=err, capsize=2, color="#9db4d3", label="worst group")
    for g in d["groups"]:
        values = [js["by_group"][p].get(g) for p in names]
        ax.plot(x, [np.nan if v is None else v for v in values], "o", ms=3, label=g)
    top = float(np.nanmax(worst + (err[1] if err is not None else 0)))
    ax.set_ylim(0, 1.3 * top if top > 0 else 1)  # room for the legend above the bars
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("Jensen–Shannon distance")
    ax.legend(fontsize=7, ncol=min(4, len(d["groups"]) + 1))
