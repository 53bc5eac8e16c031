"""M-step throughput against TRL's DPOTrainer, same pairs, same LoRA, same steps, one process.

Usage: python benchmarks/vs_trl.py [--model builtin:smollm2-135m] [--steps 3] [--batch 8]
                                   [--top-layers 4] [--random-init CONFIG_DIR]

Both trainers get the same preference pairs (HH from ../shared when present, else data/demo),
chosen so that no prompt exceeds 128 tokens and no response 128 (nobody truncates), the same
LoRA (rank, alpha, target modules, layers), the same batch, learning rate, schedule, clipping,
beta and number of optimizer steps, fp32 on this device. TRL runs with the reference = the
adapter disabled (peft), as DPOTrainer does, with gradient checkpointing off and on. The first
optimizer step of each run is untimed (warm-up, on the same first batch); steps 2..N are timed.
pluralign's reference pass (one forward over every pair, cached for all EM iterations and all
K types, which also stores the trunk states) is timed apart and shown; the headline ratio is the
M-step's (reference amortised, as in EM), and the table also gives the ratio with pluralign's
reference pass charged to this one fit. Memory: each run's peak resident memory above its
start (pluralign runs first, so its figure is never flattered by memory an earlier run freed).

The last line is `speedup_vs_trl_top4: X speedup_vs_trl_all: Y` (pluralign's response tokens
per second over TRL's best setting's, adapters in the top 4 layers and in all layers).
"""

from __future__ import annotations

import argparse
import gc
import logging
import tempfile
import time
import warnings

import datasets
import torch
from common import Clock, PeakRSS, only, preference_pairs, random_model

from pluralign.backends.lora import LoRABackend
from pluralign.core.data import Annotations
from pluralign.lm.models import load_model
from pluralign.lm.reference import forget, prompt_text
from pluralign.settings.backends import LoRAConfig

MAX_TOKENS = 128


def response_tokens(pairs: Annotations, tokenizer) -> int:
    """Response tokens of the pairs as pluralign counts them (the response, then EOS)."""
    return sum(len(tokenizer(r, add_special_tokens=False).input_ids) + 1
               for a in pairs for r in a.responses)


def run_pluralign(model: str, pairs: Annotations, top: int | None, steps: int, batch: int,
                  cache: str) -> dict:
    cfg = LoRAConfig(model=model, types=2, top_layers=top, cache=cache, batch_size=batch,
                     max_prompt_tokens=MAX_TOKENS, max_response_tokens=MAX_TOKENS,
                     progress=False)
    forget()  # each configuration pays its own cold reference pass
    with PeakRSS() as mem:
        backend = LoRABackend(cfg)
        with Clock() as ref:
            backend.prepare(pairs)
        # the untimed warm-up step on the first batch, then the timed steps on the rest, both
        # on the prepared pairs (no second reference pass inside the timing)
        backend.fit(1, pairs, only(len(pairs), slice(0, batch)))
        timed = Annotations(list(pairs)[batch: batch * steps])
        with Clock() as fit:
            stats = backend.fit(0, pairs, only(len(pairs), slice(batch, batch * steps)))
    assert stats["steps"] == steps - 1
    out = {"seconds": fit.seconds, "reference_s": ref.seconds, "memory": mem.peak - mem.start,
           "tokens": response_tokens(timed, backend.tokenizer)}
    del backend
    gc.collect()
    return out


class _Timer:
    """A transformers callback: the time at the end of each optimizer step."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        class Callback(TrainerCallback):
            def on_step_end(cb, args, state, control, **kwargs):  # noqa: N805
                self.ends.append(time.perf_counter())

        self.ends: list[float] = []
        self.callback = Callback()


def run_trl(model: str, pairs: Annotations, top: int | None, steps: int, batch: int,
            checkpointing: bool) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from torch.utils.data import SequentialSampler
    from transformers import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    class InOrder(DPOTrainer):
        """Batches in dataset order, so the timed steps see exactly pluralign's pairs."""

        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    cfg = LoRAConfig()
    timer = _Timer()
    with PeakRSS() as mem, tempfile.TemporaryDirectory() as out:
        base, tok = load_model(model)
        n_layers = base.config.num_hidden_layers
        lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=list(cfg.target_modules), bias="none",
                          task_type="CAUSAL_LM",
                          layers_to_transform=None if top is None else
                          list(range(n_layers - top, n_layers)))
        rows = [{"prompt": prompt_text(a.prompt, tok)[0], "chosen": a.responses[0],
                 "rejected": a.responses[1]} for a in list(pairs)[: batch * steps]]
        args = DPOConfig(
            output_dir=out, per_device_train_batch_size=batch, max_steps=steps,
            learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.scheduler,
            warmup_steps=int(cfg.warmup_ratio * steps), max_grad_norm=cfg.max_grad_norm,
            beta=cfg.beta, weight_decay=cfg.weight_decay, gradient_checkpointing=checkpointing,
            bf16=False,
            fp16=False, use_cpu=True, report_to="none", save_strategy="no",
            logging_steps=10**6, max_length=None, disable_tqdm=True, seed=0,
            dataloader_num_workers=0)
        trainer = InOrder(model=base, args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=tok, peft_config=lora, callbacks=[timer.callback])
        trl_tokens = sum(len(r["chosen_ids"]) + len(r["rejected_ids"])
                         for r in list(trainer.train_dataset)[batch:])
        trainer.remove_callback(PrinterCallback)  # its end-of-training dict is noise here
        trainer.train()
    assert len(timer.ends) == steps
    del trainer, base
    gc.collect()
    return {"seconds": timer.ends[-1] - timer.ends[0], "memory": mem.peak - mem.start,
            "trl_tokens": trl_tokens}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:smollm2-135m")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per run (>= 2)")
    p.add_argument("--batch", type=int, default=8, help="pairs per step")
    p.add_argument("--top-layers", type=int, default=4)
    p.add_argument("--data", default=None, help="a dataset folder (default: HH, else demo)")
    p.add_argument("--random-init", metavar="DIR", default=None,
                   help="a folder with config.json and tokenizer files: that architecture with "
                        "random weights (speed depends on shapes only)")
    args = p.parse_args()
    if args.steps < 2:
        p.error("--steps must be >= 2 (the first step is untimed)")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore")
    model = random_model(args.random_init) if args.random_init else args.model
    tok = load_model(model)[1]
    pairs = preference_pairs(args.batch * args.steps, tok, MAX_TOKENS, MAX_TOKENS, args.data)
    n = response_tokens(Annotations(list(pairs)[args.batch:]), tok)
    print(f"model {model}, {len(pairs)} pairs ({n} response tokens in the timed "
          f"{args.steps - 1} steps), batch {args.batch}, torch threads "
          f"{torch.get_num_threads()}, device cpu, fp32")
    print(f"{'layers':>7} {'trainer':<28} {'s/step':>7} {'resp tok/s':>10} {'peak MiB':>9}")
    speedups = {}
    for label, top in (("top4", args.top_layers), ("all", None)):
        with tempfile.TemporaryDirectory() as cache:  # each pays its own cold reference pass
            ours = run_pluralign(model, pairs, top, args.steps, args.batch, cache)
        rows = {"pluralign": ours}
        for ckpt in (False, True):
            rows[f"trl (checkpointing {'on' if ckpt else 'off'})"] = run_trl(
                model, pairs, top, args.steps, args.batch, ckpt)
        for name, r in rows.items():
            print(f"{label:>7} {name:<28} {r['seconds'] / (args.steps - 1):>7.2f} "
                  f"{n / r['seconds']:>10.1f} {r['memory'] / 2**20:>9.0f}")
        best = min((r for k, r in rows.items() if k != "pluralign"),
                   key=lambda r: r["seconds"])
        speedups[label] = best["seconds"] / ours["seconds"]
        charged = best["seconds"] / (ours["seconds"] + ours["reference_s"])
        print(f"{label:>7} pluralign reference pass {ours['reference_s']:.1f} s (once per "
              f"dataset); ratio with it charged to this fit {charged:.2f}; TRL counted "
              f"{best['trl_tokens']} response tokens to pluralign's {n}")
    print(f"speedup_vs_trl_top4: {speedups['top4']:.2f} speedup_vs_trl_all: {speedups['all']:.2f}")


if __name__ == "__main__":
    main()
