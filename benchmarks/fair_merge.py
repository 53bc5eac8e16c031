"""The min-max merge against the MMRA mixture on simulated feature populations with known types.

For each seed: 3 types, 300 annotators x 10 full rankings of 3 (60 held out), linear backend,
`pluralign run` with the KL objective. Prints, per seed:

- fitted: the served policy's worst-type regret (the merge; for the linear backend one theta)
  and the MMRA mixture's, both as aggregate.json measures them (under the fitted type rewards),
  with the program's value and its certificate gap;
- true: the same two policies' worst-type regret under the TRUE type rewards on the held-out
  prompts, beside the two ceilings: the supervised ceiling (the same linear model fitted on the
  same training data with each annotator's true type known, then merged) and the oracle (the
  min-max merge of the true type policies, the least worst-type regret any policy can reach).

The last line is the headline:

    fair_merge: reduction_min X% oracle_reduction_min Y% gap_max Z

(the served policy's reduction of MMRA's worst-type regret, fitted; the same with the true
parameters; the largest certificate gap). Run: python benchmarks/fair_merge.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from pluralign.aggregate.merge import MinMaxMerge, kl_contributions, normalise
from pluralign.aggregate.mmra import MinMaxMixture, mixture_logps
from pluralign.aggregate.regret import prompt_units
from pluralign.backends.linear import LinearBackend
from pluralign.cli import main
from pluralign.core.data import Annotations, load
from pluralign.em.ceiling import SupervisedCeiling
from pluralign.em.fitted import load_run

RECIPE = """\
run: {{out: {out}, seed: 0}}
simulate: {{types: 3, annotators: 300, per_annotator: 10, list_size: [3, 3], seed: {seed}}}
ingest: {{heldout_fraction: 0.2}}
em: {{backend: linear, n_types: 3, n_init: 2}}
aggregate: {{objective: kl}}
evaluate: {{n_boot: 50}}
"""


def true_logps(run: Path, held: Annotations) -> np.ndarray:
    """log pi_i*(y|x) of the true type policies on the held-out candidates, [n, M, K]."""
    truth = json.loads((run / "population" / "truth.json").read_text())
    w = np.array([t["weights"] for t in truth["types"]]) / truth["temperature"]
    logp = np.full((len(held), max(a.m for a in held), len(w)), np.nan)
    for i, a in enumerate(held):
        logp[i, : a.m] = np.asarray(a.features) @ w.T
    return normalise(logp)


def true_regret(truth: np.ndarray, policy: np.ndarray, w: np.ndarray) -> float:
    """A policy's worst-type regret under the true type rewards (beta 1: the true rewards are
    the true log-ratios), the KL objective, each held-out prompt once (row weights w)."""
    cols = np.concatenate([truth, policy[..., None]], axis=2)
    return float((w @ kl_contributions(cols, truth.shape[2], 1.0)[:, :, -1]).max())


def served(types: np.ndarray, beta: float, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the min-max merge, the MMRA mixture: the exact min-max over mixtures) of type
    policies with log-probs `types`."""
    fair = MinMaxMerge(beta).fit(types, w)
    mmra = MinMaxMixture(beta).fit(types, w)
    merged = normalise(np.einsum("nmk,k->nm", types, fair.weights_))
    return merged, mixture_logps(types, mmra.weights_)


def supervised(run: Path) -> LinearBackend:
    """The run's linear model refitted on its training data with the true types known (the
    supervised ceiling, pluralign.em.ceiling)."""
    config = load_run(run).backend.config
    ceiling = SupervisedCeiling(lambda k: LinearBackend(replace(config, types=k)))
    return ceiling.fit(load(run / "data")).backend_


def ceilings(run: Path) -> dict[str, float]:
    """Worst-type regret under the true rewards of EM's served policy and MMRA mixture, the
    supervised ones and the oracle ones."""
    held = load(run / "heldout")
    truth = true_logps(run, held)
    w = prompt_units(held).weights
    out = {}
    fitted = load_run(run).backend
    sup = supervised(run)
    for name, backend in (("em", fitted), ("supervised", sup)):
        types = normalise(backend.logratios(held))
        merge, mix = served(types, backend.beta, w)
        out[f"{name}_merge"] = true_regret(truth, merge, w)
        out[f"{name}_mmra"] = true_regret(truth, mix, w)
    merge, mix = served(truth, 1.0, w)
    out["oracle_merge"], out["oracle_mmra"] = true_regret(truth, merge, w), true_regret(truth,
                                                                                     mix, w)
    return out


COLUMNS = ("em_merge", "em_mmra", "supervised_merge", "supervised_mmra", "oracle_merge",
           "oracle_mmra")


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    reductions, oracle_reductions, gaps = [], [], []
    print("fitted: worst-type regret as aggregate measures it; true: under the true rewards")
    print(f"{'seed':>4} {'served':>8} {'mmra':>8} {'less':>6} {'gap':>8} | true: "
          + " ".join(f"{c:>16}" for c in COLUMNS))
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            run = Path(tmp) / f"run{seed}"
            recipe = Path(tmp) / f"seed{seed}.yaml"
            recipe.write_text(RECIPE.format(out=run, seed=seed))
            assert main(["run", str(recipe)]) == 0
            agg = json.loads((run / "aggregate.json").read_text())
            fig = ceilings(run)
            reductions.append(1 - agg["deploy"]["max_regret"] / agg["max_regret"])
            oracle_reductions.append(1 - fig["oracle_merge"] / fig["oracle_mmra"])
            gaps.append(abs(agg["fair"]["gap"]))
            print(f"{seed:>4} {agg['deploy']['max_regret']:>8.4f} {agg['max_regret']:>8.4f} "
                  f"{100 * reductions[-1]:>5.1f}% {gaps[-1]:>8.1e} | true: "
                  + " ".join(f"{fig[c]:>16.4f}" for c in COLUMNS))
    print(f"fair_merge: reduction_min {100 * min(reductions):.1f}% oracle_reduction_min "
          f"{100 * min(oracle_reductions):.1f}% gap_max {max(gaps):.1e}")


if __name__ == "__main__":
    main_()
