"""Property: on any mix of good, duplicate and bad rows, the counts reconcile exactly."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pluralign.ingest import ingest

BAD_KINDS = {
    "missing_field": lambda r: {k: v for k, v in r.items() if k != "ranking"},
    "wrong_type": lambda r: {**r, "ranking": "best"},
    "ranking_out_of_range": lambda r: {**r, "ranking": [len(r["responses"])]},
    "repeated_index": lambda r: {**r, "ranking": [0, 0]},
    "too_few_responses": lambda r: {**r, "responses": ["x"], "ranking": [0]},
    "empty_response": lambda r: {**r, "responses": [None] + r["responses"][1:]},
    "non_finite": lambda r: {**r, "features": [[float("inf")]] * len(r["responses"])},
    "invalid_json": lambda r: json.dumps(r)[:-5],
    "undecodable": lambda r: json.dumps(r).encode().replace(b"{", b"{\xff", 1),
}


@st.composite
def good_rows(draw):
    m = draw(st.integers(2, 5))
    ranking = draw(st.permutations(range(m)))[: draw(st.integers(1, m))]
    return {"annotator_id": f"w{draw(st.integers(0, 4))}",
            "prompt": f"prompt {draw(st.integers(0, 3))}",
            "responses": [f"response {i}" for i in range(m)], "ranking": list(ranking)}


rows_strategy = st.lists(
    st.tuples(good_rows(), st.one_of(st.none(), st.sampled_from(sorted(BAD_KINDS)))),
    min_size=1, max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows_strategy)
def test_counts_reconcile_on_random_mixes(rows):
    lines, good_keys, bad = [], [], {}
    for row, kind in rows:
        if kind is None:
            lines.append(json.dumps(row).encode())
            good_keys.append(json.dumps([row["annotator_id"], row["prompt"], row["responses"],
                                         row["ranking"]]))
        else:
            value = BAD_KINDS[kind](row)
            lines.append(value if isinstance(value, bytes) else
                         (value if isinstance(value, str) else json.dumps(value)).encode())
            bad[kind] = bad.get(kind, 0) + 1
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "mix.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        if not good_keys:
            return  # nothing to accept: covered by the no-data error elsewhere
        result = ingest([str(path)], on_error="skip")
    r = result.report
    assert r["read"] == len(rows) == r["accepted"] + r["rejected"]["total"] + r["duplicates"]
    assert r["accepted"] == len(set(good_keys))
    assert r["duplicates"] == len(good_keys) - len(set(good_keys))
    assert r["rejected"]["by_reason"] == dict(sorted(bad.items()))
    assert len(result.rejects) == r["rejected"]["total"]
