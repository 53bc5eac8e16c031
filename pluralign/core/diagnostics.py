"""Warnings when a discovery is weak (DESIGN §4): the numbers a run prints can look confident
(an ARI of 1.0, posteriors near 1) when the data do not support the types. Each check returns
`{"code", "message"}` dictionaries; the CLI prints them, em.json / evaluation.json store them and
the report shows them. Every threshold is a named constant, documented here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Heterogeneity gain per annotator (nats) below which the types explain little: a typical
#: annotator's data favours the K-type model over one pooled policy by less than 10%.
SMALL_GAIN_PER_ANNOTATOR = 0.1
#: Mean normalised confidence (max_k gamma_hk - 1/K) / (1 - 1/K) below which posteriors are
#: called near uniform (0: every annotator uniform, 1: every annotator certain).
NEAR_UNIFORM_CONFIDENCE = 0.3
#: A type resting on fewer effective annotators (sum_h gamma_hk) than this is flagged.
FEW_ANNOTATORS = 10.0
#: In-sample gain per annotator above this many times the held-out gain: overconfident posteriors.
OVERFIT_RATIO = 2.0


#: Log-likelihood gain per annotation (nats) of the pooled fit over the reference policy below
#: which the fit learned nothing: the results would be the reference's, all ties and zeros.
NO_SIGNAL_PER_ANNOTATION = 1e-3


def warning(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}


def heterogeneity_warnings(gain: float, n_annotators: int, k: int,
                           heldout_gain: float | None = None,
                           heldout_annotators: int | None = None) -> list[dict[str, str]]:
    """The K-type model against one pooled policy (K = 1), in-sample and, when K selection
    held annotators out, out of sample."""
    if k < 2:
        return []
    per = gain / max(1, n_annotators)
    if gain <= 0:
        return [warning("no_heterogeneity", (
            f"K={k} fits no better than one pooled policy (gain {gain:.2f} nats over K=1): "
            "the data give no evidence of distinct types; treat the types, their ARI and "
            "their policies as arbitrary."))]
    out = []
    if per < SMALL_GAIN_PER_ANNOTATOR:
        out.append(warning("small_heterogeneity", (
            f"K={k} gains only {per:.3f} nats per annotator over one pooled policy (below "
            f"{SMALL_GAIN_PER_ANNOTATOR}): the types differ little on this data.")))
    if heldout_gain is not None and heldout_annotators:
        held = heldout_gain / heldout_annotators
        if held <= 0 or per > OVERFIT_RATIO * held:
            out.append(warning("overconfident_posteriors", (
                f"In-sample the types gain {per:.3f} nats per annotator over K=1, on held-out "
                f"annotators {held:.3f}: the fit is partly noise, so posteriors near 1 "
                "overstate how sure the assignments are.")))
    return out


def confidence_warnings(gamma: np.ndarray) -> list[dict[str, str]]:
    """Posteriors that hardly prefer any type cannot support assignments or an ARI."""
    k = gamma.shape[1]
    if k < 2 or gamma.shape[0] == 0:
        return []
    conf = float(((gamma.max(axis=1) - 1 / k) / (1 - 1 / k)).mean())
    if conf >= NEAR_UNIFORM_CONFIDENCE:
        return []
    return [warning("near_uniform_posteriors", (
        f"Posteriors are near uniform (mean max posterior {gamma.max(axis=1).mean():.2f} with "
        f"K={k}, normalised confidence {conf:.2f} < {NEAR_UNIFORM_CONFIDENCE}): the data cannot "
        "tell the types' annotators apart; assignments and ARI are unreliable."))]


def size_warnings(gamma: np.ndarray, names: Sequence[str] | None = None) -> list[dict[str, str]]:
    """Types whose policy rests on few annotators."""
    counts = gamma.sum(axis=0)
    names = names or [f"type_{j}" for j in range(gamma.shape[1])]
    return [warning("few_annotators", (
        f"{names[j]} rests on {c:.1f} effective annotators (< {FEW_ANNOTATORS:g}): its policy and "
        "its regrets are uncertain."))
        for j, c in enumerate(counts) if gamma.shape[1] > 1 and c < FEW_ANNOTATORS]


def split_warnings(train: Mapping[str, str], heldout: Mapping[str, str],
                   column: str = "label") -> list[dict[str, str]]:
    """Labelled groups that the held-out annotators miss: nothing is measured for them."""
    have = set(heldout.values())
    counts: dict[str, int] = {}
    for label in train.values():
        counts[label] = counts.get(label, 0) + 1
    return [warning("heldout_misses_group", (
        f"The held-out annotators include no one of {column} '{g}' ({n} in training): "
        "regrets and accuracies for that group are not measured."))
        for g, n in sorted(counts.items()) if g not in have]


def label_match_warnings(mapping: Mapping[str, int], labels: Sequence[str],
                         k: int) -> list[dict[str, str]]:
    """Labelled groups left without a discovered type of their own (more groups than types):
    their members are served by another group's policy."""
    missing = [g for g in sorted(set(labels)) if g not in mapping]
    if not missing:
        return []
    return [warning("unmatched_groups", (
        f"{len(set(labels))} labelled groups but {k} discovered types: "
        + ", ".join(f"'{g}'" for g in missing) + " matched no type of its own, so the type "
        "policies and their regrets do not represent it."))]


def pruning_notes(actions: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Every pruned or merged type, as a note (not a failure: the run fixed it)."""
    out = []
    for a in actions:
        what = (f"type_{a['types'][0]} of K={a['k']} pruned" if a["action"] == "pruned" else
                f"type_{a['types'][0]} and type_{a['types'][1]} of K={a['k']} merged")
        out.append(warning(f"type_{a['action']}", f"{what} ({a['reason']}); EM re-fitted with "
                                                 f"K={a['k'] - 1}."))
    return out


#: Largest spread (nats) of s_k - s_0 across an annotation's candidates at which the types are
#: said to score it alike: PL laws are unchanged by a constant shift, so they agree exactly.
TYPE_BLIND_TOL = 1e-9


def type_blind(logratios: np.ndarray) -> np.ndarray:
    """Per annotation ([n, M, K] log-ratios, NaN on padding): True when every type's policy
    scores its candidates alike, so an answer to it cannot tell the types apart."""
    diff = logratios - logratios[..., :1]
    spread = np.nanmax(diff, axis=1) - np.nanmin(diff, axis=1)  # [n, K]
    return np.nan_to_num(spread, nan=0.0).max(axis=1) <= TYPE_BLIND_TOL


def blind_data_warnings(blind: np.ndarray, what: str) -> list[dict[str, str]]:
    """New data the run's policies cannot tell types apart on (for onehot features: items
    never seen in training): the posteriors or information gains it yields are the priors' or
    zero, not a finding."""
    n = int(blind.sum())
    if n == 0:
        return []
    share = n / len(blind)
    return [warning("type_blind_data", (
        f"{n} of {len(blind)} {what} ({share:.0%}) are scored alike by every type's policy, so "
        "they say nothing about the type" + (": the results below are the priors"
                                            if share == 1 else "")
        + " (with onehot features: items the run never saw in training; give it features it "
          "can score, such as given or embedding)"))]


def signal_warnings(gain: float, n_annotations: int) -> list[dict[str, str]]:
    """The pooled (K = 1) fit against the reference policy: a fit that gains nothing learned
    nothing, and every regret, accuracy and ARI computed from it is an artefact."""
    per = gain / max(1, n_annotations)
    if per >= NO_SIGNAL_PER_ANNOTATION:
        return []
    return [warning("no_signal", (
        f"the fitted policy explains the rankings no better than the reference ({per:.2g} "
        "nats per annotation): nothing was learned, so the types, regrets and accuracies that "
        "follow are artefacts. Check the features (their scale and content), or that the "
        "rankings are not random"))]
