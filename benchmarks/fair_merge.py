"""The min-max merge against the MMRA mixture on simulated feature populations with known types.

For each seed: 3 types, 300 annotators x 10 full rankings of 3 (60 held out), linear backend,
`pluralign run` with the KL objective. Prints, per seed, the served policy's worst-type regret
(the merge; for the linear backend one theta), the MMRA mixture's, the program's value and its
certificate gap, and the same two figures under the TRUE type rewards on the same held-out
prompts (the oracle ceiling). The last line is the headline:

    fair_merge: reduction_min X% oracle_reduction_min Y% gap_max Z

Run: python benchmarks/fair_merge.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from pluralign.aggregate import MinMaxRegretAggregator, mixture_logps
from pluralign.cli import main
from pluralign.data import load
from pluralign.minmax_merge import MinMaxMerge, kl_contributions

RECIPE = """\
run: {{out: {out}, seed: 0}}
simulate: {{types: 3, annotators: 300, per_annotator: 10, list_size: [3, 3], seed: {seed}}}
ingest: {{heldout_fraction: 0.2}}
em: {{backend: linear, n_types: 3, n_init: 2}}
aggregate: {{objective: kl}}
evaluate: {{n_boot: 50}}
"""


def oracle(run: Path) -> tuple[float, float]:
    """(merge, MMRA mixture) worst-type regret under the true type rewards, held-out prompts."""
    truth = json.loads((run / "population" / "truth.json").read_text())
    held = load(run / "heldout")
    w = np.array([t["weights"] for t in truth["types"]]) / truth["temperature"]
    logp = np.full((len(held), max(a.m for a in held), len(w)), np.nan)
    for i, a in enumerate(held):
        z = np.asarray(a.features) @ w.T
        logp[i, : a.m] = z - np.logaddexp.reduce(z, axis=0)
    fair = MinMaxMerge(1.0).fit(logp)
    mmra = MinMaxRegretAggregator().fit(kl_contributions(logp, len(w), 1.0).mean(axis=0))
    cols = np.concatenate([logp, mixture_logps(logp, mmra.weights_)[..., None]], axis=2)
    return fair.value_, float(kl_contributions(cols, len(w), 1.0).mean(axis=0)[:, -1].max())


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    reductions, oracle_reductions, gaps = [], [], []
    print(f"{'seed':>4} {'served':>8} {'mmra':>8} {'less':>6} {'value':>9} {'gap':>8} "
          f"{'oracle':>8} {'o.mmra':>8} {'less':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            run = Path(tmp) / f"run{seed}"
            recipe = Path(tmp) / f"seed{seed}.yaml"
            recipe.write_text(RECIPE.format(out=run, seed=seed))
            assert main(["run", str(recipe)]) == 0
            agg = json.loads((run / "aggregate.json").read_text())
            served = agg["deploy"]["max_regret"]
            fair_o, mmra_o = oracle(run)
            reductions.append(1 - served / agg["max_regret"])
            oracle_reductions.append(1 - fair_o / mmra_o)
            gaps.append(abs(agg["fair"]["gap"]))
            print(f"{seed:>4} {served:>8.4f} {agg['max_regret']:>8.4f} "
                  f"{100 * reductions[-1]:>5.1f}% {agg['fair']['value']:>9.6f} {gaps[-1]:>8.1e} "
                  f"{fair_o:>8.4f} {mmra_o:>8.4f} {100 * oracle_reductions[-1]:>5.1f}%")
    print(f"fair_merge: reduction_min {100 * min(reductions):.1f}% oracle_reduction_min "
          f"{100 * min(oracle_reductions):.1f}% gap_max {max(gaps):.1e}")


if __name__ == "__main__":
    main_()
