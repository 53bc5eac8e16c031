"""The exact cvxpy programs against the reference code's optimistic Hedge, K = 2..64.

Usage: python benchmarks/aggregator.py [--ks 2 4 8 16 32 64] [--steps 100000] [--repeats 3]

For each K, a regret matrix from K random policies over 200 prompts x 4 candidates (KL
objective, so R >= 0 with a zero diagonal, as aggregate builds it). The MMRA LP is solved by
MinMaxRegretAggregator (cvxpy, Clarabel; the median of --repeats solves after one untimed
warm-up, compilation included). The reference approach, written here from DESIGN §6: an all-zero
row added to R, T steps of optimistic exponentiated weights for both players with step size
5/sqrt(T) (each update uses 2 x current loss - previous loss), the policy player's average
iterate returned. Also shown: the min-max merge program (MinMaxMerge) on the same policies.

Printed per K: seconds of each, the speedup, the max regret of each and the LP's excess over
Hedge's (<= 0: the LP is exact). The last line is
`lp_speedup_min: X max_regret_excess_max: Y`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pluralign.aggregate.merge import MinMaxMerge, kl_contributions
from pluralign.aggregate.program import MinMaxRegretAggregator


def optimistic_hedge(regret: np.ndarray, steps: int) -> np.ndarray:
    """The reference code's solver: the average mixture after `steps` rounds of optimistic
    exponentiated weights on the game [R; 0] (rows: types + a zero row; columns: policies)."""
    game = np.vstack([regret, np.zeros(regret.shape[1])])
    eta = 5.0 / np.sqrt(steps)
    log_p = np.zeros(game.shape[1])
    log_y = np.zeros(game.shape[0])
    last_p = np.zeros(game.shape[1])
    last_y = np.zeros(game.shape[0])
    total = np.zeros(game.shape[1])
    for _ in range(steps):
        p = np.exp(log_p - log_p.max())
        p /= p.sum()
        y = np.exp(log_y - log_y.max())
        y /= y.sum()
        total += p
        loss_p = game.T @ y           # the policy player's loss per policy
        gain_y = game @ p             # the adversary's gain per type
        log_p -= eta * (2 * loss_p - last_p)
        log_y += eta * (2 * gain_y - last_y)
        last_p, last_y = loss_p, gain_y
    return total / steps


def instance(k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(log-policies [200, 4, K] of K random policies, their KL regret matrix [K, K])."""
    rng = np.random.default_rng(seed)
    logp = rng.normal(scale=1.5, size=(200, 4, k))
    return logp, kl_contributions(logp, k, 1.0).mean(axis=0)


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of `repeats` calls after one untimed warm-up, and the last result."""
    fn()
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ks", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64])
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print(f"{'K':>3} {'lp s':>8} {'hedge s':>8} {'speedup':>8} {'lp max':>10} {'hedge max':>10} "
          f"{'excess':>9} {'merge s':>8} {'merge max':>10}")
    speedups, excess = [], []
    for k in args.ks:
        logp, regret = instance(k, seed=k)
        t_lp, lp = timed(lambda r=regret: MinMaxRegretAggregator().fit(r), args.repeats)
        t0 = time.perf_counter()
        hedge = optimistic_hedge(regret, args.steps)
        t_hedge = time.perf_counter() - t0
        hedge_max = float(max(0.0, (regret @ hedge).max()))
        t_merge, merge = timed(lambda x=logp: MinMaxMerge(1.0).fit(x), 1)
        speedups.append(t_hedge / t_lp)
        excess.append(lp.max_regret_ - hedge_max)
        print(f"{k:>3} {t_lp:>8.4f} {t_hedge:>8.2f} {speedups[-1]:>8.0f} {lp.max_regret_:>10.6f} "
              f"{hedge_max:>10.6f} {excess[-1]:>9.1e} {t_merge:>8.3f} {merge.max_regret_:>10.6f}")
    print(f"lp_speedup_min: {min(speedups):.0f} max_regret_excess_max: {max(excess):.1e}")


if __name__ == "__main__":
    main()
