"""The top layers run on the positions that are read only (the last layer's queries,
attention, MLP and norm at response positions) equal the full top layers read there: values
and gradients, on a ragged batch with an empty response, a one-token prompt and GQA."""

from __future__ import annotations

import torch

from pluralign.lm.models import tiny_model
from pluralign.lm.trunk import Batch, response_logps, top_forward


def _batch(vocab: int) -> Batch:
    gen = torch.Generator().manual_seed(0)
    shapes = [(5, 7), (1, 3), (9, 0), (3, 12), (6, 1)]  # (prompt, response) tokens
    return Batch.build([torch.randint(3, vocab, (p,), generator=gen).tolist() for p, _ in shapes],
                       [torch.randint(3, vocab, (r,), generator=gen).tolist() for _, r in shapes],
                       pad_id=0)


def test_reading_positions_only_equals_the_full_top_layers():
    model, _ = tiny_model(seed=0)
    model.train()  # as in an M-step (no dropout in this config)
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    assert decoder.config.num_key_value_heads < decoder.config.num_attention_heads  # GQA
    batch = _batch(decoder.config.vocab_size)
    start = len(decoder.layers) - 2
    gen = torch.Generator().manual_seed(1)
    states = torch.randn(*batch.input_ids.shape, decoder.config.hidden_size, generator=gen,
                         requires_grad=True)
    at, slot = batch.read_positions()
    assert at.shape == (5, 12) and bool((at < batch.lengths[:, None]).all())
    results = []
    for subset in (False, True):
        hidden = top_forward(decoder, states, batch.attention_mask, start,
                             at if subset else None)
        logp = response_logps(head, hidden, batch, slot if subset else None)
        (logp * torch.arange(1.0, 6.0)).sum().backward()
        results.append((logp.detach(), states.grad.clone(),
                        {n: p.grad.clone() for n, p in decoder.named_parameters()
                         if p.grad is not None}))
        states.grad = None
        decoder.zero_grad()
    (full, g_full, p_full), (read, g_read, p_read) = results
    assert full[2] == 0 and bool((full[[0, 1, 3, 4]] < 0).all())  # empty response: log 1
    assert torch.allclose(full, read, atol=1e-5)
    assert torch.allclose(g_full, g_read, atol=1e-6)
    assert p_full.keys() == p_read.keys() and p_full
    for name in p_full:
        assert torch.allclose(p_full[name], p_read[name], atol=1e-5), name


def test_every_layer_from_the_embeddings_equals_the_model_s_own_forward():
    """The path a LoRA backend without trunk states takes (embeddings, every layer, the last
    at read positions) against transformers' own forward of the whole decoder."""
    from pluralign.lm.trunk import full_forward
    model, _ = tiny_model(seed=3)
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    batch = _batch(decoder.config.vocab_size)
    at, slot = batch.read_positions()
    with torch.no_grad():
        own = response_logps(head, full_forward(decoder, batch)[0], batch)
        ours = response_logps(head, top_forward(decoder, decoder.embed_tokens(batch.input_ids),
                                                batch.attention_mask, 0, at), batch, slot)
    assert own.abs().max() > 1 and torch.allclose(own, ours, atol=1e-5)


def _shared_prompts(vocab: int) -> tuple[list[list[int]], list[list[int]]]:
    """Six sequences on three prompts, mixed order: a prompt with three responses (one of one
    token), one with two (one empty), one alone."""
    gen = torch.Generator().manual_seed(2)
    prompt = {n: torch.randint(3, vocab, (n,), generator=gen).tolist() for n in (5, 1, 3)}
    shapes = [(5, 7), (1, 3), (3, 12), (5, 1), (1, 0), (5, 4)]
    return ([prompt[p] for p, _ in shapes],
            [torch.randint(3, vocab, (r,), generator=gen).tolist() for _, r in shapes])


def test_packed_rows_equal_one_sequence_per_row():
    """A prompt's responses sharing one row (each at its own positions, seeing the prompt and
    itself) give each sequence's log-probs, embeddings, trunk states and parameter gradients
    as one sequence per row does: transformers' own forward for the reference pass, the top
    layers read at response positions for training; SDPA and eager attention."""
    from pluralign.lm.trunk import full_forward, response_means
    model, _ = tiny_model(seed=5)
    model.train()
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    prompts, responses = _shared_prompts(decoder.config.vocab_size)
    plain = Batch.build(prompts, responses, pad_id=0)
    packed = Batch.build(prompts, responses, pad_id=0, pack=True)
    assert packed.input_ids.shape[0] == 3 and packed.segments is not None
    assert int(packed.attention_mask.sum()) == 9 + 27 < int(plain.attention_mask.sum())
    start = len(decoder.layers) - 2
    with torch.no_grad():
        own, own_states = full_forward(decoder, plain, start)
        ours, our_states = full_forward(decoder, packed, start)
    assert torch.allclose(response_logps(head, own, plain), response_logps(head, ours, packed),
                          atol=1e-5)
    assert torch.allclose(response_means(own, plain)[[0, 1, 2, 3, 5]],
                          response_means(ours, packed)[[0, 1, 2, 3, 5]], atol=1e-5)
    for a, b in zip(plain.unpack_states(own_states), packed.unpack_states(our_states),
                    strict=True):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    states = plain.unpack_states(own_states)
    for attention in ("sdpa", "eager"):
        decoder.config._attn_implementation = attention
        results = []
        for batch in (plain, packed):
            at, slot = batch.read_positions()
            hidden = top_forward(decoder, batch.pack_states(states), batch.attention_mask,
                                 start, at, batch)
            logp = response_logps(head, hidden, batch, slot)
            decoder.zero_grad()
            (logp * torch.arange(1.0, 7.0)).sum().backward()
            results.append((logp.detach(), {n: p.grad.clone() for n, p in
                                            decoder.named_parameters() if p.grad is not None}))
        (a, ga), (b, gb) = results
        assert a[4] == 0 and bool((a[[0, 1, 2, 3, 5]] < 0).all()), attention
        assert torch.allclose(a, b, atol=1e-5), attention
        assert ga.keys() == gb.keys() and ga
        for name in ga:
            assert torch.allclose(ga[name], gb[name], atol=1e-5), (attention, name)
    decoder.config._attn_implementation = "sdpa"
