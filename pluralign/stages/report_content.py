"""The fairness audit report (DESIGN §9, last stage): report.json, report.md and a
self-contained report.html (plots embedded as PNG data URIs), from what a run folder holds:
em.json, aggregate.json and evaluation.json.

The page tells one story: which type the pooled policy (plain DPO) serves worst and by how
much, what the min-max regret mixture changes, and how sure the type assignments are.
"""

from __future__ import annotations

import html
import re
from typing import Any

import numpy as np

from pluralign.core import bootstrap
from pluralign.stages.report_distributional import DEFINITIONS as DISTRIBUTIONAL
from pluralign.stages.report_distributional import (
    distributional_findings,
    distributional_summary,
    distributional_table,
)
from pluralign.stages.report_predictive import predictive_tables

FIGURES = ("em_objective", "confidence", "regret_heatmap", "accuracy", "mmra_weights",
           "personalization", "predictive", "predictive_seen", "queries", "distributional")
TITLES = {
    "em_objective": "EM objective per iteration",
    "confidence": "Posterior confidence of each annotator's type",
    "regret_heatmap": "Regret of serving each type (row) with each policy (column)",
    "accuracy": "Pairwise accuracy of every policy on each group",
    "mmra_weights": "Min-max regret mixture against the type priors",
    "personalization": "Type-assignment accuracy after a new annotator's first n annotations",
    "predictive": "Predicting a user's other judgements after n of theirs (log-loss)",
    "predictive_seen": "Predicting a seen user's held-out judgements after n more (log-loss)",
    "queries": "Questions chosen by `suggest` against random questions (log-loss)",
    "distributional": "Distance of each policy's answers to each group's (Jensen–Shannon)",
}
#: What each column of the policy table means (the definitions box).
DEFINITIONS = (
    ("regret", "Regret of serving type i with policy j: V_i(pi_i) - V_i(pi_j), where V_i is "
               "type i's value over each evaluation prompt's candidate responses, in nats: its "
               "expected reward beta * log(pi_i / pi_ref), minus beta KL(pi_j || pi_ref) under "
               "the kl objective (see objective). 0 means the policy serves the type as well as "
               "the type's own policy; larger is worse."),
    ("base measure", "How a policy is restricted to a prompt's candidates: uniform (proportional "
                     "to exp(log-ratio): what the policy changes) or reference (its own LM "
                     "probability, in which response length dominates)."),
    ("max regret", "The largest regret of the policy over the types: the worst-served type's."),
    ("regret gap", "Max minus min regret over the types: how unevenly the policy serves them."),
    ("worst-served group / its pairwise acc.", "The labelled group (discovered type where no "
     "labels exist) whose observed rankings the policy's implied reward orders least well, and "
     "that share of correctly ordered pairs (0.5 = chance, ties count half)."),
    ("[low, high]", "95% bootstrap interval. Regrets: prompts resampled (each distinct prompt "
                    "counts once), studentised (bootstrap-t). A max regret's interval comes "
                    "from bounds on every type's regret, lower bounds holding together and each "
                    "type's own upper bound, so it keeps its coverage however many types bind "
                    "(a percentile interval of the resampled max does not: the fairest policies "
                    "make several types bind, and it then sits above the truth). Accuracies, "
                    "ARI and the personalization curve: annotators resampled, percentile."),
    ("not distinguishable", "Whether a policy's max regret differs from the fairest policy's "
     "is read from bounds on the paired differences that hold for every pair of policies at "
     "once, so picking the fairest on the same prompts cannot turn a tie into a difference."),
    ("as served / certified", "As served: the regret of what a user deploys, measured by "
     "decoding responses from the policy on held-out prompts and scoring them exactly under it "
     "and every type policy (beta E[log pi(y) - log pi_i(y)], y drawn from pi; a mixture draws "
     "a type policy, then decodes). Certified: the same policies restricted to each prompt's "
     "candidate responses, where the min-max programs are solved; for the linear backend, "
     "whose policies live on the candidates, the two are one figure. The deploy interval holds "
     "jointly over the deployable policies it was chosen from."),
    ("fair_tuned", "The min-max merge decoded token by token at other weights than the "
     "program's (uniform or the MMRA mixture's), when those served with a lower worst-type "
     "regret on held-out prompts other than the measured ones: the decoded merge is not the "
     "program's policy, so its best weights need not be the program's."),
    ("mmra / uniform / utilitarian", "Mixtures of the type policies (draw a type policy with "
     "these probabilities, then decode): min-max regret (under kl the exact min-max over "
     "mixtures of the regret they serve; under paper the LP), equal weights, and the one "
     "maximising the prior-weighted mean value."),
    ("supervised ceiling", "The same backend fitted with the labels known (one policy per "
     "label, on that label's training annotators) and used to assign the same annotators: "
     "what discovery could reach with this model and data. A low ceiling means the groups "
     "cannot be told apart here, whatever the method."),
    ("pooled / base / merged", "One DPO policy fitted to everybody (K = 1); the base model; one "
     "policy whose weights are the weighted sum of the type policies' (at the min-max merge's "
     "weights under the kl objective, at the MMRA weights under paper)."),
    ("fair (min-max merge)", "The policy proportional to prod_i pi_i^q_i, q solving the "
     "min-max regret program: the lowest worst-type regret over all policies under the kl "
     "objective (decoded from the K type policies' combined log-ratios)."),
    ("objective", "kl: a type's value is its expected reward minus beta times the KL "
     "divergence from the reference, the objective DPO's policies maximise; a type's regret of "
     "a policy is then beta times its KL divergence from the type's own policy. paper: "
     "expected reward only, as the reference MMRA."),
) + DISTRIBUTIONAL




def _interval(ev: dict[str, Any], name: str) -> list[float] | None:
    return ((ev.get("intervals") or {}).get("max_regret") or {}).get(name)


def summary(em: dict[str, Any], agg: dict[str, Any], ev: dict[str, Any]) -> dict[str, Any]:
    """The report's findings as plain JSON: the fairness story in numbers."""
    regret = ev["regret"]
    types = regret["types"]
    matrix = np.asarray(regret["matrix"])
    col = {name: j for j, name in enumerate(ev["policies"])}
    pooled = col.get("pooled")
    story: dict[str, Any] = {
        "types": len(types), "priors": em["priors"], "estimator": regret["estimator"],
        "base_measure": ev.get("base_measure"), "in_sample": ev.get("in_sample", False),
        "sizes": {"train_annotators": em.get("annotators"),
                  "train_annotations": em.get("annotations"),
                  "eval_annotators": ev["annotators"], "eval_annotations": ev["annotations"],
                  "eval_prompts": ev.get("prompts")},
        "mmra": {"weights": agg["weights"], "max_regret": regret["max_regret"]["mmra"],
                 "interval": _interval(ev, "mmra"),
                 "binding": [t for t, b in zip(types, agg["binding"], strict=True) if b]},
        "max_regret": regret["max_regret"], "gap": regret["gap"],
        "actions": em.get("actions", []), "objective": agg.get("objective", "paper"),
        "deploy": agg.get("deploy"),
        "identifiability": em.get("identifiability"),
        "warnings": [*em.get("warnings", []), *agg.get("warnings", []),
                     *ev.get("warnings", [])]}
    if pooled is not None:
        worst = int(matrix[:, pooled].argmax())
        story["pooled"] = {"worst_type": types[worst],
                           "worst_regret": float(matrix[worst, pooled]),
                           "interval": _interval(ev, "pooled"),
                           "best_type": types[int(matrix[:, pooled].argmin())],
                           "gap": regret["gap"]["pooled"]}
        story["mmra"]["reduction"] = story["pooled"]["worst_regret"] - story["mmra"]["max_regret"]
    fair = min(ev["policies"], key=lambda p: regret["max_regret"][p])
    story["fairest_policy"] = {"name": fair, "max_regret": regret["max_regret"][fair],
                               "interval": _interval(ev, fair)}
    story["indistinguishable"] = _overlapping(ev, fair)
    story["accuracy_losses"] = _accuracy_losses(ev, fair)
    if "discovery" in ev:
        story["discovery"] = {k: ev["discovery"][k] for k in ("ari", "nmi", "label_to_type")}
        story["discovery"]["ari_interval"] = ev["discovery"].get("ari_interval")
        story["discovery"]["ceiling"] = ev.get("ceiling")
    story["served"] = agg.get("served")
    story["distributional"] = distributional_summary(ev)
    curve = ev["personalization"]["curve"]
    reach = next((c["annotations"] for c in curve if c["accuracy"] >= 0.9), None)
    story["personalization"] = {"annotations_for_90_percent": reach,
                                "final_accuracy": curve[-1]["accuracy"] if curve else None}
    return story


def _overlapping(ev: dict[str, Any], fair: str) -> list[str]:
    """Policies whose max regret cannot be told apart from the fairest policy's on this
    evaluation set (pluralign.core.bootstrap.compare_with_best)."""
    iv = ev.get("intervals") or {}
    if iv.get("fairest") != fair:
        return []
    return [p for p, d in iv.get("vs_fairest", {}).items() if not d["distinguishable"]]


def _accuracy_losses(ev: dict[str, Any], fair: str) -> list[dict[str, Any]]:
    """Groups on which the fairest policy by regret orders the observed rankings less well
    than the base model."""
    table = ev["metrics"]["pairwise"]
    out = []
    for group, row in table.items():
        if "base" in row and row[fair] < row["base"]:
            iv = (((ev.get("intervals") or {}).get("metrics") or {}).get("pairwise") or {})
            out.append({"group": group, "policy": row[fair], "base": row["base"],
                        "interval": (iv.get(group) or {}).get(fair)})
    return out


def _ci(iv: list[float] | None) -> str:
    return bootstrap.show(iv, label="95% CI ")


def findings(story: dict[str, Any]) -> list[str]:
    """The story in sentences, for the top of the page."""
    out = [story["deploy"]["why"]] if story.get("deploy") else []
    mmra = story["mmra"]
    where = "the training annotations (in-sample)" if story["in_sample"] else \
        "held-out annotators"
    sizes = story["sizes"]
    out.append(f"Evaluated on {where}: {sizes['eval_annotators']} annotators, "
               f"{sizes['eval_annotations']} annotations, {sizes['eval_prompts']} prompts; types "
               f"were fitted on {sizes['train_annotators']} annotators.")
    if "pooled" in story:
        p = story["pooled"]
        out.append(f"On the candidate responses, the pooled policy (one DPO fit to everyone) "
                   f"serves {p['worst_type']} worst: its regret there is "
                   f"{p['worst_regret']:.3f}{_ci(p['interval'])}, against "
                   f"{p['best_type']} best served (gap {p['gap']:.3f}).")
        verb, side = ("lowers", "below") if mmra["reduction"] > 0 else ("does not lower",
                                                                         "above")
        out.append(f"The min-max regret mixture {verb} the worst type's regret: "
                   f"{mmra['max_regret']:.3f}{_ci(mmra['interval'])}, "
                   f"{abs(mmra['reduction']):.3f} {side} pooled; binding types: "
                   f"{', '.join(mmra['binding'])}.")
    weights = ", ".join(f"type_{j} {w:.2f}" for j, w in enumerate(mmra["weights"]))
    out.append(f"Mixture weights: {weights}.")
    fair = story["fairest_policy"]
    if fair["name"] != "mmra":
        out.append(f"Lowest worst-type regret on the candidate responses: {fair['name']} "
                   f"({fair['max_regret']:.3f}{_ci(fair['interval'])}).")
    if story["indistinguishable"]:
        out.append(f"Not distinguishable from {fair['name']} on these prompts (95% bounds on "
                   "the paired differences, holding for every pair of policies at once, do not "
                   f"exclude a tie): {', '.join(story['indistinguishable'])}.")
    for loss in story["accuracy_losses"]:
        out.append(
            f"On {loss['group']}, {fair['name']} orders the observed pairs less well than the "
            f"base model ({loss['policy']:.3f}{_ci(loss['interval'])} vs {loss['base']:.3f}). "
            "Regret and pairwise accuracy measure different things: regret is the expected "
            "reward under each type's learned reward with the policy spread over the "
            "candidates, while accuracy asks whether the policy's implied reward orders each "
            "observed ranking. A mixture or merge that hedges between types can lower the worst "
            "regret yet rank one group's pairs no better than chance, especially where the "
            "discovered types do not match the labelled groups.")
    for a in story["actions"]:
        what = (f"type_{a['types'][0]} pruned" if a["action"] == "pruned" else
                f"type_{a['types'][0]} and type_{a['types'][1]} merged")
        out.append(f"While fitting K={a['k']}: {what} ({a['reason']}).")
    if "discovery" in story:
        d = story["discovery"]
        pairs = ", ".join(f"{label} = type_{k}" for label, k in d["label_to_type"].items())
        out.append(f"Type discovery against the known labels: ARI {d['ari']:.3f}"
                   f"{_ci(d.get('ari_interval'))}, NMI {d['nmi']:.3f} (known label = discovered "
                   f"type: {pairs}){_ceiling_text(d.get('ceiling'))}.")
    out += distributional_findings(story.get("distributional"),
                                   (story.get("discovery") or {}).get("ari"))
    reach = story["personalization"]["annotations_for_90_percent"]
    if reach is not None:
        out.append(f"A new annotator is assigned to the right type with 90% accuracy after "
                   f"{reach} annotation(s), using the trained policies only.")
    if story["in_sample"]:
        out.append("Note: evaluated on the training annotations (in-sample); pass held-out "
                   "data to `pluralign evaluate --data` for an honest estimate.")
    return out


def _ceiling_text(c: dict[str, Any] | None) -> str:
    """'; the supervised ceiling ...' beside a discovery figure (empty without one)."""
    if not c:
        return ""
    ratio = "" if c.get("ratio") is None else f"; EM/ceiling ARI ratio {c['ratio']:.2f}"
    return (f". The supervised ceiling (the same backend fitted with the labels known) assigns "
            f"the same annotators with ARI {c['ceiling']['ari']:.3f}"
            f"{_ci(c['ceiling'].get('ari_interval'))} and accuracy "
            f"{c['ceiling']['accuracy']:.3f}{_ci(c['ceiling'].get('accuracy_interval'))}, "
            f"against EM's accuracy {c['em']['accuracy']:.3f}"
            f"{_ci(c['em'].get('accuracy_interval'))}{ratio}")


def captions(em: dict[str, Any], ev: dict[str, Any]) -> dict[str, str]:
    """Captions that say what to look at in each figure."""
    data = "training" if ev.get("in_sample") else "held-out"
    return {
        "em_objective": "Each EM iteration should raise the objective (log-likelihood minus "
                        "log-prior); the dashed line is one pooled policy (K=1), so the height "
                        "above it is what the types explain.",
        "confidence": f"Max posterior of each {data} annotator's type: bars near 1 mean sure "
                      "assignments, bars near 1/K mean the data cannot tell the types apart.",
        "regret_heatmap": f"Regret of each policy (column) for each type (row) on {data} "
                          "prompts: look for the column whose worst (darkest) cell is lightest; "
                          "the diagonal of the type policies is 0 by definition.",
        "accuracy": f"Share of {data} ranked pairs each policy orders correctly, per group, with "
                    "95% intervals; the dashed line is chance (0.5).",
        "mmra_weights": "Bars: probability of each type policy in the min-max regret mixture; "
                        "dots: the type priors. A type weighted above its prior is one the "
                        "pooled policy under-serves.",
        "personalization": f"How often a {data} annotator is assigned to the right type after "
                           "their first n annotations (fixed policies), with 95% intervals.",
        "predictive": "Log-loss of each predictor of a user's remaining judgements after n of "
                      "theirs in random orders (lower is better), with 95% intervals over "
                      "users: pooled policy, most likely type, posterior predictive, the "
                      "user's weights over the type basis, and the oracle that knows the true "
                      "type (evaluate.predictive_orders > 0).",
        "predictive_seen": "The same for users EM saw: their training annotations are known "
                           "and n of their held-out ones revealed (ingest.seen_fraction > 0 "
                           "holds them out).",
        "queries": "Posterior predictive log-loss on half of each user's annotations after n "
                   "questions from the other half, asked in `suggest`'s order (largest "
                   "expected information gain about the type) or at random.",
        "distributional": "Bars: each policy's Jensen–Shannon distance to its worst-served "
                          "group's answer distribution, averaged over that group's questions, "
                          "with 95% intervals over questions; dots: every group's. Lower is "
                          "better; the uniform answer is the floor any model should beat.",
    }
















# -- documents ------------------------------------------------------------------------------
def _with_ci(value: float, iv: list[float] | None) -> str:
    return f"{value:.3f}{bootstrap.show(iv)}"


def policy_rows(ev: dict[str, Any]) -> list[list[str]]:
    """One row per policy: max regret (with its interval), gap, worst-served group and its
    pairwise accuracy (with its interval), and the regret of each type."""
    r = np.asarray(ev["regret"]["matrix"])
    pair = ev["spread"]["pairwise"]
    acc_iv = (((ev.get("intervals") or {}).get("metrics") or {}).get("pairwise") or {})
    rows = []
    for j, name in enumerate(ev["policies"]):
        worst = pair[name]["worst_group"]
        rows.append([name, _with_ci(ev["regret"]["max_regret"][name], _interval(ev, name)),
                     f"{ev['regret']['gap'][name]:.3f}", worst,
                     _with_ci(pair[name]["worst"], (acc_iv.get(worst) or {}).get(name)),
                     *[f"{0.0 if abs(v) < 5e-4 else v:.3f}" for v in r[:, j]]])
    return rows


def policy_header(ev: dict[str, Any]) -> list[str]:
    return ["policy", "max regret [95% CI]", "regret gap", "worst-served group",
            "its pairwise acc. [95% CI]", *[f"regret {t}" for t in ev["regret"]["types"]]]


def served_rows(agg: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    """(header, rows) of every deployable policy's worst-type regret as served, beside its
    certified figure on the candidates; None where served is the candidates figure."""
    served = agg.get("served") or {}
    if "max_regret" not in served:
        return None
    iv = (served.get("intervals") or {}).get("max_regret") or {}
    cert = {"mmra": agg["max_regret"], **{n: b["max_regret"]
                                          for n, b in agg["baselines"].items()}}
    types = agg["types"]
    rows = [[name, _with_ci(value, iv.get(name)),
             f"{cert[name]:.3f}" if name in cert else "-",
             *[f"{v:.3f}" for v in served["regrets"][name]]]
            for name, value in sorted(served["max_regret"].items(), key=lambda kv: kv[1])]
    header = ["policy", "max regret as served [95% CI]", "certified (candidates)",
              *[f"served regret {t}" for t in types]]
    return header, rows


def served_title(agg: dict[str, Any]) -> str:
    s = agg.get("served") or {}
    if "max_regret" not in s:
        return f"As served: the candidates figures above ({s.get('why', '')})."
    return (f"As served: {s['n_samples']} responses decoded per prompt from every policy on "
            f"{s['prompts']} held-out prompts (of {s['of_prompts']}), at most "
            f"{s['max_new_tokens']} tokens ({100 * s['share_cut_at_horizon']:.0f}% reached that "
            "horizon), scored exactly under the policy and every type policy.")


def confusion_tables(ev: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the confusion matrix of discovered types against each label
    column the data carries."""
    out = []
    for column, d in (ev.get("confusion") or {}).items():
        k = len(d["confusion"][0]) if d["confusion"] else 0
        header = [f"{column} \\ discovered", *[f"type_{j}" for j in range(k)], "annotators"]
        rows = [[label, *map(str, counts), str(sum(counts))]
                for label, counts in zip(d["labels"], d["confusion"], strict=True)]
        out.append((f"{column}: ARI {d['ari']:.3f}, NMI {d['nmi']:.3f} on {d['annotators']} "
                    "annotators", header, rows))
    return out


def config_rows(em: dict[str, Any], agg: dict[str, Any], ev: dict[str, Any]) -> list[list[str]]:
    """The run's configuration as (setting, value) rows."""
    opts = em.get("backend_options") or {}
    floor = em.get("type_floor") or {}
    rows = [["backend", str(em.get("backend"))],
            ["model", str(opts.get("model", opts.get("features", "-")))],
            ["K", f"{em['n_types']} (requested: {(em.get('em_options') or {}).get('n_types')})"],
            ["EM", f"{em['n_iter']} iteration(s), {'converged' if em['converged'] else 'stopped'}"],
            ["type floor", ", ".join(f"{k} {v}" for k, v in floor.items()) or "-"],
            ["regret estimator", f"{agg['estimator']}, base measure {agg.get('base_measure')}, "
                                 f"{agg.get('objective', 'paper')} objective"],
            ["bootstrap", f"{(agg.get('intervals') or {}).get('n_boot', 0)} replicates, seed "
                          f"{agg.get('random_state')}; regrets: studentised over prompts"],
            ["evaluation data", f"{ev.get('data')} ("
                                f"{'in-sample' if ev.get('in_sample') else 'held-out'})"],
            ["config file", str(em.get("config"))]]
    return rows


def warning_rows(story: dict[str, Any]) -> list[list[str]]:
    ident = story.get("identifiability") or {}
    rows = [["identifiability", f"{ident.get('verdict', '-')}: {ident.get('explanation', '')}"]]
    return rows + [[w["code"], w["message"]] for w in story["warnings"]]


#: Markdown syntax a data string must not carry: a link or image (`![x](http://...)` makes a
#: viewer fetch a remote image), code spans and table pipes. Backslash escapes render as the
#: character itself.
MD_SPECIAL = re.compile(r"([\\`\[\]()!|])")


def md_escape(text: str) -> str:
    """Data text safe in Markdown: HTML escaped (a label `<script>` stays text), link, image
    and code syntax and table pipes backslash-escaped, line breaks made spaces."""
    return MD_SPECIAL.sub(r"\\\1", html.escape(str(text))).replace("\r", " ").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(map(md_escape, header)) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(map(md_escape, r)) + " |" for r in rows], ""]


def markdown(story: dict[str, Any], em: dict[str, Any], agg: dict[str, Any],
             ev: dict[str, Any], images: dict[str, str]) -> str:
    """report.md: the same sections as the page, figures as linked files."""
    caps = captions(em, ev)
    lines = ["# pluralign fairness audit", "", *[f"- {md_escape(f)}" for f in findings(story)],
             "",
             "## Warnings and identifiability", "", *_md_table(["check", "message"],
                                                               warning_rows(story)),
             "## Definitions", "", *[f"- **{t}**: {d}" for t, d in DEFINITIONS], "",
             "## Every policy against every type", "",
             *_md_table(policy_header(ev), policy_rows(ev)),
             "## As served", "", md_escape(served_title(agg)), "",
             *(_md_table(*served_rows(agg)) if served_rows(agg) else [])]
    for title, header, rows in confusion_tables(ev):
        lines += [f"## Discovered types vs {md_escape(title)}", "", *_md_table(header, rows)]
    for title, header, rows in predictive_tables(ev):
        lines += [f"## Predictive personalization: {md_escape(title)}", "",
                  *_md_table(header, rows)]
    if table := distributional_table(ev):
        title, header, rows = table
        lines += [f"## Distributional alignment: {md_escape(title)}", "",
                  *_md_table(header, rows)]
    lines += ["## Run configuration", "", *_md_table(["setting", "value"],
                                                    config_rows(em, agg, ev)), "## Figures", ""]
    for name in FIGURES:
        lines += [f"![{TITLES[name]}]({images[name]})", "", f"*{md_escape(caps[name])}*", ""]
    return "\n".join(lines)
