"""Personalization: the information gain equals the Bayes-posterior entropy drop; `assign`
matches the EM posteriors' accuracy on new annotators; questions chosen by `suggest` find a
simulated annotator's type with fewer answers than random questions; the CLI commands."""

from __future__ import annotations

import numpy as np
import pytest

from pluralign.core.data import Annotations
from pluralign.personalize.serving import answer_logprobs, information_gain


def test_information_gain_is_the_expected_entropy_drop():
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(4, 3))
    prior = np.array([0.5, 0.3, 0.2])
    logp, answers = answer_logprobs(rewards, 4)
    assert len(answers) == 24 and np.allclose(np.exp(logp).sum(0), 1.0)  # a law per type

    def entropy(p):
        return -(p * np.log(p)).sum()

    drop = entropy(prior)
    for a in range(len(answers)):
        joint = prior * np.exp(logp[a])
        drop -= joint.sum() * entropy(joint / joint.sum())
    assert information_gain(rewards, prior, 4) == pytest.approx(drop)
    assert information_gain(rewards, np.array([1.0, 0.0, 0.0]), 4) == pytest.approx(0.0)
    top1, _ = answer_logprobs(rewards, 1)
    assert top1.shape == (4, 3) and information_gain(rewards, prior, 1) < drop


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A linear run on 150 simulated annotators of 3 types, 60 held out, truth known."""
    import json

    from pluralign.cli import main
    from pluralign.core.data import load
    from pluralign.em.fitted import load_run
    root = tmp_path_factory.mktemp("personal")
    common = ["--types", "3", "--seed", "8", "--prior", "0.5,0.3,0.2"]
    main(["simulate", "--out", str(root / "train"), "--annotators", "150", *common])
    main(["simulate", "--out", str(root / "new"), "--annotators", "60", "--per-annotator",
          "10", *common])
    main(["em", "--data", str(root / "train"), "--out", str(root / "run"), "--types", "3"])
    truth = json.loads((root / "train" / "truth.json").read_text())
    return root, load_run(root / "run"), load(root / "train"), load(root / "new"), truth


def _accuracy(gamma, ids, data, mapping):
    label = {a.annotator_id: a.true_type for a in data}
    return float(np.mean([mapping[label[h]] == g.argmax() for h, g in
                          zip(ids, gamma, strict=True)]))


def test_assign_matches_em_posteriors_and_suggest_beats_random(world):
    from pluralign.personalize.serving import assign
    from pluralign.personalize.sessions import session_accuracy, true_rewards
    from pluralign.stages.evaluate import match_labels
    root, run, train, new, truth = world
    label = {a.annotator_id: a.true_type for a in train}
    mapping = match_labels([label[h] for h in run.annotator_ids],
                           run.posteriors.argmax(1), 3)
    em_acc = _accuracy(run.posteriors, run.annotator_ids, train, mapping)
    gamma, ids = assign(run, new)
    new_acc = _accuracy(gamma, ids, new, mapping)
    # far above chance (0.5: always the largest type), and as good on new annotators
    assert em_acc >= 0.9 and new_acc >= max(0.9, em_acc - 0.05), (new_acc, em_acc)

    pool = Annotations(list({a.content_key(False): a for a in new}.values())[:120])
    names = [t["name"] for t in truth["types"]]
    w = np.array([t["weights"] for t in truth["types"]])
    people = np.random.default_rng(1).integers(0, 3, size=60)
    true_r = true_rewards(pool, w, people)
    targets = [mapping[names[p]] for p in people]
    smart = session_accuracy(run, pool, true_r, targets, 6, "suggest", seed=2)
    rand = session_accuracy(run, pool, true_r, targets, 6, "random", seed=2)
    assert smart.mean() > rand.mean() and smart[-1] >= rand[-1]


def test_cli_assign_suggest_and_generate_errors(world, cli):
    root = world[0]
    rc, out, _ = cli("assign", "--run", root / "run", "--data", root / "new")
    assert rc == 0 and out.splitlines()[0].startswith("annotator_id,type,confidence")
    assert len(out.splitlines()) == 61
    from pluralign.core.data import load
    rows = root / "new.jsonl"  # the same annotations as a file ingest reads: the same answer
    load(root / "new").to_jsonl(rows)
    assert cli("assign", "--run", root / "run", "--data", rows)[1] == out
    rc, _, err = cli("assign", "--run", root / "run", "--data", root / "new-typo.jsonl")
    assert rc == 2 and "new-typo.jsonl: not a file or folder" in err
    rc, out, _ = cli("suggest", "--run", root / "run", "--annotator", "nobody",
                     "--candidates", root / "new", "--top", "3")
    assert cli("suggest", "--run", root / "run", "--annotator", "nobody", "--candidates",
               rows, "--top", "3", "--answers", rows)[0] == 0
    lines = out.splitlines()
    assert rc == 0 and lines[0].startswith("current posterior") and len(lines) == 4
    gains = [float(x.split()[0]) for x in lines[1:]]
    assert gains == sorted(gains, reverse=True) and gains[0] > 0
    rc, _, err = cli("generate", "--run", root / "run", "--prompt", "hi", "--type", "0")
    assert rc == 2 and "cannot generate text" in err
    rc, _, err = cli("generate", "--run", root / "run", "--prompt", "hi", "--policy", "mmra")
    assert rc == 2 and "aggregate.json is missing" in err


def _expected_regret(log_pi: np.ndarray, log_types: np.ndarray, gamma: np.ndarray,
                     beta: float) -> float:
    """sum_k gamma_k beta mean_x KL(pi || pi_k), by direct numpy (the oracle)."""
    def norm(x):
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    lp, lt = norm(log_pi), norm(np.moveaxis(log_types, 2, 1))         # [n, M], [n, K, M]
    kl = (np.exp(lp)[:, None, :] * (lp[:, None, :] - lt)).sum(-1)      # [n, K]
    return float(beta * kl.mean(0) @ gamma)


def test_posterior_geometric_mixture_has_the_least_expected_regret():
    """The geometric mixture at the posterior beats every type policy, random arithmetic
    mixtures and every other geometric mixture on a grid (random instances)."""
    import itertools

    from pluralign.aggregate.merge import merge_logps
    from pluralign.aggregate.mmra import mixture_logps
    from pluralign.personalize.serving import posterior_logps
    rng = np.random.default_rng(3)
    grid = [np.array(w) / 10 for w in itertools.product(range(11), repeat=3) if sum(w) == 10]
    for _ in range(20):
        log_types = rng.normal(scale=2.0, size=(15, 5, 3))
        gamma, beta = rng.dirichlet(np.ones(3)), rng.uniform(0.1, 2.0)
        best = _expected_regret(posterior_logps(log_types, gamma), log_types, gamma, beta)
        rivals = [log_types[..., k] for k in range(3)]
        rivals += [mixture_logps(log_types, rng.dirichlet(np.ones(3))) for _ in range(20)]
        rivals += [merge_logps(log_types, w) for w in grid]
        worst_gap = min(_expected_regret(r, log_types, gamma, beta) - best for r in rivals)
        assert worst_gap >= -1e-10
    # and it is not the argmax type's policy when the posterior is split
    split = np.array([0.55, 0.45, 0.0])
    assert _expected_regret(posterior_logps(log_types, split), log_types, split, 1.0) < \
        _expected_regret(log_types[..., 0], log_types, split, 1.0)


def test_an_annotator_is_served_their_posterior_mixture_by_default(world):
    from pluralign.em.fitted import load_run
    from pluralign.personalize.serving import choose_policy
    run = load_run(world[0] / "run")
    who = run.annotator_ids[0]
    spec, why = choose_policy(run, annotator=who)
    assert isinstance(spec, np.ndarray) and np.allclose(spec, run.posteriors[0])
    assert "posterior mixture" in why and "--serve argmax" in why
    k, why = choose_policy(run, annotator=who, serve="argmax")
    assert k == int(run.posteriors[0].argmax()) and "most likely type" in why
    with pytest.warns(UserWarning, match="unknown to the run"):
        spec, why = choose_policy(run, annotator="nobody")
    assert np.allclose(spec, run.priors) and "type priors" in why
    sure = int(run.posteriors.max(axis=1).argmax())  # their own weights: base + adapters
    spec, why = choose_policy(run, annotator=run.annotator_ids[sure], serve="weights")
    assert set(spec) == {None, 0, 1, 2} and sum(spec.values()) == pytest.approx(1.0)
    w = np.array([spec[k] for k in range(3)])
    assert w.argmax() == run.posteriors[sure].argmax() and "own weights" in why
    with pytest.warns(UserWarning, match="prior over user weights"):
        spec, why = choose_policy(run, annotator="nobody", serve="weights")
    assert "the prior's mean" in why


def _seen_set(root, train, new):
    """Held-out annotations of training users: the new users' annotations given to training
    annotators of the same true type (one each; the types' rewards are the same population's)."""
    from dataclasses import replace

    from pluralign.core.data import save
    free: dict[str, list[str]] = {}
    for h in dict.fromkeys(a.annotator_id for a in train):
        free.setdefault(next(a.true_type for a in train if a.annotator_id == h), []).append(h)
    given: dict[str, str] = {}
    rows = []
    for a in new:
        if a.annotator_id not in given:
            given[a.annotator_id] = free[a.true_type].pop()
        rows.append(replace(a, annotator_id=given[a.annotator_id]))
    save(rows, root / "seen", {"source": ["test"]})
    return root / "seen"


@pytest.mark.slow
def test_evaluate_reports_the_predictive_curves_and_the_report_draws_them(world, cli):
    """`evaluate --predictive-orders R` on held-out users and on seen users' held-out
    annotations: the curves in evaluation.json (every predictor, the oracle from the labels,
    suggested against random queries), checked on load, and drawn by the report."""
    import json
    root, _, train, new, _ = world
    assert cli("aggregate", "--run", root / "run", "--n-boot", "0")[0] == 0
    rc, _, err = cli("evaluate", "--run", root / "run", "--data", root / "new", "--n-boot",
                     "50", "--predictive-orders", "1", "--seen", _seen_set(root, train, new))
    assert rc == 0, err
    ev = json.loads((root / "run" / "evaluation.json").read_text())
    found = ev["personalization"]["predictive"]
    assert found["users"] == "held-out" and found["orders"] == 1
    first = found["curve"][0]
    assert first["annotations"] == 0 and first["users"] == 60
    assert {"pooled", "argmax", "posterior", "user_weights", "scratch", "oracle"} <= \
        set(first["predictors"])
    assert "posterior_vs_argmax" in first["paired"]
    seen = found["seen_curve"]
    assert seen[0]["users"] == 60 and seen[0]["annotations"] == 0
    # a seen user is known before any new answer: better than a stranger, near the oracle
    post = [c[0]["predictors"]["posterior"]["log_loss"] for c in (found["curve"], seen)]
    assert post[1] < post[0] - 0.1
    assert seen[0]["predictors"]["posterior"]["log_loss"] < \
        seen[0]["predictors"]["oracle"]["log_loss"] + 0.05
    queries = {c["annotations"]: c for c in found["queries"]}
    assert {"suggested_queries", "random_queries"} == set(queries[1]["predictors"])
    assert queries[0]["paired"]["suggested_queries_vs_random_queries"]["log_loss_gain"] == 0
    assert queries[1]["paired"]["suggested_queries_vs_random_queries"]["log_loss_gain"] > 0
    rc, _, err = cli("report", "--run", root / "run")
    assert rc == 0, err
    for name in ("predictive", "predictive_seen", "queries"):
        assert (root / "run" / "report_files" / f"{name}.png").stat().st_size > 5000
    md = (root / "run" / "report.md").read_text()  # the curves as tables, with intervals
    table = md.split("## Predictive personalization: seen users")[1].split("##")[0]
    low, high = seen[0]["predictors"]["posterior"]["log_loss_interval"]
    assert "\n| 0 | 60 | " in table and f"\\[{low:.3f}, {high:.3f}\\]" in table
    assert "## Predictive personalization: questions asked by \\`suggest\\`" in md
    assert "Predictive personalization</h2><h3>" in (root / "run" / "report.html").read_text()


def test_assign_prints_each_users_weights_over_the_type_basis(world, cli):
    """`assign --weights`: w_0.. beside the posteriors; on a population of exact types the
    spike-and-slab prior's posterior-mean weights follow the posterior, and the Gaussian
    prior's (a different model: its own fit) still point at the same type."""
    import csv
    root = world[0]
    for prior in ("typed", "gaussian"):
        out = root / f"weights_{prior}.csv"
        rc, _, err = cli("assign", "--run", root / "run", "--data", root / "new", "--weights",
                         "--user-prior", prior, "--out", out)
        assert rc == 0, err
        rows = list(csv.DictReader(out.open()))
        assert len(rows) == 60 and list(rows[0])[-3:] == ["w_0", "w_1", "w_2"]
        gamma = np.array([[float(r[f"type_{k}"]) for k in range(3)] for r in rows])
        w = np.array([[float(r[f"w_{k}"]) for k in range(3)] for r in rows])
        sure = gamma.max(axis=1) > 0.9
        assert sure.sum() > 30
        assert (w[sure].argmax(axis=1) == gamma[sure].argmax(axis=1)).mean() > 0.9
        if prior == "typed":
            assert np.abs(w[sure] - gamma[sure]).max() < 0.3
