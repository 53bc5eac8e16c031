"""How separable real groups are: the Bayes-oracle and supervised ceilings of populations
simulated from OpinionQA group distributions (simulate --from-groups), per attribute, for all
its groups and for chosen pairs, over seeds. Prints a table; no model is trained.

    python benchmarks/group_ceilings.py [--source ../shared/data/opinionqa_groups]
        [--annotators 400] [--questions 30] [--seeds 3] [--ranking-length L]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pluralign.ingest.groups import NON_GROUPS, read_groups
from pluralign.settings import SimulationConfig
from pluralign.simulate import simulate

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "opinionqa_groups"
#: Pairs far apart on their attribute (each attribute's groups in full are measured too).
PAIRS = {"EDUCATION": ("Less than high school", "Postgraduate"), "AGE": ("18-29", "65+"),
         "RACE": ("White", "Black"), "CREGION": ("Northeast", "South")}
#: Groups of an attribute left out of "all" (a small residual group).
LEAVE_OUT = {"RACE": ("Other", "Mixed Race")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default=str(SHARED))
    p.add_argument("--annotators", type=int, default=400)
    p.add_argument("--questions", type=int, default=30)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--ranking-length", type=int, default=None)
    args = p.parse_args()
    source = Path(args.source)
    attributes = sorted({f.name[: -len("_data.json")] for f in source.rglob("*_data.json")})
    print(f"{args.annotators} annotators x {args.questions} shared questions, "
          f"{'full rankings' if args.ranking_length is None else f'top-{args.ranking_length}'}"
          f", {args.seeds} seeds: mean ARI (min-max)")
    print(f"{'attribute':<10} {'groups':<44} {'oracle':>20} {'supervised':>20}")
    for attribute in attributes:
        found = [g for g in read_groups(source, attribute).groups if g not in NON_GROUPS
                 and g not in LEAVE_OUT.get(attribute, ())]
        for groups in [found] + ([list(PAIRS[attribute])] if attribute in PAIRS else []):
            aris = {"oracle": [], "supervised": []}
            for seed in range(args.seeds):
                pop = simulate(SimulationConfig(
                    from_groups=str(source), attribute=attribute, groups=groups,
                    annotators=args.annotators, per_annotator=args.questions,
                    shared_questions=True, ranking_length=args.ranking_length, seed=seed))
                for k in aris:
                    aris[k].append(pop.ceilings[k]["ari"])
            shown = " / ".join(groups) if len(groups) <= 3 else f"all {len(groups)}"
            print(f"{attribute:<10} {shown[:44]:<44} " + " ".join(
                f"{np.mean(v):>7.3f} ({min(v):.2f}-{max(v):.2f})" for v in aris.values()))


if __name__ == "__main__":
    main()
