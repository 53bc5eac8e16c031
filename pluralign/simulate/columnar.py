"""The feature flavour drawn at population scale: the same model as pluralign.simulate.population
(K linear type rewards, PL rankings on reward / temperature), drawn with array operations a block
of annotators at a time into the canonical arrow table, never a Python object per annotation.

Not the same random draws as `simulate` for one seed, and for typed annotators only (no
misspecification); items are drawn with replacement (at population scale a pool of millions
of items makes a repeat within one annotator rare). The truth carries each annotator's type
as an array (`type_codes`) beside the usual fields."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pluralign.core.data import SCHEMA, Annotations
from pluralign.settings import SimulationConfig
from pluralign.simulate.population import _types, item_count
from pluralign.simulate.store import config_json

#: Annotators drawn per block: a block's arrays are a few hundred MB at 10 annotations each.
BLOCK = 100_000


def simulate_columnar(config: SimulationConfig,
                      block: int = BLOCK) -> tuple[Annotations, dict[str, Any]]:
    """A columnar dataset (`Annotations.from_table`) and its truth."""
    if config.flavour != "feature" or config.misspecify or config.from_groups:
        raise ValueError("columnar simulation draws the feature flavour's typed annotators "
                         "only (no misspecify, no from_groups); use simulate() for the rest")
    rng = np.random.default_rng(config.seed)
    names, weights = _types(config, rng)
    prior = np.full(config.types, 1 / config.types) if config.prior is None \
        else np.asarray(config.prior, dtype=float)
    pool = _Items(config, rng)
    types = rng.choice(config.types, size=config.annotators, p=prior)
    width = len(str(config.annotators - 1))
    parts = [_block(config, rng, pool, weights, names, types, h0, min(h0 + block,
                                                                    config.annotators), width)
             for h0 in range(0, config.annotators, block)]
    table = pa.concat_tables(parts)
    truth = {
        "flavour": "feature", "config": config_json(config),
        "types": [{"name": n, "weights": w.round(6).tolist()} for n, w in zip(names, weights,
                                                                               strict=True)],
        "prior": prior.round(6).tolist(), "temperature": config.temperature,
        "feature_names": [f"f{j}" for j in range(config.feature_dim)],
        "type_codes": types,
    }
    return Annotations.from_table(table), truth


class _Items:
    """The item pool: features [items, m_max, D] (padding rows zero), sizes, ids, prompts and
    responses as arrow arrays to take from."""

    def __init__(self, config: SimulationConfig, rng: np.random.Generator):
        n = item_count(config)
        lo, hi = config.list_size
        self.sizes = rng.integers(lo, hi + 1, size=n)
        self.x = rng.normal(size=(n, hi, config.feature_dim))
        self.x[np.arange(hi) >= self.sizes[:, None]] = 0.0
        self.x = self.x.round(6)
        number = _text(np.arange(n))
        self.ids = pc.binary_join_element_wise("item", number, "")
        self.prompts = pc.binary_join_element_wise("Item ", number, ": which option is best?",
                                                   "")
        which = np.repeat(np.arange(n), self.sizes)
        option = np.arange(which.size) - np.repeat(np.cumsum(self.sizes) - self.sizes,
                                                   self.sizes)
        texts = pc.binary_join_element_wise("item ", _text(which), ", option ", _text(option),
                                            "")
        self.responses = pa.ListArray.from_arrays(pa.array(_offsets(self.sizes)), texts)


def _block(config: SimulationConfig, rng: np.random.Generator, pool: _Items,
           weights: np.ndarray, names: list[str], types: np.ndarray, h0: int, h1: int,
           width: int) -> pa.Table:
    """Annotators h0..h1-1 and their annotations, as a table in SCHEMA."""
    per = config.per_annotator
    who = np.repeat(np.arange(h0, h1), per)
    item = rng.integers(0, len(pool.sizes), size=who.size)
    m = pool.sizes[item]
    x = pool.x[item]                                                    # [rows, m_max, D]
    reward = np.einsum("rmd,rd->rm", x, weights[types[who]]) / config.temperature
    noisy = reward + rng.gumbel(size=reward.shape)                      # Gumbel-max: PL draws
    noisy[np.arange(x.shape[1]) >= m[:, None]] = -np.inf
    order = np.argsort(-noisy, axis=1, kind="stable")
    length = np.minimum(config.ranking_length or x.shape[1], m)
    ranking = order[np.arange(x.shape[1]) < length[:, None]].astype(np.int32)
    ids = pc.utf8_lpad(_text(np.arange(h0, h1)), width, "0")
    ids = pc.binary_join_element_wise("a", ids, "").take(pa.array(who - h0))
    feats = x[np.arange(x.shape[1]) < m[:, None]].reshape(-1)           # real candidates only
    vectors = pa.ListArray.from_arrays(
        pa.array(np.arange(0, feats.size + 1, config.feature_dim, dtype=np.int32)),
        pa.array(feats))
    label = pa.array(names).take(pa.array(types[who]))
    used = pa.array([json.dumps({"used_type": n}, separators=(",", ":")) for n in names])
    used = used.take(pa.array(types[who]))
    columns = {
        "annotator_id": ids, "prompt": pool.prompts.take(pa.array(item)),
        "prompt_messages": pa.nulls(who.size, SCHEMA.field("prompt_messages").type),
        "responses": pool.responses.take(pa.array(item)),
        "ranking": pa.ListArray.from_arrays(pa.array(_offsets(length)), pa.array(ranking)),
        "features": pa.ListArray.from_arrays(pa.array(_offsets(m)), vectors),
        "item_id": pool.ids.take(pa.array(item)), "true_type": label,
        "group": pa.nulls(who.size, pa.string()), "split": pa.nulls(who.size, pa.string()),
        "metadata": used, "source": pa.repeat("simulate", who.size),
        "source_row": pa.array(np.arange(h0 * per, h1 * per) + 1),
    }
    return pa.table(columns, schema=SCHEMA)


def _text(numbers: np.ndarray) -> pa.Array:
    """Integers as decimal strings, built by arrow (no Python string per value)."""
    return pc.cast(pa.array(numbers), pa.string())


def _offsets(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
