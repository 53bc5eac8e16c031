"""The identifiability verdict follows DESIGN §2 on constructed datasets."""

from __future__ import annotations

import numpy as np

from pluralign.core.data import Annotation
from pluralign.core.identifiability import assess


def _ann(h: str, m: int, L: int) -> Annotation:  # noqa: N803
    return Annotation(h, "p", [f"r{i}" for i in range(m)], list(range(L)))


def test_one_pair_per_annotator_is_not_identifiable():
    v = assess([_ann(f"h{i}", 2, 2) for i in range(50)])
    assert v["verdict"] == "not-identifiable" and "infinitely many" in v["explanation"]


def test_several_pairs_per_annotator_are_repeated_pairwise():
    assert assess([_ann(f"h{i % 10}", 2, 2) for i in range(50)])["verdict"] == \
        "repeated-pairwise"


def test_rankings_and_top1_of_three_identify():
    assert assess([_ann(f"h{i}", 3, 3) for i in range(5)])["verdict"] == "rankings"
    assert assess([_ann(f"h{i}", 4, 1) for i in range(5)])["verdict"] == "rankings"


def test_verdict_uses_the_share_of_annotators():
    few_ranked = [_ann(f"h{i}", 2, 2) for i in range(8)] + [_ann("h8", 3, 3), _ann("h9", 3, 3)]
    assert assess(few_ranked)["verdict"] == "not-identifiable"
    assert assess([])["verdict"] == "not-identifiable"


def test_annotations_and_plain_lists_give_one_report():
    """An Annotations (its cached codes), a list and a one-pass generator give one report,
    whose counts are those of the records: annotators, rankings, shares, on a mixed dataset."""
    from pluralign.core.data import Annotations
    rng = np.random.default_rng(0)
    records = [_ann(f"h{rng.integers(12)}", int(rng.integers(2, 5)), 1 + int(rng.integers(2)))
               for _ in range(40)]
    expected = assess(iter(records))  # a generator is read once
    assert assess(Annotations(records)) == expected
    ranked = {a.annotator_id for a in records if a.m >= 3}
    assert expected["annotators"] == len({a.annotator_id for a in records})
    assert expected["annotations_with_m_ge_3"] == sum(a.m >= 3 for a in records)
    assert expected["share_annotators_with_ranking"] == round(
        len(ranked) / expected["annotators"], 4)
