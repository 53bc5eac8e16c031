"""Personalization figures on simulated data (linear backend): `assign` on held-out annotators
against the EM posteriors' accuracy, and simulated questioning sessions where `suggest` picks
the next query (expected information gain) or a random one. Prints accuracy after 1..N answers
and how many answers each needs to reach the target accuracy.

    python benchmarks/personalize.py [--seeds 3] [--people 200] [--steps 10] [--target 0.9]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from pluralign.cli import main as cli
from pluralign.core.data import Annotations, load
from pluralign.em.fitted import load_run
from pluralign.personalize.serving import assign
from pluralign.personalize.sessions import session_accuracy, true_rewards
from pluralign.stages.evaluate import match_labels


def one_seed(seed: int, people: int, steps: int, root: Path) -> tuple[float, float, np.ndarray,
                                                                       np.ndarray]:
    common = ["--types", "3", "--seed", str(seed), "--prior", "0.5,0.3,0.2"]
    cli(["simulate", "--out", str(root / "train"), "--annotators", "300", *common])
    cli(["simulate", "--out", str(root / "new"), "--annotators", "100", "--per-annotator",
         "10", *common])
    cli(["em", "--data", str(root / "train"), "--out", str(root / "run"), "--types", "3"])
    run, train, new = load_run(root / "run"), load(root / "train"), load(root / "new")
    label = {a.annotator_id: a.true_type for a in [*train, *new]}
    mapping = match_labels([label[h] for h in run.annotator_ids], run.posteriors.argmax(1), 3)

    def accuracy(gamma: np.ndarray, ids: list[str]) -> float:
        return float(np.mean([mapping[label[h]] == g.argmax()
                              for h, g in zip(ids, gamma, strict=True)]))

    em_acc = accuracy(run.posteriors, run.annotator_ids)
    new_acc = accuracy(*assign(run, new))
    truth = json.loads((root / "train" / "truth.json").read_text())
    names = [t["name"] for t in truth["types"]]
    w = np.array([t["weights"] for t in truth["types"]])
    pool = Annotations(list({a.content_key(False): a for a in new}.values())[:200])
    who = np.random.default_rng(seed + 1).choice(3, size=people, p=[0.5, 0.3, 0.2])
    true_r = true_rewards(pool, w, who)
    targets = [mapping[names[p]] for p in who]
    smart = session_accuracy(run, pool, true_r, targets, steps, "suggest", seed)
    rand = session_accuracy(run, pool, true_r, targets, steps, "random", seed)
    return em_acc, new_acc, smart, rand


def answers_to_reach(curve: np.ndarray, target: float) -> str:
    hit = np.flatnonzero(curve >= target)
    return str(hit[0] + 1) if hit.size else f">{curve.size}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--people", type=int, default=200)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--target", type=float, default=0.9)
    args = p.parse_args()
    smart_all, rand_all = [], []
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            em_acc, new_acc, smart, rand = one_seed(seed, args.people, args.steps, Path(tmp))
        smart_all.append(smart)
        rand_all.append(rand)
        print(f"seed {seed}: EM posteriors accuracy {em_acc:.3f}, assign on 100 new annotators "
              f"{new_acc:.3f}; answers to reach {args.target:.0%}: suggest "
              f"{answers_to_reach(smart, args.target)}, random "
              f"{answers_to_reach(rand, args.target)}")
    smart, rand = np.mean(smart_all, 0), np.mean(rand_all, 0)
    print("answers  " + " ".join(f"{i + 1:>5}" for i in range(args.steps)))
    print("suggest  " + " ".join(f"{v:5.3f}" for v in smart))
    print("random   " + " ".join(f"{v:5.3f}" for v in rand))
    print(f"mean over seeds, answers to reach {args.target:.0%}: suggest "
          f"{answers_to_reach(smart, args.target)}, random {answers_to_reach(rand, args.target)}")


if __name__ == "__main__":
    main()
