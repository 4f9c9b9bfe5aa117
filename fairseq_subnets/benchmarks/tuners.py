"""Speed of training with each tuner, of its allocator, and of decoding its merged model.

One process, one batch of random audio, the real plugin model (`subnets_wav2vec_ctc`, BASE-sized by
default) with random weights:

* training step (forward, CTC loss, backward, a step of fairseq's Adam): reference = full
  fine-tuning of the same model (every weight trains: what the tuners replace); measured = the same
  weights with each tuner added and frozen around as `+model.tuner=METHOD` does (the tuners
  technique's `add_to_model`, `prepare_training`; the paper's default targets), so the optimizer
  holds only the tuner and the CTC head. Target: at most 1.00x for LoRA and S2-LoRA, which compute far fewer gradients; every method
  is reported.
* AdaLoRA's allocator step (importance smoothing and masking to the budget, at an update where it
  masks): against AdaLoRA's own training step; target at most 0.05x.
* decoding (eval, no_grad forward): for each tuner, reference = the stock fairseq `Wav2VecCtc`
  holding the merged state dict (`bake_state_dict`, what `fairseq-subnets export` writes), frozen
  as the tuned model's wav2vec2 is (see `bench train` on why flags change rounding); measured = the
  tuned model merged in place by `bake_module`. Their outputs must be identical; target 1.00x
  within noise.
"""
from typing import Callable, Dict, List, Mapping

import torch

from ..core.parametrize import bake_module, bake_state_dict
from ..techniques.tuners import TUNERS, tuner_parameters
from ..techniques.tuners.adalora import allocate, svd_deltas
from ..techniques.extension import W2V_PREFIX, technique_of
from ..techniques.tuners import Tuners
from .untrained import build_untrained_ctc_model, ctc_model_config, rebuild_with_state
from .timing import compare, interleaved, ratio_cell, text_table
from .train_step import Batch, StepBenchSettings, _require, decode_forward, make_optimizer, run_seeded, train_step

FULL_FINE_TUNING = "full fine-tuning"
AT_MOST_FULL = ("lora", "s2lora")
"""Tuners whose step may cost at most a full fine-tuning step (1.00x)."""
ALLOCATOR_TARGET = 0.05
ADALORA_UPDATES = 1000
"""The AdaLoRA schedule of the benchmark model; the allocator is timed at update 500 (shrinking)."""


def tuned_model(size, state: Mapping[str, torch.Tensor], method: str):
    """A model holding `state` with `method` added and frozen around as `build_model` does."""
    model = rebuild_with_state(size, state)
    cfg = ctc_model_config(size)
    cfg.tuner = method
    if method == "adalora":
        cfg.tuner_total_updates = ADALORA_UPDATES
    tuners = Tuners(cfg)
    model.techniques = [tuners]
    tuners.add_to_model(model, cfg)
    tuners.prepare_training(model, cfg)
    return model


def run_tuner_benchmark(settings: StepBenchSettings = StepBenchSettings(),
                        say: Callable[[str], None] = print) -> Dict[str, object]:
    """Every row of the module docstring; raises AssertionError if a merged model and its stock
    export decode differently."""
    return run_seeded(settings, say, _run)


def _run(settings: StepBenchSettings, say, result: Dict[str, object], batch: Batch) -> None:
    size = settings.model_size
    say(f"building {settings.describe()} and {len(TUNERS)} tuned copies ...")
    full = build_untrained_ctc_model(size)
    state = full.state_dict()
    models = {FULL_FINE_TUNING: full, **{method: tuned_model(size, state, method) for method in TUNERS}}
    result["parameters"] = sum(p.numel() for p in full.parameters())
    result["tuner_parameters"] = {method: sum(p.numel() for p in tuner_parameters(models[method]).values())
                                  for method in TUNERS}
    result["optimized_values"] = {name: sum(p.numel() for p in model.parameters() if p.requires_grad)
                                  for name, model in models.items()}

    say(f"training steps: {settings.train_warmup} warm-up + {settings.train_steps} timed per model, interleaved ...")
    optimizers = {name: make_optimizer(model, settings.lr) for name, model in models.items()}
    for model in models.values():
        model.train()
    seconds = interleaved({name: (lambda name=name, model=model: train_step(model, optimizers[name], batch))
                           for name, model in models.items()}, settings.train_steps, settings.train_warmup)
    result["train"] = {method: compare(seconds, FULL_FINE_TUNING, method) for method in TUNERS}

    adalora = models["adalora"]
    deltas = svd_deltas(adalora, W2V_PREFIX)
    steps = seconds["adalora"]
    adalora_config = technique_of(adalora, Tuners).tuner_config
    allocator = interleaved({"allocator": lambda: allocate(adalora_config, deltas, ADALORA_UPDATES // 2)},
                            settings.train_steps, settings.train_warmup)
    result["allocator"] = compare({"adalora step": steps, "allocator": allocator["allocator"]}, "adalora step",
                                  "allocator")
    optimizers.clear()

    say(f"decoding: {settings.decode_warmup} warm-up + {settings.decode_steps} timed forward passes per model ...")
    decoded: Dict[str, torch.nn.Module] = {}
    for method in TUNERS:
        stock = rebuild_with_state(size, bake_state_dict(models[method].state_dict()), stock=True)
        stock.get_submodule(W2V_PREFIX[:-1]).requires_grad_(False)
        merged = models.pop(method)
        bake_module(merged)
        decoded[f"{method} stock export"], decoded[f"{method} merged"] = stock, merged
    del models
    for model in decoded.values():
        model.eval()
    for method in TUNERS:
        _require(torch.equal(decode_forward(decoded[f"{method} merged"], batch.audio),
                             decode_forward(decoded[f"{method} stock export"], batch.audio)),
                 f"{method}: merged and stock export decode differently")
    seconds = interleaved({name: (lambda model=model: decode_forward(model, batch.audio)) for name, model in decoded.items()},
                          settings.decode_steps, settings.decode_warmup)
    result["decode"] = {method: compare(seconds, f"{method} stock export", f"{method} merged") for method in TUNERS}


def format_tuner_report(result: Mapping[str, object]) -> str:
    settings = result["settings"]
    lines = [f"{result['date']}  {result['machine']}",
             f"{result['shape']}; {result['parameters']:,} parameters",
             f"medians of {settings['train_steps']} training steps and {settings['decode_steps']} forward passes "
             f"per model, interleaved, after {settings['train_warmup']} / {settings['decode_warmup']} warm-up"]
    rows: List[tuple] = [("tuner", "trains (% of model)", "step vs full fine-tuning (target)",
                          "merged decoding vs stock export (target)")]
    for method in TUNERS:
        count = result["tuner_parameters"][method]
        target = "<= 1.00" if method in AT_MOST_FULL else "information"
        rows.append((method, f"{count:,} ({100 * count / result['parameters']:.3f}%)",
                     ratio_cell(result["train"][method], target),
                     ratio_cell(result["decode"][method], "1.00 within noise")))
    lines += text_table(rows)
    allocator = result["allocator"]
    lines.append(f"AdaLoRA allocator step (masking) vs its training step: "
                 f"{ratio_cell(allocator, f'<= {ALLOCATOR_TARGET:.2f}')}; "
                 f"{allocator['measured_median_s'] * 1000:.1f} ms vs {allocator['reference_median_s']:.3f} s")
    lines.append(f"values the optimizer updates: {result['optimized_values'][FULL_FINE_TUNING]:,} in full "
                 f"fine-tuning; with a tuner, its parameters plus the CTC head. Merged and stock-export outputs "
                 f"identical for every tuner (the run fails otherwise).")
    return "\n".join(lines)
