"""The ingestion report: counts that reconcile, distributions, and the identifiability verdict."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from pluralign.core import identifiability
from pluralign.core.data import Annotation


def describe(records: Sequence[Annotation]) -> dict[str, Any]:
    """Distributions of a set of annotations: annotators, m, L, labels, features."""
    per_annotator = Counter(a.annotator_id for a in records)
    counts = np.array(sorted(per_annotator.values()) or [0])
    return {
        "annotators": len(per_annotator),
        "annotations_per_annotator": {
            "min": int(counts.min()), "median": float(np.median(counts)),
            "mean": round(float(counts.mean()), 3), "max": int(counts.max()),
            "histogram": _histogram(per_annotator.values()),
        },
        "list_size_histogram": _histogram(a.m for a in records),
        "ranking_length_histogram": _histogram(a.L for a in records),
        "full_rankings": sum(a.L >= a.m - 1 for a in records),
        "with_features": sum(a.features is not None for a in records),
        "true_types": _histogram(a.true_type for a in records if a.true_type is not None),
        "groups": _histogram(a.group for a in records if a.group is not None),
        "splits": _histogram(a.split for a in records if a.split is not None),
        "identifiability": identifiability.assess(records),
    }


def _histogram(values) -> dict[str, int]:
    c = Counter(values)
    return {str(k): c[k] for k in sorted(c)}


def format_report(report: dict[str, Any]) -> str:
    """The report as a short text for a person."""
    ident = report["identifiability"]
    apa = report["annotations_per_annotator"]
    rej = report["rejected"]
    lines = [
        f"read {report['read']}  accepted {report['accepted']}  rejected {rej['total']}  "
        f"duplicates {report['duplicates']}",
    ]
    for reason, n in rej["by_reason"].items():
        lines.append(f"  rejected for {reason}: {n}")
    if report.get("ratings"):
        r = report["ratings"]
        lines.append(f"ratings {r['rows']}: in lists {r['in_lists']}, left over {r['left_over']} "
                     f"(alone, or tied with every rating left), in duplicate lists "
                     f"{r['duplicate']}, rejected {r['rejected']}")
    lines += [
        f"annotators {report['annotators']}  (annotations each: min {apa['min']}, "
        f"median {apa['median']:g}, max {apa['max']})",
        f"list size m: {_fmt_hist(report['list_size_histogram'])}",
        f"ranking length L: {_fmt_hist(report['ranking_length_histogram'])}",
    ]
    if report.get("ties_truncated"):
        lines.append(f"rankings truncated at a tie: {report['ties_truncated']}")
    if report["true_types"]:
        lines.append(f"true types: {_fmt_hist(report['true_types'])}")
    lines.append(f"identifiability: {ident['verdict']} - {ident['explanation']}")
    for w in report.get("warnings", []):
        lines.append(f"WARNING: {w}")
    return "\n".join(lines)


def _fmt_hist(h: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in h.items()) or "-"
