"""Predicting a user's judgements (DESIGN §10): the field's yardstick for personalization.

A prediction of an annotation is a mixture of Plackett–Luce laws, sum_c pi_c PL(tau | R_c) over
rewards R_c on the annotation's candidates: one component for a single reward (the pooled
policy, one type, a user's own weights), K components weighted by the posterior for the Bayes
predictive sum_k gamma_k P_k(tau). Scored per annotation by log-loss -log P(tau), top-1
accuracy (the candidate with the largest first-choice probability) and pairwise accuracy (the
pairs the ranking implies, predicted by the mixture's P(i before j) > 1/2, ties one half).

`Stages` lists every choice a ranking makes (the chosen candidate among those left), so that
PL log-probabilities and their gradients in linear rewards are sums over stages.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pluralign.core.data import Annotations


def logsumexp(x: np.ndarray, axis: int, keepdims: bool = False) -> np.ndarray:
    """log sum exp along `axis`, each slice holding a finite entry (-inf entries allowed):
    plain numpy, as scipy's array-API version costs ~100 us a call in these loops."""
    top = x.max(axis=axis, keepdims=True)
    with np.errstate(divide="ignore"):
        out = top + np.log(np.exp(x - top).sum(axis=axis, keepdims=True))
    return out if keepdims else np.squeeze(out, axis=axis)


@dataclass
class Stages:
    """Every choice of every ranking: annotation `row`, the `chosen` candidate, and the
    candidates still `left` (the chosen one among them) [T, M]."""

    row: np.ndarray
    chosen: np.ndarray
    left: np.ndarray
    n: int
    width: int

    @classmethod
    def of(cls, data: Annotations, width: int | None = None) -> Stages:
        width = width or max(a.m for a in data)
        rows, chosen, left = [], [], []
        for i, a in enumerate(data):
            free = np.zeros(width, dtype=bool)
            free[: a.m] = True
            for c in a.ranking:
                rows.append(i)
                chosen.append(c)
                left.append(free.copy())
                free[c] = False
        return cls(np.asarray(rows, dtype=np.int64), np.asarray(chosen, dtype=np.int64),
                   np.asarray(left, dtype=bool).reshape(len(rows), width), len(data), width)

    def subset(self, rows: np.ndarray) -> Stages:
        """The stages of annotations `rows` (renumbered 0..len(rows)-1 in that order)."""
        where = -np.ones(self.n, dtype=np.int64)
        where[rows] = np.arange(len(rows))
        keep = where[self.row] >= 0
        return Stages(where[self.row[keep]], self.chosen[keep], self.left[keep], len(rows),
                      self.width)

    def logprob(self, rewards: np.ndarray) -> np.ndarray:
        """log PL(tau_a | rewards[a]) per annotation ([n, M] -> [n])."""
        r = np.where(self.left, rewards[self.row], -np.inf)
        per = r[np.arange(len(self.row)), self.chosen] - logsumexp(r, axis=1)
        out = np.zeros(self.n)
        np.add.at(out, self.row, per)
        return out


def first_choice(rewards: np.ndarray, m: np.ndarray) -> np.ndarray:
    """softmax over each row's m candidates ([n, M]; 0 past m)."""
    real = np.arange(rewards.shape[1])[None, :] < m[:, None]
    r = np.where(real, rewards, -np.inf)
    return np.exp(r - logsumexp(r, axis=1, keepdims=True))


@dataclass
class Prediction:
    """A mixture of PL laws per annotation: weights [n, C] and rewards [n, M, C]."""

    weights: np.ndarray
    rewards: np.ndarray

    @classmethod
    def single(cls, rewards: np.ndarray) -> Prediction:
        return cls(np.ones((len(rewards), 1)), rewards[..., None])

    def scores(self, data: Annotations, stages: Stages) -> dict[str, np.ndarray]:
        """Per annotation: log_loss, top1 and pairwise accuracy."""
        m = np.fromiter((a.m for a in data), dtype=np.int64, count=len(data))
        c = self.weights.shape[1]
        with np.errstate(divide="ignore"):
            logw = np.log(self.weights)
        per = np.stack([stages.logprob(self.rewards[..., j]) for j in range(c)], axis=1)
        log_p = logsumexp(per + logw, axis=1)
        first = sum(self.weights[:, j, None] * first_choice(self.rewards[..., j], m)
                    for j in range(c))
        top = np.array([a.ranking[0] for a in data])
        best = first.max(axis=1, keepdims=True)
        at_max = np.isclose(first, best, rtol=1e-12, atol=1e-15) & \
            (np.arange(first.shape[1])[None, :] < m[:, None])
        top1 = at_max[np.arange(len(data)), top] / at_max.sum(axis=1)
        return {"log_loss": -log_p, "top1": top1, "pairwise": self._pairwise(data)}

    def _pairwise(self, data: Annotations) -> np.ndarray:
        out = np.zeros(len(data))
        for i, a in enumerate(data):
            ranked = list(a.ranking)
            rest = [j for j in range(a.m) if j not in ranked]
            pairs = [(ranked[x], ranked[y]) for x in range(len(ranked))
                     for y in range(x + 1, len(ranked))] + [(u, v) for u in ranked for v in rest]
            if not pairs:
                out[i] = 0.5
                continue
            win = np.array([p for p, _ in pairs])
            lose = np.array([q for _, q in pairs])
            diff = self.rewards[i, win] - self.rewards[i, lose]           # [pairs, C]
            prob = (1 / (1 + np.exp(-diff))) @ self.weights[i]
            out[i] = float(np.mean(np.where(np.isclose(prob, 0.5), 0.5, prob > 0.5)))
        return out
