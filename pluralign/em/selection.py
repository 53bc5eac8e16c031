"""Choosing the number of types K (DESIGN §4): held-out annotator log-likelihood over folds
that hold out every annotator once ("cv"), over one split ("heldout"), or BIC; the smallest K
within se_factor standard errors of the best (over-splitting costs more than under-splitting).
"""

from __future__ import annotations

import numpy as np

from pluralign.core.data import Annotations
from pluralign.em.estep import loglik_table, mixture_loglik
from pluralign.em.iterations import Run


class KSelection:
    """EMDPO's K selection (a mixin: reads the estimator's parameters)."""

    def _folds(self, ids: list[str]) -> list[set[str]]:
        """Held-out annotator sets: one random split ("heldout"), or round(1/heldout_fraction)
        folds that hold out every annotator exactly once ("cv")."""
        rng = np.random.default_rng(self.random_state)
        order = rng.permutation(np.asarray(ids, dtype=object)).tolist()
        if self.selection == "heldout":
            return [set(order[: max(1, int(round(self.heldout_fraction * len(ids))))])]
        n_folds = min(len(ids), max(2, int(round(1 / self.heldout_fraction))))
        return [set(order[f::n_folds]) for f in range(n_folds)]

    def _select(self, data: Annotations) -> int:
        """Choose K in 1..max_types (the table lands in selection_). A LoRA run initialised
        from the linear backend chooses K with it too: one LoRA fit per candidate K would cost
        max_types times the run, and the linear fits are exact."""
        if self.backend == "lora" and self._init_mode() == "linear":
            self._linear = self._linear_start("auto").fit(data)
            features = self._linear.backend_options.get("features", "embedding")
            self.selection_ = [{**row, "backend": f"linear ({features})"}
                               for row in self._linear.selection_]
            return self._linear.selected_k_
        ids = data.annotator_ids
        if len(ids) < 2:
            self.selection_.append({"k": 1, "note": f"{len(ids)} annotator(s): K = 1 is the "
                                                    "only feasible choice"})
            return 1
        if self.selection == "bic":
            for k in range(1, min(self.max_types, len(ids)) + 1):
                run = self._fit_k(data, k, "select")
                n_params = run.backend.n_parameters() + k - 1
                bic = -2 * run.objective + n_params * np.log(len(ids))
                self.selection_.append({"k": k, "loglik": run.objective, "params": n_params,
                                        "bic": bic})
            return min(self.selection_, key=lambda r: r["bic"])["k"]
        splits = [(data.subset(i for i, a in enumerate(data) if a.annotator_id not in held),
                   data.subset(i for i, a in enumerate(data) if a.annotator_id in held))
                  for held in self._folds(ids)]  # made once: each memoises its fingerprint
        per_annotator: dict[int, np.ndarray] = {}
        feasible = min(self.max_types, *(len(train.annotator_ids) for train, _ in splits))
        for k in range(1, feasible + 1):  # a fold cannot fit more types than annotators
            scores, train_ll, fitted_k = [], [], set()
            for f, (train, test) in enumerate(splits):
                run = self._fit_k(train, k, "select" if len(splits) == 1 else f"select{f}")
                scores.append(heldout_loglik(run, test))
                train_ll.append(run.objective)
                fitted_k.add(run.k)
            per_annotator[k] = np.concatenate(scores)
            self.selection_.append({"k": k, "fitted_k": sorted(fitted_k),
                                    "train_loglik": float(np.mean(train_ll)),
                                    "heldout_loglik": float(per_annotator[k].sum()),
                                    "heldout_annotators": len(per_annotator[k])})
        return within_se(per_annotator, self.selection_, self.se_factor)

    def _heldout_gain(self, k: int) -> tuple[float, int] | None:
        """Held-out log-likelihood of K = k over K = 1 from the selection table (if any)."""
        if any("backend" in r for r in self.selection_):
            return None  # chosen with another backend: its gain is not this model's
        rows = {r["k"]: r for r in self.selection_ if "heldout_loglik" in r}
        if k not in rows or 1 not in rows:
            return None
        return rows[k]["heldout_loglik"] - rows[1]["heldout_loglik"], rows[k]["heldout_annotators"]


def heldout_loglik(run: Run, test: Annotations) -> np.ndarray:
    """log p(annotations of each test annotator) under the fitted mixture (types summed out)."""
    return mixture_loglik(loglik_table(run.backend, test)[0], run.priors)


def within_se(per_annotator: dict[int, np.ndarray], table: list[dict],
               factor: float = 1.645) -> int:
    """The smallest K whose held-out log-likelihood is within `factor` standard errors (of the
    paired per-annotator differences) of the best K's: more types must earn their keep, and a
    gap of about one standard error is noise, not evidence (factor 1.645: the larger K must pass
    a one-sided test at 5%)."""
    best = max(per_annotator, key=lambda k: per_annotator[k].sum())
    for row in table:
        diff = per_annotator[best] - per_annotator[row["k"]]
        row["se_of_gap"] = float(diff.std(ddof=1) * np.sqrt(len(diff))) if len(diff) > 1 else 0.0
        row["gap_to_best"] = float(diff.sum())
    return min(r["k"] for r in table if r["gap_to_best"] <= factor * r["se_of_gap"])
