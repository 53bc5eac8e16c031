"""Linear backend (DESIGN §5): pi_k(y|x) proportional to pi_ref(y|x) exp(theta_k . phi(x, y)) over
each annotation's candidates. Exact weighted fits by L-BFGS in float64: seconds for 10^5
annotations, which makes it the tool for large populations, model selection and initialisation.

Features: `given` (the data's `features`; reference uniform over candidates), `onehot` (one
parameter per (item, response): the tabular policy for data whose items repeat), `embedding`
(mean hidden state of the base LM over the response tokens, from the cached reference pass,
standardised and divided by sqrt(width), with the LM's reference log-probs restricted to the
candidates; plus, by default, the log of the response's full token count, standardised: the
hidden states see only the first max_response_tokens, and length is the best-known driver of
human preferences).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pluralign.backends import linear_fit
from pluralign.backends.base import PolicyBackend, check_mixture, check_weights, sample_row
from pluralign.core.data import Annotation, Annotations, as_annotations
from pluralign.core.io import write_json, write_with
from pluralign.core.lbfgs import minimize_blocks
from pluralign.core.losses import TEACHER_LOSSES
from pluralign.core.rankings import Rankings
from pluralign.settings.backends import LinearConfig

#: LMs loaded for embedding features, by spec: EM builds a backend per run, the LM is the same.
_LMS: dict[str, tuple[Any, Any, str]] = {}


#: The last `given` design built, with its scale: EM builds a backend per run and restart,
#: and at 10^6 annotations building the feature array takes seconds. Designs are read-only.
_GIVEN: dict[str, tuple[Design, tuple[np.ndarray, np.ndarray]]] = {}


#: One-hot designs built by a backend with an empty vocabulary, by dataset: K selection builds
#: a fresh backend per fold, K and restart, each over the same few datasets. Read-only.
_ONEHOT: dict[str, tuple[Design, dict[str, int]]] = {}
ONEHOT_CACHE = 16

#: The last dataset's tokens and reference pass for embedding features, keyed by dataset, LM
#: and pass settings: EM builds a backend per run and restart (five for a linear start of
#: K = 3), and re-tokenising and re-reading the pass cost each one about 0.2 s on the demo.
_EMBEDDED: dict[tuple[Any, ...], tuple[Any, Any]] = {}


#: Given features whose root mean square lies outside this range are divided by a power of ten
#: that brings it to ~1: at 1e30 the fit's gradients overflow float64's useful range and theta
#: stays at zero (every result the reference's); l2 is a prior on a unit-scale reward.
GIVEN_RMS_RANGE = (1e-3, 1e3)


def given_scale(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) to apply to given features [rows, d]: zeros and ones unless their scale is
    extreme, then the power of ten nearest their RMS (a warning says so)."""
    d = values.shape[-1]
    peak = float(np.abs(values).max()) if values.size else 0.0
    rms = peak * float(np.sqrt(np.mean((values / peak) ** 2))) if peak > 0 else 0.0
    factor = 1.0
    if rms > 0 and not GIVEN_RMS_RANGE[0] <= rms <= GIVEN_RMS_RANGE[1]:
        factor = 10.0 ** round(np.log10(rms))
        warnings.warn(f"given features have root mean square {rms:.3g}, outside "
                      f"{GIVEN_RMS_RANGE}: divided by {factor:.0e} so that the fit is well "
                      "conditioned (saved with the policies, applied to all data)", stacklevel=3)
    return np.zeros(d), np.full(d, factor)


@dataclass
class Design:
    """Features of a dataset: dense `phi[n, M, d]` or one-hot columns `col[n, M]`, plus the
    candidate-restricted log pi_ref and the rankings."""

    rankings: Rankings
    log_ref: torch.Tensor
    phi: torch.Tensor | None = None
    col: torch.Tensor | None = None

    def select(self, rows: np.ndarray) -> Design:
        """The design of `rows` only."""
        return Design(self.rankings.select(rows), self.log_ref[rows],
                      None if self.phi is None else self.phi[rows],
                      None if self.col is None else self.col[rows])


def uniform_log_ref(mask: torch.Tensor) -> torch.Tensor:
    """log pi_ref = -log m on each annotation's m candidates (0 on padding)."""
    m = mask.sum(dim=1, keepdim=True).to(torch.float64)
    return (-torch.log(m)).expand(mask.shape).masked_fill(~mask, 0.0).contiguous()


class LinearBackend(PolicyBackend):
    """K linear type policies; `theta_[k]` is type k's reward direction."""

    row_sharded = True

    def __init__(self, config: LinearConfig | None = None, **overrides: Any):
        self.config = cfg = config or LinearConfig(**overrides)
        self.n_types, self.beta = cfg.types, cfg.beta
        self.theta_: np.ndarray | None = None
        self.teacher_: dict[int, np.ndarray] = {}  # distill, rkl: each type's teacher reward
        self.vocab_: dict[str, int] = {}
        self.scale_: tuple[np.ndarray, np.ndarray] | None = None
        self._designs: dict[str, Design] = {}

    # -- features ---------------------------------------------------------------------------
    def feature_design(self, data: Annotations) -> tuple[Any, Any, int]:
        d = self.design(data)
        return d.phi, d.col, len(self.vocab_)

    def n_parameters(self) -> int:
        return int(self.theta_.size) if self.theta_ is not None else 0

    def design(self, data: Annotations) -> Design:
        """Features of `data`, memoised per dataset."""
        key = as_annotations(data).memo_key
        if key not in self._designs:
            shared = _GIVEN.get(key) if self.config.features == "given" else None
            if shared is not None and (self.scale_ is None or all(
                    np.array_equal(a, b) for a, b in zip(self.scale_, shared[1], strict=True))):
                self._designs[key], self.scale_ = shared
            else:
                maker = {"given": self._given, "onehot": self._onehot,
                         "embedding": self._embedding}[self.config.features]
                self._designs[key] = maker(data, as_annotations(data).rankings())
                if self.config.features == "given":
                    _GIVEN.clear()
                    _GIVEN[key] = (self._designs[key], self.scale_)
            self._grow(self._dim(self._designs[key]))
        return self._designs[key]

    def _given(self, data: Annotations, rank: Rankings) -> Design:
        values, _ = as_annotations(data).feature_values()  # candidates in row order
        n, m = rank.mask.shape
        if bool(rank.mask.all()):  # every list full width: a view, no copy
            phi = values.reshape(n, m, -1)
        else:
            phi = np.zeros((n, m, values.shape[1]))
            phi[rank.mask.numpy()] = values  # row-major: each row's candidates in order
        if self.scale_ is None:
            self.scale_ = given_scale(values)
        elif phi.shape[2] != len(self.scale_[0]):
            raise ValueError(f"this data's features have width {phi.shape[2]}, but the "
                             f"linear policies were fitted on features of width "
                             f"{len(self.scale_[0])}: give data with the features the run "
                             "was trained on")
        phi = phi - self.scale_[0]  # one temporary: 2 GB at 10^7 rows of 3 x 8 features
        phi /= self.scale_[1]
        return Design(rank, uniform_log_ref(rank.mask), phi=torch.from_numpy(phi))

    def _onehot(self, data: Annotations, rank: Rankings) -> Design:
        fresh = not self.vocab_  # then the columns depend on the data alone: shared
        if fresh and data.memo_key in _ONEHOT:
            design, self.vocab_ = _ONEHOT[data.memo_key]
            self.vocab_ = dict(self.vocab_)
            return design
        col = np.full(rank.mask.shape, -1, dtype=np.int64)
        for i, a in enumerate(data):
            item = a.item_id if a.item_id is not None else json.dumps(a.prompt, sort_keys=True)
            col[i, : a.m] = [self.vocab_.setdefault(json.dumps([item, r]), len(self.vocab_))
                             for r in a.responses]
        design = Design(rank, uniform_log_ref(rank.mask), col=torch.from_numpy(col))
        if fresh:
            if len(_ONEHOT) >= ONEHOT_CACHE:
                _ONEHOT.pop(next(iter(_ONEHOT)))
            _ONEHOT[data.memo_key] = (design, dict(self.vocab_))
        return design

    def _embedding(self, data: Annotations, rank: Rankings) -> Design:
        from pluralign.lm.models import load_model, model_id
        from pluralign.lm.reference import TokenSettings, compute_reference, tokenize
        cfg = self.config
        if cfg.model not in _LMS:  # read-only here: every linear backend can share one copy
            model, tok = load_model(cfg.model)
            _LMS[cfg.model] = (model, tok, model_id(model, cfg.model))
        model, tok, name = _LMS[cfg.model]
        key = (as_annotations(data).memo_key, cfg.model, cfg.max_prompt_tokens,
               cfg.max_response_tokens, cfg.token_budget, str(cfg.cache))
        if key not in _EMBEDDED:
            seqs = tokenize(data, tok, TokenSettings(cfg.max_prompt_tokens,
                                                     cfg.max_response_tokens))
            _EMBEDDED.clear()
            _EMBEDDED[key] = seqs, compute_reference(
                model, name, seqs, tok.pad_token_id, embeddings=True,
                token_budget=cfg.token_budget, cache=cfg.cache, progress=cfg.progress)
        seqs, ref = _EMBEDDED[key]
        emb = ref.embeddings.double().numpy()
        width = emb.shape[1]
        if cfg.length_feature:
            emb = np.hstack([emb, np.log(np.asarray(seqs.response_lengths, float))[:, None]])
        if self.scale_ is None:  # standardise with the first dataset's statistics, and
            # divide by sqrt(d) so |phi|^2 ~ 1: l2 is then a prior on the reward's scale,
            # whatever the LM's width (lambda = 1: theta . phi ~ N(0, 1) a priori); the length
            # column alone is standardised to unit scale, with the same unit prior
            std = emb.std(0) + 1e-6
            std[:width] *= np.sqrt(width)
            self.scale_ = (emb.mean(0), std)
        emb = (emb - self.scale_[0]) / self.scale_[1]
        phi = seqs.per_candidate(torch.as_tensor(emb), fill=0.0)
        log_ref = torch.log_softmax(seqs.per_candidate(ref.logps, fill=-torch.inf), dim=1)
        return Design(rank, log_ref.masked_fill(~rank.mask, 0.0), phi=phi)

    def _dim(self, d: Design) -> int:
        return d.phi.shape[2] if d.phi is not None else len(self.vocab_)

    def _grow(self, dim: int) -> None:
        """Size theta_ for `dim` features; new one-hot columns start at zero."""
        if self.theta_ is None:
            self.theta_ = np.zeros((self.n_types, dim))
        elif dim > self.theta_.shape[1]:
            self.theta_ = np.pad(self.theta_, ((0, 0), (0, dim - self.theta_.shape[1])))

    @staticmethod
    def _z(d: Design, theta: torch.Tensor) -> torch.Tensor:
        """theta . phi per candidate: [n, M] for theta [d], [n, M, K] for theta [K, d]."""
        t = theta.T if theta.dim() == 2 else theta  # [d, K] or [d]
        if d.phi is not None:
            return d.phi @ t
        mask = d.col >= 0
        values = t[d.col.clamp(min=0)]
        return values * (mask.unsqueeze(-1) if values.dim() == 3 else mask)

    # -- the two operations -----------------------------------------------------------------
    def _logratios(self, data: Annotations) -> np.ndarray:
        d = self.design(data)
        z = self._z(d, torch.as_tensor(self.theta_))
        mask = d.rankings.mask.unsqueeze(-1)
        log_z = torch.logsumexp((d.log_ref.unsqueeze(-1) + z).masked_fill(~mask, -torch.inf), 1)
        s = (z - log_z.unsqueeze(1)).masked_fill(~mask, torch.nan)
        return s.numpy()

    def ranking_loglik(self, data: Annotations) -> np.ndarray:
        return linear_fit.ranking_loglik(self.design(data), self.theta_,
                                         *self.reward_coefficients())

    def _reference_logps(self, data: Annotations) -> np.ndarray:
        d = self.design(data)
        return d.log_ref.masked_fill(~d.rankings.mask, torch.nan).numpy()

    def fit(self, k: int, data: Annotations, weights: np.ndarray) -> dict[str, Any]:
        return self.fit_types([k], data, np.asarray(weights, dtype=np.float64)[:, None])[0]

    def fit_types(self, types: Sequence[int], data: Annotations,
                  weights: np.ndarray) -> list[dict[str, Any]]:
        """The M-steps of `types` (weights [n, len(types)]) in lockstep
        (pluralign.core.lbfgs): each type minimises its own (sum_a w_ak loss_a + lambda/2
        |theta_k|^2) / W_k with its own L-BFGS state, while every evaluation scores all of
        them with one phi @ theta^T. Rows a type weighs negligibly are skipped for it
        (linear_fit.kept_rows)."""
        d = self.design(data)
        w = np.column_stack([check_weights(weights[:, j], len(data)) for j in range(len(types))])
        kept = [linear_fit.kept_rows(w[:, j], self.config.skip_mass) for j in range(len(types))]
        live = [j for j in range(len(types)) if kept[j].size]
        infos = [{"type": int(k), "annotations": 0, "iterations": 0} for k in types]
        if not live:
            return infos
        ks = [int(types[j]) for j in live]
        rows, weights = [kept[j] for j in live], [w[:, j] for j in live]
        teacher = self._fit_teacher(d, rows, weights, ks) if self.config.loss in \
            TEACHER_LOSSES else None
        fun = linear_fit.objective(d, rows, weights, self.config, self._z, teacher)
        res = minimize_blocks(fun, self.theta_[ks], gtol=self.config.tol,
                              max_iter=self.config.max_iter)
        self.theta_[ks] = res.x
        for i, j in enumerate(live):
            infos[j].update(annotations=int(kept[j].size), iterations=int(res.nit[i]),
                            skipped=int((w[:, j] > 0).sum() - kept[j].size),
                            loss=float(res.f[i]), converged=bool(res.converged[i]))
        return infos

    def _fit_teacher(self, d: Design, rows: list[np.ndarray], weights: list[np.ndarray],
                     ks: list[int]) -> np.ndarray:
        """The teacher rewards R_hat_k = w_k . phi that distill and rkl fit to: each type's
        weighted Plackett–Luce maximum likelihood on its own rows (PL-DPO at beta 1, the same
        L2 prior), warm-started from its last fit."""
        config = replace(self.config, loss="pl_dpo", beta=1.0)
        start = np.stack([self.teacher_.get(k, np.zeros(self.theta_.shape[1])) for k in ks])
        if start.shape[1] < self.theta_.shape[1]:  # one-hot columns grew since
            start = np.pad(start, ((0, 0), (0, self.theta_.shape[1] - start.shape[1])))
        res = minimize_blocks(linear_fit.objective(d, rows, weights, config, self._z), start,
                              gtol=config.tol, max_iter=config.max_iter)
        self.teacher_.update({k: res.x[i] for i, k in enumerate(ks)})
        return res.x

    def sample(self, data: Annotations, k: int | None, n: int, seed: int) -> list[Annotation]:
        """Draw n candidates (with replacement) from policy k (None: the reference) restricted
        to each row's candidates: the linear policy exists only over given candidates."""
        rng = np.random.default_rng(seed)
        logq = self.reference_logps(data)
        if k is not None:
            logq = logq + self.logratios(data)[..., k]
        out = []
        for a, row in zip(data, logq, strict=True):
            q = np.exp(row[: a.m] - row[: a.m].max())
            pick = rng.choice(a.m, size=n, p=q / q.sum())
            out.append(sample_row(a, [a.responses[j] for j in pick],
                                  None if a.features is None else [a.features[j] for j in pick]))
        return out

    def merge(self, weights: np.ndarray) -> LinearBackend:
        """theta = sum_k p_k theta_k: the reward soup of the type rewards (K=1)."""
        p = check_mixture(weights, self.n_types)
        merged = LinearBackend(replace(self.config, types=1))
        merged.theta_ = (p @ self.theta_)[None, :]
        merged.vocab_, merged.scale_ = dict(self.vocab_), self.scale_
        return merged

    def penalty(self) -> float:
        """The log-prior term EM subtracts from the log-likelihood: lambda/2 sum_k |theta_k|^2."""
        if self.theta_ is None:
            return 0.0
        return 0.5 * self.config.l2 * float((self.theta_ ** 2).sum())

    def reset(self, k: int) -> None:
        """Type k back to the reference (theta_k = 0)."""
        if self.theta_ is not None:
            self.theta_[k] = 0.0
        self.teacher_.pop(k, None)

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        arrays = {"theta": self.theta_}
        if self.scale_ is not None:
            arrays["mean"], arrays["std"] = self.scale_
        def savez(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a path
                np.savez(f, **arrays)

        write_with(path / "linear.npz", savez)
        write_json(path / "linear.json", {"features": self.config.features,
                                          "vocab": self.vocab_})

    def load(self, path: str | os.PathLike) -> None:
        path = Path(path)
        arrays = np.load(path / "linear.npz")
        self.theta_ = arrays["theta"]
        if "mean" in arrays:
            self.scale_ = (arrays["mean"], arrays["std"])
        meta = json.loads((path / "linear.json").read_text())
        if meta["features"] != self.config.features:
            raise ValueError(f"{path}: saved with features={meta['features']!r}, this backend "
                             f"uses {self.config.features!r}")
        self.vocab_ = meta["vocab"]
        self._designs.clear()
