"""Source layouts (presets) and how each becomes canonical annotations.

- pairwise: prompt, chosen, rejected (strings or TRL conversational messages) -> m = 2.
- ranked:   prompt, responses, ranking (indices, best first; partial allowed).
- scored:   prompt, responses, scores (higher is better) -> ranking by score, ties per `ties`.
- long:     one row per response: annotator_id, item_id and/or prompt, response, rank
            (1 = best) or score (higher is better); rows of one (annotator, item) form one
            annotation.
- ratings:  one row per (annotator, item) rating of items that share a prompt: annotator_id,
            prompt, response, rating; a rater's ratings become lists (pluralign.ingest.ratings).

Ties (scored, long): a Plackett–Luce ranking is strict, so ties are never broken by position.
With ties="truncate" the ranking keeps the strictly ordered top (scores 3, 2, 2, 1 give the
top-1 ranking [0]: response 0 beat all others, the rest are unranked); a tie at the very top
carries no preference and rejects the row (`tie_at_top`). With ties="reject" any tie rejects it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pluralign.core.data import Annotation, FieldError
from pluralign.ingest import fields as F
from pluralign.ingest.errors import Location
from pluralign.ingest.readers import RawRow
from pluralign.settings import TIES  # noqa: F401 (defined with the other choices)

COMMON = ("annotator_id", "item_id", "true_type", "group", "split", "features")


@dataclass
class RatingsOptions:
    """How the ratings layout makes lists (pluralign.ingest.ratings): items per list, the
    sampler's seed, the prompt of rows without one (settings.IngestOptions' fields)."""

    list_size: int = 4
    ratings_seed: int = 0
    default_prompt: str | None = None


@dataclass
class Context:
    """Per-file settings: whether annotators are synthetic (no annotator field), tie policy;
    the ratings layout's options and its run-wide count of ratings."""

    synthetic_annotator: bool = False
    ties: str = "truncate"
    ratings: RatingsOptions = field(default_factory=RatingsOptions)
    tally: Counter = field(default_factory=Counter)


@dataclass
class Unit:
    """One would-be annotation: where it starts, its raw form, and how to build it."""

    location: Location
    raw: Any
    build: Callable[[], Annotation] | None
    error: FieldError | None = None


class Preset:
    """A source layout: the columns that identify it and how a row becomes an annotation."""

    name = ""
    signature: tuple[frozenset[str], ...] = ()  # any one of these column sets identifies it
    consumed: frozenset[str] = frozenset()

    def matches(self, columns: set[str]) -> bool:
        """Whether `columns` hold one of this layout's identifying column sets."""
        return any(sig <= columns for sig in self.signature)

    def units(self, rows: list[RawRow], ctx: Context) -> Iterator[Unit]:
        """One unit per row (the long layout groups rows instead)."""
        for r in rows:
            if r.error is not None:
                yield Unit(r.location, r.raw, None, r.error)
            else:
                yield Unit(r.location, r.raw, bind(self.parse, r, ctx))

    def parse(self, row: RawRow, ctx: Context) -> Annotation:
        raise NotImplementedError


def bind(fn: Callable, *args: Any) -> Callable[[], Annotation]:
    """A unit's builder: `fn(*args)`, called when the unit is taken."""
    return lambda: fn(*args)


def annotation(row: RawRow, ctx: Context, prompt: Any, responses: list[str],
               ranking: list[int], consumed: frozenset[str],
               extra: dict[str, Any] | None = None) -> Annotation:
    """Assemble the canonical record: common fields, and every other field kept as metadata."""
    d = row.data or {}
    if ctx.synthetic_annotator:
        loc = row.location
        annotator = f"{loc.file}:{loc.unit}{loc.number}"
    else:
        annotator = F.ident(d, "annotator_id")
    base = d.get("metadata")
    metadata = dict(base) if isinstance(base, dict) else {}  # a canonical export's own metadata
    metadata.update({k: v for k, v in d.items()
                     if k not in consumed and k not in COMMON
                     and not (k == "metadata" and isinstance(v, dict))})
    metadata.update(extra or {})
    return Annotation(
        annotator_id=annotator, prompt=prompt, responses=responses, ranking=ranking,
        features=F.features(d), item_id=F.ident(d, "item_id", required=False),
        true_type=F.ident(d, "true_type", required=False),
        group=F.ident(d, "group", required=False), split=F.ident(d, "split", required=False),
        metadata=json.loads(json.dumps(metadata, default=str)),
        source=row.location.file, source_row=row.location.number)


def ranking_from_scores(scores: list[float], ties: str, field: str) -> list[int]:
    """Indices best first by descending score, ties handled per `ties` (module docstring)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    tied = any(scores[a] == scores[b] for a, b in zip(order, order[1:], strict=False))
    if tied and ties == "reject":
        raise FieldError(field, "has tied values and ties='reject'", "tied_scores")
    ranking = []
    for j, i in enumerate(order):
        if j + 1 < len(order) and scores[order[j + 1]] == scores[i]:
            break
        ranking.append(i)
    if not ranking:
        raise FieldError(field, "the best value is tied, so the row states no preference",
                         "tie_at_top")
    return ranking


class Pairwise(Preset):
    name = "pairwise"
    signature = (frozenset({"chosen", "rejected"}),)
    consumed = frozenset({"prompt", "chosen", "rejected"})

    def parse(self, row: RawRow, ctx: Context) -> Annotation:
        d = row.data or {}
        chosen, rejected = F.require(d, "chosen"), F.require(d, "rejected")
        if F.missing(d, "prompt") and _is_conversation(chosen) and _is_conversation(rejected):
            prompt, chosen, rejected = _split_implicit_prompt(chosen, rejected)
        else:
            prompt = F.prompt(d)
        responses = [F.response(chosen, "chosen"), F.response(rejected, "rejected")]
        return annotation(row, ctx, prompt, responses, [0, 1], self.consumed)


def _is_conversation(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 1 and all(isinstance(m, dict) for m in value)


def _split_implicit_prompt(chosen: list, rejected: list) -> tuple[list, list, list]:
    """TRL's implicit-prompt layout: the shared leading messages are the prompt."""
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise FieldError("prompt", "is missing, and chosen/rejected share no leading messages",
                         "missing_field")
    return chosen[:n], chosen[n:], rejected[n:]


class Ranked(Preset):
    name = "ranked"
    signature = (frozenset({"responses", "ranking"}),)
    consumed = frozenset({"prompt", "responses", "ranking"})

    def parse(self, row: RawRow, ctx: Context) -> Annotation:
        d = row.data or {}
        return annotation(row, ctx, F.prompt(d), F.responses(d), F.integers(d, "ranking"),
                          self.consumed)


class Scored(Preset):
    name = "scored"
    signature = (frozenset({"responses", "scores"}),)
    consumed = frozenset({"prompt", "responses", "scores"})

    def parse(self, row: RawRow, ctx: Context) -> Annotation:
        d = row.data or {}
        responses = F.responses(d)
        scores = F.numbers(d, "scores", row.textual)
        if len(scores) != len(responses):
            raise FieldError("scores", f"has {len(scores)} values for {len(responses)} "
                                       "responses", "wrong_length")
        ranking = ranking_from_scores(scores, ctx.ties, "scores")
        return annotation(row, ctx, F.prompt(d), responses, ranking, self.consumed,
                          {"scores": scores})


class Long(Preset):
    name = "long"
    signature = (frozenset({"response", "rank"}), frozenset({"response", "score"}))
    consumed = frozenset({"prompt", "response", "rank", "score"})

    def units(self, rows: list[RawRow], ctx: Context) -> Iterator[Unit]:
        groups: dict[tuple, list[RawRow]] = {}
        for r in rows:
            if r.error is not None:
                yield Unit(r.location, r.raw, None, r.error)
                continue
            try:
                key = self._key(r, ctx)
            except FieldError as e:
                yield Unit(r.location, r.raw, None, e)
                continue
            groups.setdefault(key, []).append(r)
        for members in groups.values():
            yield Unit(members[0].location, [m.raw for m in members],
                       bind(self._parse_group, members, ctx))

    @staticmethod
    def _key(r: RawRow, ctx: Context) -> tuple:
        d = r.data or {}
        who = None if ctx.synthetic_annotator else F.ident(d, "annotator_id")
        if not F.missing(d, "item_id"):
            return (who, "item", F.ident(d, "item_id"))
        prompt = F.prompt(d)
        return (who, "prompt", json.dumps(prompt, sort_keys=True))

    def _parse_group(self, members: list[RawRow], ctx: Context) -> Annotation:
        first = members[0]
        by_rank = any(not F.missing(m.data or {}, "rank") for m in members)
        column = "rank" if by_rank else "score"
        responses, values, vectors = [], [], []
        prompt = F.prompt(first.data or {})
        for m in members:
            d = m.data or {}
            try:
                if F.prompt(d) != prompt:
                    raise FieldError("prompt", f"differs from {first.location} of the same item",
                                     "inconsistent_group")
                responses.append(F.response(F.require(d, "response"), "response"))
                value = F.number(F.require(d, column), column, m.textual)
                values.append(-value if by_rank else value)
                vectors.append(F.require(d, "features") if not F.missing(d, "features") else None)
            except FieldError as e:
                e.location = m.location  # type: ignore[attr-defined]
                raise
        ranking = ranking_from_scores(values, ctx.ties, column)
        merged = RawRow(first.location, {**(first.data or {}), "features": stack_features(vectors)},
                        first.raw)
        extra = varying_fields(members, self.consumed | set(COMMON))
        extra[column + "s"] = [-v for v in values] if by_rank else values
        return annotation(merged, ctx, prompt, responses, ranking,
                          self.consumed | set(extra), extra)


def stack_features(vectors: list[Any]) -> list[Any] | None:
    """Per-response feature vectors of one list: all given, or None when none is."""
    if all(v is None for v in vectors):
        return None
    if any(v is None for v in vectors):
        raise FieldError("features", "present for some responses of the item but not all",
                         "inconsistent_features")
    return vectors


def varying_fields(members: list[RawRow], skip: set[str]) -> dict[str, Any]:
    """Free fields of a group: one value when all rows agree, else one value per response."""
    keys = dict.fromkeys(k for m in members for k in (m.data or {}) if k not in skip)
    out = {}
    for k in keys:
        vals = [(m.data or {}).get(k) for m in members]
        out[k] = vals[0] if all(v == vals[0] for v in vals) else vals
    return out
