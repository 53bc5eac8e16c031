"""Discovery at population scale: linear-backend EM-DPO on 100,000 annotators x 10 annotations.

Usage: python benchmarks/scale_linear.py [--annotators 100000] [--per-annotator 10]
                                         [--types 8] [--n-init 3] [--no-auto] [--columnar]

A simulated `feature` population (8 types, full rankings of 3, 8 features) is built first
(untimed): as records by `simulate`, or with --columnar as an arrow table by
`simulate_columnar` (pluralign.simulate.columnar; the 10^7 run: `--annotators 1000000
--columnar --no-auto`), which EM then reads column by column without building records. Then
EMDPO(backend="linear", n_types=K) is fitted with the default settings but `n_init` restarts,
timed, with its peak resident memory above the start (sampled by a thread) and the process's
whole peak (data included); ARI against the true types is printed beside the Bayes-optimal
assignment's ARI (the oracle, true parameters), and the fit's own time split
(EMDPO.timings_). Then K auto over 1..K with one held-out split of annotators (selection
heldout), timed the same way.

The last line is `seconds: X peak_gib: Y` (the K = 8 fit).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
from common import PeakRSS, rss_bytes
from sklearn.metrics import adjusted_rand_score

from pluralign.core.data import Annotations
from pluralign.em.estimator import EMDPO
from pluralign.simulate import SimulationConfig, simulate
from pluralign.simulate.columnar import simulate_columnar


def bayes_ari(truth: dict, data: Annotations, labels: np.ndarray) -> float:
    """ARI of the posterior argmax under the true rewards and prior (the oracle), against
    each annotator's true type `labels` (rows as data.annotator_ids)."""
    w = np.array([t["weights"] for t in truth["types"]]) / truth["temperature"]
    values, _ = data.feature_values()
    x = values.reshape(len(data), 3, -1)                        # [n, 3, d]: full rankings of 3
    order = data.rankings().ranking.numpy()                     # [n, 3]
    codes, ids = data.annotator_codes()
    per = np.zeros((len(ids), len(w)))
    for r0 in range(0, len(data), 1 << 20):                     # bounded temporaries at 10^7
        rows = slice(r0, r0 + (1 << 20))
        z = np.einsum("nmd,kd->nkm", x[rows], w)                # [n, K, 3]
        z = np.take_along_axis(z, np.broadcast_to(order[rows, None, :], z.shape), axis=2)
        tail = np.logaddexp.accumulate(z[..., ::-1], axis=2)[..., ::-1]
        np.add.at(per, codes[rows], (z - tail).sum(axis=2))    # PL log-prob [n, K]
    per += np.log(truth["prior"])
    return adjusted_rand_score(labels, per.argmax(1))


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
    p.add_argument("--columnar", action="store_true",
                   help="simulate into an arrow table and fit from its columns (no records)")
    args = p.parse_args()
    t0 = time.perf_counter()
    cfg = SimulationConfig(flavour="feature", types=args.types, annotators=args.annotators,
                           per_annotator=args.per_annotator, list_size=(3, 3), seed=0)
    if args.columnar:
        data, truth = simulate_columnar(cfg)
        labels = np.asarray(truth["type_codes"])[[int(h[1:]) for h in data.annotator_ids]]
    else:
        pop = simulate(cfg)
        data, truth = Annotations(pop.records), pop.truth
        labels = np.array([truth["annotators"][h]["type"] for h in data.annotator_ids])
    print(f"{args.annotators} annotators x {args.per_annotator} = {len(data)} annotations, "
          f"{args.types} true types, simulated in {time.perf_counter() - t0:.1f} s (untimed), "
          f"{'columns' if args.columnar else 'records'}, process at "
          f"{rss_bytes() / 2**30:.2f} GiB")
    em, seconds, peak = fit(data, n_types=args.types, n_init=args.n_init)
    ari = adjusted_rand_score(labels, em.posteriors_.argmax(1))
    oracle = bayes_ari(truth, data, labels)
    whole = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"K={args.types}: {seconds:.1f} s, peak {peak / 2**30:.2f} GiB above start "
          f"(process peak {whole / 2**30:.2f} GiB, data included), "
          f"fitted K {em.n_types_}, ARI {ari:.3f} (oracle {oracle:.3f}), timings {em.timings_}")
    if not args.no_auto:
        auto, a_seconds, a_peak = fit(data, n_types="auto", max_types=args.types,
                                      n_init=args.n_init, selection="heldout")
        print(f"K auto 1..{args.types} (one held-out split): {a_seconds:.1f} s, peak "
              f"{a_peak / 2**30:.2f} GiB, chose K {auto.n_types_}")
    print(f"seconds: {seconds:.1f} peak_gib: {peak / 2**30:.2f}")


if __name__ == "__main__":
    main()
