"""User weights over the type basis (DESIGN §10), as low-rank personalised reward models do.

User h's reward is r_h = beta * sum_k w_hk s_k, s_k type k's log-ratio on each candidate. Given
a user's annotations and a Gaussian prior N(mean, cov), the MAP weights maximise the
Plackett–Luce log-likelihood plus the log-prior, concave in w (a linear reward in a PL
likelihood), solved by Newton's method with backtracking.

The prior is fitted to the training users by empirical Bayes. With `typed` (the default) it is
a spike-and-slab mixture: mass rho_k on each type's own weights e_k (a user who is exactly type
k: the EM model's own assumption) and rho_slab on the Gaussian (users between types). Each
training user's evidence under each part is exact for a spike (the PL likelihood under type k)
and Laplace for the slab (log L(w*) - q/2 + log det P / 2 - log det H / 2, H the Hessian of the
negative log-posterior at the MAP w*); the parts' weights are the mean responsibilities, and
the slab's mean and covariance the responsibility-weighted moments of the users' Laplace
posteriors (spread plus posterior covariance), shrunk towards the diagonal's mean, until the
prior settles. A population of exact types puts the mass on the spikes and the prediction
becomes the posterior predictive; blended users move it to the slab. Without `typed` the prior
is the Gaussian alone. A user with no annotations gets the prior.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import softmax

from pluralign.core.data import Annotations
from pluralign.personalize.predictive import Prediction, Stages, logsumexp


def fit_user_prior(run: Any, train: Annotations, scores: np.ndarray | None = None,
                   **options: Any) -> UserWeights:
    """The user-weights model with its prior fitted to a fitted run's (pluralign.em.fitted
    .FittedRun) training users `train` (`scores`: their type log-ratios when computed)."""
    s = run.backend.logratios(train) if scores is None else scores
    return UserWeights(beta=run.backend.beta, **options).fit(
        s, Stages.of(train, s.shape[1]), train.annotator_codes()[0])


def _spiked(resp: np.ndarray, slab: np.ndarray) -> np.ndarray:
    """Posterior-mean weights [H, K] from the parts' responsibilities [H, S + 1] (S spikes at
    e_1..e_S, then the slab) and the slab's weights [H, K]."""
    spikes = resp[:, :-1]
    out = resp[:, -1:] * slab
    out[:, : spikes.shape[1]] += spikes
    return out


@dataclass
class _User:
    """One user's stages as Newton's method needs them: candidates' basis scores [T, M, K]
    (beta applied), the candidates still in play [T, M], the chosen one's scores [T, K]."""

    x: np.ndarray
    left: np.ndarray
    chosen: np.ndarray

    def loglik(self, w: np.ndarray) -> float:
        return self.choices(w)[0]

    def choices(self, w: np.ndarray) -> tuple[float, np.ndarray]:
        """log L(w), and each stage's choice probabilities [T, M] at w (Newton's gradient
        and Hessian are moments of them)."""
        if not len(self.x):
            return 0.0, np.zeros(self.left.shape)
        r = np.where(self.left, self.x @ w, -np.inf)
        lse = logsumexp(r, axis=1, keepdims=True)
        return float((self.chosen @ w - lse[:, 0]).sum()), np.exp(r - lse)


class UserWeights:
    """scikit-learn style: `fit(scores, stages, users)` learns the prior over user weights from
    the training users (`prior_mean_`, `prior_cov_`, `mixing_`: rho_1..rho_K, rho_slab, or the
    slab alone; their posterior-mean weights `weights_`); per user, `user_weights` (the MAP
    under the slab: the convex regularised PL fit), `mean_weights` (the posterior mean under
    the whole prior: what is served) and `predict` (the Bayes predictive of further rankings).

    beta: the run's reward scale; typed: spikes at the types' own weights beside the Gaussian;
    broad: the starting prior's scale; shrinkage: in [0, 1], the fitted covariance pulled
    towards its diagonal's mean (identity times it); prior_iter: EB iterations of the prior;
    max_iter, tol: Newton's method per user."""

    def __init__(self, beta: float = 1.0, typed: bool = True, broad: float = 1.0,
                 shrinkage: float = 0.1, prior_iter: int = 20, max_iter: int = 50,
                 tol: float = 1e-8):
        self.beta = beta
        self.typed = typed
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
        people = [self._user(scores, stages, np.flatnonzero(users == h))
                  for h in np.unique(users)]
        spikes = self._spikes(people, k)
        self.prior_mean_, self.prior_cov_ = np.zeros(k), np.eye(k) * self.broad ** 2
        self.mixing_ = np.full(spikes.shape[1] + 1, 1 / (spikes.shape[1] + 1))
        fits = [(self.prior_mean_, None)] * len(people)
        for _ in range(self.prior_iter):
            prec = np.linalg.inv(self.prior_cov_)  # each user's Newton starts at their last MAP
            fits = [self._newton(u, self.prior_mean_, prec, start=w0)
                    for u, (w0, _) in zip(people, fits, strict=True)]
            slab = np.array([self._evidence(u, w, h, prec) for u, (w, h) in zip(people, fits,
                                                                                 strict=True)])
            with np.errstate(divide="ignore"):
                resp = softmax(np.log(self.mixing_) + np.column_stack([spikes, slab]), axis=1)
            w = np.stack([m for m, _ in fits])
            mean, cov = self._moments(w, [np.linalg.inv(h) for _, h in fits], resp[:, -1])
            settled = np.abs(cov - self.prior_cov_).max() < 1e-6 and \
                np.abs(mean - self.prior_mean_).max() < 1e-6 and \
                np.abs(resp.mean(axis=0) - self.mixing_).max() < 1e-6
            self.prior_mean_, self.prior_cov_, self.mixing_ = mean, cov, resp.mean(axis=0)
            if settled:
                break
        self.weights_ = _spiked(resp, w)
        return self

    def user_weights(self, scores: np.ndarray, stages: Stages, rows: np.ndarray) -> np.ndarray:
        """One user's MAP weights [K] under the Gaussian part of the prior."""
        return self.posterior(scores, stages, rows)[0]

    def posterior(self, scores: np.ndarray, stages: Stages,
                  rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One user's MAP weights under the Gaussian part and their Laplace covariance."""
        w, hessian = self._newton(self._user(scores, stages, rows), self.prior_mean_,
                                  np.linalg.inv(self.prior_cov_))
        return w, np.linalg.inv(hessian)

    def parts(self, scores: np.ndarray, stages: Stages,
              rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The user's posterior over the prior's parts (rho_1..rho_K, rho_slab after their
        annotations), the slab's MAP weights and Laplace covariance."""
        user = self._user(scores, stages, rows)
        prec = np.linalg.inv(self.prior_cov_)
        w, hessian = self._newton(user, self.prior_mean_, prec)
        mixing = getattr(self, "mixing_", np.ones(1))  # a prior set by hand: the slab alone
        spikes = self._spikes([user], scores.shape[2])[0] if len(mixing) > 1 else []
        evidence = np.append(spikes, self._evidence(user, w, hessian, prec))
        with np.errstate(divide="ignore"):
            return softmax(np.log(mixing) + evidence), w, np.linalg.inv(hessian)

    def mean_weights(self, scores: np.ndarray, stages: Stages, rows: np.ndarray) -> np.ndarray:
        """The posterior mean of the user's weights under the whole prior: served as
        pi_ref * exp(beta * sum_k w_k s_k)."""
        resp, w, _ = self.parts(scores, stages, rows)
        return _spiked(resp[None], w[None])[0]

    def prior_weights(self) -> np.ndarray:
        """The prior's mean weights: what a user with no annotations is served."""
        return _spiked(self.mixing_[None], self.prior_mean_[None])[0]

    def all_mean_weights(self, scores: np.ndarray, data: Annotations) -> np.ndarray:
        """mean_weights of every user of `data` ([users, K], users as data.annotator_codes())."""
        stages, codes = Stages.of(data, scores.shape[1]), data.annotator_codes()[0]
        return np.stack([self.mean_weights(scores, stages, np.flatnonzero(codes == h))
                         for h in range(codes.max() + 1)]) if len(codes) else \
            np.zeros((0, scores.shape[2]))

    def predict(self, scores: np.ndarray, stages: Stages, shown: np.ndarray,
                rest: np.ndarray, draws: int = 32, seed: int = 0) -> Prediction:
        """The Bayes predictive of the user's annotations `rest` after `shown`: each spike's PL
        law at its posterior weight, and the slab's averaged over `draws` Laplace draws (a
        plug-in MAP is overconfident after few annotations)."""
        resp, w, cov = self.parts(scores, stages, shown)
        sample = np.random.default_rng(seed).multivariate_normal(w, cov, size=draws,
                                                                 check_valid="ignore")
        basis = np.vstack([np.eye(len(w))[: len(resp) - 1], sample])      # [C, K]
        weights = np.append(resp[:-1], np.full(draws, resp[-1] / draws))
        rewards = self.beta * np.nan_to_num(scores[rest]) @ basis.T        # [r, M, C]
        return Prediction(np.tile(weights, (len(rest), 1)), rewards)

    def rewards(self, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The user's rewards beta * sum_k w_k s_k on every candidate ([n, M])."""
        return self.beta * np.nan_to_num(scores) @ weights

    def _user(self, scores: np.ndarray, stages: Stages, rows: np.ndarray) -> _User:
        mine = stages.subset(rows)
        x = self.beta * np.nan_to_num(scores[rows])[mine.row]
        return _User(x, mine.left, x[np.arange(len(mine.row)), mine.chosen])

    def _spikes(self, people: list[_User], k: int) -> np.ndarray:
        """Each user's log-likelihood under each type's own weights [H, K] (none untyped)."""
        if not self.typed:
            return np.zeros((len(people), 0))
        return np.array([[u.loglik(e) for e in np.eye(k)] for u in people]).reshape(
            len(people), k)

    def _moments(self, w: np.ndarray, covs: list[np.ndarray],
                 r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The slab's mean and shrunk covariance from users' Laplace posteriors, weighted by
        their slab responsibilities r (the current prior kept when no user is on the slab)."""
        if r.sum() < 1e-6:
            return self.prior_mean_, self.prior_cov_
        share = r / r.sum()
        mean = share @ w
        cov = np.einsum("h,hk,hl->kl", share, w - mean, w - mean) + \
            np.einsum("h,hkl->kl", share, np.stack(covs))
        k = len(mean)
        return mean, (1 - self.shrinkage) * cov + \
            self.shrinkage * np.eye(k) * float(np.trace(cov)) / k

    def _evidence(self, user: _User, w: np.ndarray, hessian: np.ndarray,
                  prec: np.ndarray) -> float:
        """The Laplace log marginal likelihood of the user's annotations under the slab."""
        d = w - self.prior_mean_
        return user.loglik(w) - 0.5 * float(d @ prec @ d) + \
            0.5 * float(np.linalg.slogdet(prec)[1] - np.linalg.slogdet(hessian)[1])

    def _newton(self, user: _User, mean: np.ndarray, prec: np.ndarray,
                start: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """argmax_w log L(w) + log N(w; mean, prec^-1) by Newton's method (from `start`, else
        the mean), and the negative log-posterior's Hessian there (the Laplace posterior's
        precision)."""
        w = (mean if start is None else start).copy()

        def at(v: np.ndarray) -> tuple[float, np.ndarray]:
            """The log-posterior at v and each stage's choice probabilities there."""
            loglik, p = user.choices(v)
            return loglik - 0.5 * float((v - mean) @ prec @ (v - mean)), p

        # each point's probabilities come with its objective: an accepted step's are reused
        current, p = at(w)
        second = np.zeros_like(prec)
        for _ in range(self.max_iter):
            if len(user.x):
                avg = np.einsum("tm,tmk->tk", p, user.x)
                grad = (user.chosen - avg).sum(axis=0) - prec @ (w - mean)
                second = np.einsum("tm,tmk,tml->kl", p, user.x, user.x) - avg.T @ avg
            else:
                grad = -prec @ (w - mean)
            step = np.linalg.solve(second + prec, grad)
            size = 1.0  # backtracking: the objective never decreases
            value, q = at(w + step)
            while size > 1e-8 and value < current - 1e-12:
                size /= 2
                value, q = at(w + size * step)
            if value < current - 1e-12:  # no step helps: stay (as the halving loop's end)
                break
            w, current, p = w + size * step, value, q
            if np.abs(size * step).max() < self.tol:
                break
        return w, second + prec
