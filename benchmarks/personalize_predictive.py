"""The predictive personalization yardstick (DESIGN §10; PAL, LoRe and VPL report it): reveal n
of a user's annotations, predict the rest, for unseen users (held out of EM) and seen users
(40% of their annotations held out of EM, their training annotations known), on simulated
populations over several seeds; and `suggest`'s questions against random ones (unseen users).

    python benchmarks/personalize_predictive.py [--seeds 10] [--blend 0.5] [--only types|blend]

Prints, per population and condition, the curve (log-loss per predictor, mean over seeds, and
the seeds' spread), then the paired gains in log-loss with the number of seeds whose
annotator-bootstrap interval excludes 0. The oracle row averages over the users that have a
type (a blend annotator has none), so on the blend population it covers fewer users.
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import numpy as np

from pluralign.core.data import Annotations
from pluralign.em.ceiling import match_labels
from pluralign.em.estimator import EMDPO
from pluralign.personalize.experiment import Basis, predictive_curve, query_curve
from pluralign.personalize.user_weights import fit_user_prior
from pluralign.simulate import SimulationConfig, simulate

ORDER = ("pooled", "argmax", "posterior", "user_weights", "scratch", "oracle",
         "random_queries", "suggested_queries")


def one_seed(seed: int, blend: float, per_annotator: int) -> dict[str, list]:
    pop = simulate(SimulationConfig(types=3, annotators=300, per_annotator=per_annotator,
                                    seed=seed, misspecify={"blend": blend} if blend else {}))
    data = Annotations(pop.records)
    unseen_ids = set(data.annotator_ids[:100])
    position: dict[str, int] = {}
    fit_rows, seen_rows, unseen_rows = [], [], []
    for i, a in enumerate(data):  # seen users: 60% of their annotations fit EM, 40% held out
        j = position[a.annotator_id] = position.get(a.annotator_id, -1) + 1
        if a.annotator_id in unseen_ids:
            unseen_rows.append(i)
        elif j < 0.6 * per_annotator:
            fit_rows.append(i)
        else:
            seen_rows.append(i)
    train = data.subset(fit_rows)
    em = EMDPO("linear", n_types=3, random_state=seed).fit(train)
    run = SimpleNamespace(backend=em.backend_, baseline=em.baseline_, priors=em.priors_)
    model = fit_user_prior(run, train)
    truth = pop.truth["annotators"]
    typed = [i for i, h in enumerate(em.annotator_ids_) if truth[h]["kind"] == "typed"]
    mapping = match_labels([truth[em.annotator_ids_[i]]["type"] for i in typed],
                           em.posteriors_[typed].argmax(1), 3)  # blend users have no type
    out = {}
    seen_users = {data[i].annotator_id for i in seen_rows}
    known = [i for i in fit_rows if data[i].annotator_id in seen_users]
    for name, rows in (("unseen", unseen_rows), ("seen", known + seen_rows)):
        part = data.subset(rows)
        _, ids = part.annotator_codes()
        labels = np.array([mapping.get(truth[h]["type"], -1) if truth[h]["kind"] == "typed"
                           else -1 for h in ids])
        basis = Basis(em.backend_.logratios(part),
                      em.baseline_.backend.logratios(part)[..., 0], em.backend_.beta,
                      em.priors_, model)
        context = np.arange(len(part)) < (len(known) if name == "seen" else 0)
        out[name] = predictive_curve(basis, part, orders=3, labels=labels, n_boot=500,
                                     seed=seed, context=context)
        if name == "unseen":
            out["queries"] = query_curve(basis, part, orders=3, n_boot=500, seed=seed)
    return out


def show(curves: list[list[dict]], title: str) -> None:
    print(f"\n{title}: log-loss (mean over {len(curves)} seeds; sd across seeds)")
    sizes = [p["annotations"] for p in curves[0]]
    names = [n for n in ORDER if n in curves[0][0]["predictors"]]
    print(f"{'n':>3}  " + "  ".join(f"{n:>17}" for n in names))
    for i, n in enumerate(sizes):
        cells = []
        for name in names:
            v = np.array([c[i]["predictors"][name]["log_loss"] for c in curves])
            cells.append(f"{v.mean():8.3f} ({v.std():.3f})")
        print(f"{n:>3}  " + "  ".join(f"{c:>17}" for c in cells))
    print("paired gains in log-loss (mean over seeds; seeds with the interval above 0 / below "
          "0; the worst seed's mean gain)")
    for key in curves[0][0]["paired"]:
        parts = []
        for i, n in enumerate(sizes):
            g = [c[i]["paired"][key] for c in curves]
            above = sum(x["interval"][0] > 0 for x in g)
            below = sum(x["interval"][1] < 0 for x in g)
            worst = min(x["log_loss_gain"] for x in g)
            parts.append(f"n={n}: {np.mean([x['log_loss_gain'] for x in g]):+.3f} "
                         f"({above}/{below}; {worst:+.1e})")
        print(f"  {key}: " + "; ".join(parts))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--blend", type=float, default=0.5,
                   help="share of blend annotators in the mixed-weight population")
    p.add_argument("--only", choices=("types", "blend"), default=None,
                   help="run one population: the 3 exact types or the blended one")
    args = p.parse_args()
    t0 = time.perf_counter()
    populations = {"types": ("3 types", 0.0, 20),
                   "blend": (f"blend {args.blend:g}", args.blend, 40)}
    for key, (title, blend, per) in populations.items():
        if args.only not in (None, key):
            continue
        runs = [one_seed(seed, blend, per) for seed in range(args.seeds)]
        for cond in ("unseen", "seen", "queries"):
            show([r[cond] for r in runs], f"{title}, {cond} users")
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
