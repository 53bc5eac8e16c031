"""Can this data identify a mixture of annotator types? (DESIGN §2, Chidambaram et al.)

One binary comparison per annotator cannot identify a mixture, even with infinitely many
annotators: a 50/50 mix of opposite tastes looks like indifference. A ranking over m >= 3
responses (full, partial, or only the top-1) identifies it; several varied comparisons by the
same annotator identify that annotator. The verdict summarises which regime a dataset is in.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from pluralign.core.data import Annotation, Annotations

RANKINGS = "rankings"
REPEATED_PAIRWISE = "repeated-pairwise"
NOT_IDENTIFIABLE = "not-identifiable"
VERDICTS = (RANKINGS, REPEATED_PAIRWISE, NOT_IDENTIFIABLE)

#: Share of annotators that must carry identifying information for a verdict to hold.
MIN_SHARE = 0.5


#: A judgement over m >= 3 responses (L >= 2, or a top-1 of m >= 3) identifies types.
RANKING_MIN_M = 3


def assess(records: Iterable[Annotation]) -> dict[str, Any]:
    """Verdict, explanation and the shares it rests on, for a set of annotations."""
    data = records if isinstance(records, Annotations) else Annotations(records)
    codes, ids = data.annotator_codes()  # cached on an Annotations: EM asks for them anyway
    n = len(ids)
    sizes = data.sizes()
    rank = sizes >= RANKING_MIN_M
    per_annotator = np.bincount(codes, minlength=n)
    ranked = np.bincount(codes[rank], minlength=n) > 0
    n_rank_annotations = int(rank.sum())
    share_ranked = float(ranked.sum()) / n if n else 0.0
    share_repeated = float((per_annotator >= 2).sum()) / n if n else 0.0
    if n and share_ranked >= MIN_SHARE:
        verdict = RANKINGS
    elif n and share_repeated >= MIN_SHARE:
        verdict = REPEATED_PAIRWISE
    else:
        verdict = NOT_IDENTIFIABLE
    return {
        "verdict": verdict,
        "explanation": _explain(verdict, share_ranked, share_repeated),
        "annotators": n,
        "annotations_with_m_ge_3": n_rank_annotations,
        "share_annotators_with_ranking": round(share_ranked, 4),
        "share_annotators_with_2plus": round(share_repeated, 4),
        "min_share": MIN_SHARE,
    }


def _explain(verdict: str, share_ranked: float, share_repeated: float) -> str:
    pct_r, pct_rep = f"{100 * share_ranked:.0f}%", f"{100 * share_repeated:.0f}%"
    if verdict == RANKINGS:
        return (f"{pct_r} of annotators ranked 3 or more responses at least once; rankings over "
                ">= 3 responses (even partial or top-1) make the mixture of annotator types "
                "identifiable.")
    if verdict == REPEATED_PAIRWISE:
        return (f"Only pairwise comparisons, but {pct_rep} of annotators gave two or more; "
                "repeated varied comparisons by the same annotator identify that annotator's "
                "type, given enough of them each.")
    return (f"Only {pct_r} of annotators ranked 3+ responses and only {pct_rep} gave two or more "
            "judgements: with one binary comparison per annotator a mixture of types is not "
            "identifiable, even with infinitely many annotators (a 50/50 mix of opposite tastes "
            "looks like indifference). Collect rankings over 3+ responses or several judgements "
            "per annotator.")
