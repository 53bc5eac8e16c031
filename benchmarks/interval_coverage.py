"""Coverage of the reported max-regret interval, and false alarms of "distinguishable from the
fairest", on simulated held-out sets whose truth is known.

Each draw is one held-out set of 60 prompts: per-prompt regrets of one policy for 5 types,
`binding` of them at the max (1.0), the rest at 0.5, with noise sd 0.3 that is independent
across types, correlated (0.5), or skewed (centred exponential, as KL contributions are). The
method pluralign reports (pluralign.core.bootstrap.max_intervals) is printed beside the percentile
interval of the resampled max it replaced. The second table: 4 policies with equal regrets
for 3 types, the fairest picked on the same prompts, and how often any other policy is called
worse than it (pluralign.core.bootstrap.compare_with_best). The last line is the headline:

    max_interval_coverage_min: C percentile_coverage_min: P fairest_false_alarm_max: F

Run: python benchmarks/interval_coverage.py [--draws 400] [--boot 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pluralign.core import bootstrap

NOISES = ("independent", "correlated", "skewed")


def draw(rng: np.random.Generator, binding: int, noise: str, k: int = 5, n: int = 60,
         sd: float = 0.3) -> np.ndarray:
    """Per-prompt regrets [n, k] of one policy."""
    truth = np.r_[np.ones(binding), np.full(k - binding, 0.5)]
    if noise == "skewed":
        z = rng.exponential(size=(n, k)) - 1.0
    else:
        z = rng.normal(size=(n, k))
        if noise == "correlated":
            z = np.sqrt(0.5) * z + np.sqrt(0.5) * rng.normal(size=(n, 1))
    return truth + sd * z


def coverage(binding: int, noise: str, draws: int, boot: int, seed: int) -> tuple[float, float]:
    """(reported method, percentile of the max): share of draws covering the true max 1.0."""
    rng = np.random.default_rng(seed)
    ours = theirs = 0
    for _ in range(draws):
        units = draw(rng, binding, noise)
        s = int(rng.integers(1e9))
        lo, hi = bootstrap.max_intervals(units[:, :, None], boot, s).max[0]
        ours += lo <= 1.0 <= hi
        reps = bootstrap.mean_replicates(units, np.arange(len(units)), boot, s)
        plo, phi = bootstrap.interval(reps.max(axis=1))
        theirs += plo <= 1.0 <= phi
    return ours / draws, theirs / draws


def false_alarms(rho: float, draws: int, boot: int, seed: int) -> float:
    """Share of draws where some policy is called worse than the fairest, all being equal."""
    rng = np.random.default_rng(seed)
    fired = 0
    for _ in range(draws):
        z = rng.normal(size=(60, 3, 4))
        z = np.sqrt(1 - rho) * z + np.sqrt(rho) * rng.normal(size=(60, 3, 1))
        fired += bootstrap.compare_with_best(1.0 + 0.3 * z, boot,
                                             int(rng.integers(1e9))).worse.any()
    return fired / draws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=400)
    parser.add_argument("--boot", type=int, default=1000)
    args = parser.parse_args()
    t0 = time.perf_counter()
    print(f"{'binding':>7} {'noise':>12} {'reported':>9} {'percentile':>11}")
    ours_min = theirs_min = 1.0
    for binding in (1, 2, 3, 5):
        for i, noise in enumerate(NOISES):
            ours, theirs = coverage(binding, noise, args.draws, args.boot, 100 * binding + i)
            ours_min, theirs_min = min(ours_min, ours), min(theirs_min, theirs)
            print(f"{binding:>7} {noise:>12} {ours:>9.3f} {theirs:>11.3f}")
    print(f"\n{'correlation':>11} {'false alarms':>13}")
    alarms = []
    for rho in (0.0, 0.5, 0.9):
        alarms.append(false_alarms(rho, args.draws, args.boot, int(1000 * rho) + 7))
        print(f"{rho:>11.1f} {alarms[-1]:>13.3f}")
    print(f"({time.perf_counter() - t0:.0f} s)")
    print(f"max_interval_coverage_min: {ours_min:.3f} percentile_coverage_min: "
          f"{theirs_min:.3f} fairest_false_alarm_max: {max(alarms):.3f}")


if __name__ == "__main__":
    main()
