"""Personalization with a finished run, no training: assign new annotators to types, generate
for a type, an annotator or the MMRA mixture, and choose the most telling next question.

The next question maximises the expected information gain about the annotator's type: the
mutual information between the type z ~ gamma (their current posterior) and their answer tau
to query q, I(z; tau) = sum_k gamma_k sum_tau P_k(tau) log(P_k(tau) / P(tau)), with P_k the
Plackett–Luce law of type k's implicit reward beta * s_k, exact by enumerating the answers
(every ordering of the query's top-L for L-long answers).
"""

from __future__ import annotations

import itertools
import json
import warnings
from typing import Any

import numpy as np
import torch

from pluralign.aggregate.merge import merge_logps
from pluralign.core import diagnostics
from pluralign.core.data import Annotation, Annotations
from pluralign.core.losses import plackett_luce_logprob
from pluralign.core.rankings import Rankings
from pluralign.em.estep import type_posteriors
from pluralign.em.fitted import FittedRun
from pluralign.personalize.predictive import Stages
from pluralign.personalize.user_weights import fit_user_prior
from pluralign.runfolder.artifacts import aggregate_info
from pluralign.runfolder.lineage import FAIR_POLICY
from pluralign.settings import SERVE

MAX_ANSWERS = 50_000
#: choose_policy's answer for the min-max merge (decoded from every type policy at once).
FAIR = -1


def assign(run: FittedRun, data: Annotations) -> tuple[np.ndarray, list[str]]:
    """Type posteriors of the annotators in `data` from the run's policies and priors."""
    return type_posteriors(run.backend, run.priors, data)


def blind_warnings(run: FittedRun, data: Annotations, what: str) -> list[dict[str, str]]:
    """Warnings when the run's policies cannot tell types apart on (part of) `data`."""
    return diagnostics.blind_data_warnings(
        diagnostics.type_blind(run.backend.logratios(data)), what)


def answer_logprobs(rewards: np.ndarray, length: int) -> tuple[np.ndarray, list[tuple]]:
    """log P_k(tau) of every answer tau (an ordered top-`length` of the m candidates) for one
    query: rewards[m, K] -> ([answers, K], answers)."""
    m, k = rewards.shape
    answers = list(itertools.permutations(range(m), min(length, m)))
    if len(answers) > MAX_ANSWERS:
        raise ValueError(f"{len(answers)} possible answers for m={m}, L={length}; ask for "
                         "shorter answers (ranking_length)")
    ranks = Rankings(torch.tensor(answers, dtype=torch.long),
                     torch.ones(len(answers), m, dtype=torch.bool))
    r = torch.as_tensor(rewards, dtype=torch.float64)
    out = np.stack([plackett_luce_logprob(r[:, j].expand(len(answers), m), ranks).numpy()
                    for j in range(k)], axis=1)
    return out, answers


def information_gain(rewards: np.ndarray, posterior: np.ndarray, length: int,
                     logp: np.ndarray | None = None) -> float:
    """I(type; answer) in nats for one query (rewards[m, K]) under the current posterior;
    `logp`: the query's answer_logprobs table when already computed (a session asks again
    at every step)."""
    if logp is None:
        logp, _ = answer_logprobs(rewards, length)
    p = np.exp(logp)                                   # [answers, K]
    marginal = p @ posterior                           # [answers]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (logp - np.log(marginal)[:, None]), 0.0)
    return float(terms.sum(axis=0) @ posterior)


def rank_queries(run: FittedRun, queries: Annotations, posterior: np.ndarray,
                 length: int | None = None) -> list[dict[str, Any]]:
    """Every query with its expected information gain, best first. `length`: how many places
    the annotator will rank (default: all of the query's candidates)."""
    shortest = min(q.m for q in queries)
    if length is not None and not 1 <= length <= shortest:
        raise ValueError(f"--ranking-length must be in 1..{shortest} (the shortest candidate "
                         f"list), got {length}")
    s = run.backend.logratios(queries)
    out = []
    for i, q in enumerate(queries):
        gain = information_gain(run.backend.beta * s[i, : q.m], posterior, length or q.m)
        out.append({"index": i, "item_id": q.item_id, "prompt": q.prompt, "m": q.m,
                    "information_gain": gain})
    return sorted(out, key=lambda r: -r["information_gain"])


def annotator_posterior(run: FittedRun, annotator: str,
                        answers: Annotations | None = None) -> tuple[np.ndarray, str]:
    """The annotator's type posterior and where it came from: `answers` (their annotations so
    far) if given, else the run's posteriors, else the type priors (a newcomer, said with a
    warning)."""
    if answers is not None:
        mine = answers.subset(i for i, a in enumerate(answers) if a.annotator_id == annotator)
        if len(mine):
            return assign(run, mine)[0][0], f"from {len(mine)} answer(s) given"
    if annotator in run.annotator_ids:
        return run.posteriors[run.annotator_ids.index(annotator)], "the run's"
    warnings.warn(f"annotator {annotator!r} is unknown to the run and has no answers given: "
                  "starting from the type priors", UserWarning, stacklevel=2)
    return run.priors, f"{annotator!r} unknown to the run: the type priors"


def annotator_weights(run: FittedRun, annotator: str, answers: Annotations | None = None,
                      **options: Any) -> tuple[np.ndarray, str]:
    """The annotator's own weights over the type basis (the posterior mean under the
    user-weights prior, fitted to the run's training users; `options`: UserWeights') and
    where they came from: `answers` if given, else their annotations in the run's data, else
    the prior (a newcomer, said with a warning)."""
    train = run.data()
    s_train = run.backend.logratios(train)
    model = fit_user_prior(run, train, s_train, **options)
    for data, source in ((answers, "from {} answer(s) given"), (train, "from the run's {}")):
        if data is None:
            continue
        rows = np.array([i for i, a in enumerate(data) if a.annotator_id == annotator], int)
        if len(rows):  # the run's data is scored already; answers: only this user's
            s = s_train if data is train else run.backend.logratios(data.subset(rows))
            mine = rows if data is train else np.arange(len(rows))
            stages = Stages.of(data if data is train else data.subset(rows), s.shape[1])
            return model.mean_weights(s, stages, mine), source.format(len(rows))
    warnings.warn(f"annotator {annotator!r} is unknown to the run and has no answers given: "
                  "starting from the prior over user weights", UserWarning, stacklevel=2)
    return model.prior_weights(), \
        f"{annotator!r} unknown to the run: the prior's mean"


def choose_policy(run: FittedRun, type_k: int | None = None, annotator: str | None = None,
                  policy: str | None = None, seed: int = 0, serve: str = "posterior",
                  answers: Annotations | None = None) -> tuple[int | np.ndarray, str]:
    """Which policy serves this request, and why (for the user): a type index, FAIR, or
    weights over the type policies (an annotator served by their posterior)."""
    k = run.backend.n_types
    if type_k is not None:
        if not 0 <= type_k < k:
            raise ValueError(f"--type must be in 0..{k - 1}, got {type_k}")
        return type_k, f"type_{type_k} (asked for)"
    if annotator is not None:
        return serve_annotator(run, annotator, serve, answers)
    if policy == "fair":
        fair = fair_policy(run)
        shown = ", ".join(f"{w:.3f}" for w in fair["weights"])
        served = fair.get("served_max_regret")
        regret = (f"worst-type regret as served {served:.4f}, certified on the candidates "
                  f"{fair['max_regret']:.4f}" if served is not None else
                  f"worst-type regret on the candidates {fair['max_regret']:.4f}")
        return FAIR, f"the min-max merge (weights {shown}; {regret})"
    if policy == "mmra":
        agg = run.path / "aggregate.json"
        if not agg.is_file():
            raise FileNotFoundError(f"{agg} is missing: run `pluralign aggregate --run "
                                    f"{run.path}` first")
        weights = np.asarray(aggregate_info(agg, k)["weights"])
        j = int(np.random.default_rng(seed).choice(k, p=weights / weights.sum()))
        return j, f"type_{j}: drawn from the MMRA mixture (p = {weights[j]:.3f})"
    raise ValueError("say which policy: --type K, --annotator ID or --policy mmra|fair")


def serve_annotator(run: FittedRun, annotator: str, serve: str = "posterior",
                    answers: Annotations | None = None) -> tuple[int | np.ndarray, str]:
    """The annotator's policy: with `serve` "posterior" the geometric mixture of the type
    policies at their posterior gamma (pi proportional to prod_k pi_k^gamma_k, which minimises
    their expected KL regret sum_k gamma_k beta KL(pi || pi_k): DESIGN §10), with "argmax" their
    most likely type's policy. The posterior comes from `answers` when given, else the run's,
    else the priors (annotator_posterior)."""
    if serve not in SERVE:
        raise ValueError(f"serve must be one of {', '.join(SERVE)}, got {serve!r}")
    if serve == "weights":
        from pluralign.backends.generation import user_spec  # transformers: only to generate
        w, source = annotator_weights(run, annotator, answers)
        shown = ", ".join(f"{v:.3f}" for v in w)
        return user_spec(w), (
            f"annotator {annotator}'s own weights over the type basis ({shown}, {source}): "
            "pi_ref * exp(sum_k w_k log(pi_k / pi_ref)), decoded token by token")
    post, source = annotator_posterior(run, annotator, answers)
    shown = ", ".join(f"{p:.3f}" for p in post)
    if serve == "argmax":
        j = int(post.argmax())
        return j, (f"type_{j}: annotator {annotator}'s most likely type (posterior {shown}, "
                   f"{source})")
    return np.asarray(post, dtype=np.float64), (
        f"the posterior mixture of the type policies for annotator {annotator} (posterior "
        f"{shown}, {source}): pi proportional to prod_k pi_k^gamma_k, which minimises their "
        "expected regret; --serve argmax serves the most likely type's alone")


def posterior_logps(log_types: np.ndarray, posterior: np.ndarray) -> np.ndarray:
    """log pi_gamma on each row's candidates ([n, M, K] -> [n, M]): the posterior-weighted
    geometric mixture of the type policies, each restricted to the candidates (how the linear
    backend serves a user)."""
    return merge_logps(log_types, np.asarray(posterior, dtype=np.float64))


def fair_policy(run: FittedRun) -> dict[str, Any]:
    """The run's min-max merge (fair/policy.json, written by `pluralign aggregate`)."""
    path = run.path / FAIR_POLICY
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the run has no min-max merge; run "
                                f"`pluralign aggregate --run {run.path}` (objective kl)")
    return json.loads(path.read_text())


def generate(run: FittedRun, prompt: str, k: int | np.ndarray, n: int = 1, seed: int = 0,
             **decoding: Any) -> list[str]:
    """n responses to `prompt` from type k's policy (the LoRA backend generates). `decoding`:
    max_new_tokens, temperature, top_p (LoRABackend.sample)."""
    if run.info["backend"] != "lora":
        raise ValueError(f"the {run.info['backend']} backend scores given candidates and "
                         "cannot generate text; use a LoRA run")
    row = Annotations([Annotation("user", prompt, ["", ""], [0])])
    if isinstance(k, dict):  # a user's own weights over the base model and the adapters
        return run.backend.sample(row, k, n, seed, **decoding)[0].responses
    if isinstance(k, np.ndarray):  # an annotator's posterior: the same token-level
        return run.backend.sample_combined(row, k, n, seed,  # combination as the merge
                                           **decoding)[0].responses
    if k == FAIR:
        weights = fair_policy(run)["weights"]
        return run.backend.sample_combined(row, np.asarray(weights), n, seed,
                                           **decoding)[0].responses
    return run.backend.sample(row, k, n, seed, **decoding)[0].responses
