"""Tokenisation, truncation, reference log-probs against the plain HF forward, and the cache."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from tokenizers.processors import TemplateProcessing

from pluralign.core.data import Annotation
from pluralign.lm.models import load_model
from pluralign.lm.reference import (
    TokenSettings,
    compute_reference,
    prompt_text,
    tokenize,
)


@pytest.fixture(scope="module")
def tiny():
    return load_model("builtin:tiny")


def _data() -> list[Annotation]:
    return [Annotation("h1", "Say hi.", ["Hello there!", "Go away.", "Hi"], [0, 2]),
            Annotation("h2", [{"role": "user", "content": "Say hi."}], ["Hi", "Yo"], [1, 0]),
            Annotation("h3", "Say hi.", ["Hello there!", "Hi"], [1, 0])]


def test_distinct_sequences_are_tokenised_once(tiny):
    _, tok = tiny
    seqs = tokenize(_data(), tok, TokenSettings())
    # "Say hi." as text and as one user message render alike through the chat template.
    assert len(seqs) == 4
    assert seqs.index.tolist() == [[0, 1, 2], [2, 3, -1], [0, 2, -1]]
    assert seqs.responses[3][-1] == tok.eos_token_id


@pytest.mark.parametrize("template", [True, False])
def test_batched_tokenisation_equals_one_text_at_a_time(tiny, template):
    tok = copy.deepcopy(tiny[1])  # one that adds <s> when asked to add special tokens, which
    tok.backend_tokenizer.post_processor = TemplateProcessing(  # only untemplated prompts are
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    if not template:
        tok.chat_template = None  # prompts as plain text
    data = _data() + [Annotation("h4", "Tell me more, please.", ["", "Hi", "Hello there!"],
                                 [2, 0, 1]),
                      Annotation("h5", [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "Why?"}], ["Hi", ""], [0])]
    seqs = tokenize(data, tok, TokenSettings(40, 3))
    oracle = {}
    def one_prompt(p):  # the oracle: the tokenizer called on one text at a time
        text, templated = prompt_text(p, tok)
        return tok(text, add_special_tokens=not templated).input_ids

    for a in data:
        prompt = one_prompt(a.prompt)
        for r in a.responses:
            full = tok(r, add_special_tokens=False).input_ids + [tok.eos_token_id]
            oracle.setdefault((tuple(prompt[-40:]), r), (prompt[-40:], full[:3], len(full)))
    assert len(seqs) == len(oracle)
    got = list(zip(seqs.prompts, seqs.responses, seqs.response_lengths, strict=True))
    assert got == list(oracle.values())  # the same sequences in the order of appearance
    assert 0 < seqs.truncated_prompts == sum(
        len(one_prompt(p)) > 40
        for p in {json.dumps(a.prompt, sort_keys=True): a.prompt for a in data}.values())
    assert seqs.truncated_responses == sum(n > 3 for *_, n in oracle.values())


def test_truncation_keeps_prompt_end_and_response_start(tiny):
    _, tok = tiny
    long = Annotation("h", "x" * 50 + "TAIL", ["HEAD" + "y" * 50, "z"], [0])
    full = tokenize([long], tok, TokenSettings(1000, 1000))
    cut = tokenize([long], tok, TokenSettings(10, 6))
    assert cut.prompts[0] == full.prompts[0][-10:]
    assert cut.responses[0] == full.responses[0][:6]
    assert (cut.truncated_prompts, cut.truncated_responses) == (1, 1)
    assert prompt_text("Q", tok) == ("<|user|>Q\n<|assistant|>", True)


def test_reference_logps_equal_the_plain_forward_over_response_tokens(tiny):
    model, tok = tiny
    seqs = tokenize(_data(), tok, TokenSettings())
    ref = compute_reference(model, "tiny", seqs, tok.pad_token_id, cache="", progress=False,
                            token_budget=40)  # small budget: several batches, padding varies
    for i in range(len(seqs)):
        ids = torch.tensor([seqs.prompts[i] + seqs.responses[i]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].double(), -1)
        p = len(seqs.prompts[i])
        oracle = sum(logp[t - 1, ids[0, t]].item() for t in range(p, ids.shape[1]))
        assert ref.logps[i].item() == pytest.approx(oracle, abs=1e-4)


def test_cache_is_reused_without_forward_passes(tiny, tmp_path):
    model, tok = tiny
    seqs = tokenize(_data(), tok, TokenSettings())
    calls = []
    handle = model.get_decoder().layers[0].register_forward_hook(lambda *a: calls.append(1))

    def ref(**kw):
        before = len(calls)
        out = compute_reference(model, "tiny", seqs, tok.pad_token_id, cache=tmp_path,
                                progress=False, **kw)
        return out, len(calls) - before

    try:
        first, n_first = ref(trunk_layer=2, embeddings=True)
        second, n_second = ref(trunk_layer=2, embeddings=True)
        part, n_part = ref(embeddings=True)          # a part of what is cached: no pass
        other, n_other = ref(trunk_layer=1)           # another layer: a pass, union kept
        after, n_after = ref(trunk_layer=1, embeddings=True)
    finally:
        handle.remove()
    assert n_first > 0 and not first.from_cache
    assert second.from_cache and n_second == 0 and part.from_cache and n_part == 0
    assert not other.from_cache and n_other > 0
    assert after.from_cache and n_after == 0 and after.embeddings is not None
    assert torch.equal(first.logps, second.logps) and torch.equal(first.logps, other.logps)
    assert torch.equal(first.trunk, second.trunk) and torch.equal(first.embeddings,
                                                                 second.embeddings)
    assert len(list(tmp_path.glob("*.pt"))) == 1
