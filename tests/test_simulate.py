"""Simulated populations: the truth is recoverable, misspecification behaves as named, the text
flavour varies along its attributes, and simulate -> export -> ingest loses nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from pluralign.core.data import load
from pluralign.core.plackett_luce import log_prob
from pluralign.simulate import SimulationConfig, simulate
from pluralign.simulate.textbank import prompts


def _bayes_assignment(pop) -> tuple[list[str], list[int]]:
    """Each annotator's most likely type under the true rewards (the Bayes classifier)."""
    W = np.array([t["weights"] for t in pop.truth["types"]])
    ll: dict[str, np.ndarray] = {}
    for a in pop.records:
        x = np.array(a.features if a.features else a.metadata["attributes"], dtype=float)
        ll.setdefault(a.annotator_id, np.zeros(len(W)))
        ll[a.annotator_id] += [log_prob(x @ w, a.ranking) for w in W]
    ids = list(ll)
    return [pop.truth["annotators"][h]["type"] for h in ids], [int(np.argmax(ll[h])) for h in ids]


@pytest.mark.parametrize("flavour", ["feature", "text"])
def test_true_types_are_recoverable_from_rankings(flavour):
    pop = simulate(SimulationConfig(flavour=flavour, types=3, annotators=90, per_annotator=8,
                                    seed=1))
    truth, pred = _bayes_assignment(pop)
    assert adjusted_rand_score(truth, pred) > 0.8


def test_rankings_follow_the_type_reward():
    """The top choice has the highest reward far more often than chance (1/3)."""
    pop = simulate(SimulationConfig(types=1, annotators=200, per_annotator=5, seed=2))
    w = np.array(pop.truth["types"][0]["weights"])
    hits = [int(np.argmax(np.array(a.features) @ w)) == a.ranking[0] for a in pop.records]
    assert np.mean(hits) > 0.6


def test_random_annotators_ignore_rewards_and_mixed_switch_types():
    pop = simulate(SimulationConfig(types=2, annotators=200, per_annotator=10, seed=3,
                                    misspecify={"random": 0.5, "mixed": 0.25}))
    kinds = {h: v["kind"] for h, v in pop.truth["annotators"].items()}
    assert sum(k == "random" for k in kinds.values()) == 100
    W = {t["name"]: np.array(t["weights"]) for t in pop.truth["types"]}
    w0 = W["type_0"]
    rand = [a for a in pop.records if kinds[a.annotator_id] == "random"]
    hits = np.mean([int(np.argmax(np.array(a.features) @ w0)) == a.ranking[0] for a in rand])
    assert abs(hits - 1 / 3) < 0.05  # chance level over 1,000 annotations
    assert all(a.true_type == "random" for a in rand)
    used = {}
    for a in pop.records:
        if kinds[a.annotator_id] == "mixed":
            used.setdefault(a.annotator_id, set()).add(a.metadata["used_type"])
    assert sum(len(s) > 1 for s in used.values()) > 0.9 * len(used)


def test_partial_rankings_and_list_size_range():
    pop = simulate(SimulationConfig(annotators=30, list_size=(3, 5), ranking_length=1, seed=4))
    assert {a.m for a in pop.records} == {3, 4, 5}
    assert {a.L for a in pop.records} == {1}


def test_text_flavour_prompts_and_attributes():
    assert len({p for _, p, _ in prompts()}) >= 200
    pop = simulate(SimulationConfig(flavour="text", annotators=60, per_annotator=8, seed=5))
    assert len({a.prompt for a in pop.records}) >= 200
    rows = [(x, r) for a in pop.records for x, r in zip(a.metadata["attributes"], a.responses,
                                                         strict=True)]
    length = {v: np.mean([len(r.split()) for x, r in rows if x[0] == v]) for v in (0, 1)}
    assert length[1] > 2 * length[0]
    assert all(("\n- " in r) == bool(x[2]) for x, r in rows)          # bullets
    assert np.mean(["!" in r for x, r in rows if x[4]]) == 1.0         # enthusiasm
    assert np.mean(["!" in r for x, r in rows if not x[4]]) == 0.0
    formal = ("it is advisable", "one should", "you may wish", "it is worth making sure")
    assert all(any(f in r.lower() for f in formal) == bool(x[1]) for x, r in rows)
    assert [t["name"] for t in pop.truth["types"]] == ["concise", "thorough", "friendly"]


def test_config_validation_names_the_problem():
    with pytest.raises(ValueError, match="flavour"):
        SimulationConfig(flavour="audio")
    with pytest.raises(ValueError, match="unknown misspecification"):
        SimulationConfig(misspecify={"lazy": 0.1})
    with pytest.raises(ValueError, match="prior"):
        SimulationConfig(types=2, prior=(0.9, 0.2))
    with pytest.raises(ValueError, match="list_size"):
        SimulationConfig(list_size=(1, 3))


def test_same_seed_same_population():
    a = simulate(SimulationConfig(flavour="text", annotators=10, seed=7)).records
    b = simulate(SimulationConfig(flavour="text", annotators=10, seed=7)).records
    assert [x.to_dict() for x in a] == [x.to_dict() for x in b]


@pytest.mark.parametrize("flavour", ["feature", "text"])
def test_round_trip_simulate_export_ingest_preserves_every_annotation(tmp_path, cli, flavour):
    rc, _, err = cli("simulate", "--out", tmp_path / "sim", "--flavour", flavour, "--types", 2,
                     "--annotators", 20, "--per-annotator", 5, "--list-size", "2-4",
                     "--ranking-length", 2, "--misspecify", "random=0.1,mixed=0.1",
                     "--seed", 3)
    assert rc == 0, err
    assert cli("export", tmp_path / "sim", "--out", tmp_path / "sim.jsonl")[0] == 0
    rc, _, err = cli("ingest", tmp_path / "sim.jsonl", "--out", tmp_path / "ing")
    assert rc == 0, err
    original, again = load(tmp_path / "sim"), load(tmp_path / "ing")
    assert [a.to_dict() for a in again] == [a.to_dict() for a in original]
    assert again.fingerprint() == original.fingerprint()
    truth = json.loads((tmp_path / "sim" / "truth.json").read_text())
    assert {a.annotator_id: a.true_type for a in original} == \
        {h: v["type"] for h, v in truth["annotators"].items()}


def test_blend_annotators_rank_by_their_own_mix_of_the_type_rewards():
    pop = simulate(SimulationConfig(types=3, annotators=40, per_annotator=60, seed=2,
                                    misspecify={"blend": 0.5}, temperature=0.5))
    blends = {h: a for h, a in pop.truth["annotators"].items() if a["kind"] == "blend"}
    assert len(blends) == 20 and all(a["type"] == "blend" for a in blends.values())
    assert all(abs(sum(a["blend"]) - 1) < 1e-5 for a in blends.values())
    w = np.array([t["weights"] for t in pop.truth["types"]])
    wins = 0
    for h, a in blends.items():  # their own mix explains their rankings better than any type
        rows = [r for r in pop.records if r.annotator_id == h]
        own = np.asarray(a["blend"]) @ w

        def ll(weights, rows=rows):
            return sum(log_prob(np.asarray(r.features) @ weights / 0.5, r.ranking) for r in rows)
        wins += ll(own) > max(ll(w[k]) for k in range(3))
    assert wins >= 18
