"""`pluralign em`: settings from YAML and flags, the EM run, and its files (posteriors.csv,
em.json, the type policies). Checkpoints live in OUT/checkpoints, so re-running resumes."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pluralign import config as C
from pluralign import distributed, progress
from pluralign.artifacts import ArtifactError, em_info, posteriors_rows
from pluralign.backends.base import PolicyBackend
from pluralign.backends.settings import LinearConfig, LoRAConfig
from pluralign.data import Annotations
from pluralign.io import csv_text, sha256_file, unguard_cell, write_json, write_text
from pluralign.labels import annotator_labels
from pluralign.runfolder import remove_made, run_folder
from pluralign.settings import EMSection

if TYPE_CHECKING:
    from pluralign.em import EMDPO

BACKEND_CONFIGS = {"linear": LinearConfig, "lora": LoRAConfig}
#: EMDPO parameters a YAML `em:` section or a flag may set (the rest are objects, not
#: settings): the fields of settings.EMSection.
EM_KEYS = tuple(f.name for f in dataclasses.fields(EMSection))


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


#: What later steps write into a run folder from its EM fit; a new fit removes them.
DOWNSTREAM = ("aggregate.json", "scores.npz", "merged", "fair", "evaluation.json", "report.json",
              "report.md", "report.html", "report_files")


def run_em(data: Annotations, settings: EMSettings, out: Path,
           data_path: str | Path | None = None, heldout: bool = False,
           overwrite: bool = False) -> str:
    """Fit, write the outputs into `out`, and return a summary for a person. The folder is
    locked while EM runs; what later steps made from an earlier fit there is removed.
    `heldout`: annotators kept out of EM will measure the supervised ceiling (evaluate), so
    em.json does not pay for a cross-fitted one on the training annotators. `overwrite`: use
    a non-empty folder pluralign did not make (pluralign.runfolder)."""
    with run_folder(out, "em", overwrite):
        report = _fit_and_write(data, settings, out, data_path, heldout)
    return summarise(report, out)


def _fit_and_write(data: Annotations, settings: EMSettings, out: Path,
                   data_path: str | Path | None, heldout: bool = False) -> dict[str, Any]:
    from pluralign.em import EMDPO
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
        from pluralign.ceiling import ceiling_warnings
        report["warnings"] += ceiling_warnings(report["audit"]["ceiling"], "training")
    if distributed.is_main():  # every rank fitted the same; one writes
        _write(em, report, out, policies, ceiling, crossfit)
    distributed.barrier()
    return report


def fit_ceiling(data: Annotations, em: EMDPO) -> Any:
    """The supervised ceiling (pluralign.ceiling) when the data carries labels of two or more
    groups: the run's backend fitted with them known. None otherwise."""
    if len(set(annotator_labels(data).values())) < 2:
        return None
    from pluralign.ceiling import SupervisedCeiling
    return SupervisedCeiling(em._make_backend).fit(data)


#: Where the supervised ceiling's policies live in a run folder, and its cross-fitted
#: posteriors of the training annotators (pluralign.ceiling.SupervisedCeiling.cross_fit).
CEILING = "ceiling"
CROSSFIT_FILE = "crossfit.csv"
#: Folds of the cross-fitted ceiling: each annotator is assigned by the ceiling fitted on the
#: others. 2 keeps the extra training to one fit.
CROSS_FOLDS = 2


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
    write_json(out / "em.json", report)
    remove_made(out, DOWNSTREAM, f"made from an earlier EM fit in {out}")


def made_from(run_dir: Path, *names: str) -> dict[str, str | None]:
    """{file: its digest (None when absent)} for the run-folder files a step reads."""
    return {n: sha256_file(run_dir / n) if (run_dir / n).is_file() else None for n in names}


def check_made_from(run_dir: Path, name: str, record: dict[str, Any]) -> None:
    """Raise when the file `name` was made from other versions of the files it records (an
    EM fit or aggregation redone since): its numbers would belong to another run."""
    for source, want in (record.get("made_from") or {}).items():
        path = Path(run_dir) / source
        have = sha256_file(path) if path.is_file() else None
        if have != want:
            step = {"aggregate.json": "aggregate", "evaluation.json": "evaluate"}[name]
            raise ValueError(f"{Path(run_dir) / name} is stale: it was made from an earlier "
                             f"{source}; re-run `pluralign {step} --run {run_dir}`")


@dataclass
class FittedRun:
    """A finished `pluralign em` folder, loaded: em.json, the posteriors and both policies."""

    path: Path
    info: dict[str, Any]
    backend: PolicyBackend
    baseline: PolicyBackend
    annotator_ids: list[str]
    posteriors: np.ndarray

    @property
    def priors(self) -> np.ndarray:
        return np.asarray(self.info["priors"], dtype=np.float64)

    def data(self, override: str | Path | None = None) -> Annotations:
        """The dataset named by `override`, else the one EM was fitted on."""
        from pluralign.data import load
        if override:
            return load(override)
        path = self.info.get("data")
        if not path:
            raise FileNotFoundError(f"{self.path / 'em.json'} names no dataset; pass --data DIR")
        return load(self.path / path)  # a relative path is inside the run folder


def _relative(data: Path, out: Path) -> str:
    """The data's path relative to the run folder when inside it (the run can move), else
    absolute."""
    data, out = data.resolve(), out.resolve()
    return str(data.relative_to(out)) if data.is_relative_to(out) else str(data)


def load_run(path: str | Path) -> FittedRun:
    """Read what run_em wrote into `path` (the type policies and the pooled K=1 policy)."""
    path = Path(path)
    info_file = path / "em.json"
    if not info_file.is_file():
        raise FileNotFoundError(f"{path}: not a run folder (no em.json; run `pluralign em` "
                                "first)")
    info = read_em_info(info_file)
    ids, gamma = read_posteriors(path / "posteriors.csv", info["n_types"])
    options = dict(info["backend_options"])
    from pluralign.em import make_backend
    backend = make_backend(info["backend"], info["n_types"], options)
    baseline = make_backend(info["backend"], 1, options)
    backend.load(path / info["policies"])
    baseline.load(path / "baseline")
    return FittedRun(path, info, backend, baseline, ids, gamma)


def read_em_info(path: Path) -> dict[str, Any]:
    """em.json, checked (artifacts.em_info), its backend options by the backend's settings."""
    info = em_info(path)
    try:
        BACKEND_CONFIGS[info["backend"]](**{**info["backend_options"], "types": info["n_types"]})
    except (TypeError, ValueError) as e:
        raise ArtifactError(path, "backend_options", str(e)) from None
    return info


def crossfit_posteriors(run: FittedRun) -> tuple[list[str], np.ndarray] | None:
    """The ceiling's cross-fitted posteriors of the training annotators, when em wrote them."""
    path = run.path / CEILING / CROSSFIT_FILE
    return read_posteriors(path) if path.is_file() else None


def load_ceiling(run: FittedRun) -> Any:
    """The run's supervised ceiling (pluralign.ceiling.SupervisedCeiling), or None when EM
    ran on data without labels."""
    if not (run.path / CEILING / "ceiling.json").is_file():
        return None
    from pluralign.ceiling import SupervisedCeiling
    from pluralign.em import make_backend
    options = dict(run.info.get("backend_options") or {})
    return SupervisedCeiling.load(run.path / CEILING,
                                  lambda k: make_backend(run.info["backend"], k, options))


def read_posteriors(path: Path, n_types: int | None = None) -> tuple[list[str], np.ndarray]:
    """The inverse of write_posteriors, checked (artifacts.posteriors_rows): `n_types` type
    columns when given, each row a finite distribution."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise ArtifactError(path, None, f"not a readable CSV file ({e})") from None
    ids, values = posteriors_rows(path, rows, n_types)
    return [unguard_cell(h) for h in ids], np.array(values, dtype=np.float64).reshape(
        len(ids), len(rows[0]) - 1)


def posteriors_table(ids: list[str], gamma: np.ndarray, summary: bool = False,
                     digits: int = 6) -> str:
    """annotator_id, (with `summary`: the most likely type and its probability,) then one
    probability column per type named type_0, type_1, ...: CSV through io.csv_text."""
    header = ["annotator_id", *(["type", "confidence"] if summary else []),
              *[f"type_{k}" for k in range(gamma.shape[1])]]
    rows = [[h, *([f"type_{row.argmax()}", float(row.max())] if summary else []),
             *map(float, row)] for h, row in zip(ids, gamma, strict=True)]
    return csv_text(header, rows, digits)


def write_posteriors(path: Path, ids: list[str], gamma: np.ndarray) -> None:
    """The posteriors table (posteriors_table) written atomically."""
    write_text(path, posteriors_table(ids, gamma))


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
        from pluralign.ceiling import compare
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
