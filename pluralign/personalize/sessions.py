"""Simulated questioning sessions: how fast `suggest` (expected information gain) finds a
simulated annotator's type compared with random questions. Used by a test and by
benchmarks/personalize.py."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pluralign.core.data import Annotations
from pluralign.core.plackett_luce import sample_ranking
from pluralign.em.fitted import FittedRun
from pluralign.personalize.serving import answer_logprobs, information_gain


def true_rewards(pool: Annotations, type_weights: np.ndarray,
                 people: np.ndarray) -> np.ndarray:
    """Each simulated person's true reward of every candidate of every query: [q, M, people],
    for a `feature` population whose true types have weight vectors type_weights[T, d]."""
    out = np.full((len(pool), max(a.m for a in pool), len(people)), np.nan)
    for q, a in enumerate(pool):
        out[q, : a.m] = (np.array(a.features) @ type_weights.T)[:, people]
    return out


def session_accuracy(run: FittedRun, pool: Annotations, true_rewards: np.ndarray,
                     targets: Sequence[int], steps: int, strategy: str, seed: int,
                     temperature: float = 1.0) -> np.ndarray:
    """Assignment accuracy after 1..steps answers, averaged over simulated annotators.

    pool: candidate queries; true_rewards[n_query, M, A]: each simulated annotator's true
    reward of every candidate; targets[a]: the discovered type annotator a should get.
    strategy: "suggest" (max information gain) or "random". Answers are full rankings drawn
    from Plackett–Luce on true reward / temperature."""
    rng = np.random.default_rng(seed)
    beta = run.backend.beta
    s = beta * run.backend.logratios(pool)
    logp = [answer_logprobs(s[q, : a.m], a.m) for q, a in enumerate(pool)]
    hits = np.zeros(steps)
    for who, target in enumerate(targets):
        log_post = np.log(run.priors)
        unused = list(range(len(pool)))
        for step in range(steps):
            post = np.exp(log_post - log_post.max())
            post /= post.sum()
            if strategy == "suggest":
                q = max(unused, key=lambda i: information_gain(s[i, : pool[i].m], post,
                                                               pool[i].m, logp[i][0]))
            else:
                q = unused[int(rng.integers(len(unused)))]
            unused.remove(q)
            m = pool[q].m
            answer = tuple(sample_ranking(true_rewards[q, :m, who] / temperature, m, rng))
            table, answers = logp[q]
            log_post = log_post + table[answers.index(answer)]
            hits[step] += int(np.argmax(log_post)) == target
    return hits / len(targets)
