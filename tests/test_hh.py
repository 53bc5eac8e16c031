"""Real data: HH-RLHF relabeled as helpful vs harmless (skipped without ../shared)."""

from __future__ import annotations

import json

import pytest
from conftest import HH_FILE

pytestmark = pytest.mark.skipif(not HH_FILE.exists(), reason="../shared/data is absent")


def test_hh_ingests_with_auto_preset(tmp_path, cli):
    rc, out, err = cli("ingest", HH_FILE, "--out", tmp_path, "--preset", "auto")
    assert rc == 0, err
    r = json.loads((tmp_path / "report.json").read_text())
    assert (r["accepted"], r["annotators"]) == (2048, 256)
    assert r["identifiability"]["verdict"] == "repeated-pairwise"
    assert r["true_types"] == {"harmless": 944, "helpful": 1104}
    assert "repeated-pairwise" in out


def test_hh_empty_answers_are_kept_and_located(tmp_path):
    """Two HH responses are empty strings; a harmless rater prefers one to engaging."""
    from pluralign.ingest import ingest
    res = ingest([str(HH_FILE)])
    assert res.report["empty_responses"] == 2
    assert any("line 332" in w and "line 1437" in w for w in res.report["warnings"])
    refused = ingest([str(HH_FILE)], on_error="skip", empty_responses="reject")
    assert refused.report["rejected"]["by_reason"] == {"empty_response": 2}
