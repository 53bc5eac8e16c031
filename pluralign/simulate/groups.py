"""Annotators who answer as their group does (simulate --from-groups; DESIGN §8).

Each group of a group-distribution file (pluralign.ingest.groups) is a type. An annotator of
group g answers their questions with a Plackett–Luce ranking on log-shares: utilities u_j =
log p_gj, so that the first choice is drawn with probability p_gj exactly (the group's share)
and the later places follow the same law on the options left. Options the group never chose
(share 0) come last, in random order. A ranking length of 1 gives survey-style top-1 answers.

Every annotation carries its group's real distribution (metadata `group_distribution`, and
`ordinal` for ordered options), so evaluate compares policies with the real shares; the Bayes
oracle's and the supervised ceiling's assignments are written beside the data (ceilings.json).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from pluralign.core.data import Annotation
from pluralign.ingest.groups import NON_GROUPS, GroupQuestion, GroupTable, read_groups
from pluralign.settings import SimulationConfig
from pluralign.simulate.group_ceilings import ceilings
from pluralign.simulate.store import Population, config_json


def simulate_groups(config: SimulationConfig) -> Population:
    """Annotators per group, their questions and answers, and the ceilings (module doc)."""
    assert config.from_groups is not None
    table = read_groups(config.from_groups, config.attribute)
    groups = _chosen(table, config.groups)
    pool = _pool(table, groups, config)
    rng = np.random.default_rng(config.seed)
    prior = np.full(len(groups), 1 / len(groups)) if config.prior is None else \
        np.asarray(config.prior, dtype=float)
    if len(prior) != len(groups):
        raise ValueError(f"prior has {len(prior)} values for {len(groups)} groups {groups}")
    members = _balanced(config.annotators, prior, rng)
    shared = _questionnaire(pool, groups, config, rng) if config.shared_questions else None
    width = len(str(config.annotators - 1))
    records, annotators, asked = [], {}, []
    for h, z in enumerate(members):
        aid, group = f"a{h:0{width}d}", groups[z]
        mine = shared if shared is not None else [q for q in pool if group in q.shares]
        n = min(config.per_annotator, len(mine))
        asked.append(n)
        annotators[aid] = {"type": group, "kind": "typed", "questions": n}
        for i in (range(n) if shared is not None else rng.choice(len(mine), n, replace=False)):
            q = mine[int(i)]
            ranking = draw_ranking(q.shares[group], config.ranking_length, rng)
            records.append(_record(aid, group, q, ranking, table, len(records) + 1))
    truth = {"flavour": "groups", "config": config_json(config),
             "source": table.source, "layout": table.layout, "attribute": table.attribute,
             "types": [{"name": g, "annotators": int((members == k).sum())}
                       for k, g in enumerate(groups)],
             "prior": prior.round(6).tolist(), "questions": len(pool),
             "questions_per_annotator": {"min": min(asked), "max": max(asked)},
             "annotators": annotators}
    return Population(records, truth, ceilings(records, groups, pool, prior, config.seed))


def draw_ranking(shares: np.ndarray, length: int | None, rng: np.random.Generator
                 ) -> list[int]:
    """A top-`length` PL ranking on log-shares (Gumbel-max), zero shares last in random
    order; None ranks every option."""
    with np.errstate(divide="ignore"):
        keys = np.log(shares) + rng.gumbel(size=len(shares))
    order = np.lexsort((rng.random(len(shares)), keys))[::-1]
    return [int(i) for i in order[: min(length or len(shares), len(shares))]]


def _chosen(table: GroupTable, wanted: list[str]) -> list[str]:
    found = table.groups
    if not wanted:
        groups = [g for g in found if g not in NON_GROUPS]
    else:
        missing = [g for g in wanted if g not in found]
        if missing:
            raise ValueError(f"no distribution for the group(s) {missing} in {table.source}; "
                             f"groups found: {found}")
        groups = list(dict.fromkeys(wanted))
    if len(groups) < 2:
        raise ValueError(f"need at least 2 groups to simulate, got {groups}")
    return groups


def _pool(table: GroupTable, groups: list[str], config: SimulationConfig
          ) -> list[GroupQuestion]:
    """The questions with enough of the chosen groups (refusals dropped unless kept); at most
    `items` of them, those with the most groups first."""
    pool = []
    for q in table.questions:
        if config.refusals == "drop":
            q = q.without_refusals()
        if q is None:
            continue
        q = replace(q, shares={g: s for g, s in q.shares.items() if g in groups})
        if len(q.shares) >= min(config.min_groups, len(groups)):
            pool.append(q)
    if not pool:
        raise ValueError(f"no question of {table.source} has at least {config.min_groups} of "
                         f"the groups {groups}")
    if config.items is not None and config.items < len(pool):
        rng = np.random.default_rng(config.seed + 1)
        order = sorted(rng.permutation(len(pool)).tolist(), key=lambda i: -len(pool[i].shares))
        pool = [pool[i] for i in sorted(order[: config.items])]
    return pool


def _balanced(n: int, prior: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Group of each annotator: counts as close to n * prior as rounding allows, shuffled."""
    quota = n * prior
    counts = np.floor(quota).astype(int)
    for k in np.argsort(counts - quota, kind="stable")[: n - counts.sum()]:
        counts[k] += 1
    return rng.permutation(np.repeat(np.arange(len(prior)), counts))


def _questionnaire(pool: list[GroupQuestion], groups: list[str], config: SimulationConfig,
                   rng: np.random.Generator) -> list[GroupQuestion]:
    common = [q for q in pool if all(g in q.shares for g in groups)]
    if not common:
        raise ValueError("shared_questions: no question has every chosen group's distribution")
    return [common[int(i)] for i in rng.permutation(len(common))[: config.per_annotator]]


def _record(aid: str, group: str, q: GroupQuestion, ranking: list[int], table: GroupTable,
            row: int) -> Annotation:
    meta: dict[str, Any] = {"group_distribution": q.shares[group].round(6).tolist()}
    if q.ordered:
        meta["ordinal"] = list(q.ordinal or [])
    if table.attribute:
        meta["attribute"] = table.attribute
    return Annotation(annotator_id=aid, prompt=q.text, responses=list(q.options),
                      ranking=ranking, item_id=q.key, true_type=group, metadata=meta,
                      source="simulate", source_row=row)
