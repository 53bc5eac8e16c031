"""The fairness audit report (DESIGN §9, last stage): report.json, report.md and a
self-contained report.html (plots embedded as PNG data URIs), from what a run folder holds:
em.json, aggregate.json and evaluation.json.

The page tells one story: which type the pooled policy (plain DPO) serves worst and by how
much, what the min-max regret mixture changes, and how sure the type assignments are.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from pluralign.io import write_json, write_text, write_with

FIGURES = ("em_objective", "confidence", "regret_heatmap", "accuracy", "mmra_weights",
           "personalization")
CAPTIONS = {
    "em_objective": "EM objective (log-likelihood minus log-prior) per iteration",
    "confidence": "Posterior confidence of each annotator's type assignment",
    "regret_heatmap": "Regret of serving each type (row) with each policy (column)",
    "accuracy": "Pairwise accuracy of every policy on each type's held-out rankings",
    "mmra_weights": "Min-max regret mixture: probability of each type policy",
    "personalization": "Type-assignment accuracy after a new annotator's first n annotations",
}


def load_parts(run: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """em.json, aggregate.json, evaluation.json of a run; names the missing step if any."""
    parts = []
    for name, step in (("em.json", "em"), ("aggregate.json", "aggregate"),
                       ("evaluation.json", "evaluate")):
        path = run / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `pluralign {step} --run {run}` "
                                    "first")
        parts.append(json.loads(path.read_text()))
    return parts[0], parts[1], parts[2]


def summary(em: dict[str, Any], agg: dict[str, Any], ev: dict[str, Any]) -> dict[str, Any]:
    """The report's findings as plain JSON: the fairness story in numbers."""
    regret = ev["regret"]
    types = regret["types"]
    matrix = np.asarray(regret["matrix"])
    col = {name: j for j, name in enumerate(ev["policies"])}
    pooled = col.get("pooled")
    story: dict[str, Any] = {
        "types": len(types), "priors": em["priors"], "estimator": regret["estimator"],
        "in_sample": ev.get("in_sample", False),
        "mmra": {"weights": agg["weights"], "max_regret": regret["max_regret"]["mmra"],
                 "binding": [t for t, b in zip(types, agg["binding"], strict=True) if b]},
        "max_regret": regret["max_regret"], "gap": regret["gap"]}
    if pooled is not None:
        worst = int(matrix[:, pooled].argmax())
        story["pooled"] = {"worst_type": types[worst],
                           "worst_regret": float(matrix[worst, pooled]),
                           "best_type": types[int(matrix[:, pooled].argmin())],
                           "gap": regret["gap"]["pooled"]}
        story["mmra"]["reduction"] = story["pooled"]["worst_regret"] - story["mmra"]["max_regret"]
    fair = min(ev["policies"], key=lambda p: regret["max_regret"][p])
    story["fairest_policy"] = {"name": fair, "max_regret": regret["max_regret"][fair]}
    if "discovery" in ev:
        story["discovery"] = {k: ev["discovery"][k] for k in ("ari", "nmi", "label_to_type")}
    curve = ev["personalization"]["curve"]
    reach = next((c["annotations"] for c in curve if c["accuracy"] >= 0.9), None)
    story["personalization"] = {"annotations_for_90_percent": reach,
                                "final_accuracy": curve[-1]["accuracy"] if curve else None}
    return story


def findings(story: dict[str, Any]) -> list[str]:
    """The story in sentences, for the top of the page."""
    out = []
    mmra = story["mmra"]
    if "pooled" in story:
        p = story["pooled"]
        out.append(f"The pooled policy (one DPO fit to everyone) serves {p['worst_type']} worst: "
                   f"its regret there is {p['worst_regret']:.3f}, against {p['best_type']} "
                   f"best served (gap {p['gap']:.3f}).")
        out.append(f"The min-max regret mixture lowers the worst type's regret to "
                   f"{mmra['max_regret']:.3f} ({mmra['reduction']:+.3f} versus pooled); "
                   f"binding types: {', '.join(mmra['binding'])}.")
    weights = ", ".join(f"type_{j} {w:.2f}" for j, w in enumerate(mmra["weights"]))
    out.append(f"Mixture weights: {weights}.")
    fair = story["fairest_policy"]
    if fair["name"] != "mmra":
        out.append(f"Lowest worst-type regret among all policies: {fair['name']} "
                   f"({fair['max_regret']:.3f}).")
    if "discovery" in story:
        d = story["discovery"]
        pairs = ", ".join(f"{label} = type_{k}" for label, k in d["label_to_type"].items())
        out.append(f"Type discovery against the known labels: ARI {d['ari']:.3f}, "
                   f"NMI {d['nmi']:.3f} (known label = discovered type: {pairs}).")
    reach = story["personalization"]["annotations_for_90_percent"]
    if reach is not None:
        out.append(f"A new annotator is assigned to the right type with 90% accuracy after "
                   f"{reach} annotation(s), using the trained policies only.")
    if story["in_sample"]:
        out.append("Note: evaluated on the training annotations (in-sample); pass held-out "
                   "data to `pluralign evaluate --data` for an honest estimate.")
    return out


# -- figures --------------------------------------------------------------------------------
def figures(em: dict[str, Any], agg: dict[str, Any], ev: dict[str, Any]) -> dict[str, bytes]:
    """PNG bytes of every figure, drawn with matplotlib's Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    drawers = {"em_objective": _em_objective, "confidence": _confidence,
               "regret_heatmap": _regret_heatmap, "accuracy": _accuracy,
               "mmra_weights": _mmra_weights, "personalization": _personalization}
    out = {}
    for name in FIGURES:
        fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
        drawers[name](ax, em, agg, ev)
        ax.set_title(CAPTIONS[name], fontsize=10)
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
    ax.set_xlabel("max posterior probability")
    ax.set_ylabel("annotators")


def _regret_heatmap(ax, em, agg, ev) -> None:
    r = np.asarray(ev["regret"]["matrix"])
    image = ax.imshow(r, cmap="Reds", aspect="auto")
    ax.set_xticks(range(r.shape[1]), ev["policies"], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(r.shape[0]), ev["regret"]["types"], fontsize=8)
    for (i, j), v in np.ndenumerate(r):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
    ax.figure.colorbar(image, ax=ax, label="regret")


def _accuracy(ax, em, agg, ev) -> None:
    table = ev["metrics"]["pairwise"]
    groups, policies = list(table), ev["policies"]
    width = 0.8 / len(groups)
    for g, group in enumerate(groups):
        ax.bar(np.arange(len(policies)) + g * width, [table[group][p] for p in policies],
               width, label=group)
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
        ax.plot([c["annotations"] for c in curve], [c["accuracy"] for c in curve], marker="o")
        ax.set_xscale("log", base=2)
    ax.set_xlabel("annotations seen")
    ax.set_ylabel("assignment accuracy")
    ax.set_ylim(0, 1.02)


# -- documents ------------------------------------------------------------------------------
def policy_rows(ev: dict[str, Any]) -> list[list[str]]:
    """One row per policy: max regret, gap, worst-served group and its pairwise accuracy, and
    the regret of each type."""
    r = np.asarray(ev["regret"]["matrix"])
    pair = ev["spread"]["pairwise"]
    rows = []
    for j, name in enumerate(ev["policies"]):
        rows.append([name, f"{ev['regret']['max_regret'][name]:.3f}",
                     f"{ev['regret']['gap'][name]:.3f}", pair[name]["worst_group"],
                     f"{pair[name]['worst']:.3f}", *[f"{v:.3f}" for v in r[:, j]]])
    return rows


def policy_header(ev: dict[str, Any]) -> list[str]:
    return ["policy", "max regret", "regret gap", "worst-served group", "its pairwise acc.",
            *[f"regret {t}" for t in ev["regret"]["types"]]]


def markdown(story: dict[str, Any], ev: dict[str, Any], images: dict[str, str]) -> str:
    """report.md: findings, the policy table, and the figures as linked files."""
    lines = ["# pluralign fairness audit", "", *[f"- {f}" for f in findings(story)], "",
             "## Every policy against every type", ""]
    header = policy_header(ev)
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in policy_rows(ev)]
    lines += ["", "## Figures", ""]
    for name in FIGURES:
        lines += [f"![{CAPTIONS[name]}]({images[name]})", ""]
    return "\n".join(lines)


def page(story: dict[str, Any], ev: dict[str, Any], pngs: dict[str, bytes]) -> str:
    """report.html: one file, every image inline, readable without anything else."""
    esc = html.escape
    items = "".join(f"<li>{esc(f)}</li>" for f in findings(story))
    head = "".join(f"<th>{esc(h)}</th>" for h in policy_header(ev))
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
                   for row in policy_rows(ev))
    figs = "".join(
        f'<figure><img alt="{esc(CAPTIONS[n])}" src="data:image/png;base64,'
        f'{base64.b64encode(pngs[n]).decode()}"><figcaption>{esc(CAPTIONS[n])}</figcaption>'
        "</figure>" for n in FIGURES)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>pluralign fairness audit</title>
<style>
body {{ font-family: sans-serif; max-width: 1000px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.85em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
figure {{ display: inline-block; margin: 0.5em; }} img {{ max-width: 100%; }}
figcaption {{ font-size: 0.85em; color: #555; }}
</style></head><body>
<h1>pluralign fairness audit</h1>
<h2>Findings</h2><ul>{items}</ul>
<h2>Every policy against every type</h2>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<h2>Figures</h2>{figs}
</body></html>
"""


def write_report(run: Path) -> list[Path]:
    """Write report.json, report.md (figures in report_files/) and report.html into `run`."""
    em, agg, ev = load_parts(run)
    story = summary(em, agg, ev)
    pngs = figures(em, agg, ev)
    files = run / "report_files"
    files.mkdir(exist_ok=True)
    for name, data in pngs.items():
        write_with(files / f"{name}.png", lambda tmp, data=data: tmp.write_bytes(data))
    write_json(run / "report.json", {"findings": findings(story), **story,
                                     "figures": {n: f"report_files/{n}.png" for n in FIGURES}})
    write_text(run / "report.md", markdown(story, ev, {n: f"report_files/{n}.png"
                                                       for n in FIGURES}))
    write_text(run / "report.html", page(story, ev, pngs))
    return [run / "report.html", run / "report.md", run / "report.json"]


# -- checking the page in a browser ---------------------------------------------------------
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync")


def find_chromium() -> str | None:
    """A Chromium or Chrome executable on PATH, or None."""
    import shutil
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def browser_check(report_html: str | Path, screenshot: str | Path | None = None,
                  chromium: str | None = None, timeout: float = 120) -> tuple[int, int]:
    """Open the page in headless Chromium and count (images loaded, images): a copy of the page
    gets a script that writes the count into its title, which --dump-dom prints. Optionally
    saves a full-page screenshot of the unmodified report."""
    import re
    import subprocess
    import tempfile
    exe = chromium or find_chromium()
    if exe is None:
        raise FileNotFoundError("no Chromium found (install chromium to check the report)")
    report_html = Path(report_html)
    probe = ("<script>window.addEventListener('load', () => { const i = [...document.images];"
             " document.title = 'IMAGES ' + i.filter(x => x.complete && x.naturalWidth > 0)"
             ".length + '/' + i.length; });</script></body>")
    with tempfile.TemporaryDirectory() as tmp:
        page_copy = Path(tmp) / "probe.html"
        page_copy.write_text(report_html.read_text().replace("</body>", probe))
        flags = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp}/profile",
                 "--virtual-time-budget=10000"]
        dom = subprocess.run([*flags, "--dump-dom", page_copy.as_uri()], capture_output=True,
                             text=True, timeout=timeout).stdout
        if screenshot is not None:
            shot = Path(screenshot).resolve()
            subprocess.run([*flags, "--window-size=1100,3400", f"--screenshot={shot}",
                            report_html.resolve().as_uri()], capture_output=True,
                           timeout=timeout, check=True)
    found = re.search(r"IMAGES (\d+)/(\d+)", dom)
    if not found:
        raise RuntimeError(f"Chromium did not report on {report_html}: {dom[:300]!r}")
    return int(found.group(1)), int(found.group(2))
