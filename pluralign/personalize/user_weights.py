"""User weights over the type basis (DESIGN §10), as low-rank personalised reward models do.

User h's reward is r_h = beta * sum_k w_hk s_k, s_k type k's log-ratio on each candidate. Given
a user's annotations, w_h maximises the Plackett–Luce log-likelihood plus a Gaussian log-prior
N(mean, cov), concave in w (a linear reward in a PL likelihood), solved by Newton's method. The
prior is fitted to the training users by empirical Bayes (EM with each user's posterior in the
Laplace approximation): from N(0, broad^2 I), each user's MAP weights m_h and posterior
covariance C_h, then mean = mean_h m_h and cov = mean_h [(m_h - mean)(m_h - mean)^T + C_h],
shrunk towards its diagonal's mean, until the prior settles. A user with no annotations gets the
prior mean.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from pluralign.personalize.predictive import Stages


class UserWeights:
    """scikit-learn style: `fit(scores, stages, users)` learns the prior over user weights from
    the training users (`prior_mean_`, `prior_cov_`, their weights `weights_`); `user_weights`
    fits one user's weights from their annotations under it.

    beta: the run's reward scale; broad: the starting prior's scale; shrinkage: in [0, 1], the
    fitted covariance pulled towards its diagonal's mean (identity times it); prior_iter: EM
    iterations of the prior; max_iter, tol: Newton's method per user."""

    def __init__(self, beta: float = 1.0, broad: float = 1.0, shrinkage: float = 0.1,
                 prior_iter: int = 20, max_iter: int = 50, tol: float = 1e-8):
        self.beta = beta
        self.broad = broad
        self.shrinkage = shrinkage
        self.prior_iter = prior_iter
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, scores: np.ndarray, stages: Stages, users: np.ndarray) -> UserWeights:
        """scores [n, M, K]: the type log-ratios of the training annotations; users [n]: each
        annotation's user index."""
        if not 0 <= self.shrinkage <= 1 or self.broad <= 0:
            raise ValueError("shrinkage must be in [0, 1] and broad > 0")
        k = scores.shape[2]
        self.prior_mean_, self.prior_cov_ = np.zeros(k), np.eye(k) * self.broad ** 2
        groups = [np.flatnonzero(users == h) for h in np.unique(users)]
        for _ in range(self.prior_iter):
            prec = np.linalg.inv(self.prior_cov_)
            fits = [self._map(scores, stages, rows, self.prior_mean_, prec) for rows in groups]
            w = np.stack([m for m, _ in fits])
            mean = w.mean(axis=0)
            spread = np.einsum("hk,hl->kl", w - mean, w - mean) / len(w)
            cov = spread + np.mean([np.linalg.inv(h) for _, h in fits], axis=0)
            target = np.eye(k) * float(np.trace(cov)) / k
            cov = (1 - self.shrinkage) * cov + self.shrinkage * target
            settled = np.abs(cov - self.prior_cov_).max() < 1e-6 and \
                np.abs(mean - self.prior_mean_).max() < 1e-6
            self.prior_mean_, self.prior_cov_ = mean, cov
            if settled:
                break
        self.weights_ = w
        return self

    def user_weights(self, scores: np.ndarray, stages: Stages, rows: np.ndarray) -> np.ndarray:
        """One user's weights [K] from their annotations `rows` under the fitted prior."""
        prec = np.linalg.inv(self.prior_cov_)
        return self._map(scores, stages, rows, self.prior_mean_, prec)[0]

    def posterior(self, scores: np.ndarray, stages: Stages,
                  rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One user's weights (MAP) and their Laplace posterior covariance under the prior."""
        w, precision = self._map(scores, stages, rows, self.prior_mean_,
                                 np.linalg.inv(self.prior_cov_))
        return w, np.linalg.inv(precision)

    def draws(self, scores: np.ndarray, stages: Stages, rows: np.ndarray, n: int,
              seed: int = 0) -> np.ndarray:
        """n weight vectors [n, K] from the user's Laplace posterior: averaging the PL laws they
        give predicts with the weights' uncertainty, not the MAP alone (whose plug-in
        prediction is overconfident after few annotations)."""
        w, cov = self.posterior(scores, stages, rows)
        return np.random.default_rng(seed).multivariate_normal(w, cov, size=n,
                                                               check_valid="ignore")

    def rewards(self, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The user's rewards beta * sum_k w_k s_k on every candidate ([n, M])."""
        return self.beta * np.nan_to_num(scores) @ weights

    def _map(self, scores: np.ndarray, stages: Stages, rows: np.ndarray, mean: np.ndarray,
             prec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """argmax_w sum_stages log PL + log N(w; mean, prec^-1) by Newton's method, and the
        negative log-posterior's Hessian there (the Laplace posterior's precision)."""
        mine = stages.subset(rows)
        x = self.beta * np.nan_to_num(scores[rows])[mine.row]            # [T, M, K]
        chosen = x[np.arange(len(mine.row)), mine.chosen]                # [T, K]
        w = mean.copy()

        def value(v: np.ndarray) -> float:
            r = np.where(mine.left, x @ v, -np.inf)
            lp = (r[np.arange(len(r)), mine.chosen] - logsumexp(r, axis=1)).sum() if len(r) \
                else 0.0
            return float(lp - 0.5 * (v - mean) @ prec @ (v - mean))

        current = value(w)
        for _ in range(self.max_iter):
            r = np.where(mine.left, x @ w, -np.inf)                      # [T, M]
            p = np.exp(r - logsumexp(r, axis=1, keepdims=True)) if len(r) else r
            avg = np.einsum("tm,tmk->tk", p, x)
            grad = (chosen - avg).sum(axis=0) - prec @ (w - mean)
            second = np.einsum("tm,tmk,tml->kl", p, x, x) - np.einsum("tk,tl->kl", avg, avg)
            step = np.linalg.solve(second + prec, grad)
            size = 1.0  # Newton with backtracking: the objective never decreases
            while size > 1e-8 and value(w + size * step) < current - 1e-12:
                size /= 2
            w = w + size * step
            current = value(w)
            if np.abs(size * step).max() < self.tol:
                break
        return w, second + prec
