"""The identifiability verdict follows DESIGN §2 on constructed datasets."""

from __future__ import annotations

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
