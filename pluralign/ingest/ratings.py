"""The `ratings` layout: one row per (rater, item, rating), items that share a prompt.

Columns: annotator_id, prompt, response (the item: a book's blurb, a completion), rating
(higher is better); optional features, true_type, group. A rater's ratings of the items of one
prompt form a pool, and the pool becomes lists of at most `list_size` items, each rating used
once, by a seeded sampler that prefers distinct ratings:

1. the list's first item comes from the largest group of equal ratings that still has a lower
   rating beside it (ties: at random), so every list has a strict best item;
2. the rest come one per distinct lower rating, from the largest such groups first, until the
   list holds list_size items or no distinct lower rating is left. A list never holds two
   equal ratings, so `--ties` never has to act;
3. repeat while two distinct ratings remain. Ratings left then (all equal: no preference among
   them) are counted as `left_over`, as is a pool's only rating.

The sampler's seed is the `ratings_seed` with the rater and prompt, so a pool's lists do not
depend on the file's row order. Every rating is accounted for in the report's `ratings` block:
rows == in_lists + left_over + duplicate + rejected (bad rows, and rows of lists rejected
whole).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator

import numpy as np

from pluralign.core.data import Annotation, FieldError
from pluralign.ingest import fields as F
from pluralign.ingest.presets import (
    COMMON,
    Context,
    Preset,
    RatingsOptions,
    RawRow,
    Unit,
    annotation,
    bind,
    ranking_from_scores,
    stack_features,
    varying_fields,
)

__all__ = ["Ratings", "RatingsOptions", "account", "check_account", "sample_lists"]

class Ratings(Preset):
    name = "ratings"
    signature = (frozenset({"response", "rating"}),)
    consumed = frozenset({"prompt", "response", "rating"})

    def units(self, rows: list[RawRow], ctx: Context) -> Iterator[Unit]:
        tally = ctx.tally
        pools: dict[tuple, list[tuple[RawRow, float]]] = {}
        for r in rows:
            tally["rows"] += 1
            try:
                if r.error is not None:
                    raise r.error
                d = r.data or {}
                who = None if ctx.synthetic_annotator else F.ident(d, "annotator_id")
                prompt = self._prompt(d, ctx)
                F.response(F.require(d, "response"), "response")
                value = F.number(F.require(d, "rating"), "rating", r.textual)
            except FieldError as e:
                yield Unit(r.location, r.raw, None, e)
                continue
            pools.setdefault((who, json.dumps(prompt, sort_keys=True)), []).append((r, value))
        for key, pool in pools.items():
            pool.sort(key=lambda x: (json.dumps((x[0].data or {}).get("response"),
                                                sort_keys=True), x[1]))  # row order: no matter
            lists, left = sample_lists([v for _, v in pool], ctx.ratings.list_size,
                                       _seed(ctx.ratings.ratings_seed, key))
            tally["left_over"] += len(left)
            for members in lists:
                chosen = [pool[i] for i in members]
                yield Unit(chosen[0][0].location, [m.raw for m, _ in chosen],
                           bind(self._build, chosen, ctx))

    @staticmethod
    def _prompt(d: dict, ctx: Context) -> object:
        if F.missing(d, "prompt") and ctx.ratings.default_prompt is not None:
            return ctx.ratings.default_prompt
        return F.prompt(d)

    def _build(self, chosen: list[tuple[RawRow, float]], ctx: Context) -> Annotation:
        rows, ratings = [m for m, _ in chosen], [v for _, v in chosen]
        first, d = rows[0], rows[0].data or {}
        responses = [F.response((m.data or {})["response"], "response") for m in rows]
        data = {**d, "features": stack_features([(m.data or {}).get("features") for m in rows])}
        extra = varying_fields(rows, self.consumed | set(COMMON))
        extra.update(ratings=ratings, rows=[m.location.number for m in rows])
        ranking = ranking_from_scores(ratings, ctx.ties, "rating")
        return annotation(RawRow(first.location, data, first.raw), ctx, self._prompt(d, ctx),
                          responses, ranking, self.consumed | set(extra), extra)


def _seed(seed: int, key: tuple) -> int:
    digest = hashlib.sha256(json.dumps([seed, *key], default=str).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def sample_lists(ratings: list[float], size: int, seed: int
                 ) -> tuple[list[list[int]], list[int]]:
    """Lists of indices into `ratings` (module docstring, steps 1-3) and the left-over ones."""
    rng = np.random.default_rng(seed)
    buckets: dict[float, list[int]] = {}
    for i in rng.permutation(len(ratings)).tolist():
        buckets.setdefault(ratings[i], []).append(i)
    lists = []
    while sum(1 for b in buckets.values() if b) >= 2:
        lowest = min(v for v, b in buckets.items() if b)
        top = _largest(buckets, [v for v, b in buckets.items() if b and v > lowest], rng)
        members = [buckets[top].pop()]
        lower = [v for v, b in buckets.items() if b and v < top]
        while lower and len(members) < size:
            v = _largest(buckets, lower, rng)
            members.append(buckets[v].pop())
            lower.remove(v)
        lists.append([members[j] for j in rng.permutation(len(members))])
    return lists, [i for b in buckets.values() for i in b]


def _largest(buckets: dict[float, list[int]], values: list[float],
             rng: np.random.Generator) -> float:
    """The value with the most items left among `values`, ties at random."""
    most = max(len(buckets[v]) for v in values)
    tied = sorted(v for v in values if len(buckets[v]) == most)
    return tied[int(rng.integers(len(tied)))]


def account(tally: Counter, kind: str, raw: object) -> None:
    """Count the ratings of one unit (a list's rows, or one bad row) under `kind`."""
    tally[kind] += len(raw) if isinstance(raw, list) else 1


def check_account(tally: Counter) -> dict[str, int]:
    """The report's ratings block; every rating read is in exactly one count."""
    out = {k: int(tally[k]) for k in ("rows", "in_lists", "left_over", "duplicate", "rejected")}
    assert out["rows"] == sum(v for k, v in out.items() if k != "rows"), out
    return out
