"""Simulated annotator populations with known types (DESIGN §8).

K types each own a reward that is linear in response features (`feature` flavour) or in the
attributes of real English responses (`text` flavour). Annotators have a type; each of their
annotations ranks the candidates of an item by Plackett–Luce on reward / temperature.
Misspecification: `random` annotators rank uniformly at random, `mixed` annotators draw a type
per annotation, `noisy` annotators have their own temperature (log-normal around the global one),
`blend` annotators have their own reward, a convex mix sum_k a_hk w_k of the type rewards with
a_h ~ Dirichlet(1) (no single type describes them; their mix is in the truth).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pluralign.core.data import Annotation
from pluralign.core.plackett_luce import sample_ranking
from pluralign.settings import FLAVOURS, MISSPECIFY, SimulationConfig  # noqa: F401 (re-exported)
from pluralign.simulate import textbank
from pluralign.simulate.store import Population, config_json
from pluralign.simulate.text import ATTRIBUTES, render

#: Stock personas of the text flavour: weights on (length, formality, bullets, caution,
#: enthusiasm). They disagree on purpose: concise and thorough oppose on length.
PERSONAS: dict[str, tuple[float, ...]] = {
    "concise": (-2.0, 0.0, 1.0, -1.0, -0.5),
    "thorough": (2.0, 1.0, 0.5, 1.0, 0.0),
    "friendly": (0.0, -1.5, -1.0, -0.5, 2.0),
    "careful": (0.5, 1.0, 0.0, 2.0, -1.0),
}


def simulate(config: SimulationConfig) -> Population:
    """Draw types, items, annotators and their rankings (from_groups: as their groups
    answer, pluralign.simulate.groups)."""
    if config.from_groups is not None:
        from pluralign.simulate.groups import simulate_groups
        return simulate_groups(config)
    rng = np.random.default_rng(config.seed)
    names, weights = _types(config, rng)
    prior = np.full(config.types, 1 / config.types) if config.prior is None \
        else np.asarray(config.prior, dtype=float)
    items = _items(config, rng)
    kinds = _kinds(config, rng)
    width = len(str(config.annotators - 1))
    records, annotators = [], {}
    for h in range(config.annotators):
        aid = f"a{h:0{width}d}"
        z = int(rng.choice(config.types, p=prior))
        temp = config.temperature * (float(np.exp(rng.normal())) if kinds[h] == "noisy" else 1)
        label = kinds[h] if kinds[h] in ("random", "mixed", "blend") else names[z]
        annotators[aid] = {"type": label, "kind": kinds[h], "temperature": round(temp, 4)}
        own = None
        if kinds[h] == "blend":
            mix = rng.dirichlet(np.ones(config.types))
            own = mix @ weights
            annotators[aid]["blend"] = mix.round(6).tolist()
        chosen = rng.choice(len(items), config.per_annotator,
                            replace=config.per_annotator > len(items))
        for i in chosen:
            item = items[int(i)]
            zi = int(rng.choice(config.types, p=prior)) if kinds[h] == "mixed" else z
            rewards = (np.zeros(len(item["x"])) if kinds[h] == "random"
                       else item["x"] @ (weights[zi] if own is None else own) / temp)
            m = len(item["responses"])
            ranking = sample_ranking(rewards, min(config.ranking_length or m, m), rng)
            used = kinds[h] if kinds[h] in ("random", "blend") else names[zi]
            records.append(_record(config, aid, item, ranking, label, used, len(records) + 1))
    truth = {
        "flavour": config.flavour, "config": config_json(config),
        "types": [{"name": n, "weights": w.round(6).tolist()} for n, w in zip(names, weights,
                                                                               strict=True)],
        "prior": prior.round(6).tolist(), "temperature": config.temperature,
        "feature_names": list(ATTRIBUTES) if config.flavour == "text"
        else [f"f{j}" for j in range(config.feature_dim)],
        "annotators": annotators,
    }
    return Population(records, truth)


def _types(config: SimulationConfig, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    if config.flavour == "text":
        if config.types <= len(PERSONAS):
            names = list(PERSONAS)[: config.types]
            return names, np.array([PERSONAS[n] for n in names])
        return ([f"type_{k}" for k in range(config.types)],
                rng.normal(0, 1.5, size=(config.types, len(ATTRIBUTES))))
    w = rng.normal(size=(config.types, config.feature_dim))
    if config.separate_types and config.types <= config.feature_dim:
        q, r = np.linalg.qr(w.T)  # a uniformly random orthonormal frame
        w = (q * np.sign(np.diag(r))).T
    w *= config.scale / np.linalg.norm(w, axis=1, keepdims=True)
    return [f"type_{k}" for k in range(config.types)], w


def _items(config: SimulationConfig, rng: np.random.Generator) -> list[dict[str, Any]]:
    lo, hi = config.list_size
    pool = textbank.prompts()
    items = []
    for i in range(item_count(config)):
        m = int(rng.integers(lo, hi + 1))
        if config.flavour == "feature":
            x = rng.normal(size=(m, config.feature_dim))
            items.append({"id": f"item{i}", "prompt": f"Item {i}: which option is best?",
                          "responses": [f"item {i}, option {j}" for j in range(m)], "x": x})
            continue
        pid, prompt, topic = pool[i % len(pool)]
        codes = rng.choice(2 ** len(ATTRIBUTES), m, replace=False)
        x = ((codes[:, None] >> np.arange(len(ATTRIBUTES))) & 1).astype(float)
        subject = textbank.subject_of(pid)
        items.append({"id": f"{pid}-{i}", "prompt": prompt, "x": x,
                      "responses": [render(topic, subject, a, rng) for a in x]})
    return items


def _kinds(config: SimulationConfig, rng: np.random.Generator) -> list[str]:
    kinds = ["typed"] * config.annotators
    order = rng.permutation(config.annotators)
    start = 0
    for kind in MISSPECIFY:
        n = int(round(config.misspecify.get(kind, 0) * config.annotators))
        for h in order[start: start + n]:
            kinds[int(h)] = kind
        start += n
    return kinds


def _record(config: SimulationConfig, aid: str, item: dict[str, Any], ranking: list[int],
            label: str, used: str, row: int) -> Annotation:
    x = item["x"].round(6).tolist()
    meta: dict[str, Any] = {"used_type": used}
    if config.flavour == "text":
        meta["attributes"] = [[int(v) for v in a] for a in x]
    return Annotation(
        annotator_id=aid, prompt=item["prompt"], responses=list(item["responses"]),
        ranking=ranking, features=x if config.flavour == "feature" else None,
        item_id=item["id"], true_type=label, metadata=meta, source="simulate", source_row=row)


def item_count(config: SimulationConfig) -> int:
    """Item pool size: given, or enough for each item to be seen a few times (and for the
    text flavour, every prompt of the bank)."""
    if config.items is not None:
        return config.items
    floor = len(textbank.prompts()) if config.flavour == "text" else 20
    return max(floor, config.annotators * config.per_annotator // 2)
