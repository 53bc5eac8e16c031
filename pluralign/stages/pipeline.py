"""`pluralign run CONFIG.yaml`: the staged pipeline (DESIGN §9) in one run folder.

    ingest -> reference -> em -> aggregate -> evaluate -> report

Each stage writes its artifacts, then `manifests/<stage>.json` (its config section, the key of
its inputs, package versions, seed, wall time, peak memory) as its commit point. A stage whose
key (its config and everything upstream) matches its manifest is skipped; `--from STAGE` forces
it and every later one. A run killed at any moment re-runs from the first unfinished stage, EM
from its last finished iteration (checkpoints/), and every file is written atomically.

The run folder is also a `pluralign em` folder: `pluralign aggregate/evaluate/report --run`
work on it. Paths in the YAML are relative to the working directory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from pluralign.core.checks import user_path
from pluralign.core.data import Annotations, load, save
from pluralign.core.io import sha256_file, write_json
from pluralign.core.labels import annotator_labels, split_label_warnings
from pluralign.core.schema import manifest_info, mapping, optional, text
from pluralign.runfolder.artifacts import em_info
from pluralign.runfolder.folder import changed_files, run_folder, snapshot
from pluralign.settings import (
    AggregateSection,
    EvaluateSection,
    IngestSection,
    RunSection,
    SimulationConfig,
)
from pluralign.settings import config as C
from pluralign.settings.backends import BACKEND_CONFIGS
from pluralign.stages.em import EMSettings

STAGES = ("ingest", "reference", "em", "aggregate", "evaluate", "report")
#: What a stage manifest must hold to be trusted (an older one without `outputs` is redone).
STAGE_MANIFEST = {"key": text, "outputs": optional(mapping), "config": optional(mapping)}
SECTIONS = ("run", "simulate", "ingest", "em", *BACKEND_CONFIGS, "aggregate", "evaluate")
PACKAGES = ("pluralign", "torch", "transformers", "peft", "accelerate", "cvxpy", "numpy",
            "scikit-learn")


@dataclass
class PipelineConfig:
    """A whole `pluralign run` YAML, validated."""

    run: RunSection
    ingest: IngestSection
    em: EMSettings
    aggregate: AggregateSection
    evaluate: EvaluateSection
    source: str
    simulate: SimulationConfig | None = None

    @classmethod
    def load(cls, path: str | Path) -> PipelineConfig:
        """Read and check every section before any work; errors name the key and the file."""
        raw = C.load_yaml(path)
        source = str(path)
        C.check_sections(raw, SECTIONS, source)

        def typed(name: str, kind: type) -> Any:
            return C.build(kind, C.section(raw, name, C.dataclass_fields(kind), source),
                           source, name)

        ingest = typed("ingest", IngestSection)
        simulated = typed("simulate", SimulationConfig) if "simulate" in raw else None
        if bool(ingest.inputs) == (simulated is not None):
            raise C.ConfigError(f"{source}: ingest.inputs is required (files or a dataset "
                                "folder), or a simulate section instead - not both")
        run = typed("run", RunSection)
        em = EMSettings.from_raw(raw, source)
        if "random_state" not in em.em:
            em.em["random_state"] = run.seed
        return cls(run, ingest, em, typed("aggregate", AggregateSection),
                   typed("evaluate", EvaluateSection), source, simulated)

    def section_of(self, stage: str) -> dict[str, Any]:
        """The settings a stage depends on (part of its key and its manifest)."""
        em = {"em": self.em.em, "backend": self.em.backend_options,
              "init": self.em.init_options}
        reference = {"backend": self.em.backend, "options": self.em.backend_options,
                     "embeddings": needs_embeddings(self.em)}
        simulated = None if self.simulate is None else asdict(self.simulate)
        return {"ingest": {"ingest": asdict(self.ingest), "seed": self.run.seed,
                           "simulate": simulated},
                "reference": reference, "em": em,
                "aggregate": {**asdict(self.aggregate), "seed": self.run.seed},
                "evaluate": asdict(self.evaluate), "report": {}}[stage]


# -- the stages -------------------------------------------------------------------------------
def stage_ingest(cfg: PipelineConfig, out: Path) -> dict[str, Any]:
    """Read the inputs, or simulate the population into population/, then split them into
    data/ and (when a share of annotators is held out) heldout/."""
    inputs = cfg.ingest.inputs
    if cfg.simulate is not None:
        from pluralign.simulate import simulate, write_population
        write_population(simulate(cfg.simulate), out / "population")
        inputs = [str(out / "population")]
    if len(inputs) == 1 and (Path(inputs[0]) / "manifest.json").is_file():
        data = load(inputs[0])
        report: dict[str, Any] = {"read": len(data), "accepted": len(data)}
    else:
        from pluralign.ingest import ingest_with
        result = ingest_with(inputs, cfg.ingest)
        data, report = Annotations(result.records), result.report
    train, held = split_annotators(data, cfg.ingest.heldout_fraction, cfg.run.seed)
    train, seen = split_annotations(train, cfg.ingest.seen_fraction, cfg.run.seed)
    save(list(train), out / "data", {"source": inputs})
    for name, part in (("heldout", held), ("seen", seen)):
        if part is not None:
            save(list(part), out / name, {"source": inputs})
    warns = [] if held is None else split_label_warnings(train, held)
    for w in warns:
        print(f"WARNING [{w['code']}]: {w['message']}")
    return {"annotations": len(data), "train": len(train),
            "heldout": 0 if held is None else len(held),
            "seen": 0 if seen is None else len(seen),
            "annotators": len(data.annotator_ids), "warnings": warns, "ingest_report": {
                k: report[k] for k in ("read", "accepted", "rejected", "duplicates")
                if k in report}}


def split_annotators(data: Annotations, fraction: float,
                     seed: int) -> tuple[Annotations, Annotations | None]:
    """Hold out a share of annotators (all of their annotations), seeded. Stratified by the
    annotators' label (true_type, else group) when the data has labels, so that every labelled
    group with two or more annotators is represented on both sides."""
    if fraction <= 0:
        return data, None
    ids = data.annotator_ids
    labels = annotator_labels(data)
    rng = np.random.default_rng(seed)
    strata: dict[str, list[str]] = {}
    for h in ids:
        strata.setdefault(labels.get(h, ""), []).append(h)
    n_held = max(1, int(round(fraction * len(ids))))
    quota = {g: fraction * len(m) for g, m in strata.items()}
    take = {g: int(np.floor(q)) for g, q in quota.items()}
    by_remainder = sorted(strata, key=lambda g: (take[g] - quota[g], rng.random()))
    for g in by_remainder[: max(0, n_held - sum(take.values()))]:
        take[g] += 1
    if labels:  # every labelled group of two or more on both sides
        take = {g: min(max(t, 1), len(strata[g]) - 1) if len(strata[g]) >= 2 else t
                for g, t in take.items()}
    held = {h for g, members in strata.items()
            for h in rng.choice(members, take[g], replace=False).tolist()}
    return (data.subset(i for i, a in enumerate(data) if a.annotator_id not in held),
            data.subset(i for i, a in enumerate(data) if a.annotator_id in held))


def split_annotations(data: Annotations, fraction: float,
                      seed: int) -> tuple[Annotations, Annotations | None]:
    """Hold out a share of each annotator's annotations (rounded, at least one of two or more,
    never all), seeded: the seen users' further judgements for the predictive curve."""
    if fraction <= 0:
        return data, None
    rng = np.random.default_rng(seed)
    codes, _ = data.annotator_codes()
    held = np.zeros(len(data), dtype=bool)
    for h in range(codes.max() + 1 if len(codes) else 0):
        rows = np.flatnonzero(codes == h)
        take = min(len(rows) - 1, max(1, int(round(fraction * len(rows)))))
        held[rng.choice(rows, max(take, 0), replace=False)] = True
    return data.subset(np.flatnonzero(~held)), data.subset(np.flatnonzero(held))


def stage_reference(cfg: PipelineConfig, out: Path) -> dict[str, Any]:
    """One reference pass per dataset with every part later stages need (log-probs, trunk
    states, embeddings for the linear initialisation), into the reference cache."""
    sets = [load(out / name) for name in ("data", "heldout", "seen") if (out / name).is_dir()]
    opts = cfg.em.backend_options
    if cfg.em.backend == "lora":
        from pluralign.backends.lora import LoRABackend, LoRAConfig
        backend = LoRABackend(LoRAConfig(types=1, **opts))
        embeddings = needs_embeddings(cfg.em)
        passes = [backend.prepare(d, embeddings=embeddings) for d in sets]
        return {"sequences": [len(p.seqs) for p in passes],
                "from_cache": [p.ref.from_cache for p in passes],
                "trunk_layer": backend.start_layer if backend.trunk else None,
                "embeddings": embeddings}
    if opts.get("features") == "embedding":
        from pluralign.backends.linear import LinearBackend, LinearConfig
        backend = LinearBackend(LinearConfig(types=1, **opts))
        for d in sets:
            backend.design(d)
        return {"embeddings": True, "datasets": len(sets)}
    return {"skipped": "the backend needs no language model"}


def needs_embeddings(em: EMSettings) -> bool:
    """Whether a LoRA run starts from the linear backend on LM embeddings (init auto/linear)."""
    return em.backend == "lora" and em.em.get("init", "auto") in ("auto", "linear") and \
        em.em.get("n_types", 3) != 1


def stage_em(cfg: PipelineConfig, out: Path) -> dict[str, Any]:
    """EM-DPO on data/, checkpointed in checkpoints/ (a re-run resumes)."""
    from pluralign.stages.em import run_em
    summary = run_em(load(out / "data"), cfg.em, out, data_path=out / "data",
                     heldout=(out / "heldout").is_dir())
    print(summary)
    info = em_info(out / "em.json")
    return {"n_types": info["n_types"], "n_iter": info["n_iter"], "audit": info["audit"]}


def _heldout(out: Path) -> str | None:
    """The ingest stage's held-out split, if it made one."""
    return str(out / "heldout") if (out / "heldout").is_dir() else None


def stage_aggregate(cfg: PipelineConfig, out: Path) -> dict[str, Any]:
    from pluralign.aggregate.served import served_settings
    from pluralign.stages.aggregate import format_aggregate, run_aggregate
    a = cfg.aggregate
    served = served_settings(a.served_samples, a.served_prompts, a.served_tokens, cfg.run.seed,
                             a.served_tuning)
    result = run_aggregate(out, _heldout(out), estimator=a.estimator, type_weights=a.type_weights,
                           n_samples=a.n_samples, random_state=cfg.run.seed, merge=a.merge,
                           base_measure=a.base_measure, n_boot=a.n_boot,
                           objective=a.objective, served=served)
    print(format_aggregate(result))
    return {"max_regret": result["max_regret"], "weights": result["weights"]}


def stage_evaluate(cfg: PipelineConfig, out: Path) -> dict[str, Any]:
    from pluralign.stages.evaluate import format_evaluation, run_evaluate
    seen = cfg.evaluate.seen or (str(out / "seen") if (out / "seen").is_dir() else None)
    result = run_evaluate(out, cfg.evaluate.data or _heldout(out), cfg.evaluate.n_boot,
                          cfg.run.seed, predictive_orders=cfg.evaluate.predictive_orders,
                          seen_dir=seen, user_weights=cfg.evaluate.model_options())
    print(format_evaluation(result))
    return {"annotations": result["annotations"], "in_sample": result["in_sample"]}


def stage_report(cfg: PipelineConfig, out: Path) -> dict[str, Any]:
    from pluralign.stages.report import write_report
    return {"files": [str(p.relative_to(out)) for p in write_report(out)]}


RUNNERS: dict[str, Callable[[PipelineConfig, Path], dict[str, Any]]] = {
    "ingest": stage_ingest, "reference": stage_reference, "em": stage_em,
    "aggregate": stage_aggregate, "evaluate": stage_evaluate, "report": stage_report}


# -- running and skipping -----------------------------------------------------------------
def input_fingerprint(cfg: PipelineConfig) -> dict[str, Any]:
    """What the ingest stage reads, by content: the SHA-256 of each file, of every file in a
    folder (a flipped byte in a dataset folder is a change, caught by its fingerprint check
    when ingest re-reads it), plus the evaluation data's, which later stages read, and the
    group distributions a `simulate: from_groups` section reads."""
    out = {}
    groups = [cfg.simulate.from_groups] if cfg.simulate and cfg.simulate.from_groups else []
    for spec in [*cfg.ingest.inputs, *([cfg.evaluate.data] if cfg.evaluate.data else []),
                 *groups]:
        path = Path(spec)
        if path.is_file():
            out[spec] = sha256_file(path)
        else:
            out[spec] = None if not path.exists() else _sha256_tree(path)
    return out


def _sha256_tree(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file() and not q.name.startswith(".")):
        h.update(str(p.relative_to(path)).encode() + sha256_file(p).encode())
    return h.hexdigest()


def stage_key(stage: str, cfg: PipelineConfig, upstream: str, inputs: dict[str, Any]) -> str:
    """Hash of the stage's settings, its upstream key and (for ingest) the inputs' content."""
    parts = [stage, cfg.section_of(stage), upstream, inputs if stage == "ingest" else None]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def run_pipeline(cfg: PipelineConfig, out: Path | None = None,
                 from_stage: str | None = None, overwrite: bool = False) -> Path:
    """Run every stage not already done with the same key and intact outputs; returns the run
    folder. The folder is locked for the run: a second process aimed at it stops at once."""
    if from_stage is not None and from_stage not in STAGES:
        raise C.ConfigError(f"--from must be one of {', '.join(STAGES)}, got {from_stage!r}")
    out = user_path(cfg.run.out if out is None else out, "the run folder (run.out or --out)")
    with run_folder(out, "run", overwrite):
        _run_stages(cfg, out, from_stage)
    return out


def _run_stages(cfg: PipelineConfig, out: Path, from_stage: str | None) -> None:
    (out / "manifests").mkdir(parents=True, exist_ok=True)
    inputs = input_fingerprint(cfg)
    upstream, forced, ran = "", False, None
    had = {s for s in STAGES if (out / "manifests" / f"{s}.json").is_file()}  # ran before
    for stage in STAGES:
        forced = forced or stage == from_stage
        key = stage_key(stage, cfg, upstream, inputs)
        manifest_file = out / "manifests" / f"{stage}.json"
        done = manifest_info(manifest_file, STAGE_MANIFEST, ("outputs", "config")) \
            if manifest_file.is_file() else None
        damaged = [] if done is None else damaged_outputs(out, done)
        if not forced and done is not None and done.get("key") == key and not damaged:
            print(f"[{stage}] up to date, skipped")
        else:
            if damaged and done.get("key") == key:
                print(f"[{stage}] outputs missing or changed since it ran ({', '.join(damaged)})"
                      "; running it again")
            why = None if damaged and done.get("key") == key else \
                rerun_reason(stage, cfg, done, key, upstream, inputs, from_stage,
                             ran if stage in had else None)
            ran = ran or stage
            forced = forced or bool(damaged)  # later stages read what this one rewrites
            manifest_file.unlink(missing_ok=True)  # this stage and all later are redone
            for later in STAGES[STAGES.index(stage) + 1:]:
                (out / "manifests" / f"{later}.json").unlink(missing_ok=True)
            print(f"[{stage}] running" + (f" again: {why}" if why else ""))
            _seed(cfg.run.seed)
            t0 = time.perf_counter()
            before = _snapshot(out)
            result = RUNNERS[stage](cfg, out)
            write_json(manifest_file, {
                "stage": stage, "key": key, "upstream": upstream, "config_file": cfg.source,
                "config": cfg.section_of(stage), "inputs": inputs if stage == "ingest" else
                {"upstream_key": upstream}, "seed": cfg.run.seed, "versions": versions(),
                "wall_seconds": round(time.perf_counter() - t0, 3),
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                      1), "result": result,
                "outputs": _outputs(out, before)})
            print(f"[{stage}] done in {time.perf_counter() - t0:.1f} s")
        upstream = key


def rerun_reason(stage: str, cfg: PipelineConfig, done: dict[str, Any] | None, key: str,
                 upstream: str, inputs: dict[str, Any], from_stage: str | None,
                 earlier: str | None = None) -> str | None:
    """Why a stage that ran before runs again (None when it never ran): the settings that
    changed, the inputs, `earlier` (a stage that ran in this call), --from, or a manifest of
    another version."""
    if done is None:
        return f"--from {from_stage}" if from_stage else \
            f"{earlier} ran again" if earlier else None
    if from_stage and STAGES.index(stage) >= STAGES.index(from_stage):
        return f"--from {from_stage}"
    if done.get("key") == key or done.get("upstream") != upstream:
        return f"{earlier or 'an earlier stage'} ran again"
    changed = _changes(done.get("config"), json.loads(json.dumps(cfg.section_of(stage),
                                                                 default=str)), stage)
    if changed:
        return "settings changed (" + "; ".join(changed[:4]) + \
            (f"; {len(changed) - 4} more" if len(changed) > 4 else "") + ")"
    if stage == "ingest" and done.get("inputs") != inputs:
        moved = [k for k in inputs if (done.get("inputs") or {}).get(k) != inputs[k]]
        return f"inputs changed ({', '.join(moved) or 'the list of inputs'})"
    return "its record was written by another pluralign version"


def _changes(before: Any, after: Any, where: str) -> list[str]:
    """'key: old -> new' for every leaf that differs between two JSON values."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [c for k in sorted(set(before) | set(after), key=str)
                for c in _changes(before.get(k), after.get(k), f"{where}.{k}")]
    return [] if before == after else [f"{where}: {json.dumps(before)} -> {json.dumps(after)}"]


#: Run-folder entries that are bookkeeping, not a stage's outputs.
_NOT_OUTPUTS = ("manifests", "checkpoints")


def _snapshot(out: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file in the run folder but bookkeeping and hidden files."""
    return {rel: stat for rel, stat in snapshot(out).items()
            if rel.split("/")[0] not in _NOT_OUTPUTS}


def _outputs(out: Path, before: dict[str, tuple[int, int]]) -> dict[str, str]:
    """SHA-256 of each file the stage wrote (new or changed since `before`)."""
    return changed_files(out, before, _snapshot(out))


def damaged_outputs(out: Path, manifest: dict[str, Any]) -> list[str]:
    """The outputs a stage's manifest records that are now missing or changed; a manifest
    without the record (an older pluralign) counts as damaged, so the stage is redone."""
    outputs = manifest.get("outputs")
    if outputs is None:
        return ["(no record of outputs)"]
    return [rel for rel, digest in outputs.items()
            if not (out / rel).is_file() or sha256_file(out / rel) != digest]


def _seed(seed: int) -> None:
    """Seed every global generator a stage might touch."""
    import torch
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def main_run(args: argparse.Namespace) -> int:
    """`pluralign run`: load and check the YAML, run, print where the report is."""
    cfg = PipelineConfig.load(args.config)
    out = run_pipeline(cfg, args.out, args.from_stage, args.overwrite)
    print(f"report: {out / 'report.html'}")
    return 0
