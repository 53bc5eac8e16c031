"""The ratings layout: (rater, item, rating) rows of items that share a prompt become lists;
every rating is accounted for, lists never tie, and the lists do not depend on row order."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from pluralign.ingest import IngestError, ingest
from pluralign.ingest.ratings import RatingsOptions, sample_lists

PROMPT = "How likely would you read this book?"


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def ratings_rows(n_raters: int = 30, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for h in range(n_raters):
        for b in rng.choice(40, int(rng.integers(1, 12)), replace=False):
            rows.append({"annotator_id": f"r{h}", "prompt": PROMPT, "response": f"book {b}",
                         "rating": int(rng.integers(1, 6))})
    return rows


def test_sampled_lists_are_distinct_rated_and_use_each_rating_once():
    rng = np.random.default_rng(0)
    for trial in range(300):
        ratings = rng.integers(1, int(rng.integers(2, 7)), size=int(rng.integers(1, 25)))
        size = int(rng.integers(2, 6))
        lists, left = sample_lists(ratings.tolist(), size, trial)
        used = [i for lst in lists for i in lst] + left
        assert sorted(used) == list(range(len(ratings)))  # each rating exactly once
        for lst in lists:
            values = ratings[lst]
            assert 2 <= len(lst) <= size and len(set(values)) == len(values)  # never a tie
        assert len(set(ratings[left])) <= 1  # only equal ratings (no preference) are left
        if len(set(ratings)) >= 2:
            assert lists
    assert sample_lists([3, 1, 2], 4, 5) == sample_lists([3, 1, 2], 4, 5)


def test_every_rating_is_accounted_for(tmp_path):
    rows = ratings_rows()
    rows += [{"annotator_id": "bad", "prompt": PROMPT, "response": "book 1", "rating": "lots"},
             {"annotator_id": "tied", "prompt": PROMPT, "response": "book 1", "rating": 3},
             {"annotator_id": "tied", "prompt": PROMPT, "response": "book 2", "rating": 3}]
    path = write_csv(tmp_path / "books.csv", rows)
    result = ingest([str(path)], on_error="skip", ratings=RatingsOptions(list_size=3))
    r = result.report
    assert r["files"][0]["preset"] == "ratings"
    assert r["ratings"]["rows"] == len(rows)
    assert r["ratings"]["in_lists"] == sum(a.m for a in result.records)
    assert r["ratings"]["rows"] == (r["ratings"]["in_lists"] + r["ratings"]["left_over"] +
                                    r["ratings"]["duplicate"] + r["ratings"]["rejected"])
    assert r["ratings"]["rejected"] == 1 and r["read"] == r["accepted"] + r["rejected"]["total"]
    for a in result.records:
        assert a.m <= 3 and a.L == a.m  # distinct ratings: full rankings
        assert sorted(a.metadata["ratings"], reverse=True) == [a.metadata["ratings"][i]
                                                                for i in a.ranking]
    with pytest.raises(IngestError, match=r"row 5\d*.*field 'rating'|field 'rating'"):
        ingest([str(path)])


def test_lists_do_not_depend_on_row_order_and_follow_the_seed(tmp_path):
    rows = ratings_rows(seed=4)
    a = ingest([str(write_csv(tmp_path / "a.csv", rows))])
    shuffled = [rows[i] for i in np.random.default_rng(1).permutation(len(rows))]
    b = ingest([str(write_csv(tmp_path / "b.csv", shuffled))])

    def lists(result):
        return sorted((x.annotator_id, tuple(sorted(x.responses))) for x in result.records)
    assert lists(a) == lists(b)
    c = ingest([str(tmp_path / "a.csv")], ratings=RatingsOptions(ratings_seed=9))
    assert lists(c) != lists(a)


def test_rows_without_a_prompt_take_the_default_prompt(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "prompt"} for r in ratings_rows(5)]
    path = write_csv(tmp_path / "books.csv", rows)
    with pytest.raises(IngestError, match="'prompt'"):
        ingest([str(path)], preset="ratings")
    result = ingest([str(path)], preset="ratings",
                    ratings=RatingsOptions(default_prompt=PROMPT))
    assert {a.prompt for a in result.records} == {PROMPT}
