"""Discovery at population scale: linear-backend EM-DPO on 100,000 annotators x 10 annotations.

Usage: python benchmarks/scale_linear.py [--annotators 100000] [--per-annotator 10]
                                         [--types 8] [--n-init 3] [--no-auto]

A simulated `feature` population (8 types, full rankings of 3, 8 features) is built first
(untimed). Then EMDPO(backend="linear", n_types=K) is fitted with the default settings but
`n_init` restarts, timed, with its peak resident memory above the start (sampled by a thread);
ARI against the true types is printed beside the Bayes-optimal assignment's ARI (the oracle,
true parameters), and the fit's own time split (EMDPO.timings_). Then K auto over 1..K with one
held-out split of annotators (selection heldout), timed the same way.

The last line is `seconds: X peak_gib: Y` (the K = 8 fit).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import PeakRSS
from sklearn.metrics import adjusted_rand_score

from pluralign.core.data import Annotations
from pluralign.em.estimator import EMDPO
from pluralign.simulate import SimulationConfig, simulate


def bayes_ari(pop, data: Annotations, ids: list[str]) -> float:
    """ARI of the posterior argmax under the true rewards and prior (the oracle)."""
    w = np.array([t["weights"] for t in pop.truth["types"]]) / pop.truth["temperature"]
    code_of = {h: i for i, h in enumerate(ids)}
    x = np.array([a.features for a in data])                    # [n, 3, d]: full rankings of 3
    order = np.array([a.ranking for a in data])                 # [n, 3]
    z = np.einsum("nmd,kd->nkm", x, w)                          # [n, K, 3]
    z = np.take_along_axis(z, np.broadcast_to(order[:, None, :], z.shape), axis=2)
    tail = np.logaddexp.accumulate(z[..., ::-1], axis=2)[..., ::-1]
    ll = (z - tail).sum(axis=2)                                 # PL log-prob [n, K]
    per = np.zeros((len(ids), len(w)))
    np.add.at(per, np.array([code_of[a.annotator_id] for a in data]), ll)
    per += np.log(pop.truth["prior"])
    truth = [pop.truth["annotators"][h]["type"] for h in ids]
    return adjusted_rand_score(truth, per.argmax(1))


def fit(data: Annotations, **kwargs) -> tuple[EMDPO, float, int]:
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        em = EMDPO(backend="linear", **kwargs).fit(data)
        seconds = time.perf_counter() - t0
    return em, seconds, mem.peak - mem.start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotators", type=int, default=100_000)
    p.add_argument("--per-annotator", type=int, default=10)
    p.add_argument("--types", type=int, default=8)
    p.add_argument("--n-init", type=int, default=3)
    p.add_argument("--no-auto", action="store_true", help="skip the K auto fit")
    args = p.parse_args()
    t0 = time.perf_counter()
    pop = simulate(SimulationConfig(flavour="feature", types=args.types,
                                    annotators=args.annotators,
                                    per_annotator=args.per_annotator, list_size=(3, 3),
                                    seed=0))
    data = Annotations(pop.records)
    print(f"{args.annotators} annotators x {args.per_annotator} = {len(data)} annotations, "
          f"{args.types} true types, simulated in {time.perf_counter() - t0:.1f} s (untimed)")
    em, seconds, peak = fit(data, n_types=args.types, n_init=args.n_init)
    truth = [pop.truth["annotators"][h]["type"] for h in em.annotator_ids_]
    ari = adjusted_rand_score(truth, em.posteriors_.argmax(1))
    oracle = bayes_ari(pop, data, em.annotator_ids_)
    print(f"K={args.types}: {seconds:.1f} s, peak {peak / 2**30:.2f} GiB above start, "
          f"fitted K {em.n_types_}, ARI {ari:.3f} (oracle {oracle:.3f}), timings {em.timings_}")
    if not args.no_auto:
        auto, a_seconds, a_peak = fit(data, n_types="auto", max_types=args.types,
                                      n_init=args.n_init, selection="heldout")
        print(f"K auto 1..{args.types} (one held-out split): {a_seconds:.1f} s, peak "
              f"{a_peak / 2**30:.2f} GiB, chose K {auto.n_types_}")
    print(f"seconds: {seconds:.1f} peak_gib: {peak / 2**30:.2f}")


if __name__ == "__main__":
    main()
