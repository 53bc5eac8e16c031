"""`pluralign em`: settings from YAML and flags, the EM run, and its files (posteriors.csv,
em.json, the type policies). Checkpoints live in OUT/checkpoints, so re-running resumes."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pluralign.core import distributed, progress
from pluralign.core.data import Annotations
from pluralign.core.labels import annotator_labels
from pluralign.runfolder.artifacts import EMInfo
from pluralign.runfolder.folder import remove_made, run_folder
from pluralign.runfolder.lineage import CEILING, CROSSFIT_FILE, DOWNSTREAM
from pluralign.runfolder.posteriors import write_posteriors
from pluralign.settings import EMSection
from pluralign.settings import config as C
from pluralign.settings.backends import BACKEND_CONFIGS

if TYPE_CHECKING:
    from pluralign.em.estimator import EMDPO

#: EMDPO parameters a YAML `em:` section or a flag may set (the rest are objects, not
#: settings): the fields of settings.EMSection.
EM_KEYS = tuple(f.name for f in dataclasses.fields(EMSection))

#: Folds of the cross-fitted ceiling: each annotator is assigned by the ceiling fitted on the
#: others. 2 keeps the extra training to one fit.
CROSS_FOLDS = 2


@dataclass
class EMSettings:
    """Everything `pluralign em` needs: EMDPO parameters and the backend's options."""

    em: dict[str, Any] = field(default_factory=dict)
    backend_options: dict[str, Any] = field(default_factory=dict)
    source: str = "command line"
    init_options: dict[str, Any] = field(default_factory=dict)  # linear section of a LoRA run

    @property
    def backend(self) -> str:
        return self.em.get("backend", "linear")

    @classmethod
    def from_sources(cls, config_path: str | None, args: argparse.Namespace) -> EMSettings:
        """YAML sections em, linear, lora, overridden by command-line flags; validated."""
        raw = C.load_yaml(config_path) if config_path else {}
        source = config_path or "command line"
        C.check_sections(raw, ("em", *BACKEND_CONFIGS), source)
        return cls.from_raw(raw, source, args)

    @classmethod
    def from_raw(cls, raw: dict[str, Any], source: str,
                 args: argparse.Namespace | None = None) -> EMSettings:
        """Sections em, linear and lora of a parsed YAML (other sections are the caller's),
        with flags from `args` on top; every key checked before any work."""
        em = C.section(raw, "em", C.dataclass_fields(EMSection), source)
        if args is not None:  # the flags given (config.add_flags) override the YAML
            em.update({k: getattr(args, k) for k in EM_KEYS if hasattr(args, k)})
        backend = em.get("backend", "linear")
        if backend not in BACKEND_CONFIGS:
            raise C.ConfigError(f"{source}: em.backend must be linear or lora, got {backend!r}")
        sections = {}
        for name, kind in BACKEND_CONFIGS.items():  # check both, use the chosen one
            fields = {k: v for k, v in C.dataclass_fields(kind).items() if k != "types"}
            sections[name] = C.section(raw, name, fields, source)
        if args is not None:  # --linear-* and --lora-* flags over their sections
            for name, kind in BACKEND_CONFIGS.items():
                sections[name].update(C.given(kind, args, name))
        opts = sections[backend]
        if args is not None:
            _override(opts, "model", args.model)
            if backend == "linear":
                _override(opts, "features", args.features)
        C.build(BACKEND_CONFIGS[backend], {"types": 1, **opts}, source, backend)  # check now
        init = sections["linear"] if backend == "lora" else {}
        return cls(em, opts, source, init)


def _override(values: dict[str, Any], key: str, flag: Any) -> None:
    if flag is not None:
        values[key] = flag


def run_em(data: Annotations, settings: EMSettings, out: Path,
           data_path: str | Path | None = None, heldout: bool = False,
           overwrite: bool = False) -> str:
    """Fit, write the outputs into `out`, and return a summary for a person. The folder is
    locked while EM runs; what later steps made from an earlier fit there is removed.
    `heldout`: annotators kept out of EM will measure the supervised ceiling (evaluate), so
    em.json does not pay for a cross-fitted one on the training annotators. `overwrite`: use
    a non-empty folder pluralign did not make (pluralign.runfolder.folder)."""
    with run_folder(out, "em", overwrite):
        report = _fit_and_write(data, settings, out, data_path, heldout)
    return summarise(report, out)


def _fit_and_write(data: Annotations, settings: EMSettings, out: Path,
                   data_path: str | Path | None, heldout: bool = False) -> dict[str, Any]:
    from pluralign.em.estimator import EMDPO
    kwargs = {k: v for k, v in settings.em.items() if k != "backend"}
    em = EMDPO(settings.backend, backend_options=settings.backend_options,
               init_options=settings.init_options or None, checkpoint_dir=out / "checkpoints",
               callback=_Progress(kwargs.get("max_iter", 100), kwargs.get("max_time")),
               **kwargs).fit(data)
    policies = out / ("adapters" if settings.backend == "lora" else "linear")
    ceiling = fit_ceiling(data, em)
    crossfit = None if ceiling is None or heldout else \
        ceiling.cross_fit(data, CROSS_FOLDS, em.random_state)
    report = {**em.to_dict(), "backend": settings.backend,
              "backend_options": settings.backend_options, "em_options": kwargs,
              "config": settings.source, "data_fingerprint": data.fingerprint(),
              "data": None if data_path is None else _relative(Path(data_path), out),
              "annotations": len(data), "annotators": len(em.annotator_ids_),
              "policies": policies.name, "audit": audit(data, em, ceiling, crossfit)}
    if report["audit"] and "ceiling" in report["audit"]:
        from pluralign.em.ceiling import ceiling_warnings
        report["warnings"] += ceiling_warnings(report["audit"]["ceiling"], "training")
    if distributed.is_main():  # every rank fitted the same; one writes
        _write(em, report, out, policies, ceiling, crossfit)
    distributed.barrier()
    return report


def fit_ceiling(data: Annotations, em: EMDPO) -> Any:
    """The supervised ceiling (pluralign.em.ceiling) when the data carries labels of two or more
    groups: the run's backend fitted with them known. None otherwise."""
    if len(set(annotator_labels(data).values())) < 2:
        return None
    from pluralign.em.ceiling import SupervisedCeiling
    return SupervisedCeiling(em._make_backend).fit(data)


def _write(em: EMDPO, report: dict[str, Any], out: Path, policies: Path,
           ceiling: Any = None, crossfit: tuple[np.ndarray, list[str]] | None = None) -> None:
    write_posteriors(out / "posteriors.csv", em.annotator_ids_, em.posteriors_)
    em.backend_.save(policies)
    em.baseline_.backend.save(out / "baseline")  # K=1: plain (PL-)DPO, the pooled policy
    if ceiling is not None:
        ceiling.save(out / CEILING)
        if crossfit is not None:  # evaluate on the training data reads these, not a refit
            write_posteriors(out / CEILING / CROSSFIT_FILE, crossfit[1], crossfit[0])
    elif (out / CEILING).exists():  # an earlier fit's, on labelled data
        remove_made(out, [CEILING], f"an earlier EM fit's supervised ceiling in {out}")
    EMInfo.from_dict(report, out / "em.json").save(out / "em.json")
    remove_made(out, DOWNSTREAM, f"made from an earlier EM fit in {out}")


def _relative(data: Path, out: Path) -> str:
    """The data's path relative to the run folder when inside it (the run can move), else
    absolute."""
    data, out = data.resolve(), out.resolve()
    return str(data.relative_to(out)) if data.is_relative_to(out) else str(data)


def audit(data: Annotations, em: EMDPO, ceiling: Any = None,
          crossfit: tuple[np.ndarray, list[str]] | None = None) -> dict[str, Any] | None:
    """Discovery quality against known labels (true_type, else group), when the data has them,
    beside the supervised ceiling on the same annotators when it was cross-fitted (each
    annotator assigned by a ceiling fitted without them; with annotators held out, the
    ceiling is measured on them by evaluate instead). Labels are used here and by the ceiling
    only, never for EM's fit."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    labels = annotator_labels(data)
    if not labels:
        return None
    ids = [h for h in em.annotator_ids_ if h in labels]
    index = {h: i for i, h in enumerate(em.annotator_ids_)}
    truth = [labels[h] for h in ids]
    pred = [int(em.posteriors_[index[h]].argmax()) for h in ids]
    out: dict[str, Any] = {"annotators": len(ids), "ari": adjusted_rand_score(truth, pred),
                           "nmi": normalized_mutual_info_score(truth, pred)}
    if ceiling is not None and crossfit is None:
        out["ceiling_note"] = ("the supervised ceiling is measured on the held-out annotators "
                               "(evaluation.json)")
    elif ceiling is not None:
        from pluralign.em.ceiling import compare
        gamma, seen = crossfit
        where = {h: i for i, h in enumerate(seen)}
        out["ceiling"] = compare(truth, em.posteriors_[[index[h] for h in ids]],
                                 gamma[[where[h] for h in ids]], ceiling.labels_, n_boot=200)
        out["ceiling"]["cross_fitted_folds"] = CROSS_FOLDS
    return out


def summarise(report: dict[str, Any], out: Path) -> str:
    het = report["heterogeneity"]
    lines = [f"types: {report['n_types']}  priors: "
             + ", ".join(f"{p:.3f}" for p in report["priors"]),
             f"EM: {report['n_iter']} iterations, objective {report['loglik_history'][-1]:.2f}"
             f" ({'converged' if report['converged'] else 'stopped at max_iter'})",
             f"heterogeneity: K={report['n_types']} gains {het['gain']:.1f} nats over K=1 "
             f"({het['gain_per_annotator']:.3f} per annotator)"]
    for row in report["selection"]:
        lines.append("  K=" + str(row["k"]) + ": " + ", ".join(
            f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in row.items() if k != "k"))
    if report["audit"]:
        lines.append(f"audit against known labels: ARI {report['audit']['ari']:.3f}, "
                     f"NMI {report['audit']['nmi']:.3f}" + ceiling_text(report["audit"]))
    for w in report["warnings"]:
        lines.append(f"WARNING [{w['code']}]: {w['message']}")
    lines.append(f"wrote {out / 'posteriors.csv'}, {out / 'em.json'}, {out / report['policies']}/"
                 f", {out / 'baseline'}/")
    return "\n".join(lines)


def ceiling_text(audit: dict[str, Any]) -> str:
    """'; supervised ceiling ARI 0.91 (EM reaches 0.97 of it)' when the audit has one."""
    c = audit.get("ceiling")
    if not c:
        return ""
    ratio = "" if c["ratio"] is None else f", EM/ceiling {c['ratio']:.2f}"
    fitted = f", cross-fitted over {c['cross_fitted_folds']} folds" if \
        c.get("cross_fitted_folds") else ""
    return (f"; supervised ceiling (same backend, labels known{fitted}) ARI "
            f"{c['ceiling']['ari']:.3f}{ratio}")


class _Progress:
    """One line per EM iteration: the objective, the iteration's time, and what is left at
    worst (max_iter) and within the budget (max_time)."""

    def __init__(self, max_iter: int, max_time: float | None):
        self.max_iter, self.max_time = max_iter, max_time
        self.start = self.last = time.perf_counter()

    def __call__(self, k: int, it: int, objective: float) -> None:
        now = time.perf_counter()
        took, self.last = now - self.last, now
        if not distributed.is_main() or progress.quiet():
            return
        left = (self.max_iter - it - 1) * took
        if self.max_time is not None:
            left = min(left, max(self.max_time - (now - self.start), 0.0))
        ends = f"; this run ends within {progress.clock(left)}" if it + 1 < self.max_iter else ""
        print(f"  K={k} iteration {it + 1}/{self.max_iter}: objective {objective:.3f} "
              f"({progress.clock(took)}{ends})", file=sys.stderr)
