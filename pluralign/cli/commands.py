"""Each `pluralign` subcommand: its flags (generated from the settings layer where it has
settings) and the call into its stage driver (pluralign.stages)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pluralign.cli.args import (
    at_least,
    one_line,
    overwrite_arg,
    path_arg,
    refuse_file_overwrite,
    refuse_inputs,
    refuse_overwrite,
    run_arg,
    seed_arg,
    warn,
    writes_run,
)
from pluralign.core import distributed


def ingest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", type=path_arg,
                   help=".jsonl/.json/.csv/.tsv/.parquet (optionally .gz), a datasets folder, "
                        "or a dataset name")
    p.add_argument("--out", required=True, metavar="DIR", type=path_arg,
                   help="dataset folder to write")
    from pluralign.settings import IngestOptions
    from pluralign.settings import config as C
    C.add_flags(p, IngestOptions)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    overwrite_arg(p)


def cmd_ingest(args: argparse.Namespace) -> int:
    from pluralign.settings import IngestOptions
    from pluralign.settings import config as C
    opts = C.from_flags(IngestOptions, args)
    refuse_inputs(args.out, args.inputs, holding=True)
    refuse_overwrite(args.out, args.overwrite)
    from pluralign.ingest import format_report, ingest_with, write
    result = ingest_with(args.inputs, opts)
    write(result, args.out, with_rejects=opts.on_error == "skip")
    if args.json:
        print(json.dumps(result.report, indent=2, ensure_ascii=False))
    else:
        print(format_report(result.report))
        extra = ", rejects.jsonl" if opts.on_error == "skip" else ""
        print(f"wrote {Path(args.out) / 'annotations.parquet'} (+ manifest.json, report.json"
              f"{extra})")
    return 0


def simulate_args(p: argparse.ArgumentParser) -> None:
    from pluralign.settings import SimulationConfig
    from pluralign.settings import config as C
    p.add_argument("--out", required=True, metavar="DIR", type=path_arg,
                   help="dataset folder to write")
    C.add_flags(p, SimulationConfig)
    overwrite_arg(p)


def cmd_simulate(args: argparse.Namespace) -> int:
    from pluralign.settings import SimulationConfig
    from pluralign.settings import config as C
    config = C.from_flags(SimulationConfig, args)
    refuse_overwrite(args.out, args.overwrite)
    from pluralign.ingest import format_report
    from pluralign.simulate import simulate, write_population
    population = simulate(config)
    report = write_population(population, args.out)
    print(format_report(report))
    if population.ceilings is not None:
        c = population.ceilings
        print(f"ceilings over {c['annotators']} annotators of {len(c['groups'])} groups: Bayes "
              f"oracle ARI {c['oracle']['ari']:.3f} (accuracy {c['oracle']['accuracy']:.3f}), "
              f"supervised ARI {c['supervised']['ari']:.3f} (accuracy "
              f"{c['supervised']['accuracy']:.3f})")
    print(f"wrote {Path(args.out) / 'annotations.parquet'} (+ manifest.json, truth.json, "
          f"report.json{', ceilings.json' if population.ceilings is not None else ''})")
    return 0


def export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", metavar="DIR", type=path_arg, help="a canonical dataset folder")
    p.add_argument("--out", required=True, metavar="FILE", type=path_arg,
                   help="JSON Lines file to write (never inside DIR)")
    overwrite_arg(p, "file")


def cmd_export(args: argparse.Namespace) -> int:
    from pluralign.core.data import load
    refuse_file_overwrite(args.out, args.overwrite, [args.data])
    data = load(args.data)
    data.to_jsonl(args.out)
    print(f"wrote {len(data)} annotations to {args.out}")
    return 0


def em_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="DIR", type=path_arg,
                   help="a canonical dataset folder")
    p.add_argument("--out", required=True, metavar="DIR", type=path_arg,
                   help="where posteriors.csv, em.json and the policies go; re-running with the "
                        "same DIR resumes an interrupted run from its checkpoints")
    from pluralign.settings import FEATURES, EMSection
    from pluralign.settings import config as C
    from pluralign.settings.backends import BACKEND_CONFIGS
    C.add_flags(p, EMSection)
    p.add_argument("--features", choices=FEATURES, default=None,
                   help="linear backend features (default given; as --linear-features)")
    p.add_argument("--model", default=None, metavar="SPEC",
                   help="LM for the lora backend or embedding features "
                        "(default builtin:smollm2-135m; as --lora-model or --linear-model)")
    for name, kind in BACKEND_CONFIGS.items():  # every backend setting, --linear-l2 ...
        C.add_flags(p, kind, prefix=name, skip=("types",))  # types: EM's n_types
    overwrite_arg(p, "run")
    p.add_argument("--config", default=None, metavar="FILE", type=path_arg,
                   help="YAML with sections em (EMDPO parameters), linear and lora "
                        "(backend settings); flags override it")


def cmd_em(args: argparse.Namespace) -> int:
    from pluralign.core.data import load
    from pluralign.stages.em import EMSettings, run_em
    settings = EMSettings.from_sources(args.config, args)
    refuse_inputs(args.out, [args.data])
    data = load(args.data)
    summary = run_em(data, settings, Path(args.out), data_path=args.data,
                     overwrite=args.overwrite)
    if distributed.is_main():
        print(summary)
    return 0


def run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG.yaml", type=path_arg,
                   help="sections run, ingest, em, linear, lora, aggregate, evaluate "
                        "(see pipelines/)")
    p.add_argument("--out", default=None, metavar="RUN_DIR", type=path_arg,
                   help="run folder (default: run.out in the YAML)")
    overwrite_arg(p, "run")
    p.add_argument("--from", dest="from_stage", default=None, metavar="STAGE",
                   help="redo this stage and every later one: ingest, reference, em, "
                        "aggregate, evaluate or report")


def cmd_run(args: argparse.Namespace) -> int:
    from pluralign.stages.pipeline import main_run
    return main_run(args)


def aggregate_args(p: argparse.ArgumentParser) -> None:
    from pluralign.settings import AggregateSection
    from pluralign.settings import config as C
    writes_run(p)
    p.add_argument("--data", default=None, metavar="DIR", type=path_arg,
                   help="prompts to estimate regret on (default: the run's own data); "
                        "held-out prompts are better")
    C.add_flags(p, AggregateSection)
    seed_arg(p, "seed of the sampled estimator, the served regrets and the bootstrap")


def cmd_aggregate(args: argparse.Namespace) -> int:
    from pluralign.settings import AggregateSection
    from pluralign.settings import config as C
    a = C.from_flags(AggregateSection, args)
    from pluralign.aggregate.served import served_settings
    from pluralign.stages.aggregate import format_aggregate, run_aggregate
    served = served_settings(a.served_samples, a.served_prompts, a.served_tokens, args.seed,
                             tune=a.served_tuning)
    out = run_aggregate(Path(args.run), args.data, estimator=a.estimator,
                        type_weights=a.type_weights, n_samples=a.n_samples,
                        random_state=args.seed, merge=a.merge, base_measure=a.base_measure,
                        n_boot=a.n_boot, objective=a.objective, served=served,
                        overwrite=args.overwrite)
    print(format_aggregate(out))
    print(f"wrote {Path(args.run) / 'aggregate.json'}" + (
        f", {Path(args.run) / 'merged'}/" if out.get("merged_path") else ""))
    return 0


def evaluate_args(p: argparse.ArgumentParser) -> None:
    from pluralign.settings import EvaluateSection
    from pluralign.settings import config as C
    writes_run(p)
    C.add_flags(p, EvaluateSection)
    seed_arg(p, "bootstrap seed")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pluralign.settings import EvaluateSection
    from pluralign.settings import config as C
    e = C.from_flags(EvaluateSection, args)
    from pluralign.stages.evaluate import format_evaluation, run_evaluate
    out = run_evaluate(Path(args.run), e.data, e.n_boot, args.seed, args.overwrite,
                       e.predictive_orders, e.seen, e.model_options())
    print(format_evaluation(out))
    print(f"wrote {Path(args.run) / 'evaluation.json'}")
    return 0


def report_args(p: argparse.ArgumentParser) -> None:
    writes_run(p)


def cmd_report(args: argparse.Namespace) -> int:
    from pluralign.stages.report import write_report
    paths = write_report(Path(args.run), args.overwrite)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def assign_args(p: argparse.ArgumentParser) -> None:
    run_arg(p)
    p.add_argument("--data", required=True, metavar="NEW_DATA", type=path_arg,
                   help="the new annotators' annotations: a dataset folder or any input "
                        "`pluralign ingest` reads (a file in any of its formats, a datasets "
                        "folder), validated as ingest does")
    p.add_argument("--preset", default="auto", help="input format of a file (as ingest)")
    p.add_argument("--out", default=None, metavar="FILE", type=path_arg,
                   help="write the posteriors as CSV here (default: print them); never into "
                        "the run folder, whose posteriors.csv is the run's own")
    p.add_argument("--weights", action="store_true",
                   help="also each annotator's own weights over the type basis (w_0.., the "
                        "posterior mean; their prior fitted to the run's training users: "
                        "DESIGN §10)")
    from pluralign.settings import UserWeightsOptions
    from pluralign.settings import config as C
    C.add_flags(p, UserWeightsOptions)
    overwrite_arg(p, "file")


def cmd_assign(args: argparse.Namespace) -> int:
    from pluralign.em.fitted import load_run
    from pluralign.ingest import to_annotations
    from pluralign.personalize.serving import assign, blind_warnings
    from pluralign.runfolder.posteriors import posteriors_table, write_posteriors
    if args.out:
        refuse_file_overwrite(args.out, args.overwrite, [args.run, args.data])
    run = load_run(args.run)
    data = to_annotations(args.data, args.preset)
    gamma, ids = assign(run, data)
    warn(blind_warnings(run, data, "annotations"))
    weights = None
    if args.weights:
        from pluralign.personalize.user_weights import fit_user_prior
        from pluralign.settings import UserWeightsOptions
        from pluralign.settings import config as C
        model = fit_user_prior(run, run.data(), **C.from_flags(UserWeightsOptions,
                                                              args).model_options())
        weights = model.all_mean_weights(run.backend.logratios(data), data)
    if args.out:
        write_posteriors(Path(args.out), ids, gamma, weights)
        print(f"wrote {len(ids)} annotators' type posteriors to {args.out}")
    else:
        print(posteriors_table(ids, gamma, summary=True, digits=4, weights=weights), end="")
    return 0


def generate_args(p: argparse.ArgumentParser) -> None:
    run_arg(p)
    p.add_argument("--prompt", required=True, metavar="TEXT")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--type", type=at_least(0, "--type"), dest="type_k", metavar="K",
                     help="type K's policy")
    who.add_argument("--annotator", metavar="ID",
                     help="the annotator's policy (see --serve): their posterior from --answers, "
                          "else the run's, else the type priors for a newcomer")
    who.add_argument("--policy", choices=["mmra", "fair"],
                     help="mmra: draw a type policy by the mixture weights; fair: decode with "
                          "the min-max merge of every type policy (aggregate's deploy choice "
                          "under the kl objective)")
    from pluralign.settings import SERVE
    p.add_argument("--serve", choices=SERVE, default="posterior",
                   help="with --annotator: posterior (default) decodes the geometric mixture of "
                        "the type policies at their posterior, the policy minimising their "
                        "expected regret; argmax their most likely type's policy alone; weights "
                        "their own weights over the type basis (assign --weights), pi_ref * "
                        "exp(sum_k w_k log(pi_k / pi_ref)), the prior fitted to the run's "
                        "training users")
    p.add_argument("--answers", default=None, metavar="DATA", type=path_arg,
                   help="with --annotator: their annotations so far (any input `pluralign "
                        "ingest` reads), for a user the run has not seen")
    p.add_argument("--preset", default="auto", help="input format of --answers (as ingest)")
    p.add_argument("--samples", type=at_least(1, "--samples"), default=1, metavar="N")
    seed_arg(p, "sampling seed")
    p.add_argument("--max-new-tokens", type=at_least(1, "--max-new-tokens"), default=None,
                   metavar="N",
                   help="longest answer in tokens (default: the run's max_response_tokens)")
    p.add_argument("--temperature", type=float, default=1.0, metavar="T",
                   help="> 0; below 1 sharper, above 1 more varied (default 1: the policy)")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P",
                   help="nucleus sampling: draw from the most likely tokens holding mass P "
                        "(default 1: all)")


def cmd_generate(args: argparse.Namespace) -> int:
    from pluralign.em.fitted import load_run
    from pluralign.personalize.serving import choose_policy, generate
    run = load_run(args.run)
    answers = None
    if args.answers:
        from pluralign.ingest import to_annotations
        answers = to_annotations(args.answers, args.preset)
    k, why = choose_policy(run, args.type_k, args.annotator, args.policy, args.seed,
                           args.serve, answers)
    print(f"policy: {why}", file=sys.stderr)
    for text in generate(run, args.prompt, k, args.samples, args.seed,
                         max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                         top_p=args.top_p):
        print(text)
    return 0


def suggest_args(p: argparse.ArgumentParser) -> None:
    run_arg(p)
    p.add_argument("--annotator", required=True, metavar="ID")
    p.add_argument("--candidates", required=True, metavar="FILE", type=path_arg,
                   help="candidate queries (a prompt with 3+ responses each): a dataset folder "
                        "or any input `pluralign ingest` reads (rankings may be placeholders)")
    p.add_argument("--answers", default=None, metavar="DATA", type=path_arg,
                   help="the annotator's annotations so far, in any form --candidates takes "
                        "(default: the run's posterior)")
    p.add_argument("--preset", default="auto", help="input format of the files (as ingest)")
    p.add_argument("--ranking-length", type=at_least(1, "--ranking-length"), default=None,
                   metavar="L", help="how many places the annotator will rank (default: all; "
                                     "at most the shortest candidate list)")
    p.add_argument("--top", type=at_least(1, "--top"), default=10, metavar="N",
                   help="queries to show")


def cmd_suggest(args: argparse.Namespace) -> int:
    from pluralign.em.fitted import load_run
    from pluralign.ingest import to_annotations
    from pluralign.personalize.serving import annotator_posterior, blind_warnings, rank_queries
    run = load_run(args.run)
    queries = to_annotations(args.candidates, args.preset)
    answers = to_annotations(args.answers, args.preset) if args.answers else None
    warn(blind_warnings(run, queries, "candidate queries"))
    if answers is not None:
        warn(blind_warnings(run, answers, "answers"))
    post, source = annotator_posterior(run, args.annotator, answers)
    print(f"current posterior ({source}): "
          + ", ".join(f"type_{k} {p:.3f}" for k, p in enumerate(post)))
    for r in rank_queries(run, queries, post, args.ranking_length)[: args.top]:
        prompt = r["prompt"] if isinstance(r["prompt"], str) else json.dumps(r["prompt"])
        print(f"{r['information_gain']:.4f} nats  #{r['index']}  {one_line(prompt, 70)}")
    return 0
