"""How fast each objective learns a type's distribution: forward KL from the true type
distribution to the learned policy as annotations grow (DESIGN §7), linear backend.

Usage: python benchmarks/objectives.py [--sizes 6-14] [--seeds 5] [--types 3]
                                       [--losses pl_dpo,ipo,distill,pmle,rkl]

A `feature` population (3 types, full rankings of 3, 8 features, temperature 1) is drawn by
the columnar simulator; for n = 2^a annotations per type, every objective fits each type's
policy on that type's first n annotations, the labels known (the objective's own statistical
efficiency; discovery error is the EM benchmarks' subject). The true type distribution on an
item is pi*_k(a) proportional to exp(x_a . w_k / T), the first-choice distribution of the
rankings (the paper's target, P(a > b) = sigmoid(log pi*(a) - log pi*(b))); the forward KL,
KL(pi*_k || pi_k), is averaged over 2,000 fresh items and over types.

Hyperparameters are the ones whose population optimum is pi*, so that every objective aims at
the same target: pl_dpo beta 1; distill beta 1 (teacher: the type's PL reward); pmle gamma 1,
beta 0.05 (the KL to the uniform reference shrinks it a little); rkl beta 0.05, gamma 0.95
(optimum pi_0^(beta/(beta+gamma)) exp(R_hat/(beta+gamma)), R_hat the PL reward); ipo beta 0.5,
whose optimum matches preference margins rather than log-odds (no setting makes it pi*).
L2 prior 1 (the default) for all.

Prints the table of mean KL per n and loss, then at the largest n each loss's mean with a 95%
t-interval over seeds, and each loss's paired difference from pl_dpo (same data per seed).
The last line is `kl_at_max: loss=value ...`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import stats

from pluralign.backends.linear import LinearBackend
from pluralign.settings import SimulationConfig
from pluralign.simulate.columnar import simulate_columnar

SETTINGS = {"pl_dpo": {"beta": 1.0}, "ipo": {"beta": 0.5}, "distill": {"beta": 1.0},
            "pmle": {"beta": 0.05, "gamma": 1.0}, "rkl": {"beta": 0.05, "gamma": 0.95}}


def forward_kl(backend: LinearBackend, w_true: np.ndarray, x: np.ndarray,
               temperature: float) -> np.ndarray:
    """KL(pi*_k || pi_k) per type, averaged over the items x [items, m, D] (pi_0 uniform)."""
    phi = (x - backend.scale_[0]) / backend.scale_[1]
    out = []
    for k in range(len(w_true)):
        log_star = _log_softmax(x @ w_true[k] / temperature)
        log_pi = _log_softmax(phi @ backend.theta_[k])
        out.append(float((np.exp(log_star) * (log_star - log_pi)).sum(1).mean()))
    return np.array(out)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def run_seed(seed: int, sizes: list[int], losses: list[str], k: int) -> dict:
    """KL per (loss, n) [types] for one population."""
    top = max(sizes)
    cfg = SimulationConfig(types=k, annotators=int(1.3 * k * top), per_annotator=1,
                           list_size=(3, 3), seed=seed)
    data, truth = simulate_columnar(cfg)
    codes, _ = data.annotator_codes()          # one annotation each: code = annotator = row
    label = np.asarray(truth["type_codes"])[codes]
    first = [np.flatnonzero(label == j) for j in range(k)]
    if min(len(f) for f in first) < top:
        raise RuntimeError("a type drew too few annotations; raise the population size")
    w_true = np.array([t["weights"] for t in truth["types"]])
    x_test = np.random.default_rng(10_000 + seed).normal(size=(2000, 3, cfg.feature_dim))
    out = {}
    for n in sizes:
        rows = np.concatenate([f[:n] for f in first])
        sub = data.subset(rows)
        onehot = np.zeros((len(rows), k))
        onehot[np.arange(len(rows)), np.repeat(np.arange(k), n)] = 1.0
        for loss in losses:
            b = LinearBackend(types=k, loss=loss, progress=False, **SETTINGS[loss])
            b.fit_types(range(k), sub, onehot)
            out[loss, n] = forward_kl(b, w_true, x_test, truth["temperature"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="6-14", help="exponents a of n = 2^a, as LO-HI")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--types", type=int, default=3)
    p.add_argument("--losses", default=",".join(SETTINGS))
    args = p.parse_args()
    lo, hi = (int(v) for v in args.sizes.split("-"))
    sizes = [2 ** a for a in range(lo, hi + 1)]
    losses = args.losses.split(",")
    t0 = time.perf_counter()
    runs = [run_seed(s, sizes, losses, args.types) for s in range(args.seeds)]
    print(f"{args.seeds} seeds, {args.types} types, {time.perf_counter() - t0:.0f} s; forward KL "
          "KL(pi*_k || pi_k), mean over types and seeds")
    print(f"{'n per type':>10} " + " ".join(f"{loss:>9}" for loss in losses))
    for n in sizes:
        means = [np.mean([r[loss, n].mean() for r in runs]) for loss in losses]
        print(f"{n:>10} " + " ".join(f"{m:>9.5f}" for m in means))
    top = max(sizes)
    line = []
    for loss in losses:
        per_seed = np.array([r[loss, top].mean() for r in runs])
        half = stats.t.ppf(0.975, len(runs) - 1) * per_seed.std(ddof=1) / np.sqrt(len(runs)) \
            if len(runs) > 1 else float("nan")
        per_type = np.mean([r[loss, top] for r in runs], axis=0)
        print(f"n = {top}: {loss:<8} {per_seed.mean():.5f} +- {half:.5f} (95% t over seeds; "
              f"per type {np.round(per_type, 5).tolist()})")
        line.append(f"{loss}={per_seed.mean():.5f}")
    if "pl_dpo" in losses and len(runs) > 1:  # paired over seeds: the same data for all
        base = np.array([r["pl_dpo", top].mean() for r in runs])
        for loss in (x for x in losses if x != "pl_dpo"):
            diff = np.array([r[loss, top].mean() for r in runs]) - base
            half = stats.t.ppf(0.975, len(runs) - 1) * diff.std(ddof=1) / np.sqrt(len(runs))
            print(f"n = {top}: {loss} - pl_dpo = {diff.mean():+.6f} +- {half:.6f} (paired, "
                  f"{100 * diff.mean() / base.mean():+.1f}% of pl_dpo's KL)")
    print("kl_at_max: " + " ".join(line))


if __name__ == "__main__":
    main()
